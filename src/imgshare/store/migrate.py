"""``imgshare migrate``: copy an embedded data folder into the storage several nodes share.

The source is a data folder (SQLite catalog, ``objects/``, ``inbox/``) whose server
is stopped (its lock is taken for the whole run); the target is what a node's
settings name (``catalog_url``: PostgreSQL; ``object_store_url``: S3 or a folder;
``inbox_location``). The storage key stays the same: images are copied sealed as
they are, and their wrapped keys with their rows.

Order, so that a target is never half-usable and a run can always be started again:

1. the storage key: it must open the source's images, and the target must have no
   check value of another key (``imgshare.store.keycheck``); the target gets one;
2. the sealed objects, then the inbox copies: each copied unless the target has it
   at the same size already (a run that stopped half-way goes on where it stopped);
3. the catalog's rows, every table in one transaction: either all of them or none.
   Identity columns keep their values (``OVERRIDING SYSTEM VALUE``) and their
   sequences go past the highest id the source ever gave (SQLite's
   ``sqlite_sequence``), so that no user id is ever reused. A target that already
   holds exactly these rows (a finished run) is left as it is; any other non-empty
   target is refused;
4. verification (``verify``, also on its own with ``imgshare migrate --check``): the
   same rows on both sides, every object and copy there at its size, with ``deep``
   the same bytes (SHA-256 of both).

Uploads in flight (``uploads_in_flight``) are not copied: they belong to a server
that is stopped. A table this code does not know (a newer schema) stops the run.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from imgshare.errors import ConfigError, StorageError
from imgshare.store.blobs import BlobNotFound, BlobStore, FileBlobStore
from imgshare.store.catalog import Database, SQLCatalog, SQLiteCatalog
from imgshare.store.copies import Inbox
from imgshare.store.factory import DataFolderStore, catalog_path, inbox_path
from imgshare.store.keycheck import check_storage_key
from imgshare.store.keys import StorageKey
from imgshare.store.s3inbox import S3Inbox

log = logging.getLogger(__name__)

#: Tables copied, parents before children, with their key columns (for the order in
#: which rows are compared) and whether their id is an identity column on PostgreSQL.
TABLES: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("users", ("id",), True),
    ("images", ("id",), False),
    ("tokens", ("id",), True),
    ("invitations", ("code_hash",), False),
    ("shares", ("image_id", "user_id"), False),
    ("audit", ("id",), True),
    ("login_failures", ("scope", "key"), False),
    ("login_networks", ("network",), False),
)
#: Tables left behind, and why: state of the stopped server, or made by the target.
SKIPPED = {
    "uploads_in_flight": "uploads in flight of the stopped server",
    "storage_key_check": "made on the target from the storage key",
}
#: Identity sequences to move past the source's highest id (uploads: none copied, but
#: a reservation id is never reused either).
SEQUENCES = ("users", "tokens", "audit", "uploads_in_flight")
_PIECE = 1024 * 1024


@dataclass
class MigrationReport:
    """What a run did and found."""

    rows: dict[str, int] = field(default_factory=dict)  # table -> rows in the source
    rows_copied: bool = False  # False: the target had them already
    objects_copied: int = 0
    objects_present: int = 0
    copies_copied: int = 0
    copies_present: int = 0
    copies_missing: int = 0  # inbox files the source's rows name but its folder lacks
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Migration:
    """One source data folder, one target store (see the module docstring)."""

    def __init__(
        self,
        source: Path,
        target: DataFolderStore,
        key: StorageKey,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        """Raises ``ConfigError`` if ``source`` has no catalog, ``StorageError``."""
        path = catalog_path(source)
        if not path.is_file():
            raise ConfigError(f"the data folder {source} has no {path.name}: nothing to migrate")
        if not isinstance(target.sql, SQLCatalog) or isinstance(target.sql, SQLiteCatalog):
            raise ConfigError("the target must be a PostgreSQL catalog (set catalog_url)")
        self.source_dir = source
        self.catalog = SQLiteCatalog(path)  # migrated to this imgshare's schema
        self.blobs = FileBlobStore(source)
        self.inbox = Inbox(inbox_path(source))
        self.target = target
        self.key = key
        self._say = progress or (lambda text: None)

    def close(self) -> None:
        self.catalog.close()

    # -- the run ------------------------------------------------------------------------

    def run(self) -> MigrationReport:
        """Copy everything (steps 1-3), then verify (step 4). Raises ``ConfigError``
        (another key, a target with other rows, an unknown table), ``StorageError``."""
        report = MigrationReport()
        tables = self._check_tables()
        self._check_key()
        images = self._images()
        self._say(f"objects: {len(images)} to check")
        for number, (image_id, _, _) in enumerate(images, 1):
            if self._copy_object(image_id):
                report.objects_copied += 1
            else:
                report.objects_present += 1
            if number % 100 == 0:
                self._say(f"objects: {number}/{len(images)}")
        self._copy_inbox(images, report)
        report.rows_copied = self._copy_rows(tables)
        self._say("rows copied" if report.rows_copied else "rows: the target had them already")
        self.verify(report)
        return report

    def verify(
        self, report: MigrationReport | None = None, *, deep: bool = False
    ) -> MigrationReport:
        """Step 4 alone: the same rows, every object and inbox copy in place (``deep``:
        with the same bytes). Problems go into the report."""
        report = report or MigrationReport()
        tables = self._check_tables()
        for table, keys, _ in tables:
            source = self._rows(self.catalog, table, keys)
            report.rows[table] = len(source)
            target = self._rows(self.target.sql, table, keys)
            if source != target:
                report.problems.append(
                    f"table {table}: {len(source)} row(s) in the source, {len(target)} in the "
                    f"target, {len(set(source) ^ set(target))} differ"
                )
        for table in SEQUENCES:
            wanted = self._source_sequence(table)
            got = self._target_sequence(table)
            if got < wanted:
                report.problems.append(
                    f"the target's {table} ids restart at {got + 1}, not above {wanted}"
                )
        images = self._images()
        for image_id, _, _ in images:
            problem = self._check_object(image_id, deep)
            if problem:
                report.problems.append(problem)
        if self.target.config.inbox:
            for _, (owner, name), _ in self._named_copies(images):
                source_size = self._source_copy_size(owner, name)
                if source_size is None:
                    continue
                if self._target_copy_size(owner, name) != source_size:
                    report.problems.append(f"inbox copy {owner}/{name} is missing in the target")
        return report

    # -- 1. the key, and what the source holds ---------------------------------------------

    def _check_tables(self) -> tuple[tuple[str, tuple[str, ...], bool], ...]:
        found = {
            row[0]
            for row in self.catalog._read(
                "list tables",
                lambda db: db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%'"
                ).fetchall(),
            )
        }
        unknown = sorted(found - {table for table, _, _ in TABLES} - set(SKIPPED))
        if unknown:
            raise ConfigError(
                f"the source catalog has table(s) this imgshare migrate does not know: "
                f"{', '.join(unknown)} (upgrade imgshare)"
            )
        return TABLES

    def _check_key(self) -> None:
        """The key opens the source's images, and is the target's (or the target has
        none yet: then it gets this one's check value)."""
        row = self.catalog._read(
            "read an image",
            lambda db: db.execute("SELECT id, wrapped_key FROM images LIMIT 1").fetchone(),
        )
        if row is not None:
            try:
                self.key.unwrap(bytes(row[1]), bytes.fromhex(row[0]))
            except StorageError:
                raise ConfigError(
                    f"the storage key given does not open the images of {self.source_dir}: "
                    "use that data folder's storage.key (or its IMGSHARE_STORAGE_KEY)"
                ) from None
        check_storage_key(self.target.sql, self.key, "the target catalog")

    def _images(self) -> list[tuple[str, tuple[str, str | None], int]]:
        """``(id, (owner name, inbox name), size)`` of every source image."""
        rows = self.catalog._read(
            "list images",
            lambda db: db.execute(
                "SELECT images.id, users.name, images.inbox_name, images.size FROM images "
                "JOIN users ON users.id = images.owner_id ORDER BY images.id"
            ).fetchall(),
        )
        return [(row[0], (row[1], row[2]), int(row[3])) for row in rows]

    # -- 2. objects and inbox copies ----------------------------------------------------------

    def _copy_object(self, image_id: str) -> bool:
        """Copy one sealed object unless the target has it at its size; return whether
        it was copied. Raises ``StorageError`` (the source's object missing...)."""
        size = self.blobs.size(image_id)
        try:
            if self.target.blobs.size(image_id) == size:
                return False
        except BlobNotFound:
            pass
        with self.blobs.open(image_id) as source, self.target.blobs.create(image_id) as writer:
            _pour(source, writer)
            writer.commit()
        return True

    def _check_object(self, image_id: str, deep: bool) -> str | None:
        try:
            size = self.target.blobs.size(image_id)
        except BlobNotFound:
            return f"object {image_id} is missing in the target"
        if size != self.blobs.size(image_id):
            return (
                f"object {image_id} has {size} bytes in the target, not {self.blobs.size(image_id)}"
            )
        if deep and _digest(self.blobs, image_id) != _digest(self.target.blobs, image_id):
            return f"object {image_id} differs in the target"
        return None

    def _named_copies(
        self, images: Iterable[tuple[str, tuple[str, str | None], int]]
    ) -> Iterable[tuple[str, tuple[str, str], int]]:
        for image_id, (owner, name), size in images:
            if name is not None:
                yield image_id, (owner, name), size

    def _copy_inbox(
        self, images: list[tuple[str, tuple[str, str | None], int]], report: MigrationReport
    ) -> None:
        if not self.target.config.inbox:
            return
        for _, (owner, name), _ in self._named_copies(images):
            size = self._source_copy_size(owner, name)
            if size is None:
                report.copies_missing += 1
                continue
            if self._target_copy_size(owner, name) == size:
                report.copies_present += 1
                continue
            inbox = self.target.inbox
            writer = inbox.create_file(owner, name)
            try:
                with self.inbox.path_of(owner, name).open("rb") as source:
                    _pour(source, writer)
                writer.commit()
            except BaseException:
                writer.abort()
                raise
            report.copies_copied += 1

    def _source_copy_size(self, owner: str, name: str) -> int | None:
        try:
            return self.inbox.path_of(owner, name).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read inbox copy {owner}/{name}: {exc.strerror}") from exc

    def _target_copy_size(self, owner: str, name: str) -> int | None:
        inbox = self.target.inbox
        if isinstance(inbox, S3Inbox):
            return inbox.size(owner, name)
        try:
            return inbox.path_of(owner, name).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read inbox copy {owner}/{name}: {exc.strerror}") from exc

    # -- 3. the rows -------------------------------------------------------------------

    def _copy_rows(self, tables: tuple[tuple[str, tuple[str, ...], bool], ...]) -> bool:
        """Every table in one transaction; False if the target had these rows."""
        data = {table: self._table(table) for table, _, _ in tables}
        sequences = {table: self._source_sequence(table) for table in SEQUENCES}
        present = self._rows(self.target.sql, "users", ("id",))
        if present:
            same = all(
                self._rows(self.catalog, table, keys) == self._rows(self.target.sql, table, keys)
                for table, keys, _ in tables
            )
            if same:
                return False
            raise ConfigError(
                f"the target catalog holds {len(present)} user(s) that are not this data "
                "folder's: migrate into an empty database"
            )

        def body(db: Database) -> None:
            for table, _, identity in tables:
                columns, rows = data[table]
                if not rows:
                    continue
                names = ", ".join(columns)
                marks = ", ".join("?" * len(columns))
                overriding = " OVERRIDING SYSTEM VALUE" if identity else ""
                sql = f"INSERT INTO {table} ({names}){overriding} VALUES ({marks})"
                for row in rows:
                    db.execute(sql, row)
            for table, value in sequences.items():
                if value > 0:
                    db.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), ?)", (value,)
                    )

        self.target.sql._write("copy the catalog", body)
        return True

    def _table(self, table: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        def body(db: Database) -> tuple[list[str], list[tuple[Any, ...]]]:
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})").fetchall()]
            rows = db.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
            return columns, [tuple(row) for row in rows]

        return self.catalog._read(f"read {table}", body)

    def _rows(
        self, catalog: SQLCatalog, table: str, keys: tuple[str, ...]
    ) -> list[tuple[Any, ...]]:
        """The rows of ``table`` in key order, with the source's columns, as plain
        values (bytes for blobs) so that both databases' rows compare."""
        columns, _ = self._table(table)
        order = ", ".join(keys)
        rows = catalog._read(
            f"read {table}",
            lambda db: db.execute(
                f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}"
            ).fetchall(),
        )
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in rows]

    def _source_sequence(self, table: str) -> int:
        """The highest id the source ever gave in ``table`` (AUTOINCREMENT remembers
        ids of rows deleted since)."""

        def body(db: Database) -> int:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
            top = db.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()
            return max(int(row[0]) if row else 0, int(top[0]))

        return self.catalog._read("read a sequence", body)

    def _target_sequence(self, table: str) -> int:
        """The highest id the target's sequence has given (or will not give again)."""

        def body(db: Database) -> int:
            (name,) = db.execute("SELECT pg_get_serial_sequence(?, 'id')", (table,)).fetchone()
            row = db.execute(f"SELECT last_value, is_called FROM {name}").fetchone()
            return int(row[0]) if row[1] else int(row[0]) - 1

        return self.target.sql._read("read a sequence", body)


def _pour(source: BinaryIO | Any, writer: Any) -> None:
    while True:
        piece = source.read(_PIECE)
        if not piece:
            return
        writer.write(piece)


def _digest(blobs: BlobStore, image_id: str) -> bytes:
    digest = hashlib.sha256()
    with blobs.open(image_id) as stored:
        while piece := stored.read(_PIECE):
            digest.update(piece)
    return digest.digest()
