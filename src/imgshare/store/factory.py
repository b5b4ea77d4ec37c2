"""The one place that decides what storage a server uses, and where its files are.

Three things are stored, each behind a small interface (docs/design.md, decision 10),
and each may live where the settings say:

==============  ===========================  ==========================================
what            default (one machine)        several nodes
==============  ===========================  ==========================================
the catalog     ``DATA/catalog.sqlite3``     ``catalog_url = "postgresql://..."``
sealed objects  ``DATA/objects/``            ``object_store_url = "s3://bucket/prefix"``
                                             (or a folder every node mounts)
inbox copies    ``DATA/inbox/``              ``inbox_location = "s3://bucket/prefix"``
                                             or a shared folder; or ``inbox = false``
==============  ===========================  ==========================================

Layout of a data folder (what stays per node is marked *)::

    DATA/catalog.sqlite3    the catalog (users, images, wrapped keys, throttles)
    DATA/objects/ab/<id>    sealed objects
    DATA/tmp/               temp files of objects on their way, scratch copies *
    DATA/inbox/<user>/      decrypted copies (DATA/inbox/.tmp/ for theirs on the way)
    DATA/server.lock        held by the running server (``imgshare.store.lock``) *
    DATA/certs/, DATA/storage.key   the node's certificates and storage key *

With anything shared (``StoreConfig.shared``) the sweep never runs "exclusively"
(another node may be between an object's commit and its row's), only one node
sweeps at a time (``Catalog.sweep_lock``), and a dead worker's temp files are removed
by pid only where they are this node's own (its data folder); in a bucket or a shared
folder they go by age. The storage key is checked against the catalog's check value
(``imgshare.store.keycheck``) before a server serves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from imgshare.errors import ConfigError, StorageError
from imgshare.store.blobs import BlobStore, FileBlobStore, init_dirs
from imgshare.store.catalog import SQLCatalog, SQLiteCatalog
from imgshare.store.copies import Inbox, PlainCopies, ScratchCopies
from imgshare.store.images import (
    DEFAULT_LEASE,
    DEFAULT_RESUME_FOR,
    DEFAULT_SYNC_EVERY,
    ImageStore,
    process_holder,
)
from imgshare.store.keycheck import check_storage_key, read_key_check
from imgshare.store.keys import StorageKey
from imgshare.store.recovery import DEFAULT_SWEEP_AFTER, SweepReport, sweep
from imgshare.store.thumbnails import thumbnail_store_for

if TYPE_CHECKING:
    from imgshare.store.s3 import S3Config
    from imgshare.store.s3inbox import S3Inbox

MIB = 1024 * 1024
#: What botocore may hold besides a writer's part while it sends one (measured by the
#: S3 contract test that writes 64 MB: at most about two parts in all).
S3_SEND_MEMORY = 2 * MIB


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
    sync_every: int = DEFAULT_SYNC_EVERY  # resumable uploads: bytes between fsyncs
    resume_for: float = DEFAULT_RESUME_FOR  # how long a cut-off upload may be resumed
    # Where shared things live (see the module docstring); "" is the data folder.
    catalog_url: str = field(default="", repr=False)  # may hold a password
    object_store_url: str = ""
    inbox_location: str = ""
    # S3 endpoint and credentials; "" takes the standard AWS_* variables.
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = field(default="", repr=False)
    s3_region: str = ""
    catalog_pool: int = 8

    @property
    def shared(self) -> bool:
        """Whether anything lives outside the data folder, where another node (or
        another server) may use it too."""
        return bool(self.catalog_url or self.object_store_url or self.inbox_location)

    def s3_config(self, url: str) -> S3Config:
        """The S3 location of ``url`` with the endpoint and credentials of these
        settings, or else of the standard variables. Raises ``ConfigError``."""
        from imgshare.store.s3 import S3Config

        return S3Config.from_url(
            url,
            endpoint_url=self.s3_endpoint or None,
            access_key=self.s3_access_key or None,
            secret_key=self.s3_secret_key or None,
            region=self.s3_region or None,
        )


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


def open_postgres(url: str, *, pool_size: int = 8) -> SQLCatalog:
    """The PostgreSQL catalog at ``url`` (its schema made or migrated). Raises
    ``ConfigError`` (no psycopg, a bad URL), ``StorageError`` (unreachable...)."""
    try:
        from imgshare.store.postgres import PostgresCatalog
    except ImportError as exc:
        raise ConfigError(
            "a PostgreSQL catalog needs psycopg: pip install 'imgshare[postgres]'"
        ) from exc
    return PostgresCatalog(url, pool_size=pool_size)


def open_configured_catalog(config: StoreConfig) -> SQLCatalog:
    """The catalog the settings name: PostgreSQL at ``catalog_url``, or SQLite in the
    data folder."""
    if config.catalog_url:
        return open_postgres(config.catalog_url, pool_size=config.catalog_pool)
    return open_catalog(config.data)


def _open_blobs(config: StoreConfig) -> BlobStore:
    url = config.object_store_url
    if url.startswith("s3://"):
        from imgshare.store.s3 import S3BlobStore

        init_dirs(config.data, ("tmp",))  # scratch files: per node, never in the bucket
        return S3BlobStore(config.s3_config(url), scratch_dir=config.data / "tmp")
    return FileBlobStore(Path(url) if url else config.data)


def _open_inbox(config: StoreConfig, blobs: BlobStore) -> Inbox | S3Inbox:
    location = config.inbox_location
    if not location.startswith("s3://"):
        return Inbox(Path(location) if location else inbox_path(config.data))
    from imgshare.store.s3 import S3BlobStore
    from imgshare.store.s3inbox import S3Inbox

    s3 = config.s3_config(location)
    if isinstance(blobs, S3BlobStore) and dataclasses.replace(blobs.config, prefix=s3.prefix) == s3:
        store = blobs  # the same bucket and endpoint: one client, one connection pool
    else:
        init_dirs(config.data, ("tmp",))
        store = S3BlobStore(s3, scratch_dir=config.data / "tmp")
    return S3Inbox(store, s3.prefix)


class DataFolderStore(ImageStore):
    """The store a server opens from its settings: its data folder, and wherever
    the shared parts live (see the module docstring)."""

    def __init__(self, config: StoreConfig) -> None:
        """Open the catalog (migrating it), the object store and the inbox. Sends no
        request to a bucket (``check`` does). Raises ``ConfigError``, ``StorageError``."""
        self.config = config
        self.shared = config.shared
        catalog = open_configured_catalog(config)
        try:
            blobs = _open_blobs(config)
            #: Swept and reached by deletions even when new copies are off.
            self.inbox: Inbox | S3Inbox = _open_inbox(config, blobs)
        except BaseException:
            catalog.close()
            raise
        copies: PlainCopies = self.inbox if config.inbox else ScratchCopies(blobs, self.inbox)
        super().__init__(
            catalog,
            blobs,
            copies,
            config.storage_key,
            quota_bytes=config.quota_bytes,
            uploads_per_user=config.uploads_per_user,
            lease=config.lease,
            # Resumable uploads and thumbnails (issue 12).
            thumbs=thumbnail_store_for(blobs),
            sync_every=config.sync_every,
            resume_for=config.resume_for,
        )
        self.sql: SQLCatalog = catalog
        self.sweep_after = config.sweep_after
        # Temp areas that are this node's alone (under its data folder, its lock).
        data = config.data
        self._own_temps: list[FileBlobStore | Inbox] = []
        if isinstance(blobs, FileBlobStore) and blobs.root == data:
            self._own_temps.append(blobs)
        if isinstance(self.inbox, Inbox) and self.inbox.root == inbox_path(data):
            self._own_temps.append(self.inbox)

    def describe(self) -> dict[str, str]:
        """Where everything is, for the start-up log (no password, no secret)."""
        return {
            "catalog": repr(self.catalog),
            "objects": repr(self.blobs),
            "inbox": repr(self.inbox) if self.config.inbox else "off",
        }

    def check(self) -> None:
        """One request to each bucket in use: it is there and the credentials work
        (at start-up: a server that cannot store must not start). Raises
        ``StorageError``."""
        from imgshare.store.s3 import S3BlobStore
        from imgshare.store.s3inbox import S3Inbox

        if isinstance(self.blobs, S3BlobStore):
            self.blobs.check()
        if isinstance(self.inbox, S3Inbox) and self.inbox.store is not self.blobs:
            self.inbox.check()

    def key_check_recorded(self) -> bool:
        """Whether the catalog holds a storage key check value already."""
        return read_key_check(self.sql) is not None

    def adopt_key(self, key: StorageKey) -> None:
        """Use ``key`` from now on, once it is checked against the catalog's check
        value (recorded now if the catalog has none). Raises ``ConfigError`` if the
        catalog's images are sealed under another key, ``StorageError``."""
        check_storage_key(self.sql, key)
        self.storage_key = key

    def writer_memory(self, size: int) -> int:
        """What S3 writers hold for an upload of ``size`` bytes: up to one part each
        (the sealed object, and the inbox copy when it goes to a bucket), plus what
        the client holds while it sends one."""
        from imgshare.store.s3 import PART_SIZE, S3BlobStore
        from imgshare.store.s3inbox import S3Inbox

        # The sealed object is a little larger than the image (a tag per chunk).
        one = min(PART_SIZE, size + size // 256 + 64 * 1024) + S3_SEND_MEMORY
        writers = isinstance(self.blobs, S3BlobStore) + (
            self.config.inbox and isinstance(self.inbox, S3Inbox)
        )
        return writers * one

    def sweep(self, *, exclusive: bool = False) -> SweepReport:
        """Remove what a crash left (see ``imgshare.store.recovery``); ``exclusive``
        only while this process holds the data folder's lock and nothing writes.

        With shared storage, ``exclusive`` reaches only this node's own temp files;
        the rest is swept by age, by one node at a time (``skipped`` in the report
        when another node holds the sweep lock)."""
        if not self.shared:
            return sweep(
                self.blobs,
                self.inbox,
                self.catalog,
                after=self.sweep_after,
                exclusive=exclusive,
                thumbs=self.thumbs,
            )
        own = sum(area.sweep_temp() for area in self._own_temps) if exclusive else 0
        with self.catalog.sweep_lock() as mine:
            if not mine:
                return SweepReport(own, (), (), (), skipped=True)
            report = sweep(
                self.blobs, self.inbox, self.catalog, after=self.sweep_after, thumbs=self.thumbs
            )
        return dataclasses.replace(report, temp_files_removed=report.temp_files_removed + own)

    def forget_process(self, pid: int) -> tuple[int, int]:
        """Clean up after a process of this machine that died (a worker): drop its
        reservations of uploads in flight and remove its temp files (those in this
        node's data folder: elsewhere a pid may be another node's, and they go by
        age). Returns how many of each."""
        temps = sum(area.sweep_temp(pid=pid) for area in self._own_temps)
        return self.catalog.drop_reservations(process_holder(pid)), temps


def open_store(config: StoreConfig) -> DataFolderStore:
    """The store the settings ask for. Raises ``ConfigError``, ``StorageError``."""
    return DataFolderStore(config)
