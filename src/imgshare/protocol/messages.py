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
    MAX_MESSAGE_TEXT_BYTES,
    MAX_NAME_BYTES,
    MAX_PASSWORD_BYTES,
    MAX_RETRY_AFTER_MS,
    MAX_TOKEN_BYTES,
    MAX_USERNAME_BYTES,
    RANDOM_SIZE,
    UPLOAD_ID_SIZE,
    ErrorCode,
    MessageType,
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


def _fields(event: ev.Event) -> bytes:
    match event:
        case ev.Login(username, password) | ev.Register(username, password, _):
            body = _text8(username) + _text16(password)
            if isinstance(event, ev.Register):
                body += codec.var16(event.invitation)
            return body
        case ev.TokenLogin(token):
            return codec.var16(token)
        case ev.UploadBegin(header, content_key):
            return content_key + header.encode()
        case ev.UploadEnd(mac) | ev.DownloadEnd(mac):
            return mac
        case ev.Download(image_id) | ev.Delete(image_id):
            return image_id
        case ev.Share(image_id, username):
            return image_id + _text8(username)
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
    ev.Download: MessageType.DOWNLOAD,
    ev.ListImages: MessageType.LIST,
    ev.Share: MessageType.SHARE,
    ev.Delete: MessageType.DELETE,
    ev.Ok: MessageType.OK,
    ev.LoginOk: MessageType.LOGIN_OK,
    ev.UploadReady: MessageType.UPLOAD_READY,
    ev.Receipt: MessageType.RECEIPT,
    ev.DownloadBegin: MessageType.DOWNLOAD_BEGIN,
    ev.DownloadEnd: MessageType.DOWNLOAD_END,
    ev.ImageList: MessageType.IMAGE_LIST,
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


def _parse_entries(reader: codec.Reader) -> ev.ImageList:
    count = reader.u32()
    if count > MAX_LIST_ENTRIES:
        raise RemoteProtocolError("image list too long", ErrorCode.TOO_LARGE)
    entries = []
    for _ in range(count):
        image_id = reader.fixed(IMAGE_ID_SIZE)
        size = reader.u64()
        created = reader.u64()
        mac = reader.fixed(HMAC_SIZE)
        owner = reader.text(reader.var8(), MAX_USERNAME_BYTES)
        name = reader.text(reader.var16(), MAX_NAME_BYTES)
        entries.append(ev.ImageEntry(image_id, size, created, mac, owner, name))
    return ev.ImageList(tuple(entries))


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
            return ev.Register(username, password, reader.var16())
        case MessageType.TOKEN_LOGIN:
            token = reader.var16()
            if len(token) > MAX_TOKEN_BYTES:
                raise RemoteProtocolError("token too long", ErrorCode.TOO_LARGE)
            return ev.TokenLogin(token)
        case MessageType.UPLOAD_BEGIN:
            key = reader.fixed(KEY_SIZE)
            return ev.UploadBegin(UploadHeader.parse(reader.rest()), key)
        case MessageType.UPLOAD_END:
            return ev.UploadEnd(reader.fixed(HMAC_SIZE))
        case MessageType.DOWNLOAD:
            return ev.Download(reader.fixed(IMAGE_ID_SIZE))
        case MessageType.DELETE:
            return ev.Delete(reader.fixed(IMAGE_ID_SIZE))
        case MessageType.SHARE:
            image_id = reader.fixed(IMAGE_ID_SIZE)
            return ev.Share(image_id, reader.text(reader.var8(), MAX_USERNAME_BYTES))
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
    # Known but reserved (UPLOAD_RESUME in v1): a clear "not implemented".
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
