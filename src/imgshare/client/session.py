"""A blocking client session: TLS, the application handshake, and one request at a time.

The same sans-IO ``ClientConnection`` the tests drive in memory runs here over a real
TLS socket. Library code raises and logs; only the CLI prints.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple, Self

from cryptography import x509

from imgshare import pki
from imgshare.errors import (
    CertificateError,
    ConfigError,
    HandshakeError,
    ImgshareError,
    IntegrityError,
    PeerError,
    ProtocolError,
    RemoteProtocolError,
    TransportError,
)
from imgshare.protocol import (
    ClientConnection,
    Group,
    PinnedCertificate,
    StreamOpener,
    StreamSealer,
    UploadHeader,
)
from imgshare.protocol import events as ev
from imgshare.protocol.constants import (
    DEFAULT_CHUNK_SIZE,
    IMAGE_ID_SIZE,
    MAX_CHUNK_SIZE,
    MAX_NAME_BYTES,
    MAX_PAGE_ENTRIES,
    RECORD_HEADER_SIZE,
    TAG_SIZE,
    ErrorCode,
    ListScope,
)
from imgshare.protocol.keys import ServerVerifier, VerifyingKey, public_key_of
from imgshare.protocol.state import State
from imgshare.protocol.stream import new_upload
from imgshare.safetext import safe_filename
from imgshare.store.blobs import AtomicFile

if TYPE_CHECKING:
    from imgshare.client import diagnose
    from imgshare.client.resume import ResumeStore

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
#: Files above this size travel in 1 MiB chunks.
BIG_FILE = 16 * 1024 * 1024


def ca_verifier(trust_anchors: Sequence[x509.Certificate], hostname: str) -> ServerVerifier:
    """Trust a server certificate that chains to our CA and names ``hostname``.

    A certificate that passed is remembered (by its exact bytes) until it or a CA
    certificate expires, so a client that opens many sessions checks the chain once:
    the check is 0.14 ms, a third of a session's application-handshake CPU.
    """
    anchors_expire = min((anchor.not_valid_after_utc for anchor in trust_anchors), default=None)
    passed: dict[bytes, tuple[VerifyingKey, datetime]] = {}

    def verify(certificate_der: bytes) -> VerifyingKey:
        remembered = passed.get(certificate_der)
        if remembered is not None and datetime.now(UTC) < remembered[1]:
            return remembered[0]
        try:
            leaf = pki.verify_server_certificate(certificate_der, trust_anchors, hostname)
        except CertificateError as exc:
            raise HandshakeError(str(exc), ErrorCode.HANDSHAKE_FAILED) from exc
        key = public_key_of(certificate_der)
        if anchors_expire is not None and len(passed) < 16:
            passed[certificate_der] = (key, min(leaf.not_valid_after_utc, anchors_expire))
        return key

    return verify


@dataclass(frozen=True)
class UploadResult:
    """What the server vouched for, checked against what we sent."""

    id: str
    name: str
    size: int
    sha256: str | None  # only when asked for
    hmac: str
    server_time_ms: int
    receipt: ev.Receipt
    #: DER of the certificate that signed the session (and so the receipt): a receipt
    #: kept as proof needs it (docs/protocol.md, section 7.5).
    server_certificate: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class DownloadResult:
    id: str
    name: str
    size: int
    sha256: str
    hmac: str
    path: Path


class NewToken(NamedTuple):
    """A token just made: its id, its secret (shown this once) and its expiry (0: never)."""

    token_id: int
    secret: str
    expires_ms: int


def _peer_error(event: ev.Error) -> PeerError:
    return PeerError(
        f"server: {event.message or event.code.name}", event.code, event.retry_after_ms / 1000
    )


#: How long a request keeps being retried when the server answers TRY_LATER.
DEFAULT_RETRY_FOR = 60.0
#: Back-off between retries when the server's hint is shorter: 0.1 s, doubling, to 5 s.
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 5.0


class ClientSession:
    """One connection to an imgshare server. Use ``connect`` and close it (or ``with``).

    A request the server answers with TRY_LATER (too many logins or uploads at once, a
    login throttle) is sent again after the server's hint, with back-off and jitter,
    for up to ``retry_for`` seconds; then the ``PeerError`` (code TRY_LATER) is raised.
    """

    def __init__(
        self, sock: ssl.SSLSocket, conn: ClientConnection, retry_for: float = DEFAULT_RETRY_FOR
    ) -> None:
        self._sock = sock
        self._conn = conn
        self.username: str | None = None
        self.retry_for = retry_for

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        *,
        verifier: ServerVerifier | None = None,
        group: Group = Group.X25519,
        timeout: float = 60.0,
        token: str | None = None,
        connect_timeout: float | None = None,
        setup: diagnose.Setup | None = None,
    ) -> ClientSession:
        """Connect, do TLS and the application handshake; with ``token``, also log in
        with it, sent in the same flight as the handshake's last message (one write and
        one wake-up fewer on both sides: a new session costs that much less).

        Without ``verifier`` the application layer trusts exactly the certificate the
        TLS connection presented. ``connect_timeout`` (default
        ``diagnose.CONNECT_TIMEOUT``, 10 s; at most ``timeout``) bounds each step of
        getting connected: TCP, TLS, the application handshake; then ``timeout`` bounds
        each wait for an answer. Raises ``TransportError`` saying what failed and what
        to do (``imgshare.client.diagnose``: ``setup`` names the files the caller used),
        ``HandshakeError``, and with ``token`` whatever ``token_login`` raises.
        """
        from imgshare.client import diagnose

        step = diagnose.CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
        step = min(timeout, step)
        try:
            raw = socket.create_connection((host, port), timeout=step)
        except OSError as exc:
            raise diagnose.connect_failed(exc, host, port, step) from exc
        # Small writes back to back (Finished, then LOGIN) must not wait for a delayed
        # ACK: measured 170 -> 513 sessions/s.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock = ssl_context.wrap_socket(raw, server_hostname=host.strip("[]"))
        except (ssl.SSLError, OSError) as exc:
            raw.close()
            raise diagnose.tls_failed(exc, host, port, ssl_context, setup, step) from exc
        if verifier is None:
            peer = sock.getpeercert(binary_form=True)
            if not peer:
                sock.close()
                raise HandshakeError("the TLS peer sent no certificate", ErrorCode.HANDSHAKE_FAILED)
            verifier = PinnedCertificate(peer)
        session = cls(sock, ClientConnection(verifier, group=group))
        try:
            try:
                session._handshake()
            except (TransportError, ProtocolError) as exc:
                raise diagnose.handshake_failed(exc, host, port, setup, step) from exc
            sock.settimeout(timeout)
            if token is not None:
                session._token_login_in_flight(token)
            else:
                session._write(session._conn.data_to_send())  # ClientFinished
        except BaseException:
            session.close()
            raise
        return session

    def _handshake(self) -> None:
        """Up to the server's Finished; our ClientFinished waits in the connection's
        outbox for the caller to send, alone or with the first request."""
        self._write(self._conn.initiate())
        event = self._next_event()
        if isinstance(event, ev.Error):
            raise _peer_error(event)
        if not isinstance(event, ev.HandshakeComplete):
            raise HandshakeError("handshake did not complete", ErrorCode.HANDSHAKE_FAILED)

    def _token_login_in_flight(self, token: str) -> None:
        finished = self._conn.data_to_send()
        self._write(finished + self._conn.send(ev.TokenLogin(_token_secret(token))))
        try:
            self._logged_in(self._answer(ev.LoginOk))
        except PeerError as exc:
            if exc.code != ErrorCode.TRY_LATER:
                raise
            self.token_login(token)  # with the usual retries

    # -- plumbing ------------------------------------------------------------------

    def _write(self, data: bytes | memoryview) -> None:
        if not data:
            return
        try:
            self._sock.sendall(data)
        except (OSError, ssl.SSLError) as exc:
            why = self._alert() or _reason(exc)
            raise TransportError(f"connection lost while sending: {why}") from exc

    def _alert(self) -> str | None:
        """The TLS alert the peer sent before it closed, if any: it says more than the
        write's EOF. (A TLS 1.3 server checks our client certificate after our side of
        the handshake is done; refusing it, it sends an alert and closes.)"""
        try:
            self._sock.settimeout(0.5)
            self._sock.recv(1)
        except ssl.SSLError as exc:
            return _reason(exc) if "ALERT" in str(exc.reason) else None
        except OSError:
            return None
        return None

    def _next_event(self) -> ev.Event:
        closed = False
        while True:
            try:
                event = self._conn.next_event()
            except ProtocolError as exc:
                self._write_quietly(self._conn.data_to_send())
                if closed and type(exc) is RemoteProtocolError:
                    # Said for people: the server went away mid-request.
                    message = f"the server closed the connection without answering ({exc})"
                    raise RemoteProtocolError(
                        f"{message}: it stopped or failed; its log says why", exc.code
                    ) from exc
                raise
            if isinstance(event, ev.Event):
                return event
            self._write(self._conn.data_to_send())
            try:
                data = self._sock.recv(READ_SIZE)
            except TimeoutError as exc:
                raise TransportError("the server did not answer in time") from exc
            except (OSError, ssl.SSLError) as exc:
                raise TransportError(f"connection lost: {_reason(exc)}") from exc
            closed = not data
            self._conn.receive_data(data)

    def _write_quietly(self, data: bytes) -> None:
        try:
            self._write(data)
        except TransportError:
            pass

    def _answer(self, *expected: type[ev.Event]) -> ev.Event:
        event = self._next_event()
        if isinstance(event, ev.Error):
            raise _peer_error(event)
        if not isinstance(event, expected):
            raise ProtocolError(
                f"unexpected answer {type(event).__name__}", ErrorCode.UNEXPECTED_MESSAGE
            )
        return event

    def _request(self, event: ev.Event) -> None:
        self._write(self._conn.send(event) + self._conn.data_to_send())

    def _ask(self, event: ev.Event, *expected: type[ev.Event]) -> ev.Event:
        """Send a request and return its answer, retrying while the server says
        TRY_LATER (see the class docstring)."""
        give_up = time.monotonic() + self.retry_for
        backoff = _BACKOFF_FIRST
        while True:
            self._request(event)
            try:
                return self._answer(*expected)
            except PeerError as exc:
                if exc.code != ErrorCode.TRY_LATER:
                    raise
                wait = max(exc.retry_after, backoff) * random.uniform(1.0, 1.25)
                if time.monotonic() + wait > give_up:
                    raise
                log.info("server busy, retrying in %.1f s: %s", wait, exc)
                time.sleep(wait)
                backoff = min(_BACKOFF_MAX, backoff * 2)

    # -- requests ------------------------------------------------------------------

    def login(self, username: str, password: str) -> str:
        """Log in; raises ``PeerError`` (AUTH_FAILED) for a wrong name or password, or
        (TRY_LATER) when the server still says "not now" after ``retry_for`` seconds."""
        return self._logged_in(self._ask(ev.Login(username, password), ev.LoginOk))

    def token_login(self, token: str) -> str:
        """Log in with an API token (``imgshare-token-...``); return the user name.
        Raises ``PeerError`` (AUTH_FAILED) for an unknown, revoked or expired token."""
        return self._logged_in(self._ask(ev.TokenLogin(_token_secret(token)), ev.LoginOk))

    def cert_login(self) -> str:
        """Log in as the user the TLS client certificate names; return the name.
        Raises ``PeerError`` (AUTH_FAILED) when no certificate or no such user."""
        return self._logged_in(self._ask(ev.CertLogin(), ev.LoginOk))

    def _logged_in(self, answer: ev.Event) -> str:
        assert isinstance(answer, ev.LoginOk)
        self.username = answer.username
        return answer.username

    def register(self, username: str, password: str, invitation: str | None = None) -> None:
        """Make an account (this does not log in). Raises ``PeerError``: FORBIDDEN
        (registration closed, or the invitation does not hold), ALREADY_EXISTS,
        INVALID_ARGUMENT (a name or password that breaks the rules), TRY_LATER."""
        code = (invitation or "").strip().encode("utf-8")
        self._ask(ev.Register(username, password, code), ev.Ok)

    def change_password(self, old: str, new: str, revoke_other_tokens: bool = False) -> None:
        """Change the logged-in user's password; with ``revoke_other_tokens`` every
        token but the one this session logged in with stops working. Raises
        ``PeerError``: AUTH_FAILED (wrong old password), INVALID_ARGUMENT (a new one
        that breaks the rules)."""
        self._ask(ev.Passwd(old, new, revoke_other_tokens), ev.Ok)

    def create_token(self, name: str, expires_ms: int = 0) -> NewToken:
        """A new API token for the logged-in user, valid until ``expires_ms`` (ms since
        the epoch; 0: until revoked). The secret is shown only this once. Raises
        ``PeerError`` (INVALID_ARGUMENT: an empty name, a time already past)."""
        answer = self._ask(ev.TokenCreate(name, expires_ms), ev.Token)
        assert isinstance(answer, ev.Token)
        try:
            secret = answer.secret.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("the token is not ASCII", ErrorCode.MALFORMED) from None
        return NewToken(answer.token_id, secret, answer.expires_ms)

    def list_tokens(self) -> list[ev.TokenInfo]:
        """The logged-in user's tokens, oldest first (expired ones too)."""
        answer = self._ask(ev.TokenList(), ev.Tokens)
        assert isinstance(answer, ev.Tokens)
        return list(answer.tokens)

    def revoke_token(self, token_id: int) -> None:
        """Revoke one of the user's tokens. Raises ``PeerError`` (NOT_FOUND)."""
        self._ask(ev.TokenRevoke(token_id), ev.Ok)

    def share(self, image_id: str, username: str, expires_ms: int = 0) -> None:
        """Let ``username`` fetch one of our images until ``expires_ms`` (ms since the
        epoch; 0: until unshared). Sharing again replaces the expiry. Raises
        ``PeerError``: NOT_FOUND (no such image of ours, or no such user),
        INVALID_ARGUMENT (ourselves, or a time already past)."""
        self._ask(ev.Share(image_id_bytes(image_id), username, expires_ms), ev.Ok)

    def unshare(self, image_id: str, username: str) -> None:
        """Stop sharing an image with ``username``. Raises ``PeerError`` (NOT_FOUND:
        no such share)."""
        self._ask(ev.Unshare(image_id_bytes(image_id), username), ev.Ok)

    def shares(self, image_id: str) -> list[ev.ShareInfo]:
        """Who one of our images is shared with (live shares only). Raises
        ``PeerError`` (NOT_FOUND)."""
        answer = self._ask(ev.Shares(image_id_bytes(image_id)), ev.ShareList)
        assert isinstance(answer, ev.ShareList)
        return list(answer.shares)

    def delete(self, image_id: str) -> None:
        """Delete one of our images for good: its key, its object, its inbox copy and
        its shares. Durable once this returns. Raises ``PeerError`` (NOT_FOUND)."""
        self._ask(ev.Delete(image_id_bytes(image_id)), ev.Ok)

    def list_page(
        self,
        scope: ListScope = ListScope.OWN,
        after: ev.ImageEntry | None = None,
        limit: int = MAX_PAGE_ENTRIES,
    ) -> ev.ImagePage:
        """One page of images, oldest first, after the entry ``after`` (None: from the
        start): our own, or (``ListScope.SHARED_WITH_ME``) others' shared with us,
        each with its owner. ``more`` says whether another page follows."""
        after_ms, after_id = (0, bytes(IMAGE_ID_SIZE)) if after is None else _cursor(after)
        answer = self._ask(ev.ListPage(scope, after_ms, after_id, limit), ev.ImagePage)
        assert isinstance(answer, ev.ImagePage)
        return answer

    def iter_images(
        self, scope: ListScope = ListScope.OWN, page_size: int = MAX_PAGE_ENTRIES
    ) -> Iterator[ev.ImageEntry]:
        """Every image of ``scope``, oldest first, a page at a time (no cap)."""
        after: ev.ImageEntry | None = None
        while True:
            page = self.list_page(scope, after, page_size)
            for entry in page.images:
                if after is not None and _cursor(entry) <= _cursor(after):
                    raise ProtocolError("the server's pages go backwards", ErrorCode.MALFORMED)
                after = entry
                yield entry
            if not page.more:
                return
            if not page.images:
                raise ProtocolError("an empty page with more to come", ErrorCode.MALFORMED)

    # -- uploads ---------------------------------------------------------------------

    @property
    def server_certificate(self) -> bytes:
        """DER of the certificate that signed this session's handshake: a receipt kept
        as proof needs it (docs/protocol.md, section 7.5)."""
        return self._conn.server_certificate

    @property
    def ready(self) -> bool:
        """Whether the session can take a request: not closed (by ``close``, or by a
        fatal error of either side) and not in the middle of an upload or download."""
        return self._conn.state is State.IDLE and self._sock.fileno() != -1

    def server_info(self) -> ev.ServerInfo:
        """The server's limits (SERVER_INFO), asked with INFO; allowed before logging
        in. A client checks sizes against ``max_image_size`` before it sends: an
        UPLOAD_BEGIN over it ends the connection (fatal TOO_LARGE)."""
        answer = self._ask(ev.Info(), ev.ServerInfo)
        assert isinstance(answer, ev.ServerInfo)
        return answer

    def begin_upload(
        self,
        path: Path,
        name: str | None = None,
        chunk_size: int | None = None,
        *,
        sha256: bool = False,
        data: bytes | None = None,
    ) -> OutgoingUpload:
        """Start sending one image (UPLOAD_BEGIN, answered UPLOAD_READY); return the
        upload, to be driven with ``send_chunks`` and ``finish``.

        ``data``: send these bytes instead of the file's (the file with its metadata
        stripped, say), under the name of ``path``. ``chunk_size`` defaults to 256 KiB,
        or 1 MiB for images over 16 MiB (fewer, larger chunks cost less per byte on
        both sides; small images keep memory low on a server that receives hundreds at
        once). ``sha256=True`` also computes a plain SHA-256 for people and tools (a
        second hash pass; the HMAC is the protocol's check). Raises ``PeerError`` when
        the server refuses to start (TRY_LATER after ``retry_for``, QUOTA_EXCEEDED,
        a fatal TOO_LARGE), ``ImgshareError`` for a file that cannot be read or is
        empty.
        """
        handle: io.BufferedIOBase
        if data is not None:
            handle, size = io.BytesIO(data), len(data)
        else:
            handle = _open_image(path)
            size = os.fstat(handle.fileno()).st_size
        try:
            if size == 0:
                raise ImgshareError(f"{path} is empty")
            if chunk_size is None:
                chunk_size = MAX_CHUNK_SIZE if size > BIG_FILE else DEFAULT_CHUNK_SIZE
            header, content_key = new_upload(
                clean_name(path.name if name is None else name), size, os.urandom, chunk_size
            )
            self._ask(ev.UploadBegin(header, content_key), ev.UploadReady)
        except BaseException:
            handle.close()
            raise
        return OutgoingUpload(self, path, handle, header, content_key, sha256=sha256)

    def upload(
        self,
        path: Path,
        name: str | None = None,
        chunk_size: int | None = None,
        *,
        sha256: bool = False,
        data: bytes | None = None,
        progress: Callable[[int], None] | None = None,
        resume_store: ResumeStore | None = None,
    ) -> UploadResult:
        """Send one image file end to end; return the checked receipt.

        ``begin_upload`` says what the arguments do; ``progress(bytes_sent)`` is called
        after each chunk is written. With ``resume_store`` (and no ``data``), an upload
        cut off earlier goes on where the server kept it (``begin_resumable_upload``).
        Raises ``PeerError`` if the server refuses it (not an image, quota...),
        ``ImgshareError`` subclasses for everything else.
        """
        if resume_store is not None and data is None:
            outgoing = self.begin_resumable_upload(
                path, resume_store, name, chunk_size, sha256=sha256
            )
        else:
            outgoing = self.begin_upload(path, name, chunk_size, sha256=sha256, data=data)
        with outgoing as upload:
            upload.send_chunks(progress=progress)
            return upload.finish()

    # -- resumable uploads and thumbnails (issue 12; docs/protocol.md, 7.10 and 7.11) --

    def start_upload(self, header: UploadHeader, content_key: bytes) -> int:
        """UPLOAD_BEGIN with this header and content key (fresh ones: ``new_upload``);
        return the first chunk to send (0). Raises ``PeerError`` (TRY_LATER after
        ``retry_for``, QUOTA_EXCEEDED...)."""
        answer = self._ask(ev.UploadBegin(header, content_key), ev.UploadReady)
        assert isinstance(answer, ev.UploadReady)
        return answer.next_chunk

    def resume_upload(self, header: UploadHeader, content_key: bytes) -> int:
        """UPLOAD_RESUME of an upload begun with exactly this header and content key;
        return the first chunk to send: the server has the ones before it (the chunk
        count: it stored the image already, send only UPLOAD_END). The caller MUST
        send, under this key, only the plaintext it sent before (section 7.10).
        Raises ``PeerError``: NOT_FOUND (begin a new upload, with a new key),
        TRY_LATER after ``retry_for`` (another connection still holds it)."""
        answer = self._ask(ev.UploadResume(header, content_key), ev.UploadReady)
        assert isinstance(answer, ev.UploadReady)
        return answer.next_chunk

    def begin_resumable_upload(
        self,
        path: Path,
        resume_store: ResumeStore,
        name: str | None = None,
        chunk_size: int | None = None,
        *,
        sha256: bool = False,
        must_resume: bool = False,
        data: bytes | None = None,
    ) -> OutgoingUpload:
        """Like ``begin_upload``, for an upload that can survive a broken connection,
        a killed client or Ctrl-C: a file of at least ``resume_store.min_size`` gets a
        resume record (the content key, and each chunk's digest, recorded a batch
        ahead of the chunks sent) before UPLOAD_BEGIN; when a record exists, the
        recorded chunks are hashed again and, if unchanged, the upload is resumed
        where the server kept it (``next_chunk`` of the returned upload); if the file
        changed, or the server no longer has the upload, a new one begins with a new
        content key. A recorded chunk sent again is checked against its digest before
        it is sealed, and a file that changes while it is sent is refused before its
        last chunk. The record goes once the server stored or refused the image.

        ``must_resume``: only go on with a recorded upload; raise ``NotResumable``
        (``imgshare.client.resume``) rather than begin a new one. ``data``: send these
        bytes instead of the file's (its metadata stripped), as ``begin_upload``
        does; the record keeps their digests under the file's identity. Raises as
        ``begin_upload`` and ``resume_upload``, and ``ImgshareError`` when the record
        cannot be written."""
        from imgshare.client.resume import NotResumable, open_upload

        size = _file_size(path) if data is None else len(data)
        if size < max(1, resume_store.min_size):
            if must_resume:
                raise NotResumable(f"{path} is too small to have a resume record")
            return self.begin_upload(path, name, chunk_size, sha256=sha256, data=data)
        if self.username is None:
            raise ConfigError("log in before a resumable upload (its record names the user)")
        if chunk_size is None:
            chunk_size = MAX_CHUNK_SIZE if size > BIG_FILE else DEFAULT_CHUNK_SIZE
        label = clean_name(path.name if name is None else name)
        return open_upload(
            self,
            path,
            resume_store,
            label,
            chunk_size,
            sha256=sha256,
            must_resume=must_resume,
            data=data,
        )

    def thumbnail_data(self, image_id: str) -> ev.ThumbnailData:
        """The thumbnail of an image we may download (ours, or shared with us): at
        most 256 px, no metadata, ``media_type`` image/jpeg or image/png. Raises
        ``PeerError`` (NOT_FOUND: no such image for us, or none can be made)."""
        answer = self._ask(ev.Thumbnail(image_id_bytes(image_id)), ev.ThumbnailData)
        assert isinstance(answer, ev.ThumbnailData)
        return answer

    def thumbnail(self, image_id: str) -> bytes:
        """The bytes of ``thumbnail_data(image_id)``: a JPEG or PNG file."""
        return self.thumbnail_data(image_id).data

    def download(
        self,
        image_id: str,
        destination: Path | None = None,
        *,
        folder: Path | None = None,
        overwrite: bool = False,
    ) -> DownloadResult:
        """Fetch an image (ours, or one shared with us), check every chunk and the
        uploader's HMAC, then write ``destination``: by default the name it was sent
        with (made safe), in ``folder`` (default: the current folder).

        The file appears only complete and verified. Raises ``PeerError`` (NOT_FOUND:
        no such image, or not shared with us), ``IntegrityError`` for tampered data,
        ``ConfigError`` for a bad id, ``ImgshareError`` for local problems. When the
        default destination turns out to exist (and not ``overwrite``), the session is
        closed: the image is not fetched for nothing.
        """
        raw_id = image_id_bytes(image_id)
        image_id = raw_id.hex()
        if destination is not None and destination.exists() and not overwrite:
            raise ImgshareError(f"{destination} exists (use --force to overwrite)")
        self._request(ev.Download(raw_id))
        begin = self._answer(ev.DownloadBegin)
        assert isinstance(begin, ev.DownloadBegin)
        if destination is None:
            name = safe_filename(begin.header.name, f"{image_id}.img")
            destination = (folder or Path(".")) / name
            if destination.exists() and not overwrite:
                self.close()
                raise ImgshareError(f"{destination} exists (use --force to overwrite)")
        opener = StreamOpener(begin.header, begin.content_key)
        digest = hashlib.sha256()
        # The store's writer: a temp file beside the destination, renamed over it only
        # once every chunk and the HMAC have checked out.
        folder = destination.parent if str(destination.parent) else Path(".")
        with AtomicFile(destination, folder) as out:
            while not opener.done:
                chunk = self._next_event()
                if not isinstance(chunk, ev.Chunk):
                    raise ProtocolError("download interrupted", ErrorCode.UNEXPECTED_MESSAGE)
                plaintext = opener.open(chunk.data)
                digest.update(plaintext)
                out.write(plaintext)
            end = self._answer(ev.DownloadEnd)
            assert isinstance(end, ev.DownloadEnd)
            mac = opener.finish(end.hmac)
            out.commit()
        return DownloadResult(
            id=image_id,
            name=begin.header.name,
            size=begin.header.size,
            sha256=digest.hexdigest(),
            hmac=mac.hex(),
            path=destination,
        )

    def list_images(self) -> list[ev.ImageEntry]:
        """Our newest 1,000 images (LIST); ``iter_images`` has them all."""
        self._request(ev.ListImages())
        answer = self._answer(ev.ImageList)
        assert isinstance(answer, ev.ImageList)
        return list(answer.images)

    # -- lifetime ------------------------------------------------------------------

    def abort(self) -> None:
        """Cut the connection now, from any thread: a read or write blocked in another
        thread fails at once (``TransportError``), and the server sees a dropped
        connection (it keeps the durable part of a resumable upload). The descriptor
        stays until ``close``, so no other file can take its number meanwhile."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    #: The upload begun on this session, closed with it: a half-sent one holds its file.
    _outgoing: OutgoingUpload | None = None

    def close(self) -> None:
        if self._outgoing is not None:
            self._outgoing.close()
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _token_secret(token: str) -> bytes:
    try:
        return token.strip().encode("ascii")
    except UnicodeEncodeError:
        raise ConfigError("a token is ASCII text (imgshare-token-...)") from None


def _cursor(entry: ev.ImageEntry) -> tuple[int, bytes]:
    """Where a page that follows ``entry`` starts (the server's order)."""
    return entry.created_ms, entry.image_id


def image_id_bytes(image_id: str) -> bytes:
    """The 16 bytes of an image id written as 32 hex digits. Raises ``ConfigError``."""
    try:
        raw = bytes.fromhex(image_id.strip())
    except ValueError:
        raw = b""
    if len(raw) != IMAGE_ID_SIZE:
        raise ConfigError(f"{image_id!r} is not an image id (32 hex digits)")
    return raw


def clean_name(name: str) -> str:
    """A file name as upload metadata: control characters replaced, at most 255 bytes."""
    cleaned = "".join("?" if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 else c for c in name)
    return cleaned.encode("utf-8")[:MAX_NAME_BYTES].decode("utf-8", "ignore")


def _reason(exc: BaseException) -> str:
    """OpenSSL's short reason, else the OS's, else the text (``diagnose.reason``)."""
    from imgshare.client.diagnose import reason

    return reason(exc)


def _open_image(path: Path) -> io.BufferedReader:
    try:
        return path.open("rb")
    except OSError as exc:
        raise ImgshareError(f"cannot read {path}: {exc.strerror}") from exc


class OutgoingUpload:
    """One upload in flight on a session, driven step by step: ``send_chunks`` (as
    many as wanted), then ``finish`` for the checked receipt.

    Why steps: the API reports progress and stops at Ctrl-C between chunks, and tests
    stop an upload at a chosen chunk without private members. Until ``finish``
    returns, the session is busy with this upload and can carry no other request; an
    upload left half-sent leaves the session unusable: close it, and the server
    discards what arrived. The content key stays here, for resuming once the protocol
    has it (docs/protocol.md, section 7.5). Not thread-safe; close it (or ``with``).
    """

    def __init__(
        self,
        session: ClientSession,
        path: Path,
        source: io.BufferedIOBase,
        header: UploadHeader,
        content_key: bytes,
        *,
        sha256: bool = False,
    ) -> None:
        self.session = session
        self.path = path
        self.header = header
        self._content_key = content_key
        self._source = source
        session._outgoing = self
        self._sealer = StreamSealer(header, content_key)
        self._digest = hashlib.sha256() if sha256 else None
        self._next = 0
        #: Plaintext bytes sent so far.
        self.sent = 0
        #: Whether UPLOAD_END went out: from then on the server may store the image
        #: even if the answer is lost, so sending it again could make a second copy.
        self.end_sent = False
        # Two buffers reused for every chunk (no fresh pages, no copies): the file is
        # read into one and sealed into the other, behind room for the record header.
        self._plain = memoryview(bytearray(min(header.chunk_size, header.size)))
        self._record = memoryview(bytearray(RECORD_HEADER_SIZE + len(self._plain) + TAG_SIZE))

    @property
    def size(self) -> int:
        return int(self.header.size)

    @property
    def chunk_count(self) -> int:
        return int(self.header.chunk_count)

    @property
    def next_chunk(self) -> int:
        """The index of the next chunk to send (``chunk_count`` once all are sent)."""
        return self._next

    def send_chunks(
        self, count: int | None = None, progress: Callable[[int], None] | None = None
    ) -> int:
        """Send the next ``count`` chunks (None: all that are left); return how many
        went. ``progress(bytes_sent)`` is called after each. Raises ``ImgshareError``
        when the file changed size while it was sent, ``TransportError`` when the
        connection fails."""
        left = self.chunk_count - self._next
        count = left if count is None else max(0, min(count, left))
        for _ in range(count):
            index = self._next
            plaintext = self._plain[: self.header.plaintext_length(index)]
            if self._source.readinto(plaintext) != len(plaintext):
                raise ImgshareError(f"{self.path} changed while it was being sent")
            if self._digest is not None:
                self._digest.update(plaintext)
            sealed = self._sealer.seal(plaintext, into=self._record[RECORD_HEADER_SIZE:])
            chunk = ev.Chunk(index, sealed, index == self.chunk_count - 1)
            self._record[:RECORD_HEADER_SIZE] = self.session._conn.send_chunk_header(chunk)
            self.session._write(self._record[: RECORD_HEADER_SIZE + len(sealed)])
            self._next += 1
            self.sent += len(plaintext)
            if progress is not None:
                progress(self.sent)
        return count

    def finish(self) -> UploadResult:
        """Send the chunks left and UPLOAD_END with the HMAC; return the receipt, whose
        signature, upload id, size, HMAC and header hash were checked, and whose owner
        must be the user this session logged in as (section 7.5: otherwise
        ``IntegrityError``, and the session is closed). Raises ``PeerError`` when the
        server refuses the image (NOT_AN_IMAGE, QUOTA_EXCEEDED, STORAGE_FAILED)."""
        self.send_chunks()
        mac = self._sealer.finish()
        self.close()
        log.info("HMAC of image on client side: %s", mac.hex())
        self.end_sent = True
        self.session._request(ev.UploadEnd(mac))
        receipt = self.session._answer(ev.Receipt)
        assert isinstance(receipt, ev.Receipt)  # its signature and fields were checked
        owner = self.session.username
        if owner is not None and receipt.body.username != owner:
            self.session.close()
            raise IntegrityError(
                f"the server's receipt names {receipt.body.username!r} as the owner, not "
                f"{owner!r}, the user this session logged in as",
                ErrorCode.INTEGRITY_FAILED,
            )
        return UploadResult(
            id=receipt.body.image_id.hex(),
            name=self.header.name,
            size=self.size,
            sha256=self._digest.hexdigest() if self._digest is not None else None,
            hmac=mac.hex(),
            server_time_ms=receipt.body.server_time_ms,
            receipt=receipt,
            server_certificate=self.session.server_certificate,
        )

    def close(self) -> None:
        """Close the file; the session is left as it is."""
        self._source.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise ImgshareError(f"cannot read {path}: {exc.strerror}") from exc
