"""The one place that decides what storage a server uses, and where its files are.

Today one choice exists: the embedded default, a data folder holding the SQLite
catalog, the sealed objects and the inbox. The catalog and the object store sit
behind ``Catalog`` and ``BlobStore``, and this factory is the seam where a
PostgreSQL catalog and S3 object storage will plug in (docs/design.md, decision 10).

Layout of a data folder::

    DATA/catalog.sqlite3    the catalog (users, images, wrapped keys, throttles)
    DATA/objects/ab/<id>    sealed objects
    DATA/tmp/               temp files of objects on their way, scratch copies
    DATA/inbox/<user>/      decrypted copies (DATA/inbox/.tmp/ for theirs on the way)
    DATA/server.lock        held by the running server (``imgshare.store.lock``)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imgshare.errors import StorageError
from imgshare.store.blobs import FileBlobStore
from imgshare.store.catalog import SQLiteCatalog
from imgshare.store.copies import Inbox, PlainCopies, ScratchCopies
from imgshare.store.images import DEFAULT_LEASE, ImageStore, process_holder
from imgshare.store.keys import StorageKey
from imgshare.store.recovery import DEFAULT_SWEEP_AFTER, SweepReport, sweep


@dataclass(frozen=True)
class StoreConfig:
    """What the factory needs to know (the server maps its settings onto it)."""

    data: Path
    storage_key: StorageKey | None  # None: a store that can delete, not store
    inbox: bool = True
    quota_bytes: int = 0
    uploads_per_user: int = 4
    sweep_after: float = DEFAULT_SWEEP_AFTER
    lease: float = DEFAULT_LEASE


def catalog_path(data: Path) -> Path:
    return data / "catalog.sqlite3"


def inbox_path(data: Path) -> Path:
    return data / "inbox"


def make_data_folder(data: Path) -> None:
    """Create the data folder (mode 0700) if it is missing. Raises ``StorageError``."""
    try:
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create data folder {data}: {exc.strerror}") from exc


def open_catalog(data: Path) -> SQLiteCatalog:
    """The catalog of a data folder (created if missing); admin commands use it too."""
    make_data_folder(data)
    return SQLiteCatalog(catalog_path(data))


class DataFolderStore(ImageStore):
    """The embedded store: everything in one data folder."""

    def __init__(self, config: StoreConfig) -> None:
        blobs = FileBlobStore(config.data)
        self.inbox = Inbox(inbox_path(config.data))  # swept even when copies are off
        copies: PlainCopies = self.inbox if config.inbox else ScratchCopies(blobs, self.inbox)
        super().__init__(
            open_catalog(config.data),
            blobs,
            copies,
            config.storage_key,
            quota_bytes=config.quota_bytes,
            uploads_per_user=config.uploads_per_user,
            lease=config.lease,
        )
        self.sweep_after = config.sweep_after

    def sweep(self, *, exclusive: bool = False) -> SweepReport:
        """Remove what a crash left (see ``imgshare.store.recovery``); ``exclusive``
        only while this process holds the data folder's lock and nothing writes."""
        return sweep(
            self.blobs, self.inbox, self.catalog, after=self.sweep_after, exclusive=exclusive
        )

    def forget_process(self, pid: int) -> tuple[int, int]:
        """Clean up after a process of this machine that died (a worker): drop its
        reservations of uploads in flight and remove its temp files. Returns how many
        of each."""
        temps = self.blobs.sweep_temp(pid=pid) + self.inbox.sweep_temp(pid=pid)
        return self.catalog.drop_reservations(process_holder(pid)), temps


def open_store(config: StoreConfig) -> DataFolderStore:
    """The store the settings ask for. Raises ``StorageError``."""
    return DataFolderStore(config)
