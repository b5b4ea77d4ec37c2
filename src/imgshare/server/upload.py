"""One image arriving: the network layer's one object for its inbound chunks.

When an upload is accepted, the connection hands every chunk record to its
``Upload``: the upload gives the buffers to read them into (``buffer``), takes each
full chunk (``take``), and, when a chunk fails to verify, wakes the reader through
``wake_fd`` at once, so the peer hears of it even while it waits for an answer. The
chunks themselves are opened, checked and written on a pipeline beside the
connection's thread (``imgshare.server.pipeline``), into the store's transaction
(``imgshare.store.PendingImage``).

What can go wrong, and when the client hears of it:

* a chunk or the HMAC does not verify: ``IntegrityError``, fatal, at once;
* the first chunk is not an image in an allowed format, or the disk fails: the rest of
  the stream is still checked, nothing more is written, and UPLOAD_END is answered
  with a non-fatal error (so the server never interrupts a stream);
* the finished file fails the image check: UPLOAD_END is answered NOT_AN_IMAGE.

On every failure nothing of the upload remains (``PendingImage.abort``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os

from imgshare.errors import ImageError, IntegrityError, StorageError, StorageUnavailable
from imgshare.logs import fields
from imgshare.protocol import StreamOpener
from imgshare.protocol import events as ev
from imgshare.protocol.constants import TAG_SIZE, ErrorCode
from imgshare.protocol.stream import UploadHeader
from imgshare.server import images
from imgshare.server.pipeline import Pipeline, PipelineCancelled, memory_for
from imgshare.server.service import Service
from imgshare.server.uploads import MemoryHold
from imgshare.store import ImageRecord, PendingImage, User

log = logging.getLogger(__name__)

#: Images up to this size are opened and written on the connection's own thread: for
#: a photo, handing each chunk to another thread costs more CPU (wake-ups, the GIL
#: changing hands) than overlapping the work saves; many photos at once keep the cores
#: busy anyway. Larger images get the pipeline beside the connection.
INLINE_UP_TO = 16 * 1024 * 1024


def buffer_memory(header_chunk_size: int, size: int) -> int:
    """What an upload's buffers may hold: the pipeline's recycled chunk records and
    one plaintext buffer."""
    chunk = min(header_chunk_size, size)
    return memory_for(chunk + TAG_SIZE) + chunk


class Upload:
    """One image arriving (see the module docstring); used by one connection thread,
    except ``abort``, which any thread may call."""

    def __init__(
        self,
        service: Service,
        begin: ev.UploadBegin | ev.UploadResume,
        pending: PendingImage,
        memory: MemoryHold,
    ) -> None:
        """``begin`` and ``pending`` of a resumed upload (UPLOAD_RESUME,
        ``ImageStore.resume``): then ``rebuild`` must run before chunks come."""
        self.service = service
        self.header = begin.header
        self.pending = pending
        self._memory = memory
        self._opener = StreamOpener(begin.header, begin.content_key)
        self.rejection: tuple[ErrorCode, str] | None = None
        self._unavailable = False  # the rejection: the database or the bucket was down
        self._plaintext: memoryview | None = None  # made by the first chunk, then reused
        self.wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._pipeline = Pipeline(
            self._store_chunk,
            threads=service.pipeline_threads,
            on_failure=self._wake,
            inline=self.header.size <= INLINE_UP_TO,
        )

    # -- the network layer's side -----------------------------------------------------

    def buffer(self, size: int) -> memoryview:
        """A recycled buffer to read the next chunk record into; ``take`` it next."""
        return self._pipeline.buffer(size)

    def take(self, chunk: ev.Chunk) -> None:
        """Hand one verified-in-order chunk to the pipeline. Raises ``IntegrityError``
        (fatal) if an earlier chunk did not verify."""
        self._pipeline.submit(chunk.data)

    @property
    def failure(self) -> BaseException | None:
        """Why the reader was woken: a chunk that did not verify, if any."""
        error = self._pipeline.error
        return None if isinstance(error, PipelineCancelled) else error

    def _wake(self, exc: BaseException) -> None:
        with contextlib.suppress(OSError):
            os.eventfd_write(self.wake_fd, 1)

    # -- the pipeline's side ----------------------------------------------------------

    def _store_chunk(self, data: bytes | bytearray | memoryview) -> None:
        """Open, check and store one chunk (on the pipeline's thread)."""
        if self._plaintext is None:
            self._plaintext = memoryview(bytearray(min(self.header.chunk_size, self.header.size)))
        plaintext = self._opener.open(data, into=self._plaintext)
        if self.rejection is not None:
            return  # keep checking the stream, store nothing more
        try:
            if self._opener.next_index == 1:
                extension = images.sniff_extension(plaintext, self.service.image_policy)
                if extension is None:
                    self._reject(ErrorCode.NOT_AN_IMAGE, "not an image in an accepted format")
                    return
                self.pending.start_copy(extension)
            self.pending.write(data, plaintext)
        except StorageError as exc:
            self._unavailable = isinstance(exc, StorageUnavailable)
            self._reject(ErrorCode.STORAGE_FAILED, str(exc))

    def rebuild(self) -> int:
        """A resumed upload: read its durable chunks back, open them (every tag, and
        the HMAC from the first byte on) and rebuild the plaintext copy; return the
        index of the first chunk the client sends. Raises ``IntegrityError`` (the
        partial object is not what was received), ``ImageError``, ``StorageError``;
        the caller then aborts."""
        count = self.pending.durable_chunks
        if not count:
            return 0
        chunk = memoryview(bytearray(min(self.header.chunk_size, self.header.size) + TAG_SIZE))
        self._plaintext = memoryview(bytearray(min(self.header.chunk_size, self.header.size)))
        with self.pending.durable_part() as stored:
            for index in range(count):
                want = self.header.plaintext_length(index) + TAG_SIZE
                if stored.readinto(chunk[:want]) != want:
                    raise StorageError("the partial object is shorter than its durable part")
                plaintext = self._opener.open(chunk[:want], into=self._plaintext)
                if index == 0:
                    extension = images.sniff_extension(plaintext, self.service.image_policy)
                    if extension is None:
                        raise ImageError("not an image in an accepted format")
                    self.pending.start_copy(extension)
                self.pending.replay(plaintext)
        return count

    def _reject(self, code: ErrorCode, reason: str) -> None:
        self.rejection = (code, reason)
        self.pending.abort()

    # -- the end ----------------------------------------------------------------------

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
                extra=fields(user=self.pending.user.name, upload=self.header.upload_id.hex()),
            )
            if self.rejection is not None:
                code, reason = self.rejection
                if code is not ErrorCode.STORAGE_FAILED:
                    raise ImageError(reason)
                raise (StorageUnavailable if self._unavailable else StorageError)(reason)
            info = self._validate()
            record = self.pending.commit(info.format, info.width, info.height, mac)
        except BaseException:
            self.abort()
            raise
        finally:
            self._let_go()
        return ev.ReceiptBody(
            image_id=self.pending.image_id,
            upload_id=self.header.upload_id,
            size=self.header.size,
            hmac=mac,
            header_sha256=hashlib.sha256(self.header.encode()).digest(),
            server_time_ms=record.created_at,
            username=self.pending.user.name,
        )

    def _validate(self) -> images.ImageInfo:
        with self.service.validations, self.pending.plaintext() as written:
            return images.validate_image(written, self.service.image_policy)

    def suspend(self) -> bool:
        """The connection ended before UPLOAD_END: keep the upload for a resume if part
        of it is durable and nothing went wrong (``PendingImage.park``), else throw it
        away. Returns whether it was kept. Idempotent."""
        if not self._pipeline.in_step():
            self._pipeline.cancel()
        if self.rejection is not None or self.failure is not None:
            self.abort()
            return False
        kept = self.pending.park()
        self._let_go()
        if kept:
            log.info(
                "upload kept for a resume",
                extra=fields(
                    user=self.pending.user.name,
                    upload=self.header.upload_id.hex(),
                    durable_chunks=self.pending.durable_chunks,
                ),
            )
        return kept

    def abort(self) -> None:
        """Throw away everything written so far, committed files included (idempotent).
        Called from a step (a rejection) it leaves the pipeline running."""
        if not self._pipeline.in_step():
            self._pipeline.cancel()
        self.pending.abort()
        self._let_go()

    def _let_go(self) -> None:
        """Release what the upload holds besides its files (idempotent): its memory
        hold, its wake-up descriptor and, once the pipeline has stopped, its buffer."""
        self._memory.release()
        if self._pipeline.stopped:
            self._plaintext = None
            fd, self.wake_fd = self.wake_fd, -1
            if fd >= 0:
                os.close(fd)


class StoredUpload:
    """An UPLOAD_RESUME of an upload the server finished storing while its client was
    gone (the receipt never reached it): no chunk comes, and UPLOAD_END, if its HMAC
    is the stored one, gets a receipt for the stored image instead of a second copy
    (docs/protocol.md, 7.10). Duck-types ``Upload`` for the network layer."""

    def __init__(self, record: ImageRecord, header_bytes: bytes, user: User) -> None:
        self.record = record
        self.header = UploadHeader.parse(header_bytes)
        self.user = user
        self.rejection: tuple[ErrorCode, str] | None = None
        self.failure: BaseException | None = None
        self.wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    def buffer(self, size: int) -> memoryview:
        raise StorageError("no chunk belongs to a stored upload")

    def take(self, chunk: ev.Chunk) -> None:
        raise StorageError("no chunk belongs to a stored upload")

    def finish(self, end: ev.UploadEnd) -> ev.ReceiptBody:
        """The receipt of the stored image. Raises ``IntegrityError`` for another HMAC."""
        self.abort()
        if not hmac.compare_digest(end.hmac, self.record.hmac):
            raise IntegrityError("image HMAC does not match", ErrorCode.INTEGRITY_FAILED)
        return ev.ReceiptBody(
            image_id=bytes.fromhex(self.record.id),
            upload_id=self.header.upload_id,
            size=self.header.size,
            hmac=self.record.hmac,
            header_sha256=hashlib.sha256(self.record.header).digest(),
            server_time_ms=self.record.created_at,
            username=self.user.name,
        )

    def suspend(self) -> bool:
        self.abort()
        return False

    def abort(self) -> None:
        fd, self.wake_fd = self.wake_fd, -1
        if fd >= 0:
            os.close(fd)


__all__ = ["ImageError", "IntegrityError", "StoredUpload", "Upload", "buffer_memory"]
