"""Encode and parse message bodies: the handshake hellos and the sealed messages.

Pure functions over bytes, in ``encode_*`` / ``parse_*`` pairs (docs/design.md, C3). Parsing
raises only ``RemoteProtocolError``: MALFORMED for bad bytes, TOO_LARGE for fields
over a limit, UNEXPECTED_MESSAGE for an unknown message type.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgshare.errors import RemoteProtocolError
from imgshare.protocol import codec
from imgshare.protocol import events as ev
from imgshare.protocol.constants import (
    HMAC_SIZE,
    IMAGE_ID_SIZE,
    KEY_SIZE,
    MAGIC,
    MAX_LIST_ENTRIES,
    MAX_MEDIA_TYPE_BYTES,
    MAX_MESSAGE_TEXT_BYTES,
    MAX_NAME_BYTES,
    MAX_PAGE_ENTRIES,
    MAX_PASSWORD_BYTES,
    MAX_RETRY_AFTER_MS,
    MAX_THUMBNAIL_BYTES,
    MAX_TOKEN_BYTES,
    MAX_TOKEN_NAME_BYTES,
    MAX_USERNAME_BYTES,
    RANDOM_SIZE,
    UPLOAD_ID_SIZE,
    ErrorCode,
    ListScope,
    MessageType,
    Registration,
)
from imgshare.protocol.stream import UploadHeader

# --- handshake ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientHello:
    versions: tuple[int, ...]
    group: int
    key_share: bytes
    random: bytes

    def encode(self) -> bytes:
        versions = b"".join(codec.u16(v) for v in self.versions)
        return b"".join(
            (
                MAGIC,
                codec.u8(len(self.versions)),
                versions,
                codec.u16(self.group),
                codec.var16(self.key_share),
                self.random,
            )
        )

    @classmethod
    def parse(cls, data: bytes) -> ClientHello:
        reader = codec.Reader(data, "ClientHello")
        if reader.fixed(len(MAGIC)) != MAGIC:
            raise codec.malformed("ClientHello magic")
        count = reader.u8()
        if not 1 <= count <= 16:
            raise codec.malformed("ClientHello versions")
        versions = tuple(reader.u16() for _ in range(count))
        group = reader.u16()
        key_share = reader.var16()
        random = reader.fixed(RANDOM_SIZE)
        reader.end()
        return cls(versions, group, key_share, random)


@dataclass(frozen=True, slots=True)
class ServerHello:
    version: int
    group: int
    key_share: bytes
    random: bytes
    certificate: bytes

    def encode(self) -> bytes:
        return b"".join(
            (
                codec.u16(self.version),
                codec.u16(self.group),
                codec.var16(self.key_share),
                self.random,
                codec.var16(self.certificate),
            )
        )

    @classmethod
    def parse(cls, data: bytes) -> ServerHello:
        reader = codec.Reader(data, "ServerHello")
        version = reader.u16()
        group = reader.u16()
        key_share = reader.var16()
        random = reader.fixed(RANDOM_SIZE)
        certificate = reader.var16()
        reader.end()
        return cls(version, group, key_share, random, certificate)


@dataclass(frozen=True, slots=True)
class ServerVerify:
    scheme: int
    signature: bytes

    def encode(self) -> bytes:
        return codec.u16(self.scheme) + codec.var16(self.signature)

    @classmethod
    def parse(cls, data: bytes) -> ServerVerify:
        reader = codec.Reader(data, "ServerVerify")
        scheme = reader.u16()
        signature = reader.var16()
        reader.end()
        return cls(scheme, signature)


def encode_alert(code: int, message: str) -> bytes:
    return codec.u16(code) + codec.var16(_clip(message))


def parse_alert(data: bytes) -> ev.Error:
    reader = codec.Reader(data, "alert")
    code = reader.u16()
    message = reader.text(reader.var16(), MAX_MESSAGE_TEXT_BYTES)
    reader.end()
    return ev.Error(_error_code(code), message, fatal=True)


def _clip(message: str) -> bytes:
    """Error texts are bounded; cut on a character boundary."""
    raw = message.encode("utf-8")[:MAX_MESSAGE_TEXT_BYTES]
    return raw.decode("utf-8", "ignore").encode("utf-8")


def _error_code(code: int) -> ErrorCode:
    try:
        return ErrorCode(code)
    except ValueError:
        # Unknown codes from a newer peer are still errors; keep the nearest meaning.
        return ErrorCode.INTERNAL


# --- sealed messages: encoding ------------------------------------------------------


def _text8(value: str) -> bytes:
    return codec.var8(value.encode("utf-8"))


def _text16(value: str) -> bytes:
    return codec.var16(value.encode("utf-8"))


def _encode_entry(entry: ev.ImageEntry) -> bytes:
    return b"".join(
        (
            entry.image_id,
            codec.u64(entry.size),
            codec.u64(entry.created_ms),
            entry.hmac,
            _text8(entry.owner),
            _text16(entry.name),
        )
    )


def _encode_token(token: ev.TokenInfo) -> bytes:
    return b"".join(
        (
            codec.u64(token.token_id),
            _text8(token.name),
            codec.u64(token.created_ms),
            codec.u64(token.expires_ms),
            codec.u64(token.last_used_ms),
        )
    )


def _encode_share(share: ev.ShareInfo) -> bytes:
    return _text8(share.username) + codec.u64(share.granted_ms) + codec.u64(share.expires_ms)


def _fields(event: ev.Event) -> bytes:
    match event:
        case ev.Login(username, password) | ev.Register(username, password, _):
            body = _text8(username) + _text16(password)
            if isinstance(event, ev.Register):
                body += codec.var16(event.invitation)
            return body
        case ev.TokenLogin(token):
            return codec.var16(token)
        case ev.CertLogin() | ev.TokenList() | ev.Info():
            return b""
        case ev.ServerInfo(max_image_size, max_record_size, max_pixels, registration, failures):
            limits = codec.u64(max_image_size) + codec.u32(max_record_size)
            return limits + codec.u64(max_pixels) + codec.u8(registration) + codec.u8(failures)
        case ev.Passwd(old_password, new_password, revoke_tokens):
            body = _text16(old_password) + _text16(new_password)
            return body + codec.u8(int(revoke_tokens))
        case ev.TokenCreate(name, expires_ms):
            return _text8(name) + codec.u64(expires_ms)
        case ev.TokenRevoke(token_id):
            return codec.u64(token_id)
        case ev.UploadBegin(header, content_key) | ev.UploadResume(header, content_key):
            return content_key + header.encode()
        case ev.UploadEnd(mac) | ev.DownloadEnd(mac):
            return mac
        case ev.Download(image_id) | ev.Delete(image_id) | ev.Thumbnail(image_id):
            return image_id
        case ev.ThumbnailData(image_id, width, height, media_type, data):
            sizes = codec.u16(width) + codec.u16(height)
            return image_id + sizes + _text8(media_type) + codec.u32(len(data)) + data
        case ev.Share(image_id, username, expires_ms):
            return image_id + _text8(username) + codec.u64(expires_ms)
        case ev.Unshare(image_id, username):
            return image_id + _text8(username)
        case ev.Shares(image_id):
            return image_id
        case ev.ListPage(scope, after_ms, after_id, limit):
            return codec.u8(scope) + codec.u64(after_ms) + after_id + codec.u16(limit)
        case ev.ListImages() | ev.Ok():
            return b""
        case ev.LoginOk(username):
            return _text8(username)
        case ev.UploadReady(next_chunk):
            return codec.u32(next_chunk)
        case ev.Receipt(body, scheme, signature):
            return body.encode() + codec.u16(scheme) + codec.var16(signature)
        case ev.DownloadBegin(image_id, header, content_key):
            return content_key + image_id + header.encode()
        case ev.ImageList(images):
            return codec.u32(len(images)) + b"".join(_encode_entry(e) for e in images)
        case ev.ImagePage(images, more):
            entries = b"".join(_encode_entry(e) for e in images)
            return codec.u8(int(more)) + codec.u32(len(images)) + entries
        case ev.Token(token_id, secret, expires_ms):
            return codec.u64(token_id) + codec.var16(secret) + codec.u64(expires_ms)
        case ev.Tokens(tokens):
            return codec.u32(len(tokens)) + b"".join(_encode_token(t) for t in tokens)
        case ev.ShareList(image_id, shares):
            body = image_id + codec.u32(len(shares))
            return body + b"".join(_encode_share(share) for share in shares)
        case ev.Error(code, message, fatal, retry_after_ms):
            body = codec.u16(code) + codec.u8(int(fatal)) + codec.var16(_clip(message))
            if code is ErrorCode.TRY_LATER:
                body += codec.u32(retry_after_ms)
            return body
    raise TypeError(f"{type(event).__name__} is not a sealed message")


MESSAGE_TYPE_OF: dict[type[ev.Event], MessageType] = {
    ev.Login: MessageType.LOGIN,
    ev.Register: MessageType.REGISTER,
    ev.TokenLogin: MessageType.TOKEN_LOGIN,
    ev.UploadBegin: MessageType.UPLOAD_BEGIN,
    ev.UploadEnd: MessageType.UPLOAD_END,
    ev.UploadResume: MessageType.UPLOAD_RESUME,
    ev.Thumbnail: MessageType.THUMBNAIL,
    ev.ThumbnailData: MessageType.THUMBNAIL_DATA,
    ev.Download: MessageType.DOWNLOAD,
    ev.ListImages: MessageType.LIST,
    ev.CertLogin: MessageType.CERT_LOGIN,
    ev.Passwd: MessageType.PASSWD,
    ev.TokenCreate: MessageType.TOKEN_CREATE,
    ev.TokenList: MessageType.TOKEN_LIST,
    ev.TokenRevoke: MessageType.TOKEN_REVOKE,
    ev.Info: MessageType.INFO,
    ev.ServerInfo: MessageType.SERVER_INFO,
    ev.Share: MessageType.SHARE,
    ev.Delete: MessageType.DELETE,
    ev.Unshare: MessageType.UNSHARE,
    ev.Shares: MessageType.SHARES,
    ev.ListPage: MessageType.LIST_PAGE,
    ev.Ok: MessageType.OK,
    ev.LoginOk: MessageType.LOGIN_OK,
    ev.Token: MessageType.TOKEN,
    ev.Tokens: MessageType.TOKENS,
    ev.UploadReady: MessageType.UPLOAD_READY,
    ev.Receipt: MessageType.RECEIPT,
    ev.DownloadBegin: MessageType.DOWNLOAD_BEGIN,
    ev.DownloadEnd: MessageType.DOWNLOAD_END,
    ev.ImageList: MessageType.IMAGE_LIST,
    ev.ImagePage: MessageType.IMAGE_PAGE,
    ev.ShareList: MessageType.SHARE_LIST,
    ev.Error: MessageType.ERROR,
}


def encode_message(event: ev.Event) -> bytes:
    """Plaintext of a SEALED record: u8 message type || fields."""
    try:
        message_type = MESSAGE_TYPE_OF[type(event)]
    except KeyError:
        raise TypeError(f"{type(event).__name__} is not a sealed message") from None
    return codec.u8(message_type) + _fields(event)


# --- sealed messages: parsing -------------------------------------------------------


def _parse_credentials(reader: codec.Reader) -> tuple[str, str]:
    username = reader.text(reader.var8(), MAX_USERNAME_BYTES)
    password = reader.text(reader.var16(), MAX_PASSWORD_BYTES)
    return username, password


def _parse_receipt(reader: codec.Reader) -> ev.Receipt:
    if reader.u16() != 1:
        raise codec.malformed("receipt version")
    body = ev.ReceiptBody(
        image_id=reader.fixed(IMAGE_ID_SIZE),
        upload_id=reader.fixed(UPLOAD_ID_SIZE),
        size=reader.u64(),
        hmac=reader.fixed(HMAC_SIZE),
        header_sha256=reader.fixed(32),
        server_time_ms=reader.u64(),
        username=reader.text(reader.var8(), MAX_USERNAME_BYTES),
    )
    scheme = reader.u16()
    return ev.Receipt(body, scheme, reader.var16())


def _count(reader: codec.Reader, limit: int, what: str) -> int:
    count = reader.u32()
    if count > limit:
        raise RemoteProtocolError(f"{what} too long", ErrorCode.TOO_LARGE)
    return count


def _parse_entry_list(reader: codec.Reader, limit: int) -> tuple[ev.ImageEntry, ...]:
    entries = []
    for _ in range(_count(reader, limit, "image list")):
        image_id = reader.fixed(IMAGE_ID_SIZE)
        size = reader.u64()
        created = reader.u64()
        mac = reader.fixed(HMAC_SIZE)
        owner = reader.text(reader.var8(), MAX_USERNAME_BYTES)
        name = reader.text(reader.var16(), MAX_NAME_BYTES)
        entries.append(ev.ImageEntry(image_id, size, created, mac, owner, name))
    return tuple(entries)


def _parse_entries(reader: codec.Reader) -> ev.ImageList:
    return ev.ImageList(_parse_entry_list(reader, MAX_LIST_ENTRIES))


def _flag(reader: codec.Reader, what: str) -> bool:
    value = reader.u8()
    if value > 1:
        raise codec.malformed(what)
    return bool(value)


def _parse_list_page(reader: codec.Reader) -> ev.ListPage:
    try:
        scope = ListScope(reader.u8())
    except ValueError:
        raise codec.malformed("LIST_PAGE scope") from None
    after_ms = reader.u64()
    after_id = reader.fixed(IMAGE_ID_SIZE)
    limit = reader.u16()
    if limit == 0:
        raise codec.malformed("LIST_PAGE limit")
    if limit > MAX_PAGE_ENTRIES:
        raise RemoteProtocolError("LIST_PAGE limit too large", ErrorCode.TOO_LARGE)
    return ev.ListPage(scope, after_ms, after_id, limit)


def _parse_tokens(reader: codec.Reader) -> ev.Tokens:
    tokens = []
    for _ in range(_count(reader, MAX_PAGE_ENTRIES, "token list")):
        token_id = reader.u64()
        name = reader.text(reader.var8(), MAX_TOKEN_NAME_BYTES)
        created, expires, used = reader.u64(), reader.u64(), reader.u64()
        tokens.append(ev.TokenInfo(token_id, name, created, expires, used))
    return ev.Tokens(tuple(tokens))


def _parse_share_list(reader: codec.Reader) -> ev.ShareList:
    image_id = reader.fixed(IMAGE_ID_SIZE)
    shares = []
    for _ in range(_count(reader, MAX_PAGE_ENTRIES, "share list")):
        username = reader.text(reader.var8(), MAX_USERNAME_BYTES)
        shares.append(ev.ShareInfo(username, reader.u64(), reader.u64()))
    return ev.ShareList(image_id, tuple(shares))


def _parse_server_info(reader: codec.Reader) -> ev.ServerInfo:
    max_image_size, max_record_size, max_pixels = reader.u64(), reader.u32(), reader.u64()
    try:
        registration = Registration(reader.u8())
    except ValueError:
        raise codec.malformed("SERVER_INFO registration") from None
    return ev.ServerInfo(max_image_size, max_record_size, max_pixels, registration, reader.u8())


def _parse_token(reader: codec.Reader) -> ev.Token:
    token_id = reader.u64()
    secret = reader.var16()
    if len(secret) > MAX_TOKEN_BYTES:
        raise RemoteProtocolError("token too long", ErrorCode.TOO_LARGE)
    return ev.Token(token_id, secret, reader.u64())


def _parse_thumbnail(reader: codec.Reader) -> ev.ThumbnailData:
    image_id = reader.fixed(IMAGE_ID_SIZE)
    width, height = reader.u16(), reader.u16()
    media_type = reader.text(reader.var8(), MAX_MEDIA_TYPE_BYTES)
    length = reader.u32()
    if length > MAX_THUMBNAIL_BYTES:
        raise RemoteProtocolError("thumbnail too large", ErrorCode.TOO_LARGE)
    return ev.ThumbnailData(image_id, width, height, media_type, reader.fixed(length))


def _parse_error(reader: codec.Reader) -> ev.Error:
    code = _error_code(reader.u16())
    fatal = reader.u8()
    if fatal > 1:
        raise codec.malformed("ERROR fatal flag")
    message = reader.text(reader.var16(), MAX_MESSAGE_TEXT_BYTES)
    if code is not ErrorCode.TRY_LATER:
        return ev.Error(code, message, bool(fatal))
    retry_after_ms = reader.u32()
    if retry_after_ms > MAX_RETRY_AFTER_MS:
        raise codec.malformed("TRY_LATER retry hint")
    return ev.Error(code, message, bool(fatal), retry_after_ms)


def _parse_fields(message_type: MessageType, reader: codec.Reader) -> ev.Event:
    match message_type:
        case MessageType.LOGIN:
            return ev.Login(*_parse_credentials(reader))
        case MessageType.REGISTER:
            username, password = _parse_credentials(reader)
            invitation = reader.var16()
            if len(invitation) > MAX_TOKEN_BYTES:
                raise RemoteProtocolError("invitation too long", ErrorCode.TOO_LARGE)
            return ev.Register(username, password, invitation)
        case MessageType.TOKEN_LOGIN:
            token = reader.var16()
            if len(token) > MAX_TOKEN_BYTES:
                raise RemoteProtocolError("token too long", ErrorCode.TOO_LARGE)
            return ev.TokenLogin(token)
        case MessageType.UPLOAD_BEGIN:
            key = reader.fixed(KEY_SIZE)
            return ev.UploadBegin(UploadHeader.parse(reader.rest()), key)
        case MessageType.UPLOAD_RESUME:
            key = reader.fixed(KEY_SIZE)
            return ev.UploadResume(UploadHeader.parse(reader.rest()), key)
        case MessageType.UPLOAD_END:
            return ev.UploadEnd(reader.fixed(HMAC_SIZE))
        case MessageType.THUMBNAIL:
            return ev.Thumbnail(reader.fixed(IMAGE_ID_SIZE))
        case MessageType.THUMBNAIL_DATA:
            return _parse_thumbnail(reader)
        case MessageType.DOWNLOAD:
            return ev.Download(reader.fixed(IMAGE_ID_SIZE))
        case MessageType.DELETE:
            return ev.Delete(reader.fixed(IMAGE_ID_SIZE))
        case MessageType.SHARE:
            image_id = reader.fixed(IMAGE_ID_SIZE)
            username = reader.text(reader.var8(), MAX_USERNAME_BYTES)
            return ev.Share(image_id, username, reader.u64())
        case MessageType.UNSHARE:
            image_id = reader.fixed(IMAGE_ID_SIZE)
            return ev.Unshare(image_id, reader.text(reader.var8(), MAX_USERNAME_BYTES))
        case MessageType.SHARES:
            return ev.Shares(reader.fixed(IMAGE_ID_SIZE))
        case MessageType.LIST_PAGE:
            return _parse_list_page(reader)
        case MessageType.CERT_LOGIN:
            return ev.CertLogin()
        case MessageType.PASSWD:
            old_password = reader.text(reader.var16(), MAX_PASSWORD_BYTES)
            new_password = reader.text(reader.var16(), MAX_PASSWORD_BYTES)
            return ev.Passwd(old_password, new_password, _flag(reader, "PASSWD flag"))
        case MessageType.TOKEN_CREATE:
            name = reader.text(reader.var8(), MAX_TOKEN_NAME_BYTES)
            return ev.TokenCreate(name, reader.u64())
        case MessageType.TOKEN_LIST:
            return ev.TokenList()
        case MessageType.INFO:
            return ev.Info()
        case MessageType.SERVER_INFO:
            return _parse_server_info(reader)
        case MessageType.TOKEN_REVOKE:
            return ev.TokenRevoke(reader.u64())
        case MessageType.TOKEN:
            return _parse_token(reader)
        case MessageType.TOKENS:
            return _parse_tokens(reader)
        case MessageType.SHARE_LIST:
            return _parse_share_list(reader)
        case MessageType.IMAGE_PAGE:
            more = _flag(reader, "IMAGE_PAGE flag")
            return ev.ImagePage(_parse_entry_list(reader, MAX_PAGE_ENTRIES), more)
        case MessageType.LIST:
            return ev.ListImages()
        case MessageType.OK:
            return ev.Ok()
        case MessageType.LOGIN_OK:
            return ev.LoginOk(reader.text(reader.var8(), MAX_USERNAME_BYTES))
        case MessageType.UPLOAD_READY:
            return ev.UploadReady(reader.u32())
        case MessageType.RECEIPT:
            return _parse_receipt(reader)
        case MessageType.DOWNLOAD_BEGIN:
            key = reader.fixed(KEY_SIZE)
            image_id = reader.fixed(IMAGE_ID_SIZE)
            return ev.DownloadBegin(image_id, UploadHeader.parse(reader.rest()), key)
        case MessageType.DOWNLOAD_END:
            return ev.DownloadEnd(reader.fixed(HMAC_SIZE))
        case MessageType.IMAGE_LIST:
            return _parse_entries(reader)
        case MessageType.ERROR:
            return _parse_error(reader)
    # Known but reserved (none left in v1): a clear "not implemented".
    raise RemoteProtocolError(f"{message_type.name} is not supported", ErrorCode.UNSUPPORTED)


def parse_message(plaintext: bytes) -> ev.Event:
    """Parse the plaintext of a SEALED record into its event."""
    if not plaintext:
        raise codec.malformed("sealed message")
    try:
        message_type = MessageType(plaintext[0])
    except ValueError:
        raise RemoteProtocolError(
            f"unknown message type {plaintext[0]:#04x}", ErrorCode.UNEXPECTED_MESSAGE
        ) from None
    reader = codec.Reader(plaintext[1:], message_type.name)
    event = _parse_fields(message_type, reader)
    reader.end()
    return event
