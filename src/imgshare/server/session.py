"""What a request does: one connection's session, from its login to its last request.

``Session.handle(event)`` answers one request by yielding the events to send, in order
(a download yields its begin, its chunks and its end); the network layer encodes and
writes them, and is the only writer. Chunks of an upload do not come here: once
``UPLOAD_READY`` is sent, the network layer hands them to ``session.upload``
(``imgshare.server.upload.Upload``) itself.

Every request type the protocol lets a client send is in ``Session.HANDLERS``, handled
or refused (UNSUPPORTED) explicitly; a test checks the table against the protocol's
state machine, so a new request type can never be silently ignored. Before every
request but LOGIN the session re-checks that its user still exists (user ids are never
reused), so a removed user's open session ends at its next request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import ClassVar

from imgshare.errors import AuthError, ImageError, QuotaError, StorageError, TryLaterError
from imgshare.logs import fields
from imgshare.protocol import ServerConnection
from imgshare.protocol import events as ev
from imgshare.protocol.constants import MAX_LIST_ENTRIES, MAX_RETRY_AFTER_MS, TAG_SIZE, ErrorCode
from imgshare.server.service import Service
from imgshare.server.upload import Upload, buffer_memory
from imgshare.store import User

log = logging.getLogger(__name__)

Answers = Iterator[ev.Event]


def _error(code: ErrorCode, message: str) -> ev.Error:
    return ev.Error(code, message, fatal=False)


def try_later(exc: TryLaterError) -> ev.Error:
    """The TRY_LATER answer for ``exc``, with its retry hint."""
    retry_after_ms = min(MAX_RETRY_AFTER_MS, max(1, round(exc.retry_after * 1000)))
    return ev.Error(ErrorCode.TRY_LATER, str(exc), retry_after_ms=retry_after_ms)


class Session:
    """Answers the requests of one connection (see the module docstring)."""

    def __init__(
        self,
        service: Service,
        conn: ServerConnection,
        peer: str,
        *,
        address: str | None = None,
        authenticated_user: User | None = None,
        on_login: Callable[[User], None] | None = None,
    ) -> None:
        """``on_login`` is told of a successful login before the client hears of it."""
        self.service = service
        self.conn = conn
        self.peer = peer
        self.address = address  # the client's IP address, for the login throttle
        self.user = authenticated_user
        self.upload: Upload | None = None
        self.login_failures = 0
        self._on_login = on_login

    def handle(self, event: ev.Event) -> Answers:
        """Answer one request: yield the events to send. Raises ``IntegrityError`` for a
        tampered upload and ``StorageError`` for a broken store (both fatal)."""
        handler = self.HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"{type(event).__name__} is not a request")
        if not isinstance(event, ev.Login) and not self._user_still_exists():
            yield ev.Error(ErrorCode.AUTH_REQUIRED, "this account no longer exists", fatal=True)
            return
        yield from handler(self, event)

    def close(self) -> None:
        """The connection ended: a half-received upload leaves nothing behind."""
        upload, self.upload = self.upload, None
        if upload is not None:
            upload.abort()

    def _user_still_exists(self) -> bool:
        if self.user is None or self.service.catalog.get_user(self.user.id) is not None:
            return True
        log.warning(
            "session ended: its user was removed",
            extra=fields(event="user_gone", peer=self.peer, user=self.user.name),
        )
        self.close()
        return False

    # -- requests ---------------------------------------------------------------------

    def _login(self, event: ev.Event) -> Answers:
        assert isinstance(event, ev.Login)
        try:
            user = self.service.accounts.authenticate(event.username, event.password, self.address)
        except TryLaterError as exc:
            self.service.events.event(
                "login_deferred", f"login deferred: {exc}", self.peer, user=event.username
            )
            yield try_later(exc)
            return
        except AuthError:
            self.login_failures += 1
            if self.login_failures >= self.service.max_login_failures:
                yield ev.Error(ErrorCode.AUTH_FAILED, "too many failed logins", fatal=True)
            else:
                yield _error(ErrorCode.AUTH_FAILED, "invalid username or password")
            return
        self.user = user
        if self._on_login is not None:
            self._on_login(user)
        log.info("login", extra=fields(peer=self.peer, user=user.name))
        yield ev.LoginOk(user.name)

    def _upload_begin(self, event: ev.Event) -> Answers:
        assert isinstance(event, ev.UploadBegin)
        user = self.user
        if user is None:
            yield _error(ErrorCode.AUTH_REQUIRED, "log in first")
            return
        header = event.header
        try:
            memory = self.service.upload_memory.hold(buffer_memory(header.chunk_size, header.size))
        except TryLaterError as exc:
            self.service.events.event(
                "upload_deferred", f"upload deferred: {exc}", self.peer, user=user.name
            )
            yield try_later(exc)
            return
        try:
            pending = self.service.store.begin(user, header, event.content_key)
            self.upload = Upload(self.service, event, pending, memory)
        except TryLaterError as exc:
            memory.release()
            self.service.events.event(
                "upload_deferred", f"upload deferred: {exc}", self.peer, user=user.name
            )
            yield try_later(exc)
            return
        except QuotaError as exc:
            memory.release()
            log.info("upload rejected", extra=fields(user=user.name, reason="quota"))
            yield _error(ErrorCode.QUOTA_EXCEEDED, str(exc))
            return
        except StorageError as exc:
            memory.release()
            log.error("cannot start upload: %s", exc, extra=fields(user=user.name))
            yield _error(ErrorCode.STORAGE_FAILED, "the server cannot store images right now")
            return
        yield ev.UploadReady(0)

    def _upload_end(self, event: ev.Event) -> Answers:
        assert isinstance(event, ev.UploadEnd)
        upload, self.upload = self.upload, None
        if upload is None or self.user is None:  # the state table makes this impossible
            raise StorageError("UPLOAD_END without an upload")
        context = fields(user=self.user.name, peer=self.peer, name=upload.header.name)
        try:
            body = upload.finish(event)
        except ImageError as exc:
            log.info("upload rejected: %s", exc, extra=context)
            yield _error(ErrorCode.NOT_AN_IMAGE, str(exc))
            return
        except StorageError as exc:
            log.error("upload not stored: %s", exc, extra=context)
            yield _error(ErrorCode.STORAGE_FAILED, "the server could not store the image")
            return
        log.info(
            "image received",
            extra=fields(id=body.image_id.hex(), size=body.size, **context["fields"]),
        )
        yield self.conn.sign_receipt(body)

    def _download(self, event: ev.Event) -> Answers:
        assert isinstance(event, ev.Download)
        user = self.user
        if user is None:
            yield _error(ErrorCode.AUTH_REQUIRED, "log in first")
            return
        record = self.service.catalog.get_image(event.image_id.hex())
        if record is None or record.owner_id != user.id:
            yield _error(ErrorCode.NOT_FOUND, "no such image")
            return
        opened = self.service.store.open(record)
        header = opened.header
        with opened.sealed as stored:
            yield ev.DownloadBegin(event.image_id, header, opened.content_key)
            # One buffer for every chunk: the network layer sends each chunk before it
            # asks for the next.
            buffer = memoryview(bytearray(min(header.chunk_size, header.size) + TAG_SIZE))
            for index in range(header.chunk_count):
                want = header.plaintext_length(index) + TAG_SIZE
                if stored.readinto(buffer[:want]) != want:
                    raise StorageError(f"stored object {opened.record.id} is truncated")
                yield ev.Chunk(index, buffer[:want], index == header.chunk_count - 1)
        yield ev.DownloadEnd(opened.record.hmac)
        log.info("image sent", extra=fields(id=opened.record.id, user=user.name, peer=self.peer))

    def _list(self, event: ev.Event) -> Answers:
        user = self.user
        if user is None:
            yield _error(ErrorCode.AUTH_REQUIRED, "log in first")
            return
        records = self.service.catalog.list_images(user.id)[-MAX_LIST_ENTRIES:]
        yield ev.ImageList(
            tuple(
                ev.ImageEntry(bytes.fromhex(r.id), r.size, r.created_at, r.hmac, user.name, r.name)
                for r in records
            )
        )

    def _unsupported(self, event: ev.Event) -> Answers:
        yield _error(ErrorCode.UNSUPPORTED, f"{type(event).__name__} is not supported yet")

    #: Every request a client may send, and what answers it.
    HANDLERS: ClassVar[dict[type[ev.Event], Callable[[Session, ev.Event], Answers]]] = {
        ev.Login: _login,
        ev.UploadBegin: _upload_begin,
        ev.UploadEnd: _upload_end,
        ev.Download: _download,
        ev.ListImages: _list,
        ev.Register: _unsupported,
        ev.TokenLogin: _unsupported,
        ev.Share: _unsupported,
        ev.Delete: _unsupported,
    }
