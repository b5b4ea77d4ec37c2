"""Storage: the storage key, the blob store and plaintext copies, the catalog, the
store transaction that ties them together, and the sweep.

The catalog is SQLite (``SQLiteCatalog``, the embedded default) or PostgreSQL
(``imgshare.store.postgres.PostgresCatalog``, imported only where it is used: psycopg
is the optional ``postgres`` extra); both run ``SQLCatalog``'s queries.
``open_store(StoreConfig(...))`` builds the storage the settings ask for;
``ImageStore.begin`` is the one way an image goes in (see ``imgshare.store.images``
for the order of its steps), ``ImageStore.delete`` the one way it goes out.
"""

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
from imgshare.store.copies import Inbox, PlainCopies, PlainCopy, ScratchCopies, inbox_filename
from imgshare.store.factory import (
    DataFolderStore,
    StoreConfig,
    catalog_path,
    inbox_path,
    make_data_folder,
    open_catalog,
    open_store,
)
from imgshare.store.images import ImageStore, OpenImage, PendingImage
from imgshare.store.keys import (
    StorageKey,
    generate_storage_key,
    load_or_create_storage_key,
    storage_key_from_env,
)
from imgshare.store.recovery import DEFAULT_SWEEP_AFTER, SweepReport, sweep

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
