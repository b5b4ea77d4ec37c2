"""The catalog that several nodes share: PostgreSQL (docs/design.md, decision 10).

The queries are ``SQLCatalog``'s (``imgshare.store.catalog``), the same as SQLite
runs; this module supplies the connections, the schema, the mark translation (``?``
to psycopg's ``%s``) and the error mapping. ``PostgresCatalog(url)`` takes a libpq
URL (``postgresql://user:password@host:5432/imgshare``; the password may also come
from ``PGPASSWORD`` or ``~/.pgpass``, and ``?sslmode=verify-full`` and the rest of
libpq's parameters work as usual).

How the rules that must hold across nodes hold here, under READ COMMITTED:

* user ids, token ids, reservation ids and audit ids are identity columns: a
  sequence never hands out a number twice, whatever rolls back;
* a reservation locks its user's row (``FOR NO KEY UPDATE``, which image inserts'
  foreign-key checks do not wait for), so two nodes reserving for one user take
  turns, and counts stored and arriving bytes in one statement (one snapshot: an
  upload that commits meanwhile counts once, as its row or as its reservation);
* a login claim locks the failure counts it reads, in one order;
* removing a user locks the row with its key (``FOR UPDATE``): an image another node
  commits for that user meanwhile waits, then fails on its foreign key;
* an invitation is used by one conditional ``UPDATE``; a deletion (an image, an
  expired share) is a ``DELETE ... RETURNING``: exactly one node gets each row;
* a deadlock or a serialisation failure rolls back and runs the transaction again
  (up to ``_ATTEMPTS`` times, then ``StorageError``); so does a transaction whose
  connection was lost before its ``COMMIT`` was sent (a pooled connection that a
  database restart left dead). A connection lost during ``COMMIT`` is reported, since
  the commit may or may not have happened;
* the sweep runs on one node at a time: ``sweep_lock`` holds a session-level advisory
  lock on a connection of its own for as long as the sweep runs (released by the
  server if that node dies);
* migrations take a transaction-level advisory lock, so nodes that start together
  migrate once, one after the other; a new database gets the current schema at once.

"Not durable" (the leases of uploads in flight, the audit trail, a token's last use)
is ``SET LOCAL synchronous_commit = off``: the commit does not wait for the WAL's
flush. Deleting an image row shreds its wrapped key only as far as PostgreSQL lets
go of dead rows (vacuum) and of old WAL (checkpoints, and any WAL archive or backup
the operator keeps): unlike SQLite, there is no way to force it from here.

PostgreSQL's text cannot hold U+0000; a NUL in a text parameter (only a name a client
made up can have one, never a valid user name) is stored as U+FFFD.

Connections: a small pool of its own (``pool_size`` per catalog, per process), made on
demand, in autocommit (a read is one statement, a write ``BEGIN`` ... ``COMMIT``).
psycopg_pool was weighed and left out: it runs three threads per pool in every worker
process, and what it adds (background reconnection, resizing, statistics) is not
needed when a dead connection is simply dropped and the next one made on demand. A
connection never crosses a fork: the catalog refuses to run in a process other than
the one that opened it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg import pq

from imgshare.errors import ConfigError, StorageError, StorageUnavailable
from imgshare.store.catalog import SCHEMA_VERSION, Database, SQLCatalog, UniqueViolation

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Advisory lock keys (any two 64-bit numbers that nothing else in the database uses).
MIGRATION_LOCK = 0x696D_6773_6861_7201  # "imgshar" + 1
SWEEP_LOCK = 0x696D_6773_6861_7202
#: Tries of one transaction (deadlock, serialisation failure, connection lost before
#: the commit) before it fails with ``StorageError``.
_ATTEMPTS = 4
#: The server ends a session that stays inside a transaction this long (ms): a node
#: that hangs or loses the network mid-transaction does not hold its locks for
#: hours. Every transaction here is a few statements with no wait in between.
_IDLE_IN_TRANSACTION_MS = 60_000
# One round trip each (no parameters: psycopg sends them as one simple query). SET
# LOCAL rather than connection options: a connection pooler (PgBouncer) refuses those.
_BEGIN = f"BEGIN; SET LOCAL idle_in_transaction_session_timeout = {_IDLE_IN_TRANSACTION_MS}"
_BEGIN_NOT_DURABLE = f"{_BEGIN}; SET LOCAL synchronous_commit = off"

# The schema at version 4 (``_MIGRATIONS`` carry it on to SCHEMA_VERSION, in the same
# transaction for a new database), the same tables as imgshare.store.sqlite's
# migrations make, in PostgreSQL's types: BIGINT for every integer (unix ms, ids),
# BYTEA for blobs, identity columns where SQLite has AUTOINCREMENT (ids never reused),
# and names compared byte by byte (COLLATE "C", as SQLite's BINARY) so that ordering
# by name is the same on both.
_SCHEMA: tuple[str, ...] = (
    """CREATE TABLE users (
        id                  BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name                TEXT    COLLATE "C" NOT NULL UNIQUE,
        password_hash       TEXT    NOT NULL,
        created_at          BIGINT  NOT NULL,          -- unix ms
        password_changed_ms BIGINT  NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE images (
        id          TEXT    COLLATE "C" PRIMARY KEY CHECK (length(id) = 32),
        owner_id    BIGINT  NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
        name        TEXT    NOT NULL,
        size        BIGINT  NOT NULL CHECK (size >= 0),
        hmac        BYTEA   NOT NULL CHECK (length(hmac) = 32),
        format      TEXT    NOT NULL,
        width       BIGINT  NOT NULL,
        height      BIGINT  NOT NULL,
        header      BYTEA   NOT NULL,
        wrapped_key BYTEA   NOT NULL,
        inbox_name  TEXT,
        created_at  BIGINT  NOT NULL
    )""",
    "CREATE INDEX images_by_owner ON images (owner_id, created_at, id)",
    """CREATE TABLE login_failures (
        scope           TEXT    NOT NULL CHECK (scope IN ('account', 'address')),
        key             TEXT    COLLATE "C" NOT NULL,
        failures        BIGINT  NOT NULL CHECK (failures > 0),
        last_failure_ms BIGINT  NOT NULL,
        held_until_ms   BIGINT  NOT NULL DEFAULT 0,
        PRIMARY KEY (scope, key)
    )""",
    """CREATE TABLE login_networks (
        network         TEXT    COLLATE "C" PRIMARY KEY,
        last_success_ms BIGINT  NOT NULL
    )""",
    """CREATE TABLE uploads_in_flight (
        id         BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id    BIGINT  NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        size       BIGINT  NOT NULL CHECK (size >= 0),
        holder     TEXT    NOT NULL,
        expires_ms BIGINT  NOT NULL
    )""",
    "CREATE INDEX uploads_in_flight_by_user ON uploads_in_flight (user_id)",
    """CREATE TABLE tokens (
        id           BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id      BIGINT  NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        name         TEXT    NOT NULL,
        secret_hash  BYTEA   NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
        created_ms   BIGINT  NOT NULL,
        expires_ms   BIGINT  NOT NULL,
        last_used_ms BIGINT  NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX tokens_by_user ON tokens (user_id)",
    """CREATE TABLE invitations (
        code_hash  BYTEA   PRIMARY KEY CHECK (length(code_hash) = 32),
        created_ms BIGINT  NOT NULL,
        expires_ms BIGINT  NOT NULL,
        used_by    BIGINT  REFERENCES users (id) ON DELETE SET NULL,
        used_ms    BIGINT
    )""",
    """CREATE TABLE shares (
        image_id   TEXT    COLLATE "C" NOT NULL REFERENCES images (id) ON DELETE CASCADE,
        user_id    BIGINT  NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        granted_ms BIGINT  NOT NULL,
        expires_ms BIGINT  NOT NULL,
        PRIMARY KEY (image_id, user_id)
    )""",
    "CREATE INDEX shares_by_user ON shares (user_id, image_id)",
    """CREATE TABLE audit (
        id        BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        time_ms   BIGINT  NOT NULL,
        event     TEXT    NOT NULL,
        user_name TEXT    COLLATE "C",
        network   TEXT    COLLATE "C",
        detail    TEXT    NOT NULL
    )""",
    "CREATE INDEX audit_by_time ON audit (time_ms)",
    "CREATE INDEX audit_by_user ON audit (user_name, time_ms)",
    # The version of the schema above: PostgreSQL's counterpart of PRAGMA user_version.
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
)

#: The version ``_SCHEMA`` makes.
_BASE_VERSION = 4
#: _MIGRATIONS[n] takes a PostgreSQL catalog from version n to n + 1, for n from 4
#: on (a new database gets ``_SCHEMA`` and then these, in one transaction). Version
#: numbers are the SQLite catalog's.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    4: (
        # Resumable uploads and thumbnails (see imgshare.store.sqlite, version 5).
        'ALTER TABLE uploads_in_flight ADD COLUMN image_id TEXT COLLATE "C"',
        "ALTER TABLE uploads_in_flight ADD COLUMN upload_id BYTEA",
        "ALTER TABLE uploads_in_flight ADD COLUMN header BYTEA",
        "ALTER TABLE uploads_in_flight ADD COLUMN wrapped_key BYTEA",
        "ALTER TABLE uploads_in_flight ADD COLUMN durable_chunks BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE uploads_in_flight ADD COLUMN durable_bytes BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE uploads_in_flight ADD COLUMN created_ms BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE uploads_in_flight ADD COLUMN resume_until_ms BIGINT NOT NULL DEFAULT 0",
        "CREATE UNIQUE INDEX uploads_in_flight_by_upload ON uploads_in_flight "
        "(user_id, upload_id) WHERE upload_id IS NOT NULL",
        "ALTER TABLE images ADD COLUMN thumbnail BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE images ADD COLUMN thumbnail_claim_ms BIGINT NOT NULL DEFAULT 0",
        "CREATE INDEX images_without_thumbnail ON images (created_at) WHERE thumbnail = 0",
    ),
}

_SQLSTATE_CONSTRAINTS = {
    "23505": "UNIQUE",
    "23503": "FOREIGN KEY",
    "23514": "CHECK",
    "23502": "NOT NULL",
}
_SQLSTATE_RETRY = frozenset({"40001", "40P01"})  # serialisation failure, deadlock
_SQLSTATE_GONE = frozenset({"57P01", "57P02", "57P03"})  # shut down, crashed, starting


class CatalogUnreachable(StorageUnavailable):
    """The connection to PostgreSQL failed or was lost (the message names the host)."""


class _Retry(StorageError):
    """A transaction lost a race (deadlock, serialisation failure): run it again."""


@functools.lru_cache(maxsize=1024)
def _marks(sql: str) -> str:
    """The shared SQL's ``?`` marks as psycopg's ``%s`` (no query has ``?`` or ``%``
    inside a literal)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _params(params: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(
        value.replace("\0", "\ufffd") if type(value) is str and "\0" in value else value
        for value in params
    )


class _Statements:
    """A body's connection: the shared SQL, translated; counts what it sent."""

    __slots__ = ("_conn", "sent")

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self.sent = 0

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        self.sent += 1
        return self._conn.execute(_marks(sql), _params(params))


class _Pool:
    """At most ``size`` connections, made on demand, kept while they work."""

    def __init__(
        self, connect: Callable[[], psycopg.Connection[Any]], size: int, timeout: float
    ) -> None:
        self._connect = connect
        self.size = size
        self._timeout = timeout
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[psycopg.Connection[Any]] = []
        self._closed = False

    @contextlib.contextmanager
    def connection(self, where: str) -> Iterator[psycopg.Connection[Any]]:
        """A connection of this process's own; raises ``StorageError`` when none is
        free within the timeout or none can be made."""
        if not self._slots.acquire(timeout=self._timeout):
            raise StorageUnavailable(  # busy, not broken: "try again later"
                f"catalog: all {self.size} connections to PostgreSQL at {where} "
                f"stayed busy for {self._timeout:g} s"
            )
        try:
            with self._lock:
                if self._closed:
                    raise StorageError("catalog: used after close")
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = self._connect()
            try:
                yield conn
            finally:
                self._give_back(conn)
        finally:
            self._slots.release()

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        usable = not conn.closed and not conn.broken
        if usable and conn.info.transaction_status == pq.TransactionStatus.IDLE:
            with self._lock:
                if not self._closed:
                    self._idle.append(conn)
                    return
        with contextlib.suppress(psycopg.Error):
            conn.close()

    def discard_idle(self) -> None:
        """Close the idle connections (after one was found dead, the others likely
        are: the server restarted)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def close(self, *, inherited: bool = False) -> None:
        """Close the idle connections now, the busy ones when they come back. An
        ``inherited`` pool (this is a forked child) only forgets them: closing them
        would end the parent's sessions."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        if inherited:
            return
        for conn in idle:
            with contextlib.suppress(psycopg.Error):
                conn.close()


class PostgresCatalog(SQLCatalog):
    """The catalog in a PostgreSQL database; see the module docstring."""

    _LOCK_ROWS = " FOR NO KEY UPDATE"
    _LOCK_KEYS = " FOR UPDATE"

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 8,
        pool_timeout: float = 10.0,
        connect_timeout: int = 10,
    ) -> None:
        """Connect and migrate (creating the schema in an empty database). Raises
        ``ConfigError`` for a malformed URL, ``StorageError`` (never showing the
        password) when the database cannot be reached or used."""
        try:
            params = pg_conninfo.conninfo_to_dict(url)
        except psycopg.Error:
            raise ConfigError("the catalog URL is not a valid PostgreSQL URL") from None
        if pool_size < 1:
            raise ConfigError("the catalog's pool size must be at least 1")
        self._url = url
        self._password = str(params.get("password") or "")
        host = str(params.get("host") or os.environ.get("PGHOST") or "localhost")
        port = str(params.get("port") or os.environ.get("PGPORT") or "5432")
        dbname = str(params.get("dbname") or "")
        self.where = f"{host}:{port}/{dbname}" if dbname else f"{host}:{port}"
        self._user = str(params.get("user") or "")
        extra: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params:
            extra["connect_timeout"] = connect_timeout
        if "application_name" not in params:
            extra["application_name"] = "imgshare"
        self._connect_args = extra
        self._pid = os.getpid()
        self._pool = _Pool(self._connect, pool_size, pool_timeout)
        try:
            self._migrate()
        except BaseException:
            self._pool.close()
            raise

    def __repr__(self) -> str:
        user = f"{self._user}@" if self._user else ""
        return f"PostgresCatalog('postgresql://{user}{self.where}')"

    def close(self) -> None:
        """Close the connections; idempotent. Later calls raise ``StorageError``."""
        self._pool.close(inherited=os.getpid() != self._pid)

    # -- connections and transactions ------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self._url, **self._connect_args)
        except psycopg.Error as exc:
            raise CatalogUnreachable(
                f"cannot connect to the catalog, PostgreSQL at {self.where}: {self._reason(exc)}"
            ) from None

    def _reason(self, exc: BaseException) -> str:
        """The first line of a driver error, never with the password in it."""
        lines = str(exc).strip().splitlines()
        text = lines[0].strip() if lines else type(exc).__name__
        if self._password and self._password in text:
            text = text.replace(self._password, "***")
        return text

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise StorageError(
                "catalog: opened in another process (a connection never crosses a fork: "
                "open the catalog after forking)"
            )

    def _read(self, action: str, body: Callable[[Database], T]) -> T:
        return self._run(action, body, write=False, durable=True)

    def _write(self, action: str, body: Callable[[Database], T], *, durable: bool = True) -> T:
        return self._run(action, body, write=True, durable=durable)

    def _run(self, action: str, body: Callable[[Database], T], *, write: bool, durable: bool) -> T:
        self._check_process()
        attempt = 0
        while True:
            attempt += 1
            lost_a_race = False
            with self._pool.connection(self.where) as conn:
                statements = _Statements(conn)
                committing = False
                try:
                    if not write:
                        return body(statements)
                    conn.execute(_BEGIN if durable else _BEGIN_NOT_DURABLE)
                    result = body(statements)
                    committing = True
                    conn.execute("COMMIT")
                    return result
                except psycopg.Error as exc:
                    self._roll_back(conn)
                    error = self._error(action, exc, conn)
                    retry = isinstance(error, _Retry) or (
                        isinstance(error, CatalogUnreachable) and not committing
                    )
                    if not retry or attempt >= _ATTEMPTS:
                        raise error from exc
                    log.debug("catalog %s: trying again after %s", action, error)
                    lost_a_race = isinstance(error, _Retry)
                except BaseException:
                    self._roll_back(conn)
                    raise
            if lost_a_race:  # let the winner finish first (a lost connection: at once)
                time.sleep(random.uniform(0.002, 0.010) * attempt)

    @staticmethod
    def _roll_back(conn: psycopg.Connection[Any]) -> None:
        if conn.broken or conn.closed:
            return
        if conn.info.transaction_status != pq.TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")

    def _error(
        self, action: str, exc: psycopg.Error, conn: psycopg.Connection[Any]
    ) -> StorageError:
        """The ``StorageError`` that a driver error means (see ``Database``)."""
        state = exc.sqlstate or ""
        reason = self._reason(exc)
        if conn.broken or state in _SQLSTATE_GONE or state.startswith("08"):
            self._pool.discard_idle()
            return CatalogUnreachable(
                f"catalog {action} failed: lost the connection to PostgreSQL at "
                f"{self.where}: {reason}"
            )
        if state in _SQLSTATE_RETRY:
            return _Retry(f"catalog {action} failed after {_ATTEMPTS} tries: {reason}")
        kind = _SQLSTATE_CONSTRAINTS.get(state)
        if kind is not None:
            diag = exc.diag
            name = diag.constraint_name or diag.column_name or diag.table_name or ""
            message = f"catalog {action} failed: {kind} constraint failed: {name}"
            return UniqueViolation(message) if kind == "UNIQUE" else StorageError(message)
        return StorageError(f"catalog {action} failed: {reason}")

    # -- several nodes ------------------------------------------------------------------

    @contextlib.contextmanager
    def sweep_lock(self) -> Iterator[bool]:
        """Whether this node may sweep now: a session-level advisory lock, held until
        the block ends (or until this node dies: the server lets go of a lost
        session's locks) on a connection of its own, outside the pool, which the
        sweep's queries use meanwhile. Raises ``StorageError``."""
        self._check_process()
        conn = self._connect()
        try:
            try:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (SWEEP_LOCK,)).fetchone()
            except psycopg.Error as exc:
                raise self._error("take the sweep lock", exc, conn) from exc
            yield bool(row and row[0])
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.close()  # and with the session, the lock

    # -- schema -----------------------------------------------------------------------

    def _migrate(self) -> None:
        """Bring the schema to ``SCHEMA_VERSION`` (one node at a time)."""
        before = self._write("migrate", self._migrate_body)
        if before is None:
            log.info("catalog %s created at schema version %d", self.where, SCHEMA_VERSION)
        elif before != SCHEMA_VERSION:
            log.info(
                "catalog %s migrated from schema version %d to %d",
                self.where,
                before,
                SCHEMA_VERSION,
            )

    def _migrate_body(self, db: Database) -> int | None:
        """Returns the version found (None: a new database)."""
        db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
        exists = db.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()[0]
        if not exists:
            for statement in _SCHEMA:
                db.execute(statement)
            for step in range(_BASE_VERSION, SCHEMA_VERSION):
                for statement in _MIGRATIONS[step]:
                    db.execute(statement)
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            return None
        row = db.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            raise StorageError(f"catalog {self.where}: its schema_version table is empty")
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"catalog {self.where} has schema version {version}; this imgshare "
                f"knows up to {SCHEMA_VERSION} (upgrade imgshare)"
            )
        for step in range(version, SCHEMA_VERSION):
            for statement in _MIGRATIONS[step]:
                db.execute(statement)
        if version != SCHEMA_VERSION:
            db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        return version
