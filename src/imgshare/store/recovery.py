"""The start-up sweep: finish off what a crash left half-done.

An upload becomes real in this order: object committed, inbox copy committed, catalog
row committed, receipt sent. A crash anywhere before the row commit leaves temp files
and files with no row; no receipt was sent for them, so the sweep removes them. A row
whose object is missing is a real loss (the disk or an operator removed it): it is
reported and logged as an error, never deleted silently. A row whose inbox copy is
missing is normal (operators move inbox files away) and is left alone.

Run it before serving: it would also remove the files of uploads in progress.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from imgshare.store.blobs import BlobStore, Inbox
from imgshare.store.catalog import Catalog

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What one sweep found and did."""

    temp_files_removed: int
    orphan_objects_removed: tuple[str, ...]
    orphan_inbox_files_removed: tuple[tuple[str, str], ...]  # (username, file name)
    missing_objects: tuple[str, ...]  # rows whose object is gone: reported, kept

    @property
    def clean(self) -> bool:
        """True when there was nothing to clean up or report."""
        return not (
            self.temp_files_removed
            or self.orphan_objects_removed
            or self.orphan_inbox_files_removed
            or self.missing_objects
        )


def sweep(blobs: BlobStore, inbox: Inbox | None, catalog: Catalog) -> SweepReport:
    """Remove temp files and files with no catalog row; report rows with no object.

    ``inbox`` may be ``None`` when inbox copies are turned off. Raises
    ``StorageError`` if the data folder or the catalog cannot be read.
    """
    temp = blobs.sweep_temp() + (inbox.sweep_temp() if inbox is not None else 0)
    known_ids = catalog.image_ids()
    stored_ids = set(blobs.iter_ids())

    orphans = sorted(stored_ids - known_ids)
    for object_id in orphans:
        log.warning("sweep: removing object %s, which has no catalog row", object_id)
        blobs.delete(object_id)

    inbox_orphans: list[tuple[str, str]] = []
    if inbox is not None:
        known_files = catalog.inbox_names()
        inbox_orphans = sorted(set(inbox.iter_files()) - known_files)
        for username, filename in inbox_orphans:
            log.warning("sweep: removing inbox file %s/%s, which has no row", username, filename)
            inbox.delete(username, filename)

    missing = sorted(known_ids - stored_ids)
    for object_id in missing:
        log.error("sweep: image %s is in the catalog but its object is missing", object_id)

    report = SweepReport(temp, tuple(orphans), tuple(inbox_orphans), tuple(missing))
    if not report.clean:
        log.info(
            "sweep: %d temp file(s), %d orphan object(s), %d orphan inbox file(s) removed; "
            "%d missing object(s)",
            temp, len(orphans), len(inbox_orphans), len(missing),
        )  # fmt: skip
    return report
