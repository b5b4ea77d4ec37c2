"""Events: what a connection hands to its application and what the application sends.

The same event classes travel both ways (as in h11): the client ``send``s an
``UploadBegin`` and the server's ``next_event`` returns an equal ``UploadBegin``.
Secret fields are kept out of ``repr`` so that logging an event never leaks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imgshare.protocol import codec
from imgshare.protocol.constants import (
    HMAC_SIZE,
    IMAGE_ID_SIZE,
    MAX_PAGE_ENTRIES,
    MAX_RETRY_AFTER_MS,
    RECEIPT_SIGNATURE_CONTEXT,
    SIGNATURE_PAD,
    ErrorCode,
    ListScope,
    Registration,
)
from imgshare.protocol.stream import UploadHeader


class Event:
    """Base class of every protocol event."""

    __slots__ = ()


# --- both sides -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeComplete(Event):
    """Keys are agreed and confirmed both ways; sealed messages may flow."""

    version: int
    group: int
    server_certificate: bytes = field(repr=False)
    session_id: bytes


@dataclass(frozen=True, slots=True)
class Error(Event):
    """An error reported by the peer (or to be sent to it). Fatal errors end the session.

    ``retry_after_ms`` is carried only by TRY_LATER: how long the client should wait
    before it sends the same request again. Raises ``ValueError`` if it is out of
    range or given with another code.
    """

    code: ErrorCode
    message: str = ""
    fatal: bool = False
    retry_after_ms: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.retry_after_ms <= MAX_RETRY_AFTER_MS:
            raise ValueError(f"retry_after_ms must be 0..{MAX_RETRY_AFTER_MS}")
        if self.retry_after_ms and self.code is not ErrorCode.TRY_LATER:
            raise ValueError("only TRY_LATER carries a retry hint")


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The peer closed the byte stream at a message boundary."""


@dataclass(frozen=True, slots=True)
class Chunk(Event):
    """One sealed STREAM chunk of an image, exactly as it travels and is stored.

    ``data`` may be a view of a buffer lent by the application (see
    ``receive_record_body``), so that a megabyte chunk is never copied on its way.
    """

    index: int
    data: bytes | bytearray | memoryview = field(repr=False)
    last: bool


# --- client -> server requests ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Login(Event):
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Register(Event):
    username: str
    password: str = field(repr=False)
    invitation: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class TokenLogin(Event):
    token: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class CertLogin(Event):
    """Log in as the user the TLS client certificate names."""


@dataclass(frozen=True, slots=True)
class Passwd(Event):
    """Change the logged-in user's password; optionally revoke their other tokens."""

    old_password: str = field(repr=False)
    new_password: str = field(repr=False)
    revoke_tokens: bool = False


@dataclass(frozen=True, slots=True)
class TokenCreate(Event):
    """A new API token for the logged-in user; ``expires_ms`` 0 means never."""

    name: str
    expires_ms: int = 0


@dataclass(frozen=True, slots=True)
class TokenList(Event):
    pass


@dataclass(frozen=True, slots=True)
class TokenRevoke(Event):
    token_id: int


@dataclass(frozen=True, slots=True)
class Info(Event):
    """What does this server accept? Allowed before logging in."""


@dataclass(frozen=True, slots=True)
class UploadBegin(Event):
    """Starts an upload: the content key travels wrapped by the session AEAD."""

    header: UploadHeader
    content_key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class UploadResume(Event):
    """Continues an upload that a broken connection cut off (docs/protocol.md, 7.10):
    the same header and content key as its UPLOAD_BEGIN, byte for byte."""

    header: UploadHeader
    content_key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class UploadEnd(Event):
    hmac: bytes


@dataclass(frozen=True, slots=True)
class Download(Event):
    image_id: bytes


@dataclass(frozen=True, slots=True)
class ListImages(Event):
    pass


@dataclass(frozen=True, slots=True)
class Share(Event):
    """Let ``username`` fetch an image of ours until ``expires_ms`` (0: until unshared)."""

    image_id: bytes
    username: str
    expires_ms: int = 0


@dataclass(frozen=True, slots=True)
class Unshare(Event):
    image_id: bytes
    username: str


@dataclass(frozen=True, slots=True)
class Shares(Event):
    """Who an image of ours is shared with."""

    image_id: bytes


@dataclass(frozen=True, slots=True)
class Delete(Event):
    image_id: bytes


@dataclass(frozen=True, slots=True)
class ListPage(Event):
    """One page of images, oldest first, after the image (``after_ms``, ``after_id``):
    zeros for the first page."""

    scope: ListScope = ListScope.OWN
    after_ms: int = 0
    after_id: bytes = bytes(IMAGE_ID_SIZE)
    limit: int = MAX_PAGE_ENTRIES


@dataclass(frozen=True, slots=True)
class Thumbnail(Event):
    """The small picture of an image one may read (docs/protocol.md, 7.11)."""

    image_id: bytes


# --- server -> client answers -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ok(Event):
    """Success for a request that returns nothing else (register, share, delete)."""


@dataclass(frozen=True, slots=True)
class LoginOk(Event):
    username: str


@dataclass(frozen=True, slots=True)
class Token(Event):
    """A new token: its id and its secret, which the server shows this once."""

    token_id: int
    secret: bytes = field(repr=False)
    expires_ms: int = 0


@dataclass(frozen=True, slots=True)
class TokenInfo:
    token_id: int
    name: str
    created_ms: int
    expires_ms: int  # 0: never
    last_used_ms: int  # 0: never


@dataclass(frozen=True, slots=True)
class Tokens(Event):
    tokens: tuple[TokenInfo, ...]


@dataclass(frozen=True, slots=True)
class ServerInfo(Event):
    """The server's limits a client can check before it sends, and how to get an
    account."""

    max_image_size: int
    max_record_size: int
    max_pixels: int
    registration: Registration
    max_login_failures: int


@dataclass(frozen=True, slots=True)
class UploadReady(Event):
    """The server accepts the upload; chunks may follow, starting at ``next_chunk``
    (0 after UPLOAD_BEGIN; after UPLOAD_RESUME, the first chunk not yet durable)."""

    next_chunk: int = 0


@dataclass(frozen=True, slots=True)
class ReceiptBody:
    """What the server vouches for, signed: exactly which bytes it accepted and when."""

    image_id: bytes
    upload_id: bytes
    size: int
    hmac: bytes
    header_sha256: bytes
    server_time_ms: int
    username: str

    def encode(self) -> bytes:
        return b"".join(
            (
                codec.u16(1),
                self.image_id,
                self.upload_id,
                codec.u64(self.size),
                self.hmac,
                self.header_sha256,
                codec.u64(self.server_time_ms),
                codec.var8(self.username.encode("utf-8")),
            )
        )

    def signed_content(self) -> bytes:
        return SIGNATURE_PAD + RECEIPT_SIGNATURE_CONTEXT + b"\x00" + self.encode()

    @property
    def image_id_hex(self) -> str:
        return self.image_id.hex()


@dataclass(frozen=True, slots=True)
class Receipt(Event):
    """The signed receipt: sent only once the image is durable."""

    body: ReceiptBody
    scheme: int
    signature: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class DownloadBegin(Event):
    """A download: the stored content key re-wrapped for this session, and the header."""

    image_id: bytes
    header: UploadHeader
    content_key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class DownloadEnd(Event):
    hmac: bytes


@dataclass(frozen=True, slots=True)
class ImageEntry:
    image_id: bytes
    size: int
    created_ms: int
    hmac: bytes
    owner: str
    name: str

    def __post_init__(self) -> None:
        if len(self.image_id) != IMAGE_ID_SIZE or len(self.hmac) != HMAC_SIZE:
            raise ValueError("image id is 16 bytes, hmac 32")


@dataclass(frozen=True, slots=True)
class ImageList(Event):
    images: tuple[ImageEntry, ...]


@dataclass(frozen=True, slots=True)
class ImagePage(Event):
    """One page of LIST_PAGE; ``more`` says whether another page follows."""

    images: tuple[ImageEntry, ...]
    more: bool = False


@dataclass(frozen=True, slots=True)
class ShareInfo:
    username: str
    granted_ms: int
    expires_ms: int  # 0: until unshared


@dataclass(frozen=True, slots=True)
class ShareList(Event):
    image_id: bytes
    shares: tuple[ShareInfo, ...]


@dataclass(frozen=True, slots=True)
class ThumbnailData(Event):
    """An image's thumbnail: ``media_type`` (``image/jpeg`` or ``image/png``) bytes of
    at most ``MAX_THUMBNAIL_BYTES``, ``width`` x ``height`` pixels, no metadata."""

    image_id: bytes
    width: int
    height: int
    media_type: str
    data: bytes = field(repr=False)
