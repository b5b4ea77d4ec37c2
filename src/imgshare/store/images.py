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
(the row), then the plaintext copy, then the object.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Self

from imgshare.errors import StorageError
from imgshare.protocol.stream import UploadHeader
from imgshare.store.blobs import FileBlobStore
from imgshare.store.catalog import Catalog, DeletedImage, ImageRecord, User, now_ms
from imgshare.store.copies import PlainCopies, PlainCopy
from imgshare.store.keys import StorageKey

log = logging.getLogger(__name__)

#: How long a reservation lives without renewal; the holder renews it far sooner.
DEFAULT_LEASE = 120.0


def process_holder(pid: int | None = None) -> str:
    """How reservations name the process that holds them (this one by default)."""
    return f"{os.uname().nodename}:{os.getpid() if pid is None else pid}"


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
        blobs: FileBlobStore,
        copies: PlainCopies,
        storage_key: StorageKey | None,
        *,
        quota_bytes: int = 0,
        uploads_per_user: int = 4,
        holder: str | None = None,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        self.catalog = catalog
        self.blobs = blobs
        self.copies = copies
        self.storage_key = storage_key
        self.quota_bytes = quota_bytes
        self.uploads_per_user = uploads_per_user
        self.holder = holder or process_holder()
        self.lease = lease

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
        reservation = self.catalog.reserve_upload(
            user.id,
            header.size,
            quota=self.quota_bytes,
            per_user=self.uploads_per_user,
            holder=self.holder,
            expires=now_ms() + int(self.lease * 1000),
        )
        try:
            return PendingImage(self, user, header, content_key, reservation)
        except BaseException:
            self.catalog.release_reservation(reservation)
            raise

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
        for image in deleted:
            if image.inbox_name:
                self.copies.delete(image.owner_name, image.inbox_name)
            self.blobs.delete(image.image_id)

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
    ) -> None:
        self.store = store
        self.user = user
        self.header = header
        self.image_id = os.urandom(16)
        self._content_key = content_key
        self._reservation: int | None = reservation
        self._sealed = store.blobs.create(self.image_id.hex())
        self._copy: PlainCopy | None = None
        self._undo: list[Callable[[], object]] = []  # how to take back each commit
        self._lock = threading.Lock()

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
