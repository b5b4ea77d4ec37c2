"""The store of images: one transaction per upload, one way to delete, one way to read.

``ImageStore`` ties together the catalog, the blob store, the plaintext copies and the
storage key, so that no caller orders their steps itself (docs/design.md, "the store
transaction"). An upload, in the order that makes "acknowledged means durable" true::

    pending = store.begin(user, header, content_key)  # quota and an upload place held,
                                                       # the sealed object opened
    pending.start_copy(extension)                      # the plaintext copy, once the
                                                       # first chunk says what it is
    pending.write(sealed_chunk, plaintext) ...         # both, as chunks arrive
    with pending.plaintext() as copy: check it
    record = pending.commit(format, width, height, hmac)
        # sealed object committed, then the copy, then the catalog row, which also
        # releases the reservation; only now may the receipt go out
    pending.abort()  # any failure, at any step: everything it wrote is taken back,
                     # the catalog row included, and the reservation released

Reservations live in the catalog with a lease that ``renew()`` extends (the server
calls it periodically), so several processes cannot overshoot a quota together and a
dead process's reservations lapse. ``delete`` destroys the wrapped content key first
(the row), then the plaintext copy, then the object and the thumbnail.

**Resumable uploads** (docs/protocol.md, 7.10; docs/design.md, decision 18). Where
the blob store can keep a partial object (``FileBlobStore.create_resumable``), an
upload makes what it received durable every ``sync_every`` bytes of sealed object:
the object is fsynced (the first time it moves to ``DATA/partial/<image id>``), then
the reservation records the durable chunk count (``Catalog.mark_durable``). When its
connection ends, ``park`` keeps the partial object and the reservation (quota and the
upload place) for ``resume_for`` seconds; ``ImageStore.resume`` takes it up again in
any process, cut back to its durable part, and the upload goes on from there. The
plaintext copy is not kept: the resumer rebuilds it, and the HMAC, from the durable
sealed chunks. A new upload that finds the user's places or quota taken by parked
uploads drops the oldest of them.
"""

from __future__ import annotations

import contextlib
import hmac as hmac_module
import io
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Self

from imgshare.errors import QuotaError, StorageError, TryLaterError
from imgshare.protocol.constants import TAG_SIZE
from imgshare.protocol.stream import UploadHeader
from imgshare.store.blobs import BlobNotFound, BlobStore, PartialFile
from imgshare.store.catalog import (
    Catalog,
    DeletedImage,
    ImageRecord,
    UniqueViolation,
    User,
    now_ms,
)
from imgshare.store.copies import PlainCopies, PlainCopy
from imgshare.store.keys import StorageKey
from imgshare.store.resumable import PartialUpload

log = logging.getLogger(__name__)

#: How long a reservation lives without renewal; the holder renews it far sooner.
DEFAULT_LEASE = 120.0
#: A resumable upload makes what it received durable every this many sealed bytes.
DEFAULT_SYNC_EVERY = 8 * 1024 * 1024
#: How long a cut-off upload may be resumed after it was last worked on (s).
DEFAULT_RESUME_FOR = 24 * 3600.0


#: Made once per server start and inherited by its forked workers: host names and
#: pids repeat between containers (and after restarts), so a holder names this too.
_INSTANCE = secrets.token_hex(6)


def process_holder(pid: int | None = None) -> str:
    """How reservations name the process that holds them (this one by default; a
    worker of this server by its pid): ``host:pid:instance``."""
    return f"{os.uname().nodename}:{os.getpid() if pid is None else pid}:{_INSTANCE}"


@dataclass(frozen=True)
class OpenImage:
    """A stored image ready to stream: its row, header, content key and sealed bytes."""

    record: ImageRecord
    header: UploadHeader
    content_key: bytes
    sealed: io.BufferedIOBase  # the caller closes it


class ImageStore:
    """Everything stored, behind one object; thread-safe (every part is)."""

    def __init__(
        self,
        catalog: Catalog,
        blobs: BlobStore,
        copies: PlainCopies,
        storage_key: StorageKey | None,
        *,
        quota_bytes: int = 0,
        uploads_per_user: int = 4,
        holder: str | None = None,
        lease: float = DEFAULT_LEASE,
        thumbs: BlobStore | None = None,
        sync_every: int = DEFAULT_SYNC_EVERY,
        resume_for: float = DEFAULT_RESUME_FOR,
    ) -> None:
        """``thumbs``: where thumbnails live (None: no thumbnails). ``sync_every``:
        sealed bytes between durability points of a resumable upload (0: uploads are
        never resumable)."""
        self.catalog = catalog
        self.blobs = blobs
        self.copies = copies
        self.storage_key = storage_key
        self.quota_bytes = quota_bytes
        self.uploads_per_user = uploads_per_user
        self.holder = holder or process_holder()
        self.lease = lease
        self.thumbs = thumbs
        self.sync_every = sync_every
        self.resume_for = resume_for

    def __repr__(self) -> str:
        return f"ImageStore({self.catalog!r}, {self.blobs!r})"

    @property
    def key(self) -> StorageKey:
        """The storage key. Raises ``StorageError`` for a store opened without one
        (admin commands that only delete)."""
        if self.storage_key is None:
            raise StorageError("this store was opened without the storage key")
        return self.storage_key

    def begin(self, user: User, header: UploadHeader, content_key: bytes) -> PendingImage:
        """Start storing an image: hold its size against the quota and one of the
        user's upload places, and open its sealed object.

        Raises ``QuotaError``, ``TryLaterError`` (no upload place left) or
        ``StorageError``; on any of them nothing is held.
        """
        if self.storage_key is None:  # fail before holding anything
            raise StorageError("this store was opened without the storage key")
        while True:
            try:
                reservation = self.catalog.reserve_upload(
                    user.id,
                    header.size,
                    quota=self.quota_bytes,
                    per_user=self.uploads_per_user,
                    holder=self.holder,
                    expires=now_ms() + int(self.lease * 1000),
                )
                break
            except (QuotaError, TryLaterError):
                # Parked uploads of this user hold the room: the oldest one goes.
                if not self._drop_parked(user):
                    raise
        try:
            return PendingImage(self, user, header, content_key, reservation)
        except BaseException:
            self.catalog.release_reservation(reservation)
            raise

    def _drop_parked(self, user: User) -> bool:
        partial = self.catalog.evict_idle_partial(user.id, now_ms())
        if partial is None:
            return False
        log.info("dropped a resumable upload of %s to make room for a new one", user.name)
        self.remove_partial(partial)
        return True

    def remove_partial(self, partial: PartialUpload) -> None:
        """Remove a dropped resumable upload's partial object (best effort: the sweep
        removes what is left)."""
        delete = getattr(self.blobs, "delete_partial", None)
        if delete is None:
            return
        try:
            delete(partial.image_id)
        except StorageError as exc:
            log.warning("cannot remove a partial object: %s", exc)

    def resume(self, user: User, header: UploadHeader, content_key: bytes) -> PendingImage | None:
        """Take up the user's resumable upload of ``header`` again, cut back to its
        durable part; None if there is none with exactly that header and content key
        (or it expired). Raises ``TryLaterError`` while another connection still holds
        it, ``StorageError``."""
        if self.storage_key is None:
            raise StorageError("this store was opened without the storage key")
        now = now_ms()
        partial = self.catalog.claim_partial(
            user.id,
            header.upload_id,
            holder=self.holder,
            expires=now + int(self.lease * 1000),
            now=now,
        )
        if partial is None:
            return None
        try:
            stored_key = self.key.unwrap(partial.wrapped_key, bytes.fromhex(partial.image_id))
        except StorageError:
            stored_key = b""
        same = partial.header == header.encode() and hmac_module.compare_digest(
            stored_key, content_key
        )
        if not same:  # not the upload its id names: leave it as it was
            self.catalog.park_upload(partial.reservation, partial.resume_until_ms)
            return None
        try:
            return PendingImage(
                self, user, header, content_key, partial.reservation, resumed=partial
            )
        except BlobNotFound:
            log.warning("resumable upload %s lost its partial object", partial.image_id)
            self.catalog.release_reservation(partial.reservation)
            return None
        except BaseException:
            self.catalog.park_upload(partial.reservation, partial.resume_until_ms)
            raise

    def writer_memory(self, size: int) -> int:
        """Memory this store's writers hold for an upload of ``size`` bytes besides
        the server's own buffers (files: none; S3 keeps parts in memory)."""
        return 0

    def renew(self) -> int:
        """Extend the lease of this process's reservations; return how many."""
        return self.catalog.renew_reservations(self.holder, now_ms() + int(self.lease * 1000))

    def open(self, record: ImageRecord) -> OpenImage:
        """Open a stored image for streaming. Raises ``StorageError`` if its key does
        not verify or its object is missing."""
        content_key = self.key.unwrap(record.wrapped_key, bytes.fromhex(record.id))
        header = UploadHeader.parse(record.header)
        return OpenImage(record, header, content_key, self.blobs.open(record.id))

    def delete(self, image_id: str) -> DeletedImage | None:
        """Delete an image: its row and wrapped key first (after that commit nobody can
        read it), then its plaintext copy, then its object. None if there was none."""
        deleted = self.catalog.delete_image(image_id)
        if deleted is not None:
            self._remove_files([deleted])
        return deleted

    def remove_user(self, name: str, *, purge: bool = False) -> list[DeletedImage]:
        """Remove a user (with ``purge``, and their images); no file of theirs and no
        folder of theirs is left. Raises ``ConfigError`` as ``Catalog.remove_user``."""
        deleted = self.catalog.remove_user(name, purge=purge)
        self._remove_files(deleted)
        self.copies.remove_empty_folder(name)
        return deleted

    def _remove_files(self, deleted: list[DeletedImage]) -> None:
        # The rows are gone (the images are shredded): a file that cannot be removed
        # now (the bucket unreachable) is an orphan the sweep removes later.
        for image in deleted:
            try:
                if image.inbox_name:
                    self.copies.delete(image.owner_name, image.inbox_name)
                self.blobs.delete(image.image_id)
                if self.thumbs is not None:
                    self.thumbs.delete(image.image_id)
            except StorageError as exc:
                log.warning(
                    "image %s deleted; its files are left for the sweep: %s", image.image_id, exc
                )

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class PendingImage:
    """One image on its way into the store (see the module docstring for the order).

    ``write`` is called by one thread at a time; ``abort`` may come from any thread
    and is idempotent.
    """

    def __init__(
        self,
        store: ImageStore,
        user: User,
        header: UploadHeader,
        content_key: bytes,
        reservation: int,
        *,
        resumed: PartialUpload | None = None,
    ) -> None:
        """``resumed``: the claimed reservation of a resumable upload to take up.
        Raises ``StorageError`` (``BlobNotFound`` when its partial object is gone)."""
        self.store = store
        self.user = user
        self.header = header
        self._content_key = content_key
        self._reservation: int | None = reservation
        self._copy: PlainCopy | None = None
        self._undo: list[Callable[[], object]] = []  # how to take back each commit
        self._lock = threading.Lock()
        self._wrapped_key: bytes | None = None
        self._sealed: Any
        if resumed is None:
            self.image_id = os.urandom(16)
            create_resumable = getattr(store.blobs, "create_resumable", None)
            # Only an upload that reaches a durability point before its end can resume.
            self._resumable = (
                create_resumable is not None
                and 0 < store.sync_every < header.size + TAG_SIZE * header.chunk_count
            )
            if self._resumable and create_resumable is not None:
                self._sealed = create_resumable(self.id_hex)
            else:
                self._sealed = store.blobs.create(self.id_hex)
            self.durable_chunks = self._durable_bytes = 0
        else:
            self.image_id = bytes.fromhex(resumed.image_id)
            self._sealed = store.blobs.open_partial(resumed.image_id, resumed.durable_bytes)  # type: ignore[attr-defined]
            self._resumable = True
            self._wrapped_key = resumed.wrapped_key
            self.durable_chunks = resumed.durable_chunks
            self._durable_bytes = resumed.durable_bytes
        #: Whether the catalog can resume it (its reservation holds its durable part).
        self.resumable = resumed is not None
        self._chunks = self.durable_chunks
        self._sealed_bytes = self._durable_bytes

    @property
    def id_hex(self) -> str:
        return self.image_id.hex()

    def start_copy(self, extension: str) -> None:
        """Open the plaintext copy, named with ``extension``. Raises ``StorageError``."""
        self._copy = self.store.copies.create(self.user.name, self.id_hex, extension)

    def write(self, sealed: bytes | bytearray | memoryview, plaintext: bytes | memoryview) -> None:
        """Append one chunk, sealed as received and decrypted. Raises ``StorageError``."""
        if self._copy is None:
            raise StorageError("start_copy must come before the first write")
        self._sealed.write(sealed)
        self._copy.write(plaintext)
        self._chunks += 1
        self._sealed_bytes += len(sealed)
        if (
            self._resumable
            and self._sealed_bytes - self._durable_bytes >= self.store.sync_every
            and self._chunks < self.header.chunk_count
        ):
            self._make_durable()

    def replay(self, plaintext: bytes | memoryview) -> None:
        """Rebuild the plaintext copy of a resumed upload from its durable chunks,
        one chunk at a time (its sealed object has them already). Raises
        ``StorageError``."""
        if self._copy is None:
            raise StorageError("start_copy must come before the first replay")
        self._copy.write(plaintext)

    def durable_part(self) -> io.BufferedIOBase:
        """The durable part of a resumed upload's sealed object, to read its chunks
        back (the caller closes it). Raises ``StorageError``."""
        reader: io.BufferedIOBase = self.store.blobs.read_partial(self.id_hex)  # type: ignore[attr-defined]
        return reader

    def _make_durable(self) -> None:
        """A durability point: what was written is synced, then the catalog says how
        much of it a resume may keep. Raises ``StorageError``."""
        sealed: PartialFile = self._sealed
        sealed.sync()
        if self._wrapped_key is None:
            self._wrapped_key = self.store.key.wrap(self._content_key, self.image_id)
        reservation = self._reservation
        now = now_ms()
        try:
            kept = reservation is not None and self.store.catalog.mark_durable(
                reservation,
                image_id=self.id_hex,
                upload_id=self.header.upload_id,
                header=self.header.encode(),
                wrapped_key=self._wrapped_key,
                chunks=self._chunks,
                sealed_bytes=self._sealed_bytes,
                now=now,
                until=now + int(self.store.resume_for * 1000),
            )
        except UniqueViolation:  # a resumable upload of this user has this upload id
            kept = False
        if not kept:
            self._resumable = False  # received to the end, or not at all
            return
        self.resumable = True
        self.durable_chunks = self._chunks
        self._durable_bytes = self._sealed_bytes

    def park(self) -> bool:
        """The connection ended before the image did: keep a resumable upload (its
        partial object and its reservation) for a resume; otherwise, or when that
        fails, take everything back as ``abort`` does. Returns whether it was kept.
        Never raises."""
        with self._lock:
            reservation = self._reservation if self.resumable and not self._undo else None
        kept = False
        if reservation is not None:
            until = now_ms() + int(self.store.resume_for * 1000)
            try:
                kept = self.store.catalog.park_upload(reservation, until)
            except StorageError as exc:
                log.warning("cannot keep an upload for a resume: %s", exc)
        if not kept:
            self.abort()
            return False
        with self._lock:
            self._reservation = None  # kept, with the upload
        self._sealed.park()
        if self._copy is not None:
            self._copy.abort()
        return True

    def plaintext(self) -> BinaryIO:
        """The plaintext written so far, for checking (the caller closes it)."""
        if self._copy is None:
            raise StorageError("nothing was written")
        return self._copy.reopen()

    def commit(self, image_format: str, width: int, height: int, hmac: bytes) -> ImageRecord:
        """Make the image durable: the sealed object, then the copy, then the catalog
        row (which also releases the reservation). Raises ``StorageError``; then
        nothing of the image remains."""
        if self._copy is None:
            self.abort()
            raise StorageError("nothing was written")
        copy, catalog, image_id = self._copy, self.store.catalog, self.id_hex
        try:
            self._sealed.commit()
            self._undo.append(lambda: self.store.blobs.delete(image_id))
            copy.commit()
            name = copy.name
            if name is not None:
                self._undo.append(lambda: self.store.copies.delete(self.user.name, name))
            record = self._record(image_format, width, height, hmac, name)
            # A failed commit may still reach the disk (an fsync error after the
            # write): take the row back too, so that it cannot return without files.
            self._undo.append(lambda: catalog.delete_image(image_id))
            catalog.add_image(record, reservation=self._reservation)
        except BaseException:
            self.abort()
            raise
        self._reservation = None  # released with the row
        self._undo.clear()
        return record

    def _record(
        self, image_format: str, width: int, height: int, hmac: bytes, inbox_name: str | None
    ) -> ImageRecord:
        return ImageRecord(
            id=self.id_hex,
            owner_id=self.user.id,
            name=self.header.name,
            size=self.header.size,
            hmac=hmac,
            format=image_format,
            width=width,
            height=height,
            header=self.header.encode(),
            wrapped_key=self.store.key.wrap(self._content_key, self.image_id),
            inbox_name=inbox_name,
            created_at=now_ms(),
        )

    def abort(self) -> None:
        """Take back everything this image wrote, newest first (the catalog row, the
        plaintext copy, the sealed object), and release its reservation. Never raises;
        what it cannot remove is logged and left for the sweep."""
        with self._lock:
            undo, self._undo = self._undo, []
            reservation, self._reservation = self._reservation, None
        self._sealed.abort()
        if self._copy is not None:
            self._copy.abort()
        for step in reversed(undo):
            try:
                step()
            except StorageError as exc:
                log.error("cannot take back part of a failed upload: %s", exc)
        if undo:
            with contextlib.suppress(StorageError):
                self.store.copies.remove_empty_folder(self.user.name)
        if reservation is not None:
            try:
                self.store.catalog.release_reservation(reservation)
            except StorageError as exc:  # it lapses with its lease
                log.warning("cannot release an upload's reservation: %s", exc)
