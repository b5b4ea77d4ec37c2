"""``imgshare.Client``: the Python API over sessions, for scripts, the CLI and the GUI.

A ``ClientSession`` is one connection and one request at a time, and it gives up at
the first dropped connection. A ``Client`` is what a program wants instead: it knows
where the server is and how to log in, opens a session when it needs one (and a new
one when the old one broke), retries what is safe to retry, and sends many images at
once over several connections with progress reports. Docs and runnable examples:
``docs/client.md``.

Retries (network errors and "not now", never refusals). A refused connect, a dropped
connection, and the fatal answers that mean "not now" (BUSY, SHUTTING_DOWN, TIMEOUT)
are tried again on a new connection, up to ``retries`` more times, after a back-off
that doubles from 0.5 s up to 8 s, with jitter (a random 50-100 % of it) so that
many clients cut off at once do not come back at once. TRY_LATER is waited out by the
session itself (its hint plus jitter, for up to ``retry_for`` seconds). Refusals
(AUTH_FAILED, NOT_AN_IMAGE, QUOTA_EXCEEDED, NOT_FOUND, TOO_LARGE...) are never tried
again: the same request would get the same answer. A request that changes something
(``delete``, ``unshare``, ``register``) is retried only when the server certainly did
not act on it: the connection failed before it was sent, or the server's fatal
TIMEOUT or SHUTTING_DOWN came before it.

Uploads are resumable by default (docs/protocol.md, 7.10; ``imgshare.client.resume``):
a file big enough for the server to make part of it durable gets a resume record, and
a retry after a network error goes on from the last chunk the server made durable,
under the same content key (every chunk sent before checked against its digest), instead
of starting again; so does the same file sent again by a later ``send`` after a
killed process or Ctrl-C. A retry once UPLOAD_END went out is only ever a resume: the
server then either names the image it stored (no second copy) or has none, and the
file is reported failed rather than sent again. Files without a record (under 8 MiB,
or ``resume=False``) are retried from the start with a new content key, and never
once their UPLOAD_END went out.

A ``Client`` serves one thread at a time; ``send`` runs threads of its own inside.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import hmac
import logging
import os
import queue
import random
import ssl
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self, TypeVar

from cryptography import x509

from imgshare.client.metadata import SIGNATURE_BYTES, StripMode, image_format, strip_metadata
from imgshare.client.session import (
    ClientSession,
    DownloadResult,
    OutgoingUpload,
    UploadResult,
    ca_verifier,
    clean_name,
)
from imgshare.errors import (
    ConfigError,
    HandshakeError,
    ImgshareError,
    PeerError,
    RemoteProtocolError,
    SetupError,
    TransportError,
)
from imgshare.protocol import events as ev
from imgshare.protocol.constants import DEFAULT_PORT, ErrorCode, ListScope
from imgshare.protocol.keys import ServerVerifier, VerifyingKey, public_key_of
from imgshare.units import human_size

if TYPE_CHECKING:
    from imgshare.client.resume import ResumeStore

log = logging.getLogger(__name__)

T = TypeVar("T")

ServerInfo = ev.ServerInfo
ImageEntry = ev.ImageEntry
ShareInfo = ev.ShareInfo

ProgressState = Literal["queued", "connecting", "sending", "verifying", "done", "skipped", "failed"]


@dataclass(frozen=True)
class Progress:
    """Where one file of a ``send`` stands. The CLI and the GUI draw from these.

    ``state`` goes ``queued`` → (``connecting``) → ``sending`` (repeated as ``sent``
    grows, chunk by chunk) → ``verifying`` (the server checks the image and makes it
    durable) → ``done`` (``result`` is the checked receipt) or ``failed`` (``error``
    says why, in words for people); a file that is not sent at all is ``skipped`` (a
    non-image found in a folder) or ``failed`` (missing, too large, refused). A retry
    goes back to ``connecting`` or ``sending``. ``total`` is the number of bytes to
    send (after metadata stripping, once known).

    ``resumed``: bytes the server already had when this attempt began (an upload
    resumed after a broken connection, a killed client or Ctrl-C; 0 for a new one):
    the first ``sending`` report of a resumed upload has ``sent == resumed``.
    ``resumable``: the upload has a resume record, so if it stops now, sending the
    same file again goes on from what the server made durable.
    """

    path: Path
    name: str
    sent: int
    total: int
    state: ProgressState
    result: UploadResult | None
    error: str | None
    resumed: int = 0
    resumable: bool = False

    @property
    def finished(self) -> bool:
        """Whether this is the file's last report (done, skipped or failed)."""
        return self.state in ("done", "skipped", "failed")


#: The ``error`` of files that Ctrl-C stopped or kept from starting.
INTERRUPTED = "interrupted: not sent"
#: After Ctrl-C, how long an upload whose UPLOAD_END went out may wait for its answer.
RECEIPT_WAIT = 15.0
MAY_BE_STORED = (
    "interrupted after the whole image was sent, before the server answered: it may "
    "have stored it; check `imgshare list` before sending it again"
)

#: Called with every report, from ``send``'s worker threads (several at once with
#: ``parallel`` > 1, though one file's reports always come in order from one thread).
#: It must be quick and thread-safe; what it raises is logged and ignored.
ProgressCallback = Callable[[Progress], None]


# --- what to send -----------------------------------------------------------------------


@dataclass(frozen=True)
class SendItem:
    """A file to send: named on the command line (``explicit``) or found in a folder."""

    path: Path
    name: str
    size: int
    format: str | None  # by its magic number; None: unknown (the server decides)
    explicit: bool


@dataclass(frozen=True)
class SendPlan:
    """The files of ``plan_send``: to send, skipped (with why), and problems (paths
    that cannot be sent at all: missing, unreadable, empty, not a file)."""

    items: list[SendItem]
    skipped: list[tuple[Path, str]]
    problems: list[tuple[Path, str]]


def plan_send(paths: Iterable[str | os.PathLike[str]]) -> SendPlan:
    """Expand ``paths`` into the files to send, checking each before anything
    connects: a folder is walked recursively (sorted, links to folders not followed),
    and what it holds that is empty or not an image by its first bytes is skipped. A
    file named explicitly is sent whatever its first bytes say: the server decides,
    and names the formats it accepts. The same file named twice is sent once."""
    plan = SendPlan([], [], [])
    seen: set[Path] = set()
    for given in paths:
        path = Path(given)
        try:
            info = path.stat()
        except OSError as exc:
            why = "no such file or folder" if isinstance(exc, FileNotFoundError) else exc.strerror
            plan.problems.append((path, str(why)))
            continue
        if stat.S_ISDIR(info.st_mode):
            _walk(path, plan, seen)
        elif not stat.S_ISREG(info.st_mode):
            plan.problems.append((path, "not a file or a folder"))
        else:
            _add_file(path, info, plan, seen, explicit=True)
    return plan


def _walk(top: Path, plan: SendPlan, seen: set[Path]) -> None:
    def unreadable(exc: OSError) -> None:
        plan.skipped.append((Path(exc.filename or top), f"cannot read: {exc.strerror}"))

    for folder, folders, files in os.walk(top, onerror=unreadable):
        base = Path(folder)
        for name in sorted(folders):
            if (base / name).is_symlink():
                plan.skipped.append((base / name, "a link to a folder (not followed)"))
        folders.sort()
        for name in sorted(files):
            path = base / name
            try:
                info = path.stat()
            except OSError as exc:
                plan.skipped.append((path, f"cannot read: {exc.strerror}"))
                continue
            if not stat.S_ISREG(info.st_mode):
                plan.skipped.append((path, "not a regular file"))
                continue
            _add_file(path, info, plan, seen, explicit=False)


def _add_file(
    path: Path, info: os.stat_result, plan: SendPlan, seen: set[Path], *, explicit: bool
) -> None:
    key = path.resolve()
    if key in seen:
        return
    seen.add(key)
    if info.st_size == 0:
        (plan.problems if explicit else plan.skipped).append((path, "empty"))
        return
    try:
        with path.open("rb") as handle:
            head = handle.read(SIGNATURE_BYTES)
    except OSError as exc:
        (plan.problems if explicit else plan.skipped).append((path, f"cannot read: {exc.strerror}"))
        return
    fmt = image_format(head)
    if fmt is None and not explicit:
        plan.skipped.append((path, "not an image"))
        return
    plan.items.append(SendItem(path, clean_name(path.name), info.st_size, fmt, explicit))


# --- retries ----------------------------------------------------------------------------

DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT = 10.0
_BACKOFF_FIRST, _BACKOFF_CAP = 0.5, 8.0
#: Fatal answers that mean "not now", not "no": a new connection may succeed.
_NOT_NOW = frozenset({ErrorCode.BUSY, ErrorCode.SHUTTING_DOWN, ErrorCode.TIMEOUT})
#: The words ``ClientSession`` uses when the server closes without answering.
_CLOSED_WITHOUT_ANSWER = "the server closed the connection"


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (0, 1, ...): doubling from
    0.5 s to at most 8 s, times a random 0.5-1.0 (jitter)."""
    return min(_BACKOFF_CAP, _BACKOFF_FIRST * 2.0**attempt) * random.uniform(0.5, 1.0)


def is_network_error(exc: BaseException) -> bool:
    """A failure of the connection, not an answer: worth a new connection (not when
    TLS cannot work with this setup: ``SetupError`` would come again)."""
    if isinstance(exc, TransportError):
        return not isinstance(exc, SetupError)
    return type(exc) is RemoteProtocolError and str(exc).startswith(_CLOSED_WITHOUT_ANSWER)


def is_retryable(exc: BaseException) -> bool:
    """A network error, or a fatal "not now" (BUSY, SHUTTING_DOWN, TIMEOUT)."""
    return is_network_error(exc) or (isinstance(exc, PeerError) and exc.code in _NOT_NOW)


# --- how to reach the server and log in --------------------------------------------------


@dataclass(frozen=True)
class _Password:
    user: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class _Token:
    token: str = field(repr=False)


@dataclass(frozen=True)
class _Certificate:
    pass


_Credential = _Password | _Token | _Certificate


def parse_server(server: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``host`` (the default port) -> (host, port).
    Raises ``ConfigError``."""
    host, sep, port_text = server.strip().rpartition(":")
    if not sep or host.endswith(":") or (":" in host and not host.startswith("[")):
        host, port_text = server.strip(), str(DEFAULT_PORT)
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"server {server!r}: the port must be a number") from None
    if not host or not 0 < port < 65536:
        raise ConfigError(f"server {server!r} is not HOST:PORT")
    return host.strip("[]"), port


def _pin_verifier(fingerprint: bytes) -> ServerVerifier:
    def verify(certificate_der: bytes) -> VerifyingKey:
        if not hmac.compare_digest(hashlib.sha256(certificate_der).digest(), fingerprint):
            raise HandshakeError(
                "the server's certificate is not the pinned one (SHA-256 "
                f"{hashlib.sha256(certificate_der).hexdigest()})",
                ErrorCode.HANDSHAKE_FAILED,
            )
        return public_key_of(certificate_der)

    return verify


def fingerprint(certificate_der: bytes) -> str:
    """A certificate's SHA-256 fingerprint, as hex: what ``pin`` takes."""
    return hashlib.sha256(certificate_der).hexdigest()


# --- the client -------------------------------------------------------------------------


class Client:
    """An imgshare server, as a Python object. Use it as a context manager.

    ``server`` is ``HOST:PORT``. Trust, one of: ``ca``, the CA certificate file that
    signed the server's (``data/certs/ca.pem``), or ``ca_pem``, the same as text;
    ``pin``, the SHA-256 fingerprint of the server's certificate itself (hex, colons
    allowed; the application handshake must be signed by exactly that certificate,
    whoever signed it); or neither, to trust the system's CAs. ``client_cert`` and
    ``client_key`` are for a server that wants TLS client certificates. ``timeout``
    bounds connecting and every wait for the server; ``retries`` is how many more
    times a network failure is tried (module docstring).

    Nothing connects until a method needs the server. Raises ``ConfigError`` for
    arguments that cannot work, ``CertificateError`` for unusable files.
    """

    def __init__(
        self,
        server: str,
        *,
        ca: Path | str | None = None,
        ca_pem: str | None = None,
        pin: str | None = None,
        client_cert: Path | str | None = None,
        client_key: Path | str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        self.host, self.port = parse_server(server)
        self.timeout = timeout
        self.retries = retries
        self._credential: _Credential | None = None
        self._session: ClientSession | None = None
        self._info: ev.ServerInfo | None = None
        self._opener: Callable[[], ClientSession] | None = None
        self._context: ssl.SSLContext | None = None
        self._verifier: ServerVerifier | None = None
        if sum(x is not None for x in (ca, ca_pem, pin)) > 1:
            raise ConfigError("give one of ca, ca_pem and pin")
        self._trust = (ca, ca_pem, pin, client_cert, client_key)

    @property
    def server(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def from_profile(cls, path: Path | None = None, **options: float) -> Client:
        """The server, CA, client certificate and login token that `imgshare login`
        saved (``imgshare.client.profile``; default: ``$IMGSHARE_CONFIG`` or
        ``~/.config/imgshare/profile.json``). Logs in with the token, which costs the
        server a lookup, not a password hash. ``options``: ``timeout``, ``retries``.
        Raises ``ConfigError`` when there is no usable login."""
        from imgshare.client import profile as profiles

        where = profiles.default_path() if path is None else path
        saved = profiles.load(where)
        if saved is None:
            raise ConfigError(f"no profile at {where}: log in once with `imgshare login`")
        if saved.token is None:
            raise ConfigError(f"the profile {where} is logged out: run `imgshare login` again")
        if saved.token_expires_ms and saved.token_expires_ms <= time.time() * 1000:
            raise ConfigError(f"the login saved in {where} expired: run `imgshare login` again")
        client = cls(
            saved.server,
            ca_pem=saved.ca_pem,
            client_cert=saved.client_cert,
            client_key=saved.client_key,
            timeout=options.get("timeout", DEFAULT_TIMEOUT),
            retries=int(options.get("retries", DEFAULT_RETRIES)),
        )
        client._credential = _Token(saved.token)
        return client

    @classmethod
    def from_sessions(
        cls, open_session: Callable[[], ClientSession], server: str, retries: int = DEFAULT_RETRIES
    ) -> Client:
        """A client whose sessions come from ``open_session()``, which connects and
        logs in. The command line uses it, so that its own messages for TLS and login
        trouble, and its password read once, apply to every connection."""
        client = cls(server, retries=retries)
        client._opener = open_session
        return client

    # -- logging in ----------------------------------------------------------------

    def register(self, user: str, password: str, invitation: str | None = None) -> None:
        """Make an account where the server allows it; this does not log in. Raises
        ``PeerError``: FORBIDDEN (registration closed, or no valid invitation),
        ALREADY_EXISTS, INVALID_ARGUMENT (a name or password that breaks the rules)."""

        with self._open_with_retries(self._connect) as session:
            session.register(user, password, invitation)

    def login(self, user: str, password: str) -> str:
        """Log in with a password; return the user name the server gave. The password
        stays in this object while it lives: ``send`` with ``parallel`` > 1 logs in
        each of its connections (each costs the server a password hash; a token does
        not). Raises ``PeerError`` (AUTH_FAILED) for a wrong name or password."""
        return self._log_in(_Password(user, password))

    def login_token(self, token: str) -> str:
        """Log in with an API token (``imgshare token create``, or `imgshare login`'s);
        return the user name. Raises ``PeerError`` (AUTH_FAILED) for an unknown,
        revoked or expired token."""
        return self._log_in(_Token(token))

    def login_certificate(self) -> str:
        """Log in as the user the TLS client certificate names; return the name."""
        return self._log_in(_Certificate())

    def _log_in(self, credential: _Credential) -> str:
        self._drop_session()
        self._credential = credential
        return self.user or ""

    @property
    def user(self) -> str | None:
        """The logged-in user's name as the server stores it (connects if needed)."""
        if self._credential is None and self._opener is None:
            return None
        return self._main().username

    @property
    def server_certificate_sha256(self) -> str:
        """The SHA-256 fingerprint of the certificate the server signs with."""
        return fingerprint(self._main().server_certificate)

    # -- requests ------------------------------------------------------------------

    def info(self) -> ev.ServerInfo:
        """The server's limits (``max_image_size``, ``max_pixels``...) and how to get an
        account; asked once, then remembered."""
        if self._info is None:
            self._info = self._call(lambda s: s.server_info())
        return self._info

    def list(self, shared_with_me: bool = False) -> builtins.list[ev.ImageEntry]:
        """Every image of yours (or shared with you), oldest first, all pages."""
        scope = ListScope.SHARED_WITH_ME if shared_with_me else ListScope.OWN
        return self._call(lambda s: builtins.list(s.iter_images(scope)))

    def get(
        self,
        image_id: str,
        destination: Path | str | None = None,
        *,
        folder: Path | str | None = None,
        overwrite: bool = False,
    ) -> DownloadResult:
        """Fetch an image (yours or shared with you), check every chunk and the
        uploader's HMAC, and write it to ``destination`` (default: the name it was
        sent with, made safe, in ``folder`` or the current folder). The file appears
        only complete and checked. Raises ``PeerError`` (NOT_FOUND), ``IntegrityError``,
        ``ImgshareError`` (the file exists and not ``overwrite``)."""
        target = None if destination is None else Path(destination)
        where = None if folder is None else Path(folder)
        return self._call(lambda s: s.download(image_id, target, folder=where, overwrite=overwrite))

    def share(
        self, image_id: str, user: str, *, expires: float | timedelta | str | None = None
    ) -> None:
        """Let ``user`` fetch one of your images, until ``expires`` from now (seconds,
        a ``timedelta``, or text like "7d"; None: until unshared). Sharing again sets
        a new expiry. Raises ``PeerError`` (NOT_FOUND, INVALID_ARGUMENT)."""
        expires_ms = _expires_ms(expires)
        self._call(lambda s: s.share(image_id, user, expires_ms))

    def unshare(self, image_id: str, user: str) -> None:
        """Stop sharing an image with ``user``. Raises ``PeerError`` (NOT_FOUND)."""
        self._call(lambda s: s.unshare(image_id, user), safe=False)

    def shares(self, image_id: str) -> builtins.list[ev.ShareInfo]:
        """Who can fetch one of your images (live shares)."""
        return self._call(lambda s: s.shares(image_id))

    def thumbnail(self, image_id: str) -> bytes:
        """The small preview the server made when it stored the image (a JPEG or PNG
        file, metadata stripped), of yours or one shared with you. Raises
        ``PeerError`` (NOT_FOUND)."""
        return self._call(lambda s: s.thumbnail(image_id))

    def delete(self, image_id: str) -> None:
        """Delete one of your images for good (its key first). Raises ``PeerError``
        (NOT_FOUND)."""
        self._call(lambda s: s.delete(image_id), safe=False)

    # -- uploads -------------------------------------------------------------------

    def begin_upload(
        self,
        path: Path | str,
        *,
        name: str | None = None,
        chunk_size: int | None = None,
        strip_metadata: StripMode | None = None,
        resume: bool = False,
        resume_store: ResumeStore | None = None,
    ) -> OutgoingUpload:
        """Start an upload on this client's connection and return it, to drive step by
        step: ``upload.send_chunks(count=None)``, then ``upload.finish()`` for the
        checked ``UploadResult``. Until it finishes, the client can do nothing else
        (a half-sent upload is abandoned by ``close``: the server keeps nothing of it,
        or, for a resumable one, what it made durable).

        ``resume=True``: a resumable upload (docs/protocol.md, 7.10). If a resume
        record of this file exists (in ``resume_store``, default
        ``ResumeStore.default()``), the file is unchanged and the server kept the
        upload, it goes on from there: ``upload.next_chunk`` is the first chunk the
        server lacks and ``upload.sent`` the bytes it has. Otherwise a new upload
        begins, recorded first if the file is at least ``resume_store.min_size`` (8 MiB
        by default). No retries here: each step is the caller's to repeat."""
        source = Path(path)
        data = _stripped(source, strip_metadata) if strip_metadata else None
        session = self._main()
        if resume:
            store = resume_store if resume_store is not None else _default_store()
            return session.begin_resumable_upload(source, store, name, chunk_size, data=data)
        return session.begin_upload(source, name, chunk_size, data=data)

    def send(
        self,
        paths: Iterable[str | os.PathLike[str]] | SendPlan,
        *,
        progress: ProgressCallback | None = None,
        parallel: int = 1,
        strip_metadata: StripMode | None = None,
        sha256: bool = False,
        resume: bool = True,
        resume_store: ResumeStore | None = None,
    ) -> builtins.list[Progress]:
        """Send files and folders (``plan_send`` says which files; a ``SendPlan`` it
        made may be given instead); return the last report of each file: the paths
        that cannot be sent, then the files to send in order, then those skipped.
        ``state`` is "done" (with ``result``), "skipped" or "failed" (with ``error``).

        ``parallel`` uploads go at once, each on a connection of its own (one session
        is one stream). ``strip_metadata`` ("gps" or "all") removes location or all
        metadata before encryption, without re-encoding pixels
        (``imgshare.client.metadata``): the HMAC is then of the stripped bytes, which
        is what the server stores. Sizes are checked against the server's
        ``max_image_size`` before anything is sent. ``progress`` gets every report
        (``ProgressCallback`` says from which threads).

        ``resume`` (the default): uploads are resumable (module docstring). A file of
        at least ``resume_store.min_size`` (8 MiB) gets a resume record in
        ``resume_store`` (default ``ResumeStore.default()``: the user's state folder,
        ``imgshare.client.resume.default_folder``) before it is sent; a retry after a
        network error, or a later ``send`` of the same unchanged file to the same
        server as the same user, goes on from the last chunk the server made durable
        (``Progress.resumed``). A file that changed meanwhile is sent afresh with a new
        content key. With ``strip_metadata`` the record keeps the digests of the
        stripped bytes, which are made again (the same) to resume.

        Raises only when nothing can be sent: the first connection or login fails
        (``PeerError`` AUTH_FAILED, ``TransportError``...). On KeyboardInterrupt the
        uploads stop between chunks and it is raised again: the server keeps what it
        made durable of a resumable upload (the next ``send`` resumes it), nothing of
        the others."""
        if parallel < 1:
            raise ConfigError("parallel must be at least 1")
        plan = paths if isinstance(paths, SendPlan) else plan_send(paths)
        store = None
        if resume:
            store = resume_store if resume_store is not None else _default_store()
            # Records of uploads nobody went back to hold keys: none outlives 24 h.
            with contextlib.suppress(OSError):
                store.sweep()
        return _SendRun(self, plan, progress, parallel, strip_metadata, sha256, store).run()

    # -- sessions ------------------------------------------------------------------

    def _connect(self) -> ClientSession:
        """A new session, connected but not logged in."""
        from imgshare import pki, tls

        host = self.host
        if self._context is None:
            ca, ca_pem, pin, cert, key = self._trust
            if pin is not None:
                wanted = bytes.fromhex(pin.replace(":", "").strip())
                if len(wanted) != 32:
                    raise ConfigError("pin: give the SHA-256 fingerprint, 64 hex digits")
                context = tls.create_client_context(client_cert=cert, client_key=key)
                # The pin is the trust (docs/protocol.md, section 4.4): the application
                # handshake must be signed by that certificate, whatever TLS says.
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                self._verifier = _pin_verifier(wanted)
            elif ca is not None or ca_pem is not None:
                context = tls.create_client_context(
                    ca, cadata=ca_pem, client_cert=cert, client_key=key
                )
                anchors = (
                    [pki.load_certificate(Path(ca))]
                    if ca is not None
                    else _pem_certificates(ca_pem or "")
                )
                self._verifier = ca_verifier(anchors, host)
            else:
                context = tls.create_client_context(client_cert=cert, client_key=key)
            self._context = context
        return ClientSession.connect(
            host, self.port, self._context, verifier=self._verifier, timeout=self.timeout
        )

    def _open(self) -> ClientSession:
        """A new session, logged in as the credential says (if any)."""
        if self._opener is not None:
            return self._opener()
        session = self._connect()
        try:
            credential = self._credential
            if isinstance(credential, _Password):
                session.login(credential.user, credential.password)
            elif isinstance(credential, _Token):
                session.token_login(credential.token)
            elif isinstance(credential, _Certificate):
                session.cert_login()
        except BaseException:
            session.close()
            raise
        return session

    def _open_with_retries(
        self,
        opener: Callable[[], ClientSession] | None = None,
        cancelled: threading.Event | None = None,
    ) -> ClientSession:
        """A new session from ``opener`` (default: connected and logged in), tried
        again after network errors (module docstring). Nothing was sent yet, so this
        is always safe. Raises what the last try raised; ``_Cancelled`` when
        ``cancelled`` is set while it waits."""
        tries = 0
        while True:
            try:
                return (opener or self._open)()
            except ImgshareError as exc:
                if not is_retryable(exc) or tries >= self.retries:
                    raise
                wait = backoff(tries)
                log.info("cannot connect, retrying in %.1f s: %s", wait, exc)
                if cancelled is not None:
                    if cancelled.wait(wait):
                        raise _Cancelled from exc
                else:
                    time.sleep(wait)
                tries += 1

    def _main(self) -> ClientSession:
        """This client's own session, opened (again) when it is not ready."""
        if self._session is None or not self._session.ready:
            self._drop_session()
            self._session = self._open_with_retries()
        return self._session

    def _drop_session(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def _call(self, request: Callable[[ClientSession], T], *, safe: bool = True) -> T:
        """Run ``request`` on the main session, retried after network errors when it
        is ``safe`` (asking again cannot do a thing twice), and otherwise only when
        the server said it did not act on it (a fatal BUSY, SHUTTING_DOWN, TIMEOUT)."""
        tries = 0
        while True:
            session = self._main()
            try:
                return request(session)
            except ImgshareError as exc:
                not_acted = isinstance(exc, PeerError) and exc.code in _NOT_NOW
                if not is_retryable(exc) or tries >= self.retries or not (safe or not_acted):
                    raise
                wait = backoff(tries)
                log.info("retrying in %.1f s: %s", wait, exc)
                self._drop_session()
                time.sleep(wait)
                tries += 1

    # -- lifetime ------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (a client can still be used: it opens a new one)."""
        self._drop_session()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _pem_certificates(pem: str) -> builtins.list[x509.Certificate]:
    from imgshare.client.profile import Profile

    return Profile("", pem, "").ca_certificates()


def _expires_ms(expires: float | timedelta | str | None) -> int:
    from imgshare.client.duration import expires_at, parse_duration

    if expires is None:
        return 0
    if isinstance(expires, str):
        seconds: float = parse_duration(expires)
    elif isinstance(expires, timedelta):
        seconds = expires.total_seconds()
    else:
        seconds = float(expires)
    if seconds <= 0:
        raise ConfigError("expires: give a time in the future")
    return expires_at(round(seconds))


def _default_store() -> ResumeStore:
    from imgshare.client.resume import ResumeStore

    return ResumeStore.default()


def _stripped(path: Path, mode: StripMode) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImgshareError(f"cannot read {path}: {exc.strerror}") from exc
    return strip_metadata(data, mode)


# --- sending many -----------------------------------------------------------------------


class _Cancelled(Exception):
    """Ctrl-C: stop between chunks."""


class _NoConnection(Exception):
    """A worker could not open a session (after retries): it hands its file back."""


class _SendRun:
    """One ``Client.send``: the plan, the reports, the worker threads."""

    def __init__(
        self,
        client: Client,
        plan: SendPlan,
        progress: ProgressCallback | None,
        parallel: int,
        strip: StripMode | None,
        sha256: bool,
        store: ResumeStore | None = None,
    ) -> None:
        self.client = client
        self.store = store
        #: Per file being sent: (bytes resumed, has a resume record), for its reports.
        self.resume_state: dict[Path, tuple[int, bool]] = {}
        #: Files being sent, with the session each is on (for Ctrl-C); under ``lock``.
        self.in_flight: dict[Path, ClientSession | None] = {}
        self.lock = threading.Lock()
        #: Set once ``send`` has given up on its workers: their late reports are dropped.
        self.silenced = False
        self.plan = plan
        self.callback = progress
        self.parallel = parallel
        self.strip = strip
        self.sha256 = sha256
        self.cancelled = threading.Event()
        #: Files whose UPLOAD_END is going or gone: never cut on Ctrl-C (under ``lock``).
        self.finishing: set[Path] = set()
        self.final: dict[Path, Progress] = {}
        self.queue: queue.SimpleQueue[SendItem] = queue.SimpleQueue()
        self.max_size = 0
        self.no_connection: str | None = None

    def report(
        self,
        item: SendItem | Path,
        state: ProgressState,
        sent: int = 0,
        total: int | None = None,
        result: UploadResult | None = None,
        error: str | None = None,
    ) -> None:
        if isinstance(item, SendItem):
            path, name, size = item.path, item.name, item.size
        else:
            path, name, size = item, clean_name(item.name), 0
        if self.silenced:
            return
        resumed, resumable = self.resume_state.get(path, (0, False))
        update = Progress(
            path,
            name,
            sent,
            size if total is None else total,
            state,
            result,
            error,
            resumed,
            resumable,
        )
        if update.finished:
            self.final[path] = update
        if self.callback is not None:
            try:
                self.callback(update)
            except Exception:
                log.exception("the progress callback failed")

    def run(self) -> builtins.list[Progress]:
        plan = self.plan
        for path, why in plan.problems:
            self.report(path, "failed", error=why)
        for item in plan.items:
            self.report(item, "queued")
        for path, why in plan.skipped:
            self.report(path, "skipped", error=why)
        if plan.items:
            self._send_all()
        order = [path for path, _ in plan.problems]
        order += [item.path for item in plan.items] + [path for path, _ in plan.skipped]
        return [self.final[path] for path in order if path in self.final]

    def _send_all(self) -> None:
        client = self.client
        first = client._main()  # the first login fails the whole send, as it should
        self.max_size = client.info().max_image_size
        for item in self.plan.items:
            if item.size > self.max_size and self.strip is None:
                self.report(item, "failed", error=_too_large(item.size, self.max_size))
            else:
                self.queue.put(item)
        count = min(self.parallel, self.queue.qsize())
        if count == 0:
            return
        client._session = None  # lent to the first worker, which gives it back
        workers = [
            threading.Thread(
                target=self._work, args=(first if n == 0 else None, n == 0), daemon=True
            )
            for n in range(count)
        ]
        for worker in workers:
            worker.start()
        try:
            while any(worker.is_alive() for worker in workers):
                for worker in workers:
                    worker.join(0.1)
        except BaseException:  # KeyboardInterrupt: stop between chunks, briefly wait
            self.cancelled.set()
            # A worker blocked in a write (a stalled network) would not see the flag:
            # cut its connection, which the server takes as a dropped one. Not one
            # whose UPLOAD_END went out: its receipt may be on the way.
            # Checked and cut under the lock that a worker takes to decide to send
            # UPLOAD_END: a connection is cut before that, or left to its receipt.
            with self.lock:
                for path, session in self.in_flight.items():
                    if session is not None and path not in self.finishing:
                        session.abort()
            deadline = time.monotonic() + 2.0
            for worker in workers:
                worker.join(max(0.0, deadline - time.monotonic()))
            # An upload whose UPLOAD_END went out is stored or refused in a moment (a
            # busy server's fsync may take seconds): its answer is worth the wait, or
            # the summary would miss an image the server keeps.
            deadline = time.monotonic() + RECEIPT_WAIT
            while self.finishing and time.monotonic() < deadline:
                for worker in workers:
                    worker.join(max(0.0, min(0.1, deadline - time.monotonic())))
            self._fail_queued(INTERRUPTED)
            with self.lock:
                stuck = [item for item in self.plan.items if item.path in self.in_flight]
            for item in stuck:  # still not back: say so for them, then no more reports
                if item.path not in self.final:
                    why = MAY_BE_STORED if item.path in self.finishing else INTERRUPTED
                    self.report(item, "failed", error=why)
            self.silenced = True
            raise
        self._fail_queued(f"not sent: {self.no_connection or 'no connection to the server'}")

    def _fail_queued(self, why: str) -> None:
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return
            self.report(item, "failed", error=why)

    def _work(self, session: ClientSession | None, main: bool) -> None:
        try:
            while not self.cancelled.is_set():
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    return
                try:
                    session = self._send_one(item, session)
                except _NoConnection:
                    self.queue.put(item)  # for a worker that has a connection
                    return
        finally:
            if main and session is not None and session.ready:
                self.client._session = session
            elif session is not None:
                session.close()

    def _connected(
        self, item: SendItem, session: ClientSession | None, total: int
    ) -> ClientSession:
        if session is not None and session.ready:
            return session
        if session is not None:
            session.close()
        self.report(item, "connecting", total=total)
        try:
            return self.client._open_with_retries(cancelled=self.cancelled)
        except _Cancelled:
            raise
        except ImgshareError as exc:
            self.no_connection = str(exc)
            raise _NoConnection from exc

    def _send_one(self, item: SendItem, session: ClientSession | None) -> ClientSession | None:
        """Send one file with retries; return the session to go on with (None: open
        a new one for the next file)."""
        with self.lock:
            self.in_flight[item.path] = None
        try:
            return self._send_with_retries(item, session)
        finally:
            with self.lock:
                self.in_flight.pop(item.path, None)
                self.finishing.discard(item.path)

    def _on(self, item: SendItem, session: ClientSession) -> ClientSession:
        with self.lock:
            self.in_flight[item.path] = session
        if self.cancelled.is_set():  # Ctrl-C came while it connected
            raise _Cancelled
        return session

    def _send_with_retries(
        self, item: SendItem, session: ClientSession | None
    ) -> ClientSession | None:
        data: bytes | None = None
        total = item.size
        if self.strip is not None:
            try:
                data = _stripped(item.path, self.strip)
            except ImgshareError as exc:
                self.report(item, "failed", error=str(exc))
                return session
            total = len(data)
            if total > self.max_size:
                self.report(item, "failed", total=total, error=_too_large(total, self.max_size))
                return session
        tries = 0
        end_sent = False  # by any attempt: from then on, only a resume is safe
        while True:
            upload: OutgoingUpload | None = None
            try:
                session = self._on(item, self._connected(item, session, total))
                upload = self._begin(item, session, data, must_resume=end_sent)
                total = upload.size
                # A resumed upload starts at what the server has (``upload.sent``).
                self.resume_state[item.path] = (upload.sent, _is_resumable(upload))
                self.report(item, "sending", upload.sent, total)
                with upload:
                    while upload.next_chunk < upload.chunk_count:
                        if self.cancelled.is_set():
                            raise _Cancelled
                        upload.send_chunks(1)
                        self.report(item, "sending", upload.sent, total)
                    with self.lock:  # Ctrl-C now, or never cut: see _send_all
                        if self.cancelled.is_set():
                            raise _Cancelled
                        self.finishing.add(item.path)
                    self.report(item, "verifying", total, total)
                    result = upload.finish()
                self.report(item, "done", total, total, result=result)
                return session
            except _Cancelled:
                if session is not None:
                    session.close()  # the server keeps what it made durable, if anything
                sent = upload.sent if upload is not None else 0
                self.report(item, "failed", sent, total, error=INTERRUPTED)
                return None
            except ImgshareError as exc:
                sent = upload.sent if upload is not None else 0
                end_sent = end_sent or (upload is not None and upload.end_sent)
                resumable = self.resume_state.get(item.path, (0, False))[1]
                may_retry = not end_sent or resumable  # after UPLOAD_END: only as a resume
                if (
                    is_retryable(exc)
                    and may_retry
                    and tries < self.client.retries
                    and not _not_resumable(exc)
                ):
                    wait = backoff(tries)
                    how = "resuming" if resumable else "retrying"
                    log.info("%s: %s in %.1f s: %s", item.path, how, wait, exc)
                    tries += 1
                    if session is not None:
                        session.close()
                    session = None
                    if not self.cancelled.wait(wait):
                        continue
                    self.report(item, "failed", sent, total, error=INTERRUPTED)
                    return None
                why = str(exc)
                if end_sent and (is_network_error(exc) or _not_resumable(exc)):
                    why += (
                        " (after the whole image was sent: the server may have stored it; "
                        "check your list of images before sending it again)"
                    )
                self.report(item, "failed", sent, total, error=why)
                return session if session is not None and session.ready else None

    def _begin(
        self, item: SendItem, session: ClientSession, data: bytes | None, *, must_resume: bool
    ) -> OutgoingUpload:
        """A resumable upload when there is a store (it goes on from a record if there
        is one), else a plain one."""
        if self.store is not None:
            return session.begin_resumable_upload(
                item.path, self.store, sha256=self.sha256, must_resume=must_resume, data=data
            )
        return session.begin_upload(item.path, data=data, sha256=self.sha256)


def _is_resumable(upload: OutgoingUpload) -> bool:
    from imgshare.client.resume import ResumableUpload

    return isinstance(upload, ResumableUpload)


def _not_resumable(exc: BaseException) -> bool:
    from imgshare.client.resume import NotResumable

    return isinstance(exc, NotResumable)


def _too_large(size: int, limit: int) -> str:
    return (
        f"too large: {human_size(size)}, and the server takes at most "
        f"{human_size(limit)} an image (not sent)"
    )
