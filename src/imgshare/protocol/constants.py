"""Every number the wire format uses: the one authoritative table.

``docs/protocol.md`` names these constants and the tests check that the spec's tables
and this module agree, so a change here without a change there fails the build.
"""

from __future__ import annotations

import enum
from typing import Final

#: First bytes of every ClientHello body; lets a server reject a stray client early.
MAGIC: Final = b"IMGSHARE"

#: The TCP port a server listens on unless told otherwise, and clients assume.
DEFAULT_PORT: Final = 8443

#: Protocol versions this implementation speaks, most preferred first.
VERSION_1: Final = 0x0001
SUPPORTED_VERSIONS: Final = (VERSION_1,)

#: Record header: u32 length of (type + body), then u8 type.
RECORD_HEADER_SIZE: Final = 5

RANDOM_SIZE: Final = 32
KEY_SIZE: Final = 32  # AES-256 keys, HKDF outputs, content keys
TAG_SIZE: Final = 16  # AES-GCM tag
HMAC_SIZE: Final = 32
IMAGE_ID_SIZE: Final = 16
UPLOAD_ID_SIZE: Final = 16
NONCE_PREFIX_SIZE: Final = 7  # STREAM nonce = prefix(7) || counter(4) || last flag(1)
FINISHED_SIZE: Final = 32

MIN_CHUNK_SIZE: Final = 4096
MAX_CHUNK_SIZE: Final = 1 << 20
DEFAULT_CHUNK_SIZE: Final = 1 << 18  # 256 KiB: overhead per chunk < 0.01 %
MAX_NAME_BYTES: Final = 255
MAX_USERNAME_BYTES: Final = 64
MAX_PASSWORD_BYTES: Final = 1024
MAX_TOKEN_BYTES: Final = 256
MAX_MESSAGE_TEXT_BYTES: Final = 1024
MAX_LIST_ENTRIES: Final = 1000
MAX_RETRY_AFTER_MS: Final = 3_600_000  # a TRY_LATER hint is at most an hour
MAX_TOKEN_NAME_BYTES: Final = 64
#: What a user name is (docs/protocol.md, section 6.4): lowercase, never case-folded.
USERNAME_PATTERN: Final = r"[a-z0-9][a-z0-9_.-]{0,31}"
MAX_PAGE_ENTRIES: Final = 1000  # IMAGE_PAGE, SHARE_LIST and TOKEN_LIST entries
#: The largest thumbnail THUMBNAIL_DATA carries (a 256 px JPEG is a few KiB).
MAX_THUMBNAIL_BYTES: Final = 256 * 1024
MAX_MEDIA_TYPE_BYTES: Final = 64

#: Context strings. Each signature and each derived key has its own, so a value made
#: for one purpose can never be accepted for another.
SIGNATURE_PAD: Final = b" " * 64
HANDSHAKE_SIGNATURE_CONTEXT: Final = b"imgshare v1 server handshake"
RECEIPT_SIGNATURE_CONTEXT: Final = b"imgshare v1 receipt"
LABEL_PREFIX: Final = b"imgshare v1 "
LABEL_C2S_KEY: Final = b"c2s key"
LABEL_S2C_KEY: Final = b"s2c key"
LABEL_CLIENT_FINISHED: Final = b"client finished"
LABEL_SERVER_FINISHED: Final = b"server finished"
LABEL_SESSION_ID: Final = b"session id"
LABEL_IMAGE_HMAC: Final = b"image hmac"
#: The server's key for an image's sealed thumbnail (never on the wire).
LABEL_THUMBNAIL_KEY: Final = b"thumbnail key"


class RecordType(enum.IntEnum):
    """Outer record types. Handshake records and ALERT are plaintext (inside TLS)."""

    CLIENT_HELLO = 0x01
    SERVER_HELLO = 0x02
    SERVER_VERIFY = 0x03
    SERVER_FINISHED = 0x04
    CLIENT_FINISHED = 0x05
    ALERT = 0x0F
    SEALED = 0x10
    CHUNK = 0x11


class MessageType(enum.IntEnum):
    """Types of the messages carried inside SEALED records (first plaintext byte)."""

    # client -> server
    LOGIN = 0x01
    REGISTER = 0x02
    TOKEN_LOGIN = 0x03
    CERT_LOGIN = 0x04
    PASSWD = 0x05
    TOKEN_CREATE = 0x06
    TOKEN_LIST = 0x07
    TOKEN_REVOKE = 0x08
    INFO = 0x09
    UPLOAD_BEGIN = 0x10
    UPLOAD_END = 0x11
    UPLOAD_RESUME = 0x12  # continue an upload cut off after some of it became durable
    DOWNLOAD = 0x20
    LIST = 0x21
    SHARE = 0x22
    DELETE = 0x23
    UNSHARE = 0x24
    SHARES = 0x25
    LIST_PAGE = 0x26
    THUMBNAIL = 0x27
    # server -> client
    OK = 0x80
    LOGIN_OK = 0x81
    TOKEN = 0x82
    TOKENS = 0x83
    SERVER_INFO = 0x84
    UPLOAD_READY = 0x90
    RECEIPT = 0x91
    DOWNLOAD_BEGIN = 0xA0
    DOWNLOAD_END = 0xA1
    IMAGE_LIST = 0xA2
    SHARE_LIST = 0xA3
    IMAGE_PAGE = 0xA4
    THUMBNAIL_DATA = 0xA5
    ERROR = 0xFF


class ErrorCode(enum.IntEnum):
    """Error codes in ALERT records and ERROR messages."""

    MALFORMED = 1  # a record or message does not parse
    UNEXPECTED_MESSAGE = 2  # valid message in the wrong state
    TOO_LARGE = 3  # over a size limit (record, message, image, name)
    UNSUPPORTED_VERSION = 4
    UNSUPPORTED_GROUP = 5
    HANDSHAKE_FAILED = 6  # bad key share, signature or Finished
    INTEGRITY_FAILED = 7  # an AEAD tag or the image HMAC did not verify
    AUTH_FAILED = 10  # wrong username or password (one answer for both)
    AUTH_REQUIRED = 11
    FORBIDDEN = 12
    NOT_FOUND = 13
    QUOTA_EXCEEDED = 14
    NOT_AN_IMAGE = 15
    UNSUPPORTED = 16  # a request this server does not implement
    BUSY = 20  # too many connections
    TIMEOUT = 21
    SHUTTING_DOWN = 22
    STORAGE_FAILED = 23
    INTERNAL = 24
    TRY_LATER = 25  # overloaded or throttled: not processed, retry after the hint
    ALREADY_EXISTS = 26  # the name is taken
    INVALID_ARGUMENT = 27  # well-formed, but a value the server does not accept


class Registration(enum.IntEnum):
    """Who may REGISTER on a server (SERVER_INFO says)."""

    CLOSED = 0  # only an administrator makes accounts
    INVITE = 1  # with a one-time invitation code
    OPEN = 2  # anyone, a few an hour per network


class ListScope(enum.IntEnum):
    """Which images LIST_PAGE lists."""

    OWN = 0  # the caller's
    SHARED_WITH_ME = 1  # others', shared with the caller


class Group(enum.IntEnum):
    """Key-exchange groups, numbered as TLS NamedGroup."""

    SECP256R1 = 0x0017
    X25519 = 0x001D


#: Key-share length by group: X25519 raw, P-256 uncompressed SEC1 point.
KEY_SHARE_SIZE: Final = {Group.X25519: 32, Group.SECP256R1: 65}


class SignatureScheme(enum.IntEnum):
    """Server signature schemes, numbered as TLS SignatureScheme."""

    ECDSA_SECP256R1_SHA256 = 0x0403
    RSA_PSS_RSAE_SHA256 = 0x0804
    ED25519 = 0x0807
