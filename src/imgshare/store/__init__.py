"""Storage: the storage key, the blob store and inbox, the catalog, the start-up sweep.

The server's upload path, in the order that makes "acknowledged means durable" true::

    writer = blobs.create(image_id)        # header + ciphertext chunks as received
    inbox_writer = inbox.create(user, name)  # decrypted copy, unless turned off
    ... write chunks to both, commit both ...
    catalog.add_image(ImageRecord(..., wrapped_key=storage_key.wrap(content_key, id)))
    # only now send the receipt

At start-up, ``sweep(blobs, inbox, catalog)`` removes what a crash left half-done.
"""

from imgshare.store.blobs import (
    AtomicFile,
    BlobNotFound,
    BlobStore,
    BlobWriter,
    FileBlobStore,
    Inbox,
    inbox_filename,
)
from imgshare.store.catalog import (
    Catalog,
    DeletedImage,
    ImageRecord,
    SQLiteCatalog,
    User,
    UserExistsError,
)
from imgshare.store.keys import (
    StorageKey,
    generate_storage_key,
    load_or_create_storage_key,
    storage_key_from_env,
)
from imgshare.store.recovery import SweepReport, sweep

__all__ = [
    "AtomicFile",
    "BlobNotFound",
    "BlobStore",
    "BlobWriter",
    "Catalog",
    "DeletedImage",
    "FileBlobStore",
    "ImageRecord",
    "Inbox",
    "SQLiteCatalog",
    "StorageKey",
    "SweepReport",
    "User",
    "UserExistsError",
    "generate_storage_key",
    "inbox_filename",
    "load_or_create_storage_key",
    "storage_key_from_env",
    "sweep",
]
