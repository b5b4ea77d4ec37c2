"""How bytes move: the listener, one thread per connection, TLS, deadlines and caps.

Measured choice (docs/design.md, decision 8): a thread per connection over
non-blocking TLS (``imgshare.server.channel``) in each of a few worker processes.
Blocking-style reads are more than twice as fast as asyncio's, and AES-GCM, hashing,
Pillow's decoders and file writes all release the GIL, so a busy upload does not
stall the others. An idle connection costs a sleeping thread and its small buffers.

The path of a connection: the accept loop only accepts (and does the housekeeping:
log summaries, removed users, reservation leases); the connection's own thread does
the TLS handshake, then feeds the sans-IO ``ServerConnection`` and hands each request
to its ``Session``, whose answers it writes: this layer is the only writer. While an
upload streams, each chunk record is read straight into a buffer that the ``Upload``
gives out and handed back to it whole; the upload wakes the reader if a chunk fails.

Deadlines, in order: the TLS handshake, the application handshake, the login (within
``login_timeout`` of the application handshake), then ``idle_timeout`` between
requests; while an image streams, the minimum transfer rate, both ways.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from imgshare.errors import (
    IntegrityError,
    LocalProtocolError,
    RemoteProtocolError,
    StorageError,
    StorageUnavailable,
)
from imgshare.logs import SummarizedLog, fields
from imgshare.protocol import Limits, ServerConnection, State
from imgshare.protocol import events as ev
from imgshare.protocol.constants import RECORD_HEADER_SIZE, ErrorCode
from imgshare.protocol.keys import SigningKey
from imgshare.server.answers import UNAVAILABLE
from imgshare.server.caps import ConnectionCaps, TooSlow, TransferMeter
from imgshare.server.channel import Channel, Woken
from imgshare.server.service import Service
from imgshare.server.session import Session
from imgshare.server.threads import ThreadReuse
from imgshare.store import User
from imgshare.store.catalog import now_ms
from imgshare.tls import client_certificate_name

log = logging.getLogger(__name__)

#: Idle and control traffic: one TLS record's worth, so idle connections stay small.
SMALL_READ = 16 * 1024
#: How often the accept loop checks that logged-in users still exist.
USER_CHECK_INTERVAL = 1.0
#: How often the accept loop renews the leases of its uploads' reservations.
LEASE_RENEWAL_INTERVAL = 30.0
#: How often the accept loop clears expired shares out (they stop working at once).
SHARE_EXPIRY_INTERVAL = 30.0
TRANSFER_STATES = frozenset({State.UPLOADING, State.UPLOADED, State.DOWNLOADING})
_NO_KEYS = frozenset({State.WAIT_CLIENT_HELLO, State.WAIT_CLIENT_FINISHED, State.CLOSED})


@dataclass(frozen=True)
class NetworkSettings:
    max_connections: int
    max_connections_per_address: int
    max_unauthenticated: int
    trusted_networks: Sequence[str]
    tls_handshake_timeout: float
    app_handshake_timeout: float
    login_timeout: float
    idle_timeout: float
    min_transfer_bytes: int
    transfer_window: float


@dataclass(frozen=True)
class Identity:
    """Who the server is: its TLS context and the certificate and key that sign the
    application handshake. Swapped whole on a reload; a connection keeps the one it
    started with."""

    ssl_context: ssl.SSLContext
    certificate_der: bytes
    signing_key: SigningKey


class _Timeout(Exception):
    """A deadline passed: ``str()`` says which, for the peer and the log."""


class ConnectionHandler:
    """One client connection, on its own thread, from TLS handshake to close."""

    def __init__(self, server: Server, raw: socket.socket, address: tuple[str, int]) -> None:
        self.server = server
        self.raw = raw
        self.address = address
        self.peer = f"{address[0]}:{address[1]}"
        self.busy = False  # a request is being handled: shutdown lets it finish
        self.session: Session | None = None
        self.revoked = False  # its user was removed
        self._logging_in = False
        self._counted_login = False
        self._login_deadline = 0.0
        self._channel: Channel | None = None
        self._conn: ServerConnection | None = None
        net = server.net
        self._meter = TransferMeter(net.min_transfer_bytes, net.transfer_window)
        self._small_buffer: memoryview | None = None

    @property
    def logging_in(self) -> bool:
        """A login is being checked: the login cap must not evict this connection."""
        return self._logging_in

    @property
    def failed_logins(self) -> int:
        """Logins this connection failed (it goes first when the login cap is full)."""
        return self.session.login_failures if self.session is not None else 0

    @property
    def user_id(self) -> int | None:
        session = self.session
        user = session.user if session is not None else None
        return user.id if user is not None else None

    def abort(self) -> None:
        """Cut the connection from another thread; the handler's wait returns."""
        try:
            socket.socket.shutdown(self.raw, socket.SHUT_RDWR)
        except OSError:
            pass  # already closed

    def revoke(self) -> None:
        """End the session of a user who was removed (from another thread)."""
        self.revoked = True
        self.abort()

    def run(self) -> None:
        try:
            identity = self.server.identity
            tls = self._tls_handshake(identity.ssl_context)
            if tls is None:
                return
            channel = self._channel = Channel(tls)
            conn = self._conn = ServerConnection(
                identity.certificate_der, identity.signing_key, limits=self.server.limits
            )
            self.session = Session(
                self.server.service,
                conn,
                self.peer,
                address=self.address[0],
                certificate_name=client_certificate_name(tls),
                on_login=self._logged_in,
            )
            self._serve(channel, conn, self.session)
        except (OSError, _Timeout, Woken) as exc:
            if self.revoked:
                log.info("session ended: its user was removed", extra=fields(peer=self.peer))
            else:
                log.debug("connection ended: %s", exc, extra=fields(peer=self.peer))
        except Exception:  # a bug must end one connection, never the server
            log.exception("internal error", extra=fields(peer=self.peer))
        finally:
            if self.session is not None:
                self.session.close()
            try:
                self.raw.close()
            except OSError:
                pass
            self.server.connection_ended(self)

    def _tls_handshake(self, context: ssl.SSLContext) -> ssl.SSLSocket | None:
        self.raw.settimeout(self.server.net.tls_handshake_timeout)
        try:
            tls = context.wrap_socket(self.raw, server_side=True, do_handshake_on_connect=False)
            self.raw = tls  # wrap_socket detached raw: abort() and close() must use tls
            tls.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            reason = (
                "timeout" if isinstance(exc, TimeoutError) else getattr(exc, "reason", None) or exc
            )
            self.server.events.event(
                "tls_failed", "TLS handshake failed", self.peer, reason=str(reason)
            )
            return None
        log.debug("connection", extra=fields(peer=self.peer, tls=tls.version()))
        return tls

    # -- writing: this layer is the only writer -----------------------------------------

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        """Send to the peer: at the minimum rate while an image streams, else within
        the idle timeout. Raises ``OSError``, ``TooSlow``, ``TimeoutError``."""
        if not data:
            return
        channel, conn = self._channel, self._conn
        assert channel is not None and conn is not None
        if conn.state in TRANSFER_STATES:
            channel.send_all(data, 0.0, progress=self._meter.moved, budget=self._meter.time_left)
        else:
            channel.send_all(data, self.server.net.idle_timeout)

    def _send(self, conn: ServerConnection, event: ev.Event) -> None:
        if isinstance(event, ev.Chunk):  # a download: sent from where it was read
            self._write(conn.send_chunk_header(event))
            self._write(event.data)
        else:
            self._write(conn.send(event))

    def _flush(self, conn: ServerConnection) -> None:
        self._write(conn.data_to_send())

    # -- reading ----------------------------------------------------------------------

    def _deadline_for(
        self, conn: ServerConnection, session: Session, handshake: float
    ) -> tuple[float, str]:
        """Seconds to wait for the peer's next bytes outside a transfer, and what to
        tell it when they run out. Raises ``_Timeout`` if none are left."""
        net = self.server.net
        if conn.state in (State.WAIT_CLIENT_HELLO, State.WAIT_CLIENT_FINISHED):
            deadline, what = handshake, "application handshake timeout"
        elif session.user is None:
            deadline = self._login_deadline
            what = f"not logged in within {net.login_timeout:g} s of the handshake"
        else:
            return net.idle_timeout, f"idle for {net.idle_timeout:g} s"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Timeout(what)
        return remaining, what

    def _serve(self, channel: Channel, conn: ServerConnection, session: Session) -> None:
        handshake_deadline = time.monotonic() + self.server.net.app_handshake_timeout
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError as exc:
                self.server.events.event(
                    "protocol_error", f"protocol error: {exc}", self.peer, code=exc.code
                )
                self._flush(conn)
                return
            if isinstance(event, ev.Event):
                if not self._dispatch(conn, session, event):
                    return
                continue
            self._flush(conn)
            if self.server.stopping.is_set() and conn.state is State.IDLE:
                stopping = ev.Error(ErrorCode.SHUTTING_DOWN, "server is stopping", fatal=True)
                self._write(conn.send(stopping))
                return
            try:
                self._receive(channel, conn, session, handshake_deadline)
            except (_Timeout, TooSlow) as exc:
                self._send_timeout(conn, exc)
                return
            except Woken:  # the upload found a chunk that does not verify
                upload = session.upload
                failure = upload.failure if upload is not None else None
                self._fatal(conn, failure or StorageError("upload failed"))
                return

    def _receive(
        self, channel: Channel, conn: ServerConnection, session: Session, handshake: float
    ) -> None:
        """Feed the connection the next bytes from the peer (b"" at end of stream).

        While an image streams, reads never go past the current record: then each
        chunk record's body is read whole, straight into a buffer the upload recycles,
        and lent to the protocol core uncopied; the transfer meter judges the rate.
        Otherwise one small piece is read, so an idle connection holds no big buffer.
        """
        wanted = conn.bytes_wanted
        if conn.state not in TRANSFER_STATES:
            timeout, what = self._deadline_for(conn, session, handshake)
            view = self._small()
            try:
                count = channel.recv_into(view, timeout)
            except TimeoutError:
                raise _Timeout(what) from None
            conn.receive_data(view[:count])
            return
        upload = session.upload
        wake = upload.wake_fd if upload is not None else None
        meter = self._meter
        if upload is not None and wanted > SMALL_READ and conn.buffered_bytes == RECORD_HEADER_SIZE:
            body = upload.buffer(wanted)
            got = channel.recv_into(
                body, 0.0, whole=True, wake=wake, progress=meter.moved, budget=meter.time_left
            )
            if got < wanted:  # cut off mid-record: let the core say so
                conn.receive_data(body[:got])
            else:
                conn.receive_record_body(body)
            return
        view = self._small()[: min(wanted, SMALL_READ)]
        count = channel.recv_into(
            view, 0.0, wake=wake, progress=meter.moved, budget=meter.time_left
        )
        conn.receive_data(view[:count])

    def _small(self) -> memoryview:
        if self._small_buffer is None:
            self._small_buffer = memoryview(bytearray(SMALL_READ))
        return self._small_buffer

    # -- answers ----------------------------------------------------------------------

    def _fatal(self, conn: ServerConnection, exc: BaseException | None) -> None:
        """Report a failure of the session's own work to the peer, fatally (``None``:
        a bug, already logged)."""
        if exc is None:
            error = ev.Error(ErrorCode.INTERNAL, "internal error in the server", fatal=True)
        elif isinstance(exc, IntegrityError):
            log.info("integrity failure: %s", exc, extra=fields(peer=self.peer))
            error = ev.Error(ErrorCode.INTEGRITY_FAILED, str(exc), fatal=True)
        elif isinstance(exc, StorageUnavailable):
            log.error("storage failure: %s", exc, extra=fields(peer=self.peer))
            error = ev.Error(ErrorCode.STORAGE_FAILED, UNAVAILABLE, fatal=True)
        else:
            log.error("storage failure: %s", exc, extra=fields(peer=self.peer))
            error = ev.Error(ErrorCode.STORAGE_FAILED, "storage failed", fatal=True)
        try:
            self._write(conn.send(error))
        except (OSError, TooSlow, LocalProtocolError):
            pass

    def _send_timeout(self, conn: ServerConnection, exc: Exception, *, tell: bool = True) -> None:
        """Log a deadline or rate failure and, if ``tell``, tell the peer why it is cut
        off (sealed: only once there are keys)."""
        reason = str(exc) or "timeout"
        self.server.events.event(
            "timeout", "timeout", self.peer, state=conn.state.value, reason=reason
        )
        if not tell or conn.state in _NO_KEYS:
            return
        channel = self._channel
        assert channel is not None
        try:  # best effort: the peer may not be reading at all
            channel.send_all(conn.send(ev.Error(ErrorCode.TIMEOUT, reason, fatal=True)), 1.0)
        except (OSError, LocalProtocolError):
            pass

    def _dispatch(self, conn: ServerConnection, session: Session, event: ev.Event) -> bool:
        """Handle one event; return False when the connection should end."""
        if isinstance(event, ev.HandshakeComplete):
            log.debug("app handshake complete", extra=fields(peer=self.peer))
            self._login_deadline = time.monotonic() + self.server.net.login_timeout
            self._flush(conn)
            return True
        if isinstance(event, ev.ConnectionClosed):
            return False
        if isinstance(event, ev.Error):
            log.info(
                "client reported error: %s",
                event.message,
                extra=fields(peer=self.peer, code=int(event.code)),
            )
            return not event.fatal
        if isinstance(event, ev.Chunk):
            return self._take_chunk(conn, session, event)
        self.busy = True
        self._logging_in = type(event) in Session.OPEN_REQUESTS
        self._meter.restart()  # a new request: a transfer, if any, starts now
        answered = False
        try:
            for answer in session.handle(event):
                answered = True
                self._send(conn, answer)
        except StorageUnavailable as exc:
            if answered:  # a download cut off mid-way: the session cannot go on
                self._fatal(conn, exc)
                return False
            log.warning("request not served: %s", exc, extra=fields(peer=self.peer))
            if isinstance(event, ev.UploadEnd):  # the image is not stored: drop all of it
                session.close()
                failed = f"the server could not store the image: {UNAVAILABLE}"
                self._send(conn, ev.Error(ErrorCode.STORAGE_FAILED, failed, fatal=False))
            else:  # nothing was done: a client that retries TRY_LATER rides it out
                self._send(conn, ev.Error(ErrorCode.TRY_LATER, UNAVAILABLE, retry_after_ms=2000))
        except (IntegrityError, StorageError) as exc:
            self._fatal(conn, exc)
            return False
        except TooSlow as exc:  # a download the peer does not read: cut it mid-record
            self._send_timeout(conn, exc, tell=False)
            return False
        except (OSError, Woken, _Timeout):
            raise
        except Exception:  # a bug: end this connection with a word, never the server
            log.exception("internal error", extra=fields(peer=self.peer))
            self._fatal(conn, None)
            return False
        finally:
            self._logging_in = False
            self.busy = conn.state not in (State.IDLE, State.CLOSED)
        return conn.state is not State.CLOSED

    def _take_chunk(self, conn: ServerConnection, session: Session, chunk: ev.Chunk) -> bool:
        upload = session.upload
        if upload is None:  # the state table makes this impossible
            self._fatal(conn, StorageError("a chunk without an upload"))
            return False
        try:
            upload.take(chunk)
        except (IntegrityError, StorageError) as exc:
            self._fatal(conn, exc)
            return False
        return True

    def _logged_in(self, user: User) -> None:
        """From now on this connection no longer counts against the login cap."""
        if not self._counted_login:
            self._counted_login = True
            self.server.logged_in(self)


class Server:
    """Accepts connections and runs a ``ConnectionHandler`` thread for each."""

    def __init__(
        self,
        service: Service,
        identity: Identity,
        net: NetworkSettings,
        limits: Limits,
        listener: socket.socket,
        *,
        stopping: threading.Event | None = None,
    ) -> None:
        self.service = service
        self.identity = identity
        self.net = net
        self.limits = limits
        self.events: SummarizedLog = service.events
        self._listener = listener
        self._caps = ConnectionCaps(
            net.max_connections,
            net.max_connections_per_address,
            net.max_unauthenticated,
            net.trusted_networks,
        )
        self._handlers: set[ConnectionHandler] = set()
        self._threads = ThreadReuse()
        self._lock = threading.Lock()
        self._all_gone = threading.Condition(self._lock)
        self._next_user_check = 0.0
        self._next_renewal = time.monotonic() + LEASE_RENEWAL_INTERVAL
        self._next_share_expiry = 0.0
        self._chores: list[Callable[[], None]] = []
        self.stopping = stopping or threading.Event()

    def on_housekeeping(self, chore: Callable[[], None]) -> None:
        """Run ``chore`` on the accept loop's thread between accepts (a few times a
        second): what a signal asked for, for example."""
        self._chores.append(chore)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def not_logged_in(self) -> int:
        """Connections that have not logged in yet."""
        return self._caps.not_logged_in

    def reload(self, identity: Identity) -> None:
        """Use ``identity`` for new connections; open ones keep theirs."""
        self.identity = identity
        log.info("certificate and key reloaded")

    def serve_forever(self, poll_interval: float = 0.2) -> None:
        """Accept until ``stop()``; the accepting thread never does a TLS handshake."""
        self._listener.settimeout(poll_interval)
        while not self.stopping.is_set():
            self._housekeeping()
            try:
                raw, address = self._listener.accept()
            except (TimeoutError, BlockingIOError):
                continue  # another worker took it, or nobody came
            except OSError as exc:
                if self.stopping.is_set():
                    break
                log.warning("accept failed: %s", exc)
                time.sleep(poll_interval)  # e.g. out of file descriptors: don't spin
                continue
            self._start(raw, address)

    def _housekeeping(self) -> None:
        self.events.flush()
        for chore in self._chores:
            chore()
        now = time.monotonic()
        try:
            if now >= self._next_user_check:
                self._next_user_check = now + USER_CHECK_INTERVAL
                self.end_sessions_of_removed_users()
            if now >= self._next_renewal:
                self._next_renewal = now + LEASE_RENEWAL_INTERVAL
                self.service.store.renew()
            if now >= self._next_share_expiry:
                self._next_share_expiry = now + SHARE_EXPIRY_INTERVAL
                self.expire_shares()
        except StorageError as exc:
            log.warning("housekeeping failed: %s", exc)

    def expire_shares(self) -> int:
        """Remove shares whose time is up and record each in the audit trail (they
        stopped working at their expiry already); return how many."""
        catalog = self.service.catalog
        now = now_ms()
        expired = catalog.expire_shares(now)
        for image_id, owner, user in expired:
            self.service.audit.record("share_expired", owner, None, now, image=image_id, to=user)
        return len(expired)

    def end_sessions_of_removed_users(self) -> int:
        """Cut every session whose user no longer exists; return how many."""
        with self._lock:
            sessions = [(h, h.user_id) for h in self._handlers]
        ids = {user_id for _, user_id in sessions if user_id is not None}
        if not ids:
            return 0
        gone = ids - self.service.catalog.existing_user_ids(ids)
        ended = 0
        for handler, user_id in sessions:
            if user_id in gone:
                handler.revoke()
                ended += 1
        return ended

    def _start(self, raw: socket.socket, address: tuple[str, int]) -> None:
        handler = ConnectionHandler(self, raw, address)
        refusal, evicted = self._caps.acquire(handler, address[0])
        if refusal is not None:
            self.events.event("refused", f"connection refused: {refusal}", handler.peer)
            raw.close()
            return
        if evicted is not None:
            self.events.event(
                "evicted", "connection that had not logged in made room for a new one", evicted.peer
            )
            evicted.abort()
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._handlers.add(handler)
        try:
            self._threads.run(handler.run)
        except RuntimeError:  # cannot start a thread: refuse this one
            log.error("cannot start a connection thread", extra=fields(peer=handler.peer))
            raw.close()
            self.connection_ended(handler)

    def logged_in(self, handler: ConnectionHandler) -> None:
        self._caps.logged_in(handler, handler.address[0])

    def connection_ended(self, handler: ConnectionHandler) -> None:
        with self._lock:
            if handler in self._handlers:
                self._handlers.discard(handler)
                self._caps.release(handler, handler.address[0])
            if not self._handlers:
                self._all_gone.notify_all()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._handlers)

    def stop(self, grace: float) -> None:
        """Stop accepting; cut idle connections; give transfers ``grace`` seconds."""
        self.stopping.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            handlers = list(self._handlers)
        for handler in handlers:
            if not handler.busy:
                handler.abort()
        remaining = self._wait_for_handlers(grace)
        for handler in remaining:
            handler.abort()  # their uploads roll back in Session.close()
        self._wait_for_handlers(5.0)
        self._threads.close()
        self.events.flush(force=True)
        log.info("stopped", extra=fields(rolled_back=len(remaining)))

    def _wait_for_handlers(self, seconds: float) -> list[ConnectionHandler]:
        """Wait up to ``seconds`` for every connection to end; return those still open."""
        deadline = time.monotonic() + seconds
        with self._lock:
            while self._handlers and time.monotonic() < deadline:
                self._all_gone.wait(timeout=max(0.0, deadline - time.monotonic()))
            return list(self._handlers)
