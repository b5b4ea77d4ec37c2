"""The storage key's check value in the catalog: every node must use the same key.

Images are sealed under the storage key (their content keys wrapped by it, in their
catalog rows). A node that starts with another key (a key file made afresh on a new
node, a mistyped ``IMGSHARE_STORAGE_KEY``) would store images that no other node can
open, and could open none of theirs. So the catalog keeps a check value: a random
block wrapped under the key, like a content key, for a fixed id. A server checks its
key against it before it serves, and refuses to start on a mismatch. The first
server to start on a catalog without one writes it, after checking its key against
an image already stored, if there is one (a catalog from before the check value).

The value lives in a table of its own, ``storage_key_check`` (one row), made on first
use on SQLite and PostgreSQL alike; it reveals nothing about the key (AES-GCM of
random bytes) and, unlike a content key, unwraps nothing.
"""

from __future__ import annotations

import logging
import os

from imgshare.errors import ConfigError, StorageError
from imgshare.store.catalog import Database, SQLCatalog, now_ms
from imgshare.store.keys import CONTENT_KEY_SIZE, StorageKey

log = logging.getLogger(__name__)

#: The id the check value is wrapped for (an image id is 16 bytes: never this).
KEY_CHECK_ID = b"imgshare storage key check v1"
#: Serialises the first writers of the check value on PostgreSQL (a concurrent
#: CREATE TABLE IF NOT EXISTS can fail there); "imgshar" + 3.
_KEY_CHECK_LOCK = 0x696D_6773_6861_7203
# BYTEA and BIGINT: PostgreSQL's names; SQLite stores a blob and an integer in them.
_CREATE = (
    "CREATE TABLE IF NOT EXISTS storage_key_check ("
    "id INTEGER PRIMARY KEY CHECK (id = 1), wrapped BYTEA NOT NULL, created_ms BIGINT NOT NULL)"
)

MISMATCH = (
    "the storage key of this server is not the one the catalog's images are sealed "
    "under ({where}): every node must use the same key. Copy the storage key file of a "
    "node that works (DATA/storage.key) or set IMGSHARE_STORAGE_KEY to the same value "
    "everywhere"
)


def _is_postgres(catalog: SQLCatalog) -> bool:
    return type(catalog).__name__ == "PostgresCatalog"


def read_key_check(catalog: SQLCatalog) -> bytes | None:
    """The catalog's check value, or None if it has none yet. Raises ``StorageError``."""

    def body(db: Database) -> bytes | None:
        _prepare(db, catalog)
        row = db.execute("SELECT wrapped FROM storage_key_check WHERE id = 1").fetchone()
        return None if row is None else bytes(row[0])

    return catalog._write("read the storage key check", body)


def check_storage_key(catalog: SQLCatalog, key: StorageKey, where: str = "") -> bool:
    """Make sure ``key`` is the catalog's storage key; write the check value if the
    catalog has none yet (after checking the key against a stored image, if any).
    Returns whether the value was written now. Raises ``ConfigError`` on a mismatch,
    ``StorageError``."""
    where = where or repr(catalog)

    def body(db: Database) -> bool:
        _prepare(db, catalog)
        row = db.execute("SELECT wrapped FROM storage_key_check WHERE id = 1").fetchone()
        if row is not None:
            _unwrap(key, bytes(row[0]), KEY_CHECK_ID, where)
            return False
        image = db.execute("SELECT id, wrapped_key FROM images LIMIT 1").fetchone()
        if image is not None:
            _unwrap(key, bytes(image[1]), bytes.fromhex(image[0]), where)
        db.execute(
            "INSERT INTO storage_key_check (id, wrapped, created_ms) VALUES (1, ?, ?)",
            (key.wrap(os.urandom(CONTENT_KEY_SIZE), KEY_CHECK_ID), now_ms()),
        )
        return True

    written = catalog._write("check the storage key", body)
    if written:
        log.info("storage key check value recorded in the catalog")
    return written


def copy_key_check(source: SQLCatalog, target: SQLCatalog) -> None:
    """Give ``target`` the check value of ``source`` (``imgshare migrate``), unless
    it has one. Raises ``StorageError``."""
    value = read_key_check(source)
    if value is None:
        return

    def body(db: Database) -> None:
        _prepare(db, target)
        db.execute(
            "INSERT INTO storage_key_check (id, wrapped, created_ms) VALUES (1, ?, ?) "
            "ON CONFLICT (id) DO NOTHING",
            (value, now_ms()),
        )

    target._write("copy the storage key check", body)


def _prepare(db: Database, catalog: SQLCatalog) -> None:
    if _is_postgres(catalog):
        db.execute("SELECT pg_advisory_xact_lock(?)", (_KEY_CHECK_LOCK,))
    db.execute(_CREATE)


def _unwrap(key: StorageKey, wrapped: bytes, for_id: bytes, where: str) -> None:
    try:
        key.unwrap(wrapped, for_id)
    except StorageError:
        raise ConfigError(MISMATCH.format(where=where)) from None
