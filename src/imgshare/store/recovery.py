"""The sweep: finish off what a crash left half-done, never what is still on its way.

An upload becomes real in this order: object committed, inbox copy committed, catalog
row committed, receipt sent. A crash anywhere before the row commit leaves temp files
and files with no row; no receipt was sent for them, so the sweep removes them. A row
whose object is missing is a real loss (the disk or an operator removed it): it is
reported and logged as an error, never deleted silently. A row whose inbox copy is
missing is normal (operators move inbox files away) and is left alone.

Between an object's commit and its row's there are a few milliseconds in which the
object has no row; another process (a worker, later another node) may be in exactly
that gap. So the sweep removes only files older than ``after`` seconds (an hour by
default): no upload takes that long between those two steps. Temp files get the same
bound. At start-up under the data-folder lock (``exclusive``), when nothing else can
be writing, it removes every leftover, whatever its age.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from imgshare.store.blobs import BlobStore
from imgshare.store.catalog import Catalog, now_ms
from imgshare.store.copies import InboxArea

log = logging.getLogger(__name__)

#: Files without a catalog row younger than this are left alone (seconds).
DEFAULT_SWEEP_AFTER = 3600.0


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What one sweep found and did."""

    temp_files_removed: int
    orphan_objects_removed: tuple[str, ...]
    orphan_inbox_files_removed: tuple[tuple[str, str], ...]  # (username, file name)
    missing_objects: tuple[str, ...]  # rows whose object is gone: reported, kept
    #: Another node held the sweep lock (shared storage): this one did nothing.
    skipped: bool = False
    #: Resumable uploads whose time ran out, and partial objects without a row.
    partials_removed: tuple[str, ...] = ()
    #: Thumbnails whose image is gone.
    orphan_thumbnails_removed: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        """True when there was nothing to clean up or report."""
        return not (
            self.temp_files_removed
            or self.orphan_objects_removed
            or self.orphan_inbox_files_removed
            or self.missing_objects
            or self.partials_removed
            or self.orphan_thumbnails_removed
        )


def sweep(
    blobs: BlobStore,
    inbox: InboxArea,
    catalog: Catalog,
    *,
    after: float = DEFAULT_SWEEP_AFTER,
    exclusive: bool = False,
    thumbs: BlobStore | None = None,
) -> SweepReport:
    """Remove temp files and files with no catalog row that are older than ``after``
    seconds (all of them when ``exclusive``: nothing else writes to the store now);
    report rows with no object.

    ``inbox`` is swept even when new copies are turned off. Raises ``StorageError``
    if the data folder or the catalog cannot be read.
    """
    before = None if exclusive else time.time() - after
    temp = blobs.sweep_temp(before) + inbox.sweep_temp(before)
    # Files first, rows second: a row committed in between only makes a file "known".
    old_objects = set(blobs.iter_ids(before))
    old_inbox_files = set(inbox.iter_files(before))
    known_ids = catalog.image_ids()

    # Asked again one by one just before removing: on S3 an object completed from a
    # multipart upload may carry its upload's start as its date, so a big upload
    # finishing now can look old; its row follows its completion within milliseconds.
    orphans = sorted(
        object_id for object_id in old_objects - known_ids if catalog.get_image(object_id) is None
    )
    for object_id in orphans:
        log.warning("sweep: removing object %s, which has no catalog row", object_id)
        blobs.delete(object_id)

    inbox_orphans = sorted(old_inbox_files - catalog.inbox_names())
    for username, filename in inbox_orphans:
        log.warning("sweep: removing inbox file %s/%s, which has no row", username, filename)
        inbox.delete(username, filename)

    missing = sorted(known_ids - set(blobs.iter_ids()))
    for object_id in missing:
        log.error("sweep: image %s is in the catalog but its object is missing", object_id)

    partials = _sweep_partials(blobs, catalog, before)
    thumb_orphans: list[str] = []
    if thumbs is not None:
        temp += thumbs.sweep_temp(before)
        old_thumbs = set(thumbs.iter_ids(before))
        thumb_orphans = sorted(old_thumbs - catalog.image_ids())
        for object_id in thumb_orphans:
            log.info("sweep: removing the thumbnail of %s, which has no catalog row", object_id)
            thumbs.delete(object_id)

    report = SweepReport(
        temp,
        tuple(orphans),
        tuple(inbox_orphans),
        tuple(missing),
        partials_removed=tuple(partials),
        orphan_thumbnails_removed=tuple(thumb_orphans),
    )
    if not report.clean:
        log.info(
            "sweep: %d temp file(s), %d orphan object(s), %d orphan inbox file(s) removed; "
            "%d missing object(s)",
            temp, len(orphans), len(inbox_orphans), len(missing),
        )  # fmt: skip
    return report


def _sweep_partials(blobs: BlobStore, catalog: Catalog, before: float | None) -> list[str]:
    """Drop resumable uploads whose time ran out (their rows, then their partial
    objects), and partial objects without a row that are older than ``before``."""
    removed = []
    delete = getattr(blobs, "delete_partial", None)
    for partial in catalog.expire_partials(now_ms()):
        log.info("sweep: resumable upload %s expired", partial.image_id)
        if delete is not None:
            delete(partial.image_id)
        removed.append(partial.image_id)
    listing = getattr(blobs, "partial_ids", None)
    if listing is None or delete is None:
        return removed
    # Files first, rows second: a row recorded in between only makes a file "known".
    old = set(listing(before))
    for object_id in sorted(old - catalog.partial_image_ids()):
        log.warning("sweep: removing partial object %s, which has no row", object_id)
        delete(object_id)
        removed.append(object_id)
    return removed
