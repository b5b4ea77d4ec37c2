"""Which images have a thumbnail, in the catalog; who is making one.

``ThumbnailTables`` is a part of ``SQLCatalog`` (the columns came with schema
version 5). Each image row says whether its thumbnail is made (``STORED``), cannot be
made (``NONE``) or not yet (``PENDING``), and until when a maker holds it
(``thumbnail_claim_ms``). The thumbnail itself is a small sealed object in a blob
store of its own (``ImageStore.thumbs``, ``DATA/thumbs`` in a data folder), under the
image's id, removed with the image. Makers in several processes or nodes each claim
an image with one conditional ``UPDATE``: exactly one of them gets it, and a claim
whose maker died lapses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from imgshare.errors import StorageError

if TYPE_CHECKING:
    from imgshare.store.blobs import BlobStore
    from imgshare.store.catalog import Database, ImageRecord

T = TypeVar("T")

PENDING = 0
STORED = 1
NONE = 2


class _Transactions(Protocol):
    def _read(self, action: str, body: Callable[[Database], T]) -> T: ...
    def _write(self, action: str, body: Callable[[Database], T], *, durable: bool = True) -> T: ...


_Base: Any = _Transactions if TYPE_CHECKING else object


class ThumbnailTables(_Base):  # type: ignore[misc]
    """Thumbnail states (part of ``SQLCatalog``; see the module docstring)."""

    def claim_thumbnail(self, now: int, until: int) -> ImageRecord | None:
        """The oldest image without a thumbnail that nobody is making, now held by the
        caller until ``until``; None if there is none."""
        from imgshare.store.catalog import IMAGE_COLUMNS, image_from_row

        row = self._write(
            "claim a thumbnail",
            lambda db: db.execute(
                "UPDATE images SET thumbnail_claim_ms = ? WHERE id = (SELECT id FROM images "
                "WHERE thumbnail = 0 AND thumbnail_claim_ms < ? ORDER BY created_at, id "
                "LIMIT 1) AND thumbnail = 0 AND thumbnail_claim_ms < ? "
                f"RETURNING {IMAGE_COLUMNS}",
                (until, now, now),
            ).fetchone(),
            durable=False,
        )
        return None if row is None else image_from_row(row)

    def set_thumbnail(self, image_id: str, state: int) -> bool:
        """Record an image's thumbnail state (``STORED`` once its object is durable);
        False when the image is gone (the caller removes what it stored)."""
        count: int = self._write(
            "record a thumbnail",
            lambda db: (
                db.execute(
                    "UPDATE images SET thumbnail = ?, thumbnail_claim_ms = 0 WHERE id = ?",
                    (state, image_id),
                ).rowcount
            ),
        )
        return count == 1

    def thumbnail_state(self, image_id: str) -> int | None:
        """``PENDING``, ``STORED`` or ``NONE``; None if there is no such image."""
        row = self._read(
            "read a thumbnail state",
            lambda db: db.execute(
                "SELECT thumbnail FROM images WHERE id = ?", (image_id,)
            ).fetchone(),
        )
        return None if row is None else int(row[0])

    def pending_thumbnails(self) -> int:
        """How many images wait for a thumbnail."""
        row = self._read(
            "count pending thumbnails",
            lambda db: db.execute("SELECT COUNT(*) FROM images WHERE thumbnail = 0").fetchone(),
        )
        return int(row[0])


def thumbnail_store_for(blobs: BlobStore) -> BlobStore:
    """Where the thumbnails of the images in ``blobs`` live: beside them, in a store of
    their own (``ROOT/thumbs/`` of a folder, ``<prefix>/thumbs/`` of a bucket), so that
    no sweep of sealed objects takes one for an orphan object. Raises
    ``StorageError``."""
    from imgshare.store.blobs import FileBlobStore

    if isinstance(blobs, FileBlobStore):
        return FileBlobStore(blobs.root / "thumbs")
    from imgshare.store.s3 import S3BlobStore

    if isinstance(blobs, S3BlobStore):
        config = blobs.config
        prefix = f"{config.prefix}/thumbs" if config.prefix else "thumbs"
        return S3BlobStore(
            dataclasses.replace(config, prefix=prefix), scratch_dir=blobs.scratch_dir
        )
    raise StorageError(f"no place for thumbnails beside {blobs!r}")
