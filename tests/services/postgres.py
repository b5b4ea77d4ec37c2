"""A throwaway PostgreSQL on 127.0.0.1: a real database for the catalog tests.

``initdb`` into a temp folder, ``pg_ctl -w start`` on a free loopback port with the
socket in that folder, as an unprivileged user when the tests run as root (PostgreSQL
refuses to run as root): the ``postgres`` account that Debian's package creates, else
``nobody``. The superuser logs in through the socket (trust); the tests log in over
TCP as the role ``imgshare`` with a password (SCRAM-SHA-256), so the URL they get
carries a password, as a deployment's does. ``fsync`` is off: the data is thrown away.

Each test gets a database of its own, made by ``CREATE DATABASE ... TEMPLATE`` from
one of two templates: an empty one, or one where the catalog's schema already is
(``schema=True``: opening a catalog on it migrates nothing, which keeps tests fast).

The cluster lives in /dev/shm when there is room: there, initdb and the start take
about 0.7 s and a database for a test about 10 ms (on the disk: 1.8 s, issue 13's
figure, and up to 300 ms). The cluster comes from Debian's ``postgresql`` package
(``scripts/services/install-postgres.sh``); when it is missing, the tests that need it
fail and say so. A run that dies leaves its cluster running: the next run stops it.

Run by hand (prints a URL, serves until Ctrl-C)::

    .venv/bin/python tests/services/postgres.py
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest

from services.base import ServiceError, started

HOST = "127.0.0.1"
#: Ports for the cluster (SeaweedFS takes 10000-19999, bench/util.py 20000-30000;
#: Linux's ephemeral ports start at 32768).
PORT_RANGE = (30001, 32767)
PREFIX = "imgshare-pg-"
#: The role the tests log in as, over TCP with a password.
ROLE = "imgshare"
ADMIN = "admin"
INSTALL_HINT = "run scripts/services/install-postgres.sh (as root) to install PostgreSQL"
#: Test parameters for "every catalog": SQLite, and PostgreSQL behind the marker.
CATALOG_KINDS = ("sqlite", pytest.param("postgres", marks=pytest.mark.postgres))


def find_bin_dir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: $IMGSHARE_PG_BIN if set (and only it),
    else the newest /usr/lib/postgresql/*/bin (Debian's layout), else PATH's."""
    explicit = os.environ.get("IMGSHARE_PG_BIN")
    if explicit:
        candidates = [Path(explicit)]
    else:
        found = glob.glob("/usr/lib/postgresql/*/bin")
        candidates = sorted((Path(p) for p in found), key=_version_key, reverse=True)
        on_path = shutil.which("pg_ctl")
        if on_path:
            candidates.append(Path(on_path).parent)
    for folder in candidates:
        if all(os.access(folder / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _version_key(path: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in path.parent.name.split("."))
    except ValueError:
        return (0,)


def _unprivileged_user() -> pwd.struct_passwd | None:
    """Whom to run the cluster as: None when we are not root (then: ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ServiceError("running as root, and neither 'postgres' nor 'nobody' exists")


def _scratch_dir() -> str | None:
    """Where the cluster lives: in memory (/dev/shm) when there is room (copying a
    template database there takes a tenth of the time it takes on a disk), else the
    usual temp folder. $IMGSHARE_PG_DIR chooses."""
    explicit = os.environ.get("IMGSHARE_PG_DIR")
    if explicit:
        return explicit
    with contextlib.suppress(OSError):
        usage = shutil.disk_usage("/dev/shm")
        if usage.free > 1 << 30 and os.access("/dev/shm", os.W_OK):
            return "/dev/shm"
    return None


def _reap_leftovers() -> None:
    """Stop and remove the clusters of test runs that died without stopping theirs
    (killed, say): pg_ctl's server outlives the run that started it."""
    for folder in {_scratch_dir(), None}:
        pattern = os.path.join(folder or tempfile.gettempdir(), PREFIX + "*")
        for path in map(Path, glob.glob(pattern)):
            try:
                owner = int((path / "owner.pid").read_text())
            except (OSError, ValueError):
                continue
            if _alive(owner):
                continue
            pid_file = path / "data" / "postmaster.pid"
            with contextlib.suppress(OSError, ValueError, IndexError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_port() -> int:
    for _ in range(50):
        port = secrets.randbelow(PORT_RANGE[1] - PORT_RANGE[0]) + PORT_RANGE[0]
        with socket.socket() as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
            return port
    raise ServiceError("no free port in the range")


class PostgresCluster:
    """One throwaway cluster; ``start()``, then ``new_database()`` per test, ``stop()``."""

    def __init__(self, *, durable: bool = False, parent: str | None = None) -> None:
        """``durable``: fsync and full page writes on, as a deployment runs it (the
        bench's ``backends`` scenario; the tests keep them off). ``parent``: where the
        cluster's folder goes (default: /dev/shm when there is room, see
        ``_scratch_dir``)."""
        self.durable = durable
        self.parent = parent
        self.folder: Path | None = None
        self.port = 0
        self.password = secrets.token_urlsafe(18)
        self.started_in = 0.0  # seconds from initdb to accepting connections
        self._user = _unprivileged_user()
        self._bin: Path | None = None
        self._admin: Any = None  # a psycopg connection, through the socket
        self._lock = threading.Lock()
        self._templates: dict[bool, str] = {}
        self._make_schema: Callable[[str], None] | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- life -----------------------------------------------------------------------

    def start(self) -> None:
        """initdb, start, create the test role. Raises ``ServiceError``."""
        self._bin = find_bin_dir()
        if self._bin is None:
            raise ServiceError(f"PostgreSQL's initdb and pg_ctl were not found: {INSTALL_HINT}")
        began = time.monotonic()
        _reap_leftovers()
        self.folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=self.parent or _scratch_dir()))
        (self.folder / "owner.pid").write_text(f"{os.getpid()}\n")
        if self._user is not None:
            os.chown(self.folder, self._user.pw_uid, self._user.pw_gid)
        password_file = self.folder / "admin-password"
        password_file.write_text(self.password + "\n")
        if self._user is not None:
            os.chown(password_file, self._user.pw_uid, self._user.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", ADMIN, "--pwfile", str(password_file),
            "-E", "UTF8", "--locale=C", "--no-sync",
            "--auth-local=trust", "--auth-host=scram-sha-256",
        )  # fmt: skip
        password_file.unlink()
        for attempt in range(3):
            self.port = _free_port()
            try:
                self._run(
                    "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                    "-o", self._server_options(), "start",
                )  # fmt: skip
                break
            except ServiceError:
                if attempt == 2 or "could not bind" not in self.log_tail():
                    raise
        self._admin = self._connect_admin()
        self._admin.execute(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD {_literal(self.password)}")
        self.started_in = time.monotonic() - began

    def stop(self) -> None:
        """Stop at once (the data is thrown away) and remove the folder; idempotent."""
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None
        if self.folder is None:
            return
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except ServiceError:
                with contextlib.suppress(Exception):
                    pid = int(pid_file.read_text().split()[0])
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None

    def pause(self, mode: str = "immediate") -> None:
        """Stop the server (``immediate``: as a crash does, ``fast``: as an operator
        does), keeping its data and its port for ``resume``."""
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def resume(self) -> None:
        """Start the server again on the same port after ``pause``."""
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
            "-o", self._server_options(), "start",
        )  # fmt: skip
        self._admin = self._connect_admin()

    # -- what the tests use -----------------------------------------------------------

    @property
    def data(self) -> Path:
        assert self.folder is not None
        return self.folder / "data"

    @property
    def log(self) -> Path:
        assert self.folder is not None
        return self.folder / "server.log"

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        """A URL for the test role (with its password) to ``database``."""
        secret = self.password if password is None else password
        return f"postgresql://{ROLE}:{secret}@{HOST}:{self.port}/{database}"

    def new_database(self, *, schema: bool = True) -> str:
        """A new database of the test role; return its URL. ``schema``: with the
        catalog's tables already made (from a template), else empty."""
        with self._lock:
            template = self._template(schema)
            name = f"t_{secrets.token_hex(6)}"
            # FILE_COPY copies the files (its checkpoints cost nothing with fsync off);
            # the WAL_LOG default writes the whole copy to the WAL.
            self._admin.execute(
                f"CREATE DATABASE {name} OWNER {ROLE} TEMPLATE {template} STRATEGY FILE_COPY"
            )
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database that ``new_database`` made, ending its connections."""
        name = url.rsplit("/", 1)[1]
        with self._lock:
            self._admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def terminate_connections(self, url: str) -> int:
        """End every session on the database of ``url`` (a server restart, as its
        clients see it); return how many."""
        name = url.rsplit("/", 1)[1]
        with self._lock:
            row = self._admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            ).fetchone()
        return int(row[0])

    def admin_execute(self, database: str, sql: str) -> list[tuple[Any, ...]]:
        """Run ``sql`` as the superuser in ``database``; return the rows, if any."""
        import psycopg

        with psycopg.connect(
            host=str(self.folder), port=self.port, user=ADMIN, dbname=database, autocommit=True
        ) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def set_template_maker(self, make: Callable[[str], None]) -> None:
        """How to put the catalog's schema into a database (given its URL): run once,
        on the template that ``new_database(schema=True)`` copies."""
        self._make_schema = make

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- plumbing ---------------------------------------------------------------------

    def _template(self, schema: bool) -> str:
        if schema not in self._templates:
            name = "template_catalog" if schema else "template_empty"
            self._admin.execute(
                f"CREATE DATABASE {name} OWNER {ROLE} TEMPLATE template0 STRATEGY FILE_COPY"
            )
            if schema:
                if self._make_schema is None:
                    raise ServiceError("no schema maker set (set_template_maker)")
                self._make_schema(self.url(name))
            self._templates[schema] = name
        return self._templates[schema]

    def _server_options(self) -> str:
        return " ".join(
            [
                f"-p {self.port}",
                f"-k {self.folder}",
                f"-c listen_addresses={HOST}",
                "-c fsync=on" if self.durable else "-c fsync=off",
                "-c full_page_writes=on" if self.durable else "-c full_page_writes=off",
                "-c max_connections=300",
                "-c shared_buffers=32MB",
                "-c log_min_messages=warning",
                "-c deadlock_timeout=100ms",  # the deadlock test waits this long
                "-c autovacuum=off",  # a worker in a template makes CREATE DATABASE wait
            ]
        )

    def _connect_admin(self) -> Any:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - the dev extra installs it
            raise ServiceError("psycopg is not installed: pip install -e '.[dev]'") from exc
        return psycopg.connect(
            host=str(self.folder), port=self.port, user=ADMIN, dbname="postgres", autocommit=True
        )

    def _run(self, tool: str, *args: str) -> None:
        assert self._bin is not None
        user = self._user
        try:
            done = subprocess.run(
                [str(self._bin / tool), *args],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=self.folder,
                user=None if user is None else user.pw_uid,
                group=None if user is None else user.pw_gid,
                extra_groups=None if user is None else [],
                env={**os.environ, "LC_ALL": "C", "TZ": "UTC"},
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceError(f"{tool} failed: {exc}") from exc
        if done.returncode != 0:
            raise ServiceError(
                f"{tool} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
                f"\n{self.log_tail()}"
            )


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# --- pytest fixtures (registered by tests/conftest.py) ----------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster for the session. Fails (never skips) the tests
    that need it when PostgreSQL is missing or cannot start."""
    cluster = started(PostgresCluster(), "PostgreSQL for the catalog tests")

    def make_schema(url: str) -> None:
        from imgshare.store.postgres import PostgresCatalog

        PostgresCatalog(url).close()

    cluster.set_template_maker(make_schema)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres: PostgresCluster) -> Iterator[str]:
    """The URL (role, password, host, port, database) of a new database with the
    catalog's schema, dropped after the test."""
    url = postgres.new_database(schema=True)
    try:
        yield url
    finally:
        postgres.drop_database(url)


@pytest.fixture
def empty_postgres_url(postgres: PostgresCluster) -> Iterator[str]:
    """The URL of a new, empty database, dropped after the test."""
    url = postgres.new_database(schema=False)
    try:
        yield url
    finally:
        postgres.drop_database(url)


if __name__ == "__main__":
    with PostgresCluster() as running:
        print(f"# started in {running.started_in:.2f} s; Ctrl-C stops it")
        print(f"IMGSHARE_CATALOG_URL={running.url('postgres')}")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
