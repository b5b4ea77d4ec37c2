"""The one exception tree of imgshare.

Every error that imgshare raises on purpose derives from ``ImgshareError``; the CLI
turns it into a one-line message and exit status 1. Errors from libraries
(``InvalidTag``, ``ssl.SSLError``, ``sqlite3.Error``, ``OSError``) are translated at
the boundary with ``raise ... from exc``.

    ImgshareError
    ├── ConfigError            bad setting, flag, file or argument given by the user
    ├── CertificateError       generating, loading or checking certificates and keys
    ├── ProtocolError          the imgshare wire protocol went wrong
    │   ├── LocalProtocolError     we tried to do something the state machine forbids
    │   └── RemoteProtocolError    the peer sent something malformed or out of order
    │       ├── HandshakeError         key exchange, signature or Finished failed
    │       └── IntegrityError         an AEAD tag or the image HMAC did not verify
    ├── PeerError              the peer answered with a protocol error code
    ├── ImageError             the bytes are not an acceptable image
    ├── StorageError           the data folder or catalog failed
    │   └── StorageUnavailable     the database or the bucket cannot be reached now
    ├── QuotaError             an upload would exceed the user's quota
    ├── AuthError              wrong credentials
    │   └── ForbiddenError         known, but not allowed (registration closed, ...)
    ├── TryLaterError          overloaded or throttled: retry after ``retry_after`` s
    └── TransportError         network, TLS or timeout failure

Crypto failures are opaque on purpose: an ``IntegrityError`` never says which byte
or which check failed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imgshare.protocol.constants import ErrorCode


class ImgshareError(Exception):
    """Root of every error imgshare raises on purpose."""


class ConfigError(ImgshareError):
    """A setting, flag, file or argument given by the user is not usable."""


class CertificateError(ImgshareError):
    """A certificate or private key could not be made, loaded or trusted."""


class ProtocolError(ImgshareError):
    """The imgshare protocol went wrong.

    ``code`` is the wire error code (``imgshare.protocol.constants.ErrorCode``) that
    describes the failure to the peer.
    """

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol state machine forbids (a bug of ours:
    its code is INTERNAL unless given)."""

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        from imgshare.protocol.constants import ErrorCode  # here: the package imports us

        super().__init__(message, ErrorCode.INTERNAL if code is None else code)


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed, oversized or out of order."""


class HandshakeError(RemoteProtocolError):
    """The application handshake failed (key share, signature, Finished, version)."""


class IntegrityError(RemoteProtocolError):
    """An AEAD tag or the image HMAC did not verify. Deliberately says no more."""


class PeerError(ImgshareError):
    """The peer reported an error with a protocol error code.

    ``retry_after`` is the wait in seconds that a TRY_LATER answer asked for (else 0).
    """

    def __init__(self, message: str, code: ErrorCode, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


class ImageError(ImgshareError):
    """The bytes are not an image we accept (format, size, pixels, truncation)."""


class StorageError(ImgshareError):
    """The data folder, blob store or catalog failed."""


class StorageUnavailable(StorageError):
    """The catalog's database or the object store cannot be reached (down, restarting,
    a network failure): what failed was not done, and may work once they are back."""


class QuotaError(ImgshareError):
    """An upload would exceed its owner's quota (stored plus still arriving)."""


class AuthError(ImgshareError):
    """Wrong username or password, or the action is not allowed."""


class ForbiddenError(AuthError):
    """The caller is known but may not do this (registration closed, an invitation
    that does not hold, an image that is only shared with them)."""


class TryLaterError(ImgshareError):
    """Not now: too many logins waiting, a login throttle, or too many uploads.

    Nothing was done and nothing counted against the caller; the same request may be
    sent again after ``retry_after`` seconds.
    """

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(0.0, retry_after)


class TransportError(ImgshareError):
    """The network connection, TLS or a timeout failed."""


class SetupError(TransportError):
    """TLS cannot work with this setup (a certificate that is not trusted, a port
    that does not speak TLS, a client certificate refused or missing): a new
    connection would get the same answer, so clients do not retry it."""
