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
import logging
import os

from imgshare.errors import ImageError, IntegrityError, StorageError
from imgshare.logs import fields
from imgshare.protocol import StreamOpener
from imgshare.protocol import events as ev
from imgshare.protocol.constants import TAG_SIZE, ErrorCode
from imgshare.server import images
from imgshare.server.pipeline import Pipeline, PipelineCancelled, memory_for
from imgshare.server.service import Service
from imgshare.server.uploads import MemoryHold
from imgshare.store import PendingImage

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
        self, service: Service, begin: ev.UploadBegin, pending: PendingImage, memory: MemoryHold
    ) -> None:
        self.service = service
        self.header = begin.header
        self.pending = pending
        self._memory = memory
        self._opener = StreamOpener(begin.header, begin.content_key)
        self.rejection: tuple[ErrorCode, str] | None = None
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
            self._reject(ErrorCode.STORAGE_FAILED, str(exc))

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
                raise (StorageError if code is ErrorCode.STORAGE_FAILED else ImageError)(reason)
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


__all__ = ["ImageError", "IntegrityError", "Upload", "buffer_memory"]
