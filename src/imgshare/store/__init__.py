"""Storage: the storage key, the blob store and plaintext copies, the catalog, the
store transaction that ties them together, and the sweep.

The catalog is SQLite (``SQLiteCatalog``, the embedded default) or PostgreSQL
(``imgshare.store.postgres.PostgresCatalog``, imported only where it is used: psycopg
is the optional ``postgres`` extra); both run ``SQLCatalog``'s queries.
``open_store(StoreConfig(...))`` builds the storage the settings ask for;
``ImageStore.begin`` is the one way an image goes in (see ``imgshare.store.images``
for the order of its steps), ``ImageStore.delete`` the one way it goes out.

Names are imported on first use (PEP 562): a client that needs only ``blobs``
(its atomic file) does not pay for the catalog and the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imgshare.store.blobs import (
        AtomicFile,
        BlobNotFound,
        BlobStore,
        BlobWriter,
        FileBlobStore,
    )
    from imgshare.store.catalog import (
        Catalog,
        DeletedImage,
        ImageRecord,
        SQLCatalog,
        SQLiteCatalog,
        User,
        UserExistsError,
    )
    from imgshare.store.copies import (
        Inbox,
        PlainCopies,
        PlainCopy,
        ScratchCopies,
        inbox_filename,
    )
    from imgshare.store.factory import (
        DataFolderStore,
        StoreConfig,
        catalog_path,
        inbox_path,
        make_data_folder,
        open_catalog,
        open_store,
    )
    from imgshare.store.images import (
        ImageStore,
        OpenImage,
        PendingImage,
    )
    from imgshare.store.keys import (
        StorageKey,
        generate_storage_key,
        load_or_create_storage_key,
        storage_key_from_env,
    )
    from imgshare.store.recovery import (
        DEFAULT_SWEEP_AFTER,
        SweepReport,
        sweep,
    )

#: Which module each name lives in.
_LAZY = {
    "AtomicFile": "imgshare.store.blobs",
    "BlobNotFound": "imgshare.store.blobs",
    "BlobStore": "imgshare.store.blobs",
    "BlobWriter": "imgshare.store.blobs",
    "FileBlobStore": "imgshare.store.blobs",
    "Catalog": "imgshare.store.catalog",
    "DeletedImage": "imgshare.store.catalog",
    "ImageRecord": "imgshare.store.catalog",
    "SQLCatalog": "imgshare.store.catalog",
    "SQLiteCatalog": "imgshare.store.catalog",
    "User": "imgshare.store.catalog",
    "UserExistsError": "imgshare.store.catalog",
    "Inbox": "imgshare.store.copies",
    "PlainCopies": "imgshare.store.copies",
    "PlainCopy": "imgshare.store.copies",
    "ScratchCopies": "imgshare.store.copies",
    "inbox_filename": "imgshare.store.copies",
    "DataFolderStore": "imgshare.store.factory",
    "StoreConfig": "imgshare.store.factory",
    "catalog_path": "imgshare.store.factory",
    "inbox_path": "imgshare.store.factory",
    "make_data_folder": "imgshare.store.factory",
    "open_catalog": "imgshare.store.factory",
    "open_store": "imgshare.store.factory",
    "ImageStore": "imgshare.store.images",
    "OpenImage": "imgshare.store.images",
    "PendingImage": "imgshare.store.images",
    "StorageKey": "imgshare.store.keys",
    "generate_storage_key": "imgshare.store.keys",
    "load_or_create_storage_key": "imgshare.store.keys",
    "storage_key_from_env": "imgshare.store.keys",
    "DEFAULT_SWEEP_AFTER": "imgshare.store.recovery",
    "SweepReport": "imgshare.store.recovery",
    "sweep": "imgshare.store.recovery",
}

__all__ = [
    "DEFAULT_SWEEP_AFTER",
    "AtomicFile",
    "BlobNotFound",
    "BlobStore",
    "BlobWriter",
    "Catalog",
    "DataFolderStore",
    "DeletedImage",
    "FileBlobStore",
    "ImageRecord",
    "ImageStore",
    "Inbox",
    "OpenImage",
    "PendingImage",
    "PlainCopies",
    "PlainCopy",
    "SQLCatalog",
    "SQLiteCatalog",
    "ScratchCopies",
    "StorageKey",
    "StoreConfig",
    "SweepReport",
    "User",
    "UserExistsError",
    "catalog_path",
    "generate_storage_key",
    "inbox_filename",
    "inbox_path",
    "load_or_create_storage_key",
    "make_data_folder",
    "open_catalog",
    "open_store",
    "storage_key_from_env",
    "sweep",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'imgshare.store' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module), name)
    globals()[name] = value  # once: later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
