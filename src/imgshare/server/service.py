"""What a request does: login, upload, download and list, for one session.

``Service`` holds what all sessions share (catalog, blob store, inbox, keys, limits);
``Session`` answers the events of one connection. Neither touches a socket: the
network layer feeds events in and sends the bytes handed to ``send``. The upload path
keeps the order that makes "acknowledged means durable" true: object committed,
inbox copy committed, catalog row committed, and only then the signed receipt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from imgshare.errors import AuthError, ImageError, QuotaError, StorageError, TryLaterError
from imgshare.logs import SummarizedLog, fields
from imgshare.protocol import ServerConnection, StreamOpener
from imgshare.protocol import events as ev
from imgshare.protocol.constants import MAX_RETRY_AFTER_MS, TAG_SIZE, ErrorCode
from imgshare.protocol.stream import UploadHeader
from imgshare.server import images
from imgshare.server.accounts import Accounts
from imgshare.server.pipeline import Pipeline, memory_for
from imgshare.server.uploads import Reservation, UploadSlots
from imgshare.store import (
    AtomicFile,
    BlobStore,
    Catalog,
    ImageRecord,
    Inbox,
    StorageKey,
    User,
    inbox_filename,
)
from imgshare.store.catalog import now_ms
from imgshare.store.lock import DataFolderLock

log = logging.getLogger(__name__)

#: Image checks at once: a decode holds a whole frame in memory, and more decodes than
#: cores buy nothing.
CONCURRENT_VALIDATIONS = max(2, os.cpu_count() or 2)


@dataclass
class Service:
    """Everything the sessions share. Thread-safe: every part is."""

    catalog: Catalog
    blobs: BlobStore
    inbox: Inbox | None
    storage_key: StorageKey
    accounts: Accounts
    image_policy: images.ImagePolicy
    uploads: UploadSlots
    max_login_failures: int = 5
    validations: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(CONCURRENT_VALIDATIONS)
    )
    #: Events an attacker can cause, logged at a bounded rate (the server flushes it).
    events: SummarizedLog = field(
        default_factory=lambda: SummarizedLog(logging.getLogger("imgshare.server.network"))
    )
    #: The data folder's lock, held until ``close``.
    lock: DataFolderLock | None = None

    def close(self) -> None:
        """Close the catalog and let the data folder go (idempotent)."""
        self.catalog.close()
        if self.lock is not None:
            self.lock.release()


class Upload:
    """One image arriving: opened chunk by chunk, written sealed and in plaintext."""

    def __init__(
        self, service: Service, user: User, begin: ev.UploadBegin, reservation: Reservation
    ) -> None:
        """Raises ``StorageError`` if the sealed object cannot be created; the caller
        releases ``reservation`` then, and the upload does from here on."""
        self.service = service
        self.user = user
        self.header = begin.header
        self._reservation = reservation
        self.image_id = os.urandom(16)
        self._content_key = begin.content_key
        self._opener = StreamOpener(begin.header, begin.content_key)
        self._sealed = service.blobs.create(self.image_id.hex())
        self._plain: AtomicFile | None = None
        self._scratch: BinaryIO | None = None
        self._inbox_name: str | None = None
        self.rejection: tuple[ErrorCode, str] | None = None
        self._committed: list[Callable[[], object]] = []  # how to undo each commit
        # One plaintext buffer, reused by every chunk (on the pipeline thread).
        self._plaintext = memoryview(bytearray(min(self.header.chunk_size, self.header.size)))
        self._pipeline = Pipeline(self._store_chunk)

    def chunk_buffer(self, size: int) -> memoryview:
        """A recycled buffer to receive the next chunk record into (see ``add_chunk``)."""
        return self._pipeline.buffer(size)

    def add_chunk(self, data: bytes | bytearray | memoryview) -> None:
        """Hand one chunk to the pipeline thread; raises ``IntegrityError`` (fatal) if an
        earlier chunk did not verify. A ``chunk_buffer`` must not be used afterwards."""
        self._pipeline.submit(data)

    def check(self) -> None:
        """Raise ``IntegrityError`` now if a chunk already failed to verify."""
        self._pipeline.check()

    def _store_chunk(self, data: bytes | bytearray | memoryview) -> None:
        """Open, check and store one chunk (on the pipeline thread)."""
        plaintext = self._opener.open(data, into=self._plaintext)
        if self.rejection is not None:
            return  # keep checking the stream, store nothing more
        try:
            if self._opener.next_index == 1:
                self._open_plaintext(plaintext)
                if self.rejection is not None:
                    return
            self._sealed.write(data)
            self._write_plain(plaintext)
        except StorageError as exc:
            self._reject(ErrorCode.STORAGE_FAILED, str(exc))

    def _open_plaintext(self, head: bytes | memoryview) -> None:
        extension = images.sniff_extension(head)
        if extension is None:
            self._reject(ErrorCode.NOT_AN_IMAGE, "not an image in an accepted format")
            return
        inbox = self.service.inbox
        if inbox is not None:
            self._inbox_name = inbox_filename(self.image_id.hex(), extension)
            self._plain = inbox.create(self.user.name, self._inbox_name)
        else:
            self._scratch = self.service.blobs.scratch_file()

    def _write_plain(self, plaintext: bytes | memoryview) -> None:
        if self._plain is not None:
            self._plain.write(plaintext)
        elif self._scratch is not None:
            try:
                self._scratch.write(plaintext)
            except OSError as exc:
                raise StorageError(f"cannot write scratch file: {exc.strerror}") from exc

    def _reject(self, code: ErrorCode, reason: str) -> None:
        self.rejection = (code, reason)
        self.abort()

    def finish(self, end: ev.UploadEnd) -> ev.ReceiptBody:
        """Check the HMAC, validate the image, make it durable; return the receipt body.

        Raises ``IntegrityError`` (fatal), ``ImageError`` or ``StorageError`` (answered
        with a non-fatal error); on any failure nothing of the upload remains.
        """
        try:
            self._pipeline.close()
            mac = self._opener.finish(end.hmac)
            log.info(
                "HMAC of image on server side: %s",
                mac.hex(),
                extra=fields(user=self.user.name, upload=self.header.upload_id.hex()),
            )
            if self.rejection is not None:
                code, reason = self.rejection
                raise (StorageError if code is ErrorCode.STORAGE_FAILED else ImageError)(reason)
            info = self._validate()
            self._commit_files()
            record = self._record(info, mac)
            # A failed commit may still reach the disk (an fsync error after the write):
            # take the row back too, so that it cannot come back without its files.
            self._committed.append(lambda: self.service.catalog.delete_image(record.id))
            self.service.catalog.add_image(record)
        except BaseException:
            self.abort()
            raise
        finally:
            self._committed.clear()
            self._let_go()
        return ev.ReceiptBody(
            image_id=self.image_id,
            upload_id=self.header.upload_id,
            size=self.header.size,
            hmac=mac,
            header_sha256=hashlib.sha256(self.header.encode()).digest(),
            server_time_ms=record.created_at,
            username=self.user.name,
        )

    def _commit_files(self) -> None:
        """Make the sealed object and the inbox copy durable, remembering how to take
        each back: until the catalog row commits, a failure removes them again."""
        image_id = self.image_id.hex()
        self._sealed.commit()
        self._committed.append(lambda: self.service.blobs.delete(image_id))
        if self._plain is not None and self._inbox_name is not None:
            inbox, name = self.service.inbox, self._inbox_name
            assert inbox is not None
            self._plain.commit()
            self._committed.append(lambda: inbox.delete(self.user.name, name))

    def _undo_commits(self) -> None:
        """Take back what was made visible, newest first (the catalog row, then the
        plaintext, then the sealed object); never raises."""
        for undo in reversed(self._committed):
            try:
                undo()
            except StorageError as exc:  # left for the start-up sweep
                log.error("cannot take back part of a failed upload: %s", exc)
        if self._committed and self._inbox_name is not None and self.service.inbox is not None:
            self.service.inbox.remove_empty_folder(self.user.name)
        self._committed.clear()

    def _validate(self) -> images.ImageInfo:
        with self.service.validations:
            if self._plain is not None:
                with self._plain.reopen() as written:
                    return images.validate_image(written, self.service.image_policy)
            assert self._scratch is not None
            self._scratch.seek(0)
            return images.validate_image(self._scratch, self.service.image_policy)

    def _record(self, info: images.ImageInfo, mac: bytes) -> ImageRecord:
        return ImageRecord(
            id=self.image_id.hex(),
            owner_id=self.user.id,
            name=self.header.name,
            size=self.header.size,
            hmac=mac,
            format=info.format,
            width=info.width,
            height=info.height,
            header=self.header.encode(),
            wrapped_key=self.service.storage_key.wrap(self._content_key, self.image_id),
            inbox_name=self._inbox_name,
            created_at=now_ms(),
        )

    def abort(self) -> None:
        """Throw away everything written so far, committed files included (idempotent)."""
        if threading.current_thread() is not self._pipeline.thread:
            self._pipeline.cancel()
        self._sealed.abort()
        if self._plain is not None:
            self._plain.abort()
        self._undo_commits()
        self._let_go()

    def _let_go(self) -> None:
        """Release what the upload holds besides its files (idempotent): the scratch
        file, its reservation and, once the pipeline has stopped, its buffer."""
        if self._scratch is not None:
            self._scratch.close()
            self._scratch = None
        self.service.uploads.release(self._reservation)
        if not self._pipeline.thread.is_alive():
            self._plaintext = memoryview(b"")


class Session:
    """Answers the requests of one connection. ``send`` carries bytes to the peer."""

    def __init__(
        self,
        service: Service,
        conn: ServerConnection,
        send: Callable[[bytes], None],
        peer: str,
        *,
        address: str | None = None,
        authenticated_user: User | None = None,
        on_login: Callable[[User], None] | None = None,
    ) -> None:
        """``on_login`` is told of a successful login before the client hears of it."""
        self.service = service
        self.conn = conn
        self._send = send
        self.peer = peer
        self.address = address  # the client's IP address, for the login throttle
        self.user = authenticated_user
        self._on_login = on_login
        self.upload: Upload | None = None
        self.login_failures = 0

    def reply(self, event: ev.Event) -> None:
        self._send(self.conn.send(event))

    def fail(self, code: ErrorCode, message: str) -> None:
        self.reply(ev.Error(code, message, fatal=False))

    def try_later(self, exc: TryLaterError) -> None:
        retry_after_ms = min(MAX_RETRY_AFTER_MS, max(1, round(exc.retry_after * 1000)))
        self.reply(ev.Error(ErrorCode.TRY_LATER, str(exc), retry_after_ms=retry_after_ms))

    def handle(self, event: ev.Event) -> None:
        """Answer one event. Raises ``IntegrityError`` for a tampered upload (fatal).

        Every request type is answered here, or refused as UNSUPPORTED.
        """
        if isinstance(event, ev.Chunk):
            if self.upload is not None:
                self.upload.add_chunk(event.data)
            return
        if not isinstance(event, ev.Login) and not self._user_still_exists():
            return
        match event:
            case ev.Login():
                self._login(event)
            case ev.UploadBegin():
                self._upload_begin(event)
            case ev.UploadEnd():
                self._upload_end(event)
            case ev.Download():
                self._download(event)
            case ev.ListImages():
                self._list()
            case _:
                self.fail(ErrorCode.UNSUPPORTED, f"{type(event).__name__} is not supported yet")

    def _user_still_exists(self) -> bool:
        """Re-check the session's user before each request: user ids are never reused,
        so a removed user's open session ends here instead of reaching anyone else."""
        if self.user is None or self.service.catalog.get_user(self.user.id) is not None:
            return True
        log.warning(
            "session ended: its user was removed",
            extra=fields(event="user_gone", peer=self.peer, user=self.user.name),
        )
        self.close()
        self.reply(ev.Error(ErrorCode.AUTH_REQUIRED, "this account no longer exists", fatal=True))
        return False

    def chunk_buffer(self, size: int) -> memoryview | None:
        """Where to receive a chunk record of ``size`` bytes without copying it later:
        a buffer the upload recycles, or None outside an upload."""
        return self.upload.chunk_buffer(size) if self.upload is not None else None

    def check_upload(self) -> None:
        """Raise what the upload's pipeline found so far (``IntegrityError``)."""
        if self.upload is not None:
            self.upload.check()

    def close(self) -> None:
        """The connection ended: a half-received upload leaves nothing behind."""
        if self.upload is not None:
            self.upload.abort()
            self.upload = None

    def _login(self, event: ev.Login) -> None:
        try:
            user = self.service.accounts.authenticate(event.username, event.password, self.address)
        except TryLaterError as exc:
            self.service.events.event(
                "login_deferred", f"login deferred: {exc}", self.peer, user=event.username
            )
            self.try_later(exc)
            return
        except AuthError:
            self.login_failures += 1
            if self.login_failures >= self.service.max_login_failures:
                self.reply(ev.Error(ErrorCode.AUTH_FAILED, "too many failed logins", fatal=True))
                return
            self.fail(ErrorCode.AUTH_FAILED, "invalid username or password")
            return
        self.user = user
        if self._on_login is not None:
            self._on_login(user)
        log.info("login", extra=fields(peer=self.peer, user=user.name))
        self.reply(ev.LoginOk(user.name))

    def _upload_begin(self, event: ev.UploadBegin) -> None:
        if self.user is None:
            self.fail(ErrorCode.AUTH_REQUIRED, "log in first")
            return
        header = event.header
        buffers = memory_for(min(header.chunk_size, header.size) + TAG_SIZE)
        try:
            reservation = self.service.uploads.reserve(
                self.user.id, header.size, buffers + min(header.chunk_size, header.size)
            )
        except TryLaterError as exc:
            self.service.events.event(
                "upload_deferred", f"upload deferred: {exc}", self.peer, user=self.user.name
            )
            self.try_later(exc)
            return
        except QuotaError as exc:
            log.info("upload rejected", extra=fields(user=self.user.name, reason="quota"))
            self.fail(ErrorCode.QUOTA_EXCEEDED, str(exc))
            return
        try:
            self.upload = Upload(self.service, self.user, event, reservation)
        except StorageError as exc:
            self.service.uploads.release(reservation)
            log.error("cannot start upload: %s", exc, extra=fields(user=self.user.name))
            self.fail(ErrorCode.STORAGE_FAILED, "the server cannot store images right now")
            return
        self.reply(ev.UploadReady(0))

    def _upload_end(self, event: ev.UploadEnd) -> None:
        upload, self.upload = self.upload, None
        assert upload is not None and self.user is not None  # the state table guarantees it
        context = fields(user=self.user.name, peer=self.peer, name=upload.header.name)
        try:
            body = upload.finish(event)
        except ImageError as exc:
            log.info("upload rejected: %s", exc, extra=context)
            self.fail(ErrorCode.NOT_AN_IMAGE, str(exc))
            return
        except StorageError as exc:
            log.error("upload not stored: %s", exc, extra=context)
            self.fail(ErrorCode.STORAGE_FAILED, "the server could not store the image")
            return
        log.info(
            "image received",
            extra=fields(id=body.image_id.hex(), size=body.size, **context["fields"]),
        )
        self.reply(self.conn.sign_receipt(body))

    def _download(self, event: ev.Download) -> None:
        if self.user is None:
            self.fail(ErrorCode.AUTH_REQUIRED, "log in first")
            return
        record = self.service.catalog.get_image(event.image_id.hex())
        if record is None or record.owner_id != self.user.id:
            self.fail(ErrorCode.NOT_FOUND, "no such image")
            return
        header = UploadHeader.parse(record.header)
        content_key = self.service.storage_key.unwrap(record.wrapped_key, event.image_id)
        with self.service.blobs.open(record.id) as stored:
            self.reply(ev.DownloadBegin(event.image_id, header, content_key))
            for index in range(header.chunk_count):
                data = stored.read(header.plaintext_length(index) + TAG_SIZE)
                if len(data) != header.plaintext_length(index) + TAG_SIZE:
                    raise StorageError(f"stored object {record.id} is truncated")
                last = index == header.chunk_count - 1
                self.reply(ev.Chunk(index, data, last))
        self.reply(ev.DownloadEnd(record.hmac))
        log.info("image sent", extra=fields(id=record.id, user=self.user.name, peer=self.peer))

    def _list(self) -> None:
        if self.user is None:
            self.fail(ErrorCode.AUTH_REQUIRED, "log in first")
            return
        entries = tuple(
            ev.ImageEntry(bytes.fromhex(r.id), r.size, r.created_at, r.hmac, self.user.name, r.name)
            for r in self.service.catalog.list_images(self.user.id)[-1000:]
        )
        self.reply(ev.ImageList(entries))
