"""The catalog: users and images, behind a small interface, in SQLite or PostgreSQL.

``Catalog`` is what the server and ``imgshare.server.accounts`` code against.
``SQLCatalog`` holds every query, once, in SQL that both databases run (SQLite 3.35+
and PostgreSQL 15: ``RETURNING``, ``ON CONFLICT ... DO UPDATE``, row values), with
``?`` as the parameter mark. A database supplies only what differs
(docs/design.md, decision 10):

* ``_read``/``_write``: run a body of queries on a connection, a write in one
  transaction, ``durable`` or not (a commit that a crash may lose);
* its migrations, the mark translation, and the mapping of its errors onto
  ``StorageError`` (a unique key violated: ``UniqueViolation``);
* ``_LOCK_ROWS``/``_LOCK_KEYS``: what a ``SELECT`` appends to lock the rows it reads
  until the commit, where other writers run beside this one (PostgreSQL); SQLite
  needs nothing, since its write transaction holds the whole database;
* ``sweep_lock``: whether this process may sweep now.

``imgshare.store.sqlite.SQLiteCatalog`` is the embedded default, one file in the data
folder; ``imgshare.store.postgres.PostgresCatalog`` is the catalog several nodes
share. Every rule that must hold across processes is a single statement, a
transaction over locked rows, or a constraint, so it holds on both:

* user ids are never reused (AUTOINCREMENT; an identity column);
* a reservation of an upload in flight locks its user's row before it counts, and
  counts stored and arriving bytes in one statement (one snapshot);
* an invitation is used up by one conditional ``UPDATE``: of two registrations
  racing one code, exactly one changes a row;
* a deletion returns what it deleted (``DELETE ... RETURNING``), so two processes
  never both report one image or one expired share.

Removing a user who owns images is refused unless ``purge=True``, which deletes their
images in the same transaction and returns what must be removed from disk.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self, TypeVar

from imgshare.errors import ConfigError, QuotaError, StorageError, TryLaterError
from imgshare.store.access import (
    AccessTables,
    AuditEvent,
    AuditRecord,
    ShareRecord,
    TokenRecord,
)
from imgshare.store.blobs import OBJECT_ID_RE
from imgshare.store.resumable import PartialUpload, ResumableTables
from imgshare.store.thumbnails import ThumbnailTables

SCHEMA_VERSION = 5
HMAC_SIZE = 32
#: The kinds of login throttle state (see ``imgshare.server.throttle``).
THROTTLE_SCOPES = ("account", "address")

USER_COLUMNS = "id, name, password_hash, created_at, password_changed_ms"
IMAGE_COLUMNS = (
    "id, owner_id, name, size, hmac, format, width, height, header, wrapped_key, "
    "inbox_name, created_at"
)
_IMAGE_PARAMS = ", ".join("?" * 12)
#: Ids per ``IN (...)`` list: under SQLite's variable limit (and PostgreSQL's).
_ID_BATCH = 500

T = TypeVar("T")


def now_ms() -> int:
    """The current time as unix milliseconds, the catalog's time unit."""
    return time.time_ns() // 1_000_000


class UserExistsError(ConfigError):
    """A user with that name already exists (a ``ConfigError``: the name was given)."""


class UniqueViolation(StorageError):
    """A statement broke a unique key (the message names it, as SQLite words it:
    ``UNIQUE constraint failed: ...``)."""


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
    def audit_many(self, events: Sequence[AuditEvent]) -> None: ...
    def audit_events(
        self, *, user_name: str | None = None, event: str | None = None, limit: int = 1000
    ) -> list[AuditRecord]: ...
    def count_events(self, event: str, network: str, since_ms: int) -> int: ...
    # resumable uploads (imgshare.store.resumable)
    def mark_durable(
        self,
        reservation: int,
        *,
        image_id: str,
        upload_id: bytes,
        header: bytes,
        wrapped_key: bytes,
        chunks: int,
        sealed_bytes: int,
        now: int,
        until: int,
    ) -> bool: ...
    def park_upload(self, reservation: int, until: int) -> bool: ...
    def claim_partial(
        self, user_id: int, upload_id: bytes, *, holder: str, expires: int, now: int
    ) -> PartialUpload | None: ...
    def evict_idle_partial(self, user_id: int, now: int) -> PartialUpload | None: ...
    def expire_partials(self, now: int) -> list[PartialUpload]: ...
    def partial_image_ids(self) -> set[str]: ...
    def partials_of(self, user_id: int) -> list[PartialUpload]: ...
    def stored_upload(self, user_id: int, header: bytes) -> ImageRecord | None: ...
    # thumbnails (imgshare.store.thumbnails)
    def claim_thumbnail(self, now: int, until: int) -> ImageRecord | None: ...
    def set_thumbnail(self, image_id: str, state: int) -> bool: ...
    def thumbnail_state(self, image_id: str) -> int | None: ...
    def pending_thumbnails(self) -> int: ...
    # several nodes
    def sweep_lock(self) -> AbstractContextManager[bool]: ...
    def close(self) -> None: ...


def user_from_row(row: Sequence[Any]) -> User:
    return User(*row)


def image_from_row(row: Sequence[Any]) -> ImageRecord:
    return ImageRecord(*row)


class Rows(Protocol):
    """What a statement returns (a DB-API cursor: sqlite3's or psycopg's)."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Database(Protocol):
    """One connection inside a body of ``_read``/``_write``: runs the shared SQL,
    ``?`` marking each parameter. A statement that fails raises ``StorageError``
    (``UniqueViolation`` for a unique key) when the body ends; a body never goes on
    after a failed statement (PostgreSQL refuses to), and may run more than once (a
    transaction retried after a deadlock), so it does nothing but queries."""

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Rows: ...


class SQLCatalog(AccessTables, ResumableTables, ThumbnailTables):
    """Every catalog query, on the database a subclass connects to (see the module
    docstring for what a subclass supplies)."""

    #: Appended to a ``SELECT`` whose rows the transaction changes on what it read:
    #: other writers wait for them until the commit.
    _LOCK_ROWS: ClassVar[str] = ""
    #: The same, and rows that would reference them (an image of a user) wait too.
    _LOCK_KEYS: ClassVar[str] = ""

    # -- what a database supplies --------------------------------------------------------

    def _read(self, action: str, body: Callable[[Database], T]) -> T:
        """Run ``body`` (reads only) on a connection; return what it returns.
        Raises ``StorageError`` naming ``action``."""
        raise NotImplementedError

    def _write(self, action: str, body: Callable[[Database], T], *, durable: bool = True) -> T:
        """Run ``body`` in one write transaction and commit; return what it returns.
        Not ``durable``: the commit may be lost in a crash (state that lapses anyway:
        leases of uploads in flight, the audit trail's last events). Raises
        ``StorageError`` naming ``action``; nothing of a failed body is kept."""
        raise NotImplementedError

    def _shred(self) -> None:
        """After a deletion: drop the deleted rows' old bytes where the database can."""

    def sweep_lock(self) -> AbstractContextManager[bool]:
        """Whether this process may sweep now, held until the block ends: with
        several nodes on one catalog only one sweeps at a time. Here, always: one
        server per data folder (its lock) already makes sure."""
        return contextlib.nullcontext(True)

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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

        def body(db: Database) -> int:
            if invitation is not None:  # first: a made-up code learns nothing of names
                self.use_invitation(db, invitation, created)
            user_id = int(
                db.execute(
                    "INSERT INTO users (name, password_hash, created_at) VALUES (?, ?, ?) "
                    "RETURNING id",
                    (name, password_hash, created),
                ).fetchone()[0]
            )
            if invitation is not None:
                db.execute(
                    "UPDATE invitations SET used_by = ? WHERE code_hash = ?",
                    (user_id, invitation),
                )
            return user_id

        try:
            user_id = self._write("add user", body)
        except UniqueViolation as exc:  # the only unique key this can break: the name
            raise UserExistsError(f"user {name!r} already exists") from exc
        return User(user_id, name, password_hash, created)

    def get_user(self, user_id: int) -> User | None:
        """The user with id ``user_id``, or ``None`` (ids are never reused)."""
        return self._user_where("id", user_id)

    def _user_where(self, column: str, value: int | str) -> User | None:
        row = self._read(
            "get user",
            lambda db: db.execute(
                f"SELECT {USER_COLUMNS} FROM users WHERE {column} = ?", (value,)
            ).fetchone(),
        )
        return None if row is None else user_from_row(row)

    def existing_user_ids(self, user_ids: Iterable[int]) -> set[int]:
        """Which of ``user_ids`` still name a user (to end a removed user's sessions)."""
        wanted = sorted(set(user_ids))

        def body(db: Database) -> set[int]:
            found: set[int] = set()
            for start in range(0, len(wanted), _ID_BATCH):
                batch = wanted[start : start + _ID_BATCH]
                marks = ", ".join("?" * len(batch))
                rows = db.execute(f"SELECT id FROM users WHERE id IN ({marks})", batch)
                found.update(int(row[0]) for row in rows)
            return found

        return self._read("check users", body)

    def get_user_by_name(self, name: str) -> User | None:
        """The user called ``name``, or ``None``."""
        return self._user_where("name", name)

    def list_users(self) -> list[User]:
        """All users, by name."""
        rows = self._read(
            "list users",
            lambda db: db.execute(f"SELECT {USER_COLUMNS} FROM users ORDER BY name").fetchall(),
        )
        return [user_from_row(row) for row in rows]

    def set_password_hash(self, user_id: int, password_hash: str) -> None:
        """Replace a user's password hash with one of the same password (a rehash)."""
        self._write(
            "set password",
            lambda db: db.execute(
                "UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id)
            ),
        )

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

        def body(db: Database) -> int:
            db.execute(
                "UPDATE users SET password_hash = ?, password_changed_ms = ? WHERE id = ?",
                (password_hash, now, user_id),
            )
            return self.delete_tokens(db, user_id, keep_token) if revoke_tokens else 0

        return self._write("change password", body)

    def remove_user(self, name: str, *, purge: bool = False) -> list[DeletedImage]:
        """Remove a user; return the images removed with them (``purge=True`` only).

        Raises ``ConfigError`` if there is no such user, or if they own images and
        ``purge`` is false.
        """

        def body(db: Database) -> list[tuple[str, str | None]]:
            # Locked with its key: an image another node commits for this user now
            # waits, then finds its owner gone, rather than slipping past the list.
            row = db.execute(
                f"SELECT id FROM users WHERE name = ?{self._LOCK_KEYS}", (name,)
            ).fetchone()
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
            return [(str(image_id), inbox) for image_id, inbox in images]

        images = self._write("remove user", body)
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

        def body(db: Database) -> None:
            db.execute(f"INSERT INTO images ({IMAGE_COLUMNS}) VALUES ({_IMAGE_PARAMS})", values)
            if reservation is not None:
                db.execute("DELETE FROM uploads_in_flight WHERE id = ?", (reservation,))

        self._write("add image", body)

    def get_image(self, image_id: str) -> ImageRecord | None:
        """The image row, or ``None``."""
        row = self._read(
            "get image",
            lambda db: db.execute(
                f"SELECT {IMAGE_COLUMNS} FROM images WHERE id = ?", (image_id,)
            ).fetchone(),
        )
        return None if row is None else image_from_row(row)

    def list_images(self, owner_id: int) -> list[ImageRecord]:
        """A user's images, oldest first."""
        rows = self._read(
            "list images",
            lambda db: db.execute(
                f"SELECT {IMAGE_COLUMNS} FROM images WHERE owner_id = ? ORDER BY created_at, id",
                (owner_id,),
            ).fetchall(),
        )
        return [image_from_row(row) for row in rows]

    def delete_image(self, image_id: str) -> DeletedImage | None:
        """Delete the row and with it the wrapped key; ``None`` if there was none
        (also when another process deleted it first: one of them gets the row).

        The caller then removes the object and the inbox copy named in the result.
        """
        row = self._write(
            "delete image",
            lambda db: db.execute(
                "DELETE FROM images WHERE id = ? RETURNING "
                "(SELECT users.name FROM users WHERE users.id = images.owner_id), inbox_name",
                (image_id,),
            ).fetchone(),
        )
        if row is None:
            return None
        self._shred()
        return DeletedImage(image_id, row[0], row[1])

    def image_ids(self) -> set[str]:
        """Every image id (for the start-up sweep)."""
        return self._read(
            "list image ids", lambda db: {row[0] for row in db.execute("SELECT id FROM images")}
        )

    def inbox_names(self) -> set[tuple[str, str]]:
        """``(owner name, inbox file name)`` of every image with an inbox copy."""
        rows = self._read(
            "list inbox names",
            lambda db: db.execute(
                "SELECT users.name, images.inbox_name FROM images "
                "JOIN users ON users.id = images.owner_id WHERE images.inbox_name IS NOT NULL"
            ).fetchall(),
        )
        return {(row[0], row[1]) for row in rows}

    def used_bytes(self, owner_id: int) -> int:
        """Sum of a user's image sizes (plaintext bytes), for quotas."""
        row = self._read(
            "sum sizes",
            lambda db: db.execute(
                "SELECT COALESCE(SUM(size), 0) FROM images WHERE owner_id = ?", (owner_id,)
            ).fetchone(),
        )
        return int(row[0])

    # -- login throttle -------------------------------------------------------------

    def login_failures(self, scope: str, key: str, since_ms: int) -> tuple[int, int]:
        """``(failures, last failure ms)`` for ``scope``/``key``, counting only a row
        whose last failure is at or after ``since_ms``; ``(0, 0)`` otherwise."""
        row = self._read(
            "read login failures",
            lambda db: db.execute(
                "SELECT failures, last_failure_ms FROM login_failures "
                "WHERE scope = ? AND key = ? AND last_failure_ms >= ?",
                (scope, key, since_ms),
            ).fetchone(),
        )
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def add_login_failure(self, scope: str, key: str, now: int, since_ms: int) -> int:
        """Count one more failure at ``now`` (failures before ``since_ms`` are
        forgotten first; the attempt's hold ends); return the count."""
        row = self._write(
            "count a login failure",
            lambda db: db.execute(
                "INSERT INTO login_failures (scope, key, failures, last_failure_ms) "
                "VALUES (?, ?, 1, ?) ON CONFLICT (scope, key) DO UPDATE SET failures = "
                "CASE WHEN login_failures.last_failure_ms >= ? "
                "THEN login_failures.failures + 1 ELSE 1 END, "
                "last_failure_ms = excluded.last_failure_ms, held_until_ms = 0 "
                "RETURNING failures",
                (scope, key, now, since_ms),
            ).fetchone(),
        )
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

        def body(db: Database) -> int:
            rows = []
            # Locked while read, in one order everywhere (no deadlock between two
            # claims): an attempt on another node waits, then sees this one's hold.
            for scope, key, free in sorted(counted):
                row = db.execute(
                    "SELECT failures, last_failure_ms, held_until_ms FROM login_failures "
                    f"WHERE scope = ? AND key = ? AND last_failure_ms >= ?{self._LOCK_ROWS}",
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

        return self._write("claim a login attempt", body)

    def clear_login_failures(self, scope: str, key: str) -> None:
        """Forget the failures of ``scope``/``key`` (after a successful login)."""
        self._write(
            "clear login failures",
            lambda db: db.execute(
                "DELETE FROM login_failures WHERE scope = ? AND key = ?", (scope, key)
            ),
        )

    def forget_login_failures(self, before_ms: int) -> int:
        """Drop rows whose last failure is older than ``before_ms``; return how many."""
        return self._write(
            "forget login failures",
            lambda db: (
                db.execute(
                    "DELETE FROM login_failures WHERE last_failure_ms < ?", (before_ms,)
                ).rowcount
            ),
        )

    def note_login_success(self, network: str, now: int) -> None:
        """Remember that a login from ``network`` succeeded at ``now`` (and let go of
        the network's count, which that attempt held)."""

        def body(db: Database) -> None:
            db.execute(
                "INSERT INTO login_networks (network, last_success_ms) VALUES (?, ?) "
                "ON CONFLICT (network) DO UPDATE SET last_success_ms = excluded.last_success_ms",
                (network, now),
            )
            db.execute(
                "UPDATE login_failures SET held_until_ms = 0 WHERE scope = 'address' AND key = ?",
                (network,),
            )

        self._write("note a login", body)

    def last_login_success(self, network: str) -> int:
        """When a login from ``network`` last succeeded (unix ms), or 0."""
        row = self._read(
            "read login networks",
            lambda db: db.execute(
                "SELECT last_success_ms FROM login_networks WHERE network = ?", (network,)
            ).fetchone(),
        )
        return 0 if row is None else int(row[0])

    def forget_login_successes(self, before_ms: int) -> int:
        """Forget networks whose last successful login is older than ``before_ms``."""
        return self._write(
            "forget login networks",
            lambda db: (
                db.execute(
                    "DELETE FROM login_networks WHERE last_success_ms < ?", (before_ms,)
                ).rowcount
            ),
        )

    # -- uploads in flight --------------------------------------------------------------

    def reserve_upload(
        self, user_id: int, size: int, *, quota: int, per_user: int, holder: str, expires: int
    ) -> int:
        """Hold ``size`` bytes of the user's quota (0: none) and one of their
        ``per_user`` upload places, for ``holder`` until ``expires`` (unix ms, renewed
        with ``renew_reservations``); return the reservation's id.

        One transaction checks and takes, so uploads in several processes (or on
        several nodes) cannot overshoot together: it locks the user's row first, so
        that reservations of one user take turns, and counts the stored and the
        arriving bytes in one statement, so that an upload committing meanwhile (its
        row in, its reservation out) counts once. The user's lapsed reservations are
        dropped first. Raises ``QuotaError``, ``TryLaterError`` (no place left) or
        ``StorageError``.
        """

        def body(db: Database) -> int:
            db.execute(f"SELECT 1 FROM users WHERE id = ?{self._LOCK_ROWS}", (user_id,))
            now = now_ms()
            db.execute(  # a parked resumable upload keeps its place until it expires
                "DELETE FROM uploads_in_flight WHERE user_id = ? AND expires_ms < ? "
                "AND (upload_id IS NULL OR resume_until_ms < ?)",
                (user_id, now, now),
            )
            stored_sql = (
                "(SELECT COALESCE(SUM(size), 0) FROM images WHERE owner_id = ?)" if quota else "0"
            )
            count, arriving, stored = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), "
                f"{stored_sql} FROM uploads_in_flight WHERE user_id = ?",
                (user_id, user_id) if quota else (user_id,),
            ).fetchone()
            if count >= per_user:
                raise TryLaterError(f"you already have {per_user} uploads in flight", 1.0)
            if quota and int(stored) + int(arriving) + size > quota:
                raise QuotaError(f"this upload would exceed your quota of {quota} bytes")
            row = db.execute(
                "INSERT INTO uploads_in_flight (user_id, size, holder, expires_ms) "
                "VALUES (?, ?, ?, ?) RETURNING id",
                (user_id, size, holder, expires),
            ).fetchone()
            return int(row[0])

        return self._write("reserve an upload", body, durable=False)

    def renew_reservations(self, holder: str, expires: int) -> int:
        """Extend every reservation of ``holder`` to ``expires``; return how many."""
        return self._write(
            "renew reservations",
            lambda db: (
                db.execute(
                    "UPDATE uploads_in_flight SET expires_ms = ? WHERE holder = ?",
                    (expires, holder),
                ).rowcount
            ),
            durable=False,
        )

    def release_reservation(self, reservation_id: int) -> None:
        """The upload ended (stored, when the catalog counts its row, or not)."""
        self._write(
            "release a reservation",
            lambda db: db.execute("DELETE FROM uploads_in_flight WHERE id = ?", (reservation_id,)),
            durable=False,
        )

    def drop_reservations(self, holder: str) -> int:
        """Let go of every reservation of ``holder`` (a process that died); return
        how many. Resumable uploads are parked (kept for a resume), the rest dropped."""

        def body(db: Database) -> int:
            parked = db.execute(
                "UPDATE uploads_in_flight SET holder = '', expires_ms = 0 "
                "WHERE holder = ? AND upload_id IS NOT NULL",
                (holder,),
            ).rowcount
            dropped = db.execute("DELETE FROM uploads_in_flight WHERE holder = ?", (holder,))
            return int(parked) + int(dropped.rowcount)

        return self._write("drop reservations", body, durable=False)

    def uploads_in_flight(self, user_id: int) -> int:
        """How many uploads of this user hold a reservation that has not lapsed."""
        row = self._read(
            "count uploads in flight",
            lambda db: db.execute(
                "SELECT COUNT(*) FROM uploads_in_flight WHERE user_id = ? AND expires_ms >= ?",
                (user_id, now_ms()),
            ).fetchone(),
        )
        return int(row[0])


# Where it always was: many modules and tests import the embedded catalog from here.
# (Imported last: imgshare.store.sqlite builds on SQLCatalog above.)
from imgshare.store.sqlite import _MIGRATIONS, SQLiteCatalog  # noqa: E402

__all__ = [
    "HMAC_SIZE",
    "IMAGE_COLUMNS",
    "SCHEMA_VERSION",
    "THROTTLE_SCOPES",
    "USER_COLUMNS",
    "_MIGRATIONS",
    "Catalog",
    "Database",
    "DeletedImage",
    "ImageRecord",
    "Rows",
    "SQLCatalog",
    "SQLiteCatalog",
    "UniqueViolation",
    "User",
    "UserExistsError",
    "image_from_row",
    "now_ms",
    "user_from_row",
]
