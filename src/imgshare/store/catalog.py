"""The catalog: users and images, behind a small interface (SQLite now, PostgreSQL later).

``Catalog`` is what the server and ``imgshare.server.accounts`` code against;
``SQLiteCatalog`` is the embedded implementation (docs/design.md, decision 10).

SQLite settings and why:

* WAL and ``synchronous=FULL``: a committed row survives a power cut, which is what
  "acknowledged means durable" needs (the receipt is sent after the commit).
* ``foreign_keys=ON``: an image cannot outlive its owner by accident.
* ``secure_delete=ON`` and a ``wal_checkpoint(TRUNCATE)`` after every deletion: a
  deleted row's wrapped content key is overwritten in the database file and dropped
  from the WAL, so deleting a row really shreds the image (crypto-shredding). Copies
  the file system or the disk keep on their own are out of reach; rotating the storage
  key closes that gap later.
* The file is created mode 0600 (it holds password hashes and wrapped keys); SQLite
  gives its ``-wal`` and ``-shm`` files the same mode.

Thread safety: one connection guarded by a lock. Measured on the 2-core dev machine
with 2 writer and 6 reader threads: 24k point reads/s and 3.3k durable commits/s, far
above what uploads need. A pool of reader connections read 5x faster but cut commits
to 500/s (the GIL starves the writer) and is harder to close; it can come if
profiling ever points here.

Removing a user who owns images is refused unless ``purge=True``, which deletes their
images in the same transaction and returns what must be removed from disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from imgshare.errors import ConfigError, QuotaError, StorageError, TryLaterError
from imgshare.store.access import AccessTables, AuditRecord, ShareRecord, TokenRecord
from imgshare.store.blobs import OBJECT_ID_RE

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
HMAC_SIZE = 32
#: The kinds of login throttle state (see ``imgshare.server.throttle``).
THROTTLE_SCOPES = ("account", "address")

# _MIGRATIONS[n] takes the schema from version n to n + 1 (PRAGMA user_version).
# Migrations run with foreign keys off (so a table can be rebuilt, as SQLite's
# "making other kinds of table schema changes" procedure does) and are checked with
# PRAGMA foreign_key_check before they commit.
# Seams for later versions: a `shares` table, API tokens, invitations.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE users (
            id            INTEGER PRIMARY KEY,
            name          TEXT    NOT NULL UNIQUE,
            password_hash TEXT    NOT NULL,
            created_at    INTEGER NOT NULL          -- unix ms
        ) STRICT""",
        """CREATE TABLE images (
            id          TEXT    PRIMARY KEY CHECK (length(id) = 32),
            owner_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
            name        TEXT    NOT NULL,           -- client's file name: metadata only
            size        INTEGER NOT NULL CHECK (size >= 0),  -- plaintext bytes
            hmac        BLOB    NOT NULL CHECK (length(hmac) = 32),
            format      TEXT    NOT NULL,
            width       INTEGER NOT NULL,
            height      INTEGER NOT NULL,
            header      BLOB    NOT NULL,           -- upload header bytes, as received
            wrapped_key BLOB    NOT NULL,           -- content key under the storage key
            inbox_name  TEXT,                       -- NULL: no decrypted inbox copy
            created_at  INTEGER NOT NULL            -- unix ms
        ) STRICT""",
        "CREATE INDEX images_by_owner ON images (owner_id, created_at)",
    ),
    (
        # User ids are never reused (AUTOINCREMENT): a session, a share or a token
        # that names a removed user's id can never reach the next account.
        """CREATE TABLE users_v2 (
            id            INTEGER PRIMARY KEY AUTOINCREMENT,
            name          TEXT    NOT NULL UNIQUE,
            password_hash TEXT    NOT NULL,
            created_at    INTEGER NOT NULL          -- unix ms
        ) STRICT""",
        "INSERT INTO users_v2 (id, name, password_hash, created_at) "
        "SELECT id, name, password_hash, created_at FROM users",
        "DROP TABLE users",
        "ALTER TABLE users_v2 RENAME TO users",
        # Failed logins per account name and per client network, for the growing
        # login delay; rows are forgotten once their last failure is old enough.
        """CREATE TABLE login_failures (
            scope           TEXT    NOT NULL CHECK (scope IN ('account', 'address')),
            key             TEXT    NOT NULL,
            failures        INTEGER NOT NULL CHECK (failures > 0),
            last_failure_ms INTEGER NOT NULL,
            held_until_ms   INTEGER NOT NULL DEFAULT 0,  -- an attempt let through holds
            PRIMARY KEY (scope, key)
        ) STRICT, WITHOUT ROWID""",
        # Client networks that logged in successfully, and when last: their logins go
        # first when the password checks are busy.
        """CREATE TABLE login_networks (
            network         TEXT    PRIMARY KEY,
            last_success_ms INTEGER NOT NULL
        ) STRICT, WITHOUT ROWID""",
    ),
    (
        # Uploads in flight, held against their owner's quota and upload places by
        # whichever process receives them; a lease that its holder renews, so that a
        # dead process's reservations lapse.
        """CREATE TABLE uploads_in_flight (
            id         INTEGER PRIMARY KEY,
            user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            size       INTEGER NOT NULL CHECK (size >= 0),
            holder     TEXT    NOT NULL,
            expires_ms INTEGER NOT NULL
        ) STRICT""",
        "CREATE INDEX uploads_in_flight_by_user ON uploads_in_flight (user_id)",
    ),
    (
        # API tokens: only a SHA-256 of each secret is kept (the secrets are random,
        # 256 bits: no slow hash needed, and a login by token costs one lookup).
        """CREATE TABLE tokens (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            name         TEXT    NOT NULL,
            secret_hash  BLOB    NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
            created_ms   INTEGER NOT NULL,
            expires_ms   INTEGER NOT NULL,          -- 0: never
            last_used_ms INTEGER NOT NULL DEFAULT 0
        ) STRICT""",
        "CREATE INDEX tokens_by_user ON tokens (user_id)",
        # One-time invitation codes, also kept hashed.
        """CREATE TABLE invitations (
            code_hash  BLOB    PRIMARY KEY CHECK (length(code_hash) = 32),
            created_ms INTEGER NOT NULL,
            expires_ms INTEGER NOT NULL,
            used_by    INTEGER REFERENCES users (id) ON DELETE SET NULL,
            used_ms    INTEGER
        ) STRICT, WITHOUT ROWID""",
        # Who else may fetch an image; gone with the image or the user.
        """CREATE TABLE shares (
            image_id   TEXT    NOT NULL REFERENCES images (id) ON DELETE CASCADE,
            user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            granted_ms INTEGER NOT NULL,
            expires_ms INTEGER NOT NULL,            -- 0: until unshared
            PRIMARY KEY (image_id, user_id)
        ) STRICT, WITHOUT ROWID""",
        "CREATE INDEX shares_by_user ON shares (user_id, image_id)",
        # Security events, for `imgshare audit`.
        """CREATE TABLE audit (
            id        INTEGER PRIMARY KEY AUTOINCREMENT,
            time_ms   INTEGER NOT NULL,
            event     TEXT    NOT NULL,
            user_name TEXT,                         -- whom it concerns, as given
            network   TEXT,                         -- the client's, if from a connection
            detail    TEXT    NOT NULL              -- a JSON object
        ) STRICT""",
        "CREATE INDEX audit_by_time ON audit (time_ms)",
        "CREATE INDEX audit_by_user ON audit (user_name, time_ms)",
        # Sessions that logged in with a password before this time are over.
        "ALTER TABLE users ADD COLUMN password_changed_ms INTEGER NOT NULL DEFAULT 0",
    ),
)

USER_COLUMNS = "id, name, password_hash, created_at, password_changed_ms"
IMAGE_COLUMNS = (
    "id, owner_id, name, size, hmac, format, width, height, header, wrapped_key, "
    "inbox_name, created_at"
)
_IMAGE_PARAMS = ", ".join("?" * 12)


def now_ms() -> int:
    """The current time as unix milliseconds, the catalog's time unit."""
    return time.time_ns() // 1_000_000


class UserExistsError(ConfigError):
    """A user with that name already exists (a ``ConfigError``: the name was given)."""


@dataclass(frozen=True, slots=True)
class User:
    """A catalog user row. The hash stays out of the repr."""

    id: int
    name: str
    password_hash: str = field(repr=False)
    created_at: int
    password_changed_ms: int = 0  # by its owner or an administrator; 0: never


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """A catalog image row; raises ``ValueError`` if a field is malformed."""

    id: str
    owner_id: int
    name: str
    size: int
    hmac: bytes
    format: str
    width: int
    height: int
    header: bytes = field(repr=False)
    wrapped_key: bytes = field(repr=False)
    inbox_name: str | None
    created_at: int

    def __post_init__(self) -> None:
        if not OBJECT_ID_RE.fullmatch(self.id):
            raise ValueError("image id must be 32 lowercase hex digits")
        if len(self.hmac) != HMAC_SIZE:
            raise ValueError(f"image hmac must be {HMAC_SIZE} bytes")
        if self.size < 0 or self.width < 1 or self.height < 1:
            raise ValueError("image size and dimensions must be positive")


@dataclass(frozen=True, slots=True)
class DeletedImage:
    """What the caller must remove on disk after a row is gone."""

    image_id: str  # the object id in the blob store
    owner_name: str
    inbox_name: str | None  # file in the owner's inbox folder, if a copy was made


class Catalog(Protocol):
    """The catalog interface. Implementations are thread-safe and raise
    ``StorageError`` for database failures."""

    def add_user(
        self,
        name: str,
        password_hash: str,
        created_at: int | None = None,
        *,
        invitation: bytes | None = None,
    ) -> User: ...
    def get_user(self, user_id: int) -> User | None: ...
    def get_user_by_name(self, name: str) -> User | None: ...
    def existing_user_ids(self, user_ids: Iterable[int]) -> set[int]: ...
    def list_users(self) -> list[User]: ...
    def set_password_hash(self, user_id: int, password_hash: str) -> None: ...
    def change_password_hash(
        self,
        user_id: int,
        password_hash: str,
        now: int,
        *,
        revoke_tokens: bool,
        keep_token: int | None = None,
    ) -> int: ...
    def remove_user(self, name: str, *, purge: bool = False) -> list[DeletedImage]: ...
    def add_image(self, record: ImageRecord, *, reservation: int | None = None) -> None: ...
    def get_image(self, image_id: str) -> ImageRecord | None: ...
    def list_images(self, owner_id: int) -> list[ImageRecord]: ...
    def delete_image(self, image_id: str) -> DeletedImage | None: ...
    def image_ids(self) -> set[str]: ...
    def inbox_names(self) -> set[tuple[str, str]]: ...
    def used_bytes(self, owner_id: int) -> int: ...
    def login_failures(self, scope: str, key: str, since_ms: int) -> tuple[int, int]: ...
    def add_login_failure(self, scope: str, key: str, now: int, since_ms: int) -> int: ...
    def clear_login_failures(self, scope: str, key: str) -> None: ...
    def claim_login_attempt(
        self,
        counted: Sequence[tuple[str, str, int]],
        now: int,
        since_ms: int,
        delay_ms: Callable[[int, int], int],
    ) -> int: ...
    def forget_login_failures(self, before_ms: int) -> int: ...
    def note_login_success(self, network: str, now: int) -> None: ...
    def last_login_success(self, network: str) -> int: ...
    def forget_login_successes(self, before_ms: int) -> int: ...
    def reserve_upload(
        self, user_id: int, size: int, *, quota: int, per_user: int, holder: str, expires: int
    ) -> int: ...
    def renew_reservations(self, holder: str, expires: int) -> int: ...
    def release_reservation(self, reservation_id: int) -> None: ...
    def drop_reservations(self, holder: str) -> int: ...
    def uploads_in_flight(self, user_id: int) -> int: ...
    # access (imgshare.store.access)
    def share_image(self, image_id: str, user_id: int, now: int, expires_ms: int) -> None: ...
    def unshare_image(self, image_id: str, user_id: int) -> bool: ...
    def shares_of(self, image_id: str, now: int) -> list[ShareRecord]: ...
    def readable_image(self, image_id: str, user_id: int, now: int) -> ImageRecord | None: ...
    def list_page(
        self, user_id: int, *, shared: bool, after: tuple[int, str], limit: int, now: int
    ) -> tuple[list[tuple[ImageRecord, str]], bool]: ...
    def expire_shares(self, now: int) -> list[tuple[str, str, str]]: ...
    def add_token(
        self, user_id: int, name: str, secret_hash: bytes, now: int, expires_ms: int
    ) -> TokenRecord: ...
    def token_owner(self, secret_hash: bytes, now: int) -> tuple[User, int] | None: ...
    def token_alive(self, token_id: int, now: int) -> bool: ...
    def list_tokens(self, user_id: int) -> list[TokenRecord]: ...
    def revoke_token(self, user_id: int, token_id: int) -> TokenRecord | None: ...
    def revoke_tokens(self, user_id: int, keep: int | None = None) -> int: ...
    def add_invitation(self, code_hash: bytes, now: int, expires_ms: int) -> None: ...
    def invitation_usable(self, code_hash: bytes, now: int) -> bool: ...
    def audit(
        self, event: str, user_name: str | None, network: str | None, now: int, **detail: Any
    ) -> None: ...
    def audit_events(
        self, *, user_name: str | None = None, event: str | None = None, limit: int = 1000
    ) -> list[AuditRecord]: ...
    def count_events(self, event: str, network: str, since_ms: int) -> int: ...
    def close(self) -> None: ...


def user_from_row(row: tuple[Any, ...]) -> User:
    return User(*row)


def image_from_row(row: tuple[Any, ...]) -> ImageRecord:
    return ImageRecord(*row)


def _create_private_file(path: Path) -> None:
    # SQLite would create the file with the umask's mode (often 0644); it then gives
    # the -wal and -shm files the database file's mode.
    # O_EXCL: never open (and close) an existing database file. Closing any descriptor
    # of a file drops all of this process's POSIX locks on it, SQLite's included
    # (sqlite.org/howtocorrupt.html, 2.2), which let another process pull the WAL away.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class SQLiteCatalog(AccessTables):
    """The catalog in one SQLite file; see the module docstring for the settings."""

    def __init__(self, path: Path, *, busy_timeout_ms: int = 5000) -> None:
        """Open (creating and migrating if needed). Raises ``StorageError``."""
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            _create_private_file(self.path)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open catalog {self.path}: {exc}") from exc
        try:
            self._configure(busy_timeout_ms)
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def __repr__(self) -> str:
        return f"SQLiteCatalog({str(self.path)!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; idempotent. Later calls raise ``StorageError``."""
        with self._lock:
            self._db.close()

    # -- plumbing -----------------------------------------------------------------

    def _configure(self, busy_timeout_ms: int) -> None:
        with self._errors("configure"):
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StorageError(f"catalog {self.path}: the file system refused WAL mode")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA secure_delete = ON")

    def _migrate(self) -> None:
        with self._errors("migrate"):
            self._db.execute("PRAGMA foreign_keys = OFF")  # a no-op inside a transaction
        try:
            while self._migrate_once():
                pass
        finally:
            with self._errors("migrate"):
                self._db.execute("PRAGMA foreign_keys = ON")

    def _migrate_once(self) -> bool:
        """Apply the next migration, if any; return whether one was applied."""
        with self._write("migrate") as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"catalog {self.path} has schema version {version}; this imgshare "
                    f"knows up to {SCHEMA_VERSION} (upgrade imgshare)"
                )
            if version == SCHEMA_VERSION:
                return False
            for statement in _MIGRATIONS[version]:
                db.execute(statement)
            if db.execute("PRAGMA foreign_key_check").fetchone() is not None:
                raise StorageError(f"catalog {self.path}: migration broke a foreign key")
            db.execute(f"PRAGMA user_version = {version + 1}")
        log.info("catalog %s migrated to schema version %d", self.path, version + 1)
        return True

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StorageError(f"catalog {action} failed: {exc}") from exc

    @contextlib.contextmanager
    def _read(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors(action):
            yield self._db

    @contextlib.contextmanager
    def _write(self, action: str, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction: ``BEGIN IMMEDIATE`` ... ``COMMIT``, durable unless
        ``durable`` is false: then the commit skips the WAL's fsync (the next durable
        commit syncs it too). For state that a crash may lose: leases of uploads in
        flight, which lapse anyway."""
        with self._lock, self._errors(action):
            if not durable:
                self._db.execute("PRAGMA synchronous = NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # also when COMMIT itself failed
                        with contextlib.suppress(sqlite3.Error):
                            self._db.execute("ROLLBACK")
                    raise
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous = FULL")

    def _shred(self) -> None:
        # Drop deleted rows' old page images from the WAL (see module docstring).
        # Best effort: another process's open read transaction makes it busy.
        try:
            with self._read("checkpoint") as db:
                busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except StorageError as exc:  # the deletion itself is committed
            log.warning("%s", exc)
            return
        if busy:
            log.warning("catalog checkpoint after a deletion was blocked by a reader")

    # -- users ----------------------------------------------------------------------

    def add_user(
        self,
        name: str,
        password_hash: str,
        created_at: int | None = None,
        *,
        invitation: bytes | None = None,
    ) -> User:
        """Insert a user; with ``invitation`` (a code's hash), use that invitation up in
        the same transaction. Raises ``UserExistsError`` if the name is taken,
        ``InvitationError``."""
        created = now_ms() if created_at is None else created_at
        with self._write("add user") as db:
            if invitation is not None:  # first: a made-up code learns nothing of names
                self.use_invitation(db, invitation, created)
            try:
                cursor = db.execute(
                    "INSERT INTO users (name, password_hash, created_at) VALUES (?, ?, ?)",
                    (name, password_hash, created),
                )
            except sqlite3.IntegrityError as exc:
                if exc.sqlite_errorname != "SQLITE_CONSTRAINT_UNIQUE":
                    raise
                raise UserExistsError(f"user {name!r} already exists") from exc
            user_id = cursor.lastrowid
            if invitation is not None:
                db.execute(
                    "UPDATE invitations SET used_by = ? WHERE code_hash = ?",
                    (user_id, invitation),
                )
        if user_id is None:  # pragma: no cover - sqlite always sets it for an INSERT
            raise StorageError("catalog add user failed: no row id")
        return User(user_id, name, password_hash, created)

    def get_user(self, user_id: int) -> User | None:
        """The user with id ``user_id``, or ``None`` (ids are never reused)."""
        return self._user_where("id", user_id)

    def _user_where(self, column: str, value: int | str) -> User | None:
        with self._read("get user") as db:
            row = db.execute(
                f"SELECT {USER_COLUMNS} FROM users WHERE {column} = ?", (value,)
            ).fetchone()
        return None if row is None else user_from_row(row)

    def existing_user_ids(self, user_ids: Iterable[int]) -> set[int]:
        """Which of ``user_ids`` still name a user (to end a removed user's sessions)."""
        wanted = sorted(set(user_ids))
        found: set[int] = set()
        with self._read("check users") as db:
            for start in range(0, len(wanted), 500):  # stay under SQLite's variable limit
                batch = wanted[start : start + 500]
                marks = ", ".join("?" * len(batch))
                rows = db.execute(f"SELECT id FROM users WHERE id IN ({marks})", batch)
                found.update(row[0] for row in rows)
        return found

    def get_user_by_name(self, name: str) -> User | None:
        """The user called ``name``, or ``None``."""
        return self._user_where("name", name)

    def list_users(self) -> list[User]:
        """All users, by name."""
        with self._read("list users") as db:
            rows = db.execute(f"SELECT {USER_COLUMNS} FROM users ORDER BY name").fetchall()
        return [user_from_row(row) for row in rows]

    def set_password_hash(self, user_id: int, password_hash: str) -> None:
        """Replace a user's password hash with one of the same password (a rehash)."""
        with self._write("set password") as db:
            db.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))

    def change_password_hash(
        self,
        user_id: int,
        password_hash: str,
        now: int,
        *,
        revoke_tokens: bool,
        keep_token: int | None = None,
    ) -> int:
        """A new password, in one transaction with what it ends: sessions logged in
        with a password before ``now`` (see ``password_changed_ms``) and, with
        ``revoke_tokens``, every token of the user but ``keep_token``. Returns how
        many tokens were revoked."""
        with self._write("change password") as db:
            db.execute(
                "UPDATE users SET password_hash = ?, password_changed_ms = ? WHERE id = ?",
                (password_hash, now, user_id),
            )
            return self.delete_tokens(db, user_id, keep_token) if revoke_tokens else 0

    def remove_user(self, name: str, *, purge: bool = False) -> list[DeletedImage]:
        """Remove a user; return the images removed with them (``purge=True`` only).

        Raises ``ConfigError`` if there is no such user, or if they own images and
        ``purge`` is false.
        """
        with self._write("remove user") as db:
            row = db.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise ConfigError(f"no user named {name!r}")
            user_id = row[0]
            images = db.execute(
                "SELECT id, inbox_name FROM images WHERE owner_id = ? ORDER BY created_at",
                (user_id,),
            ).fetchall()
            if images and not purge:
                raise ConfigError(
                    f"user {name!r} owns {len(images)} image(s); delete them first or purge"
                )
            db.execute("DELETE FROM images WHERE owner_id = ?", (user_id,))
            db.execute("DELETE FROM users WHERE id = ?", (user_id,))
        if images:
            self._shred()
        return [DeletedImage(image_id, name, inbox) for image_id, inbox in images]

    # -- images ---------------------------------------------------------------------

    def add_image(self, record: ImageRecord, *, reservation: int | None = None) -> None:
        """Insert an image row (the commit point of an upload) and, in the same
        transaction, release the upload's ``reservation``: from now on the row counts
        against the quota. Raises ``StorageError`` if the id exists or the owner
        does not."""
        values = (
            record.id, record.owner_id, record.name, record.size, record.hmac,
            record.format, record.width, record.height, record.header,
            record.wrapped_key, record.inbox_name, record.created_at,
        )  # fmt: skip
        with self._write("add image") as db:
            db.execute(f"INSERT INTO images ({IMAGE_COLUMNS}) VALUES ({_IMAGE_PARAMS})", values)
            if reservation is not None:
                db.execute("DELETE FROM uploads_in_flight WHERE id = ?", (reservation,))

    def get_image(self, image_id: str) -> ImageRecord | None:
        """The image row, or ``None``."""
        with self._read("get image") as db:
            row = db.execute(
                f"SELECT {IMAGE_COLUMNS} FROM images WHERE id = ?", (image_id,)
            ).fetchone()
        return None if row is None else image_from_row(row)

    def list_images(self, owner_id: int) -> list[ImageRecord]:
        """A user's images, oldest first."""
        with self._read("list images") as db:
            rows = db.execute(
                f"SELECT {IMAGE_COLUMNS} FROM images WHERE owner_id = ? ORDER BY created_at, id",
                (owner_id,),
            ).fetchall()
        return [image_from_row(row) for row in rows]

    def delete_image(self, image_id: str) -> DeletedImage | None:
        """Delete the row and with it the wrapped key; ``None`` if there was none.

        The caller then removes the object and the inbox copy named in the result.
        """
        with self._write("delete image") as db:
            row = db.execute(
                "SELECT users.name, images.inbox_name FROM images "
                "JOIN users ON users.id = images.owner_id WHERE images.id = ?",
                (image_id,),
            ).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM images WHERE id = ?", (image_id,))
        self._shred()
        return DeletedImage(image_id, row[0], row[1])

    def image_ids(self) -> set[str]:
        """Every image id (for the start-up sweep)."""
        with self._read("list image ids") as db:
            return {row[0] for row in db.execute("SELECT id FROM images")}

    def inbox_names(self) -> set[tuple[str, str]]:
        """``(owner name, inbox file name)`` of every image with an inbox copy."""
        with self._read("list inbox names") as db:
            rows = db.execute(
                "SELECT users.name, images.inbox_name FROM images "
                "JOIN users ON users.id = images.owner_id WHERE images.inbox_name IS NOT NULL"
            ).fetchall()
        return {(row[0], row[1]) for row in rows}

    def used_bytes(self, owner_id: int) -> int:
        """Sum of a user's image sizes (plaintext bytes), for quotas."""
        with self._read("sum sizes") as db:
            row = db.execute(
                "SELECT COALESCE(SUM(size), 0) FROM images WHERE owner_id = ?", (owner_id,)
            ).fetchone()
        return int(row[0])

    # -- login throttle -------------------------------------------------------------

    def login_failures(self, scope: str, key: str, since_ms: int) -> tuple[int, int]:
        """``(failures, last failure ms)`` for ``scope``/``key``, counting only a row
        whose last failure is at or after ``since_ms``; ``(0, 0)`` otherwise."""
        with self._read("read login failures") as db:
            row = db.execute(
                "SELECT failures, last_failure_ms FROM login_failures "
                "WHERE scope = ? AND key = ? AND last_failure_ms >= ?",
                (scope, key, since_ms),
            ).fetchone()
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def add_login_failure(self, scope: str, key: str, now: int, since_ms: int) -> int:
        """Count one more failure at ``now`` (failures before ``since_ms`` are
        forgotten first; the attempt's hold ends); return the count."""
        with self._write("count a login failure") as db:
            row = db.execute(
                "INSERT INTO login_failures (scope, key, failures, last_failure_ms) "
                "VALUES (?, ?, 1, ?) ON CONFLICT (scope, key) DO UPDATE SET "
                "failures = CASE WHEN last_failure_ms >= ? THEN failures + 1 ELSE 1 END, "
                "last_failure_ms = excluded.last_failure_ms, held_until_ms = 0 "
                "RETURNING failures",
                (scope, key, now, since_ms),
            ).fetchone()
        return int(row[0])

    def claim_login_attempt(
        self,
        counted: Sequence[tuple[str, str, int]],
        now: int,
        since_ms: int,
        delay_ms: Callable[[int, int], int],
    ) -> int:
        """Let one login attempt through the failure counts of ``counted`` (each
        ``(scope, key, free)``), atomically.

        ``delay_ms(failures, free)`` is the wait a count imposes after its last
        failure. If any count still imposes a wait (or is held by an attempt let
        through earlier), return the longest (ms) and change nothing. Otherwise return
        0, and let the attempt hold every count that imposes a delay for that delay
        from ``now``: attempts that arrive together get through one at a time.
        """
        with self._write("claim a login attempt") as db:
            rows = []
            for scope, key, free in counted:
                row = db.execute(
                    "SELECT failures, last_failure_ms, held_until_ms FROM login_failures "
                    "WHERE scope = ? AND key = ? AND last_failure_ms >= ?",
                    (scope, key, since_ms),
                ).fetchone()
                if row is not None:
                    delay = delay_ms(int(row[0]), free)
                    rows.append((scope, key, delay, max(int(row[1]) + delay, int(row[2]))))
            wait = max((until - now for *_, until in rows), default=0)
            if wait > 0:
                return wait
            for scope, key, delay, _ in rows:
                if delay > 0:
                    db.execute(
                        "UPDATE login_failures SET held_until_ms = ? WHERE scope = ? AND key = ?",
                        (now + delay, scope, key),
                    )
        return 0

    def clear_login_failures(self, scope: str, key: str) -> None:
        """Forget the failures of ``scope``/``key`` (after a successful login)."""
        with self._write("clear login failures") as db:
            db.execute("DELETE FROM login_failures WHERE scope = ? AND key = ?", (scope, key))

    def forget_login_failures(self, before_ms: int) -> int:
        """Drop rows whose last failure is older than ``before_ms``; return how many."""
        with self._write("forget login failures") as db:
            cursor = db.execute(
                "DELETE FROM login_failures WHERE last_failure_ms < ?", (before_ms,)
            )
        return cursor.rowcount

    def note_login_success(self, network: str, now: int) -> None:
        """Remember that a login from ``network`` succeeded at ``now`` (and let go of
        the network's count, which that attempt held)."""
        with self._write("note a login") as db:
            db.execute(
                "INSERT INTO login_networks (network, last_success_ms) VALUES (?, ?) "
                "ON CONFLICT (network) DO UPDATE SET last_success_ms = excluded.last_success_ms",
                (network, now),
            )
            db.execute(
                "UPDATE login_failures SET held_until_ms = 0 WHERE scope = 'address' AND key = ?",
                (network,),
            )

    def last_login_success(self, network: str) -> int:
        """When a login from ``network`` last succeeded (unix ms), or 0."""
        with self._read("read login networks") as db:
            row = db.execute(
                "SELECT last_success_ms FROM login_networks WHERE network = ?", (network,)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def forget_login_successes(self, before_ms: int) -> int:
        """Forget networks whose last successful login is older than ``before_ms``."""
        with self._write("forget login networks") as db:
            cursor = db.execute(
                "DELETE FROM login_networks WHERE last_success_ms < ?", (before_ms,)
            )
        return cursor.rowcount

    # -- uploads in flight --------------------------------------------------------------

    def reserve_upload(
        self, user_id: int, size: int, *, quota: int, per_user: int, holder: str, expires: int
    ) -> int:
        """Hold ``size`` bytes of the user's quota (0: none) and one of their
        ``per_user`` upload places, for ``holder`` until ``expires`` (unix ms, renewed
        with ``renew_reservations``); return the reservation's id.

        One transaction checks and takes, so uploads in several processes cannot
        overshoot together; lapsed reservations are dropped first. Raises
        ``QuotaError``, ``TryLaterError`` (no place left) or ``StorageError``.
        """
        with self._write("reserve an upload", durable=False) as db:
            db.execute("DELETE FROM uploads_in_flight WHERE expires_ms < ?", (now_ms(),))
            count, arriving = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM uploads_in_flight WHERE user_id = ?",
                (user_id,),
            ).fetchone()
            if count >= per_user:
                raise TryLaterError(f"you already have {per_user} uploads in flight", 1.0)
            if quota:
                stored = db.execute(
                    "SELECT COALESCE(SUM(size), 0) FROM images WHERE owner_id = ?", (user_id,)
                ).fetchone()[0]
                if stored + arriving + size > quota:
                    raise QuotaError(f"this upload would exceed your quota of {quota} bytes")
            cursor = db.execute(
                "INSERT INTO uploads_in_flight (user_id, size, holder, expires_ms) "
                "VALUES (?, ?, ?, ?)",
                (user_id, size, holder, expires),
            )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def renew_reservations(self, holder: str, expires: int) -> int:
        """Extend every reservation of ``holder`` to ``expires``; return how many."""
        with self._write("renew reservations", durable=False) as db:
            cursor = db.execute(
                "UPDATE uploads_in_flight SET expires_ms = ? WHERE holder = ?", (expires, holder)
            )
        return cursor.rowcount

    def release_reservation(self, reservation_id: int) -> None:
        """The upload ended (stored, when the catalog counts its row, or not)."""
        with self._write("release a reservation", durable=False) as db:
            db.execute("DELETE FROM uploads_in_flight WHERE id = ?", (reservation_id,))

    def drop_reservations(self, holder: str) -> int:
        """Drop every reservation of ``holder`` (a process that died); return how many."""
        with self._write("drop reservations", durable=False) as db:
            cursor = db.execute("DELETE FROM uploads_in_flight WHERE holder = ?", (holder,))
        return cursor.rowcount

    def uploads_in_flight(self, user_id: int) -> int:
        """How many uploads of this user hold a reservation that has not lapsed."""
        with self._read("count uploads in flight") as db:
            row = db.execute(
                "SELECT COUNT(*) FROM uploads_in_flight WHERE user_id = ? AND expires_ms >= ?",
                (user_id, now_ms()),
            ).fetchone()
        return int(row[0])
