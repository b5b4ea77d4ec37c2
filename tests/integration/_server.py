"""Helpers for the concurrency, crash and shutdown tests: servers, users, images, probes.

Two ways to run the real server on loopback:

* ``InProcessServer``: ``build_server`` + ``serve_forever`` on a thread, with users
  whose argon2 hashes are cheap (verification uses the parameters stored in the hash,
  so a login costs microseconds and 200 of them queue through the 2 hash slots fast);
* ``ServerProcess``: ``python -m imgshare serve --port 0`` as a child process, its
  log in a file (no pipe to fill up), the port parsed from the ``listening on`` line.

Everything polls with a deadline (``wait_for``) instead of sleeping blindly.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from PIL import Image

from imgshare import tls
from imgshare.client.session import ClientSession, UploadResult
from imgshare.protocol import StreamSealer, new_upload
from imgshare.protocol import events as ev
from imgshare.server import build_server
from imgshare.server.accounts import Accounts
from imgshare.server.config import ServerSettings
from imgshare.server.network import Server
from imgshare.store import FileBlobStore, Inbox, inbox_path, open_catalog

PASSWORD = "correct horse battery"
HOST = "127.0.0.1"
_LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


def cheap_hasher() -> PasswordHasher:
    """argon2id with tiny parameters: tests only."""
    return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def add_users(data: Path, names: list[str], password: str = PASSWORD) -> None:
    """Create ``names`` in the data folder's catalog with cheap hashes."""
    with open_catalog(data) as catalog:
        accounts = Accounts(catalog, hasher=cheap_hasher())
        for name in names:
            accounts.add_user(name, password)


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.01
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft limit on open files towards ``wanted`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return int(soft)


# -- images ------------------------------------------------------------------------


def noise_image(path: Path, width: int, height: int, seed: int) -> bytes:
    """Write a random-noise image (format from the suffix) and return its bytes.

    Noise does not compress, so the file is about ``3 * width * height`` bytes; PNG is
    written with compression level 0 to keep generation cheap.
    """
    pixels = random.Random(seed).randbytes(width * height * 3)
    image = Image.frombytes("RGB", (width, height), pixels)
    options: dict[str, Any] = {"compress_level": 0} if path.suffix == ".png" else {}
    if path.suffix in (".jpg", ".jpeg"):
        options = {"quality": 95}
    image.save(path, **options)
    return path.read_bytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- clients -----------------------------------------------------------------------


def client_context(data: Path) -> ssl.SSLContext:
    """A client TLS context trusting the CA the server made in ``data/certs``."""
    return tls.create_client_context(cafile=data / "certs" / "ca.pem")


def connect(port: int, context: ssl.SSLContext, timeout: float = 20.0) -> ClientSession:
    return ClientSession.connect(HOST, port, context, timeout=timeout)


def login(port: int, context: ssl.SSLContext, user: str, timeout: float = 20.0) -> ClientSession:
    session = connect(port, context, timeout)
    try:
        session.login(user, PASSWORD)
    except BaseException:
        session.close()
        raise
    return session


def raw_connection(port: int, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=timeout)


def closed_by_peer(sock: socket.socket | ssl.SSLSocket, timeout: float) -> float | None:
    """Seconds until the peer closes ``sock`` (EOF or reset), or None if it stays open.

    Anything the peer sends before closing is read and ignored.
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return None
        except (ConnectionError, ssl.SSLError, OSError):
            return time.monotonic() - start
        if not data:
            return time.monotonic() - start


def next_event(session: ClientSession) -> ev.Event:
    """The next event from the server without sending anything (tests only).

    ``ClientSession`` has no public call that just listens, so this reaches into it.
    """
    return session._next_event()


class ManualUpload:
    """An upload driven step by step, so a test can stall it halfway.

    ``ClientSession.upload`` sends a whole file in one call; to have an upload in
    flight at a chosen moment this drives the same ``ClientConnection`` by hand
    (private attributes of the session: tests only).
    """

    def __init__(self, session: ClientSession, data: bytes, name: str, chunk_size: int) -> None:
        self.session = session
        self.data = data
        self.header, content_key = new_upload(name, len(data), os.urandom, chunk_size)
        self._sealer = StreamSealer(self.header, content_key)
        self._next = 0
        session._request(ev.UploadBegin(self.header, content_key))
        session._answer(ev.UploadReady)

    @property
    def chunk_count(self) -> int:
        return int(self.header.chunk_count)

    def send_chunks(self, count: int) -> None:
        for _ in range(count):
            index = self._next
            start = index * self.header.chunk_size
            plaintext = self.data[start : start + self.header.plaintext_length(index)]
            last = index == self.chunk_count - 1
            chunk = ev.Chunk(index, self._sealer.seal(plaintext), last)
            self.session._write(self.session._conn.send(chunk))
            self._next += 1

    def finish(self) -> ev.Receipt:
        """Send the remaining chunks and the HMAC; return the receipt."""
        self.send_chunks(self.chunk_count - self._next)
        mac = self._sealer.finish()
        self.session._request(ev.UploadEnd(mac))
        receipt = self.session._answer(ev.Receipt)
        assert isinstance(receipt, ev.Receipt)
        assert receipt.body.hmac == mac
        return receipt


# -- the data folder ---------------------------------------------------------------


@dataclass
class DataState:
    """What is on disk and in the catalog of a (stopped or running) data folder."""

    temp_files: list[Path]
    rows: dict[str, Any]  # image id -> ImageRecord
    owners: dict[int, str]  # user id -> name
    objects: set[str]
    inbox_files: set[tuple[str, str]]

    @property
    def objects_without_row(self) -> set[str]:
        return self.objects - set(self.rows)

    @property
    def rows_without_object(self) -> set[str]:
        return set(self.rows) - self.objects

    @property
    def inbox_without_row(self) -> set[tuple[str, str]]:
        named = {
            (self.owners[r.owner_id], r.inbox_name) for r in self.rows.values() if r.inbox_name
        }
        return self.inbox_files - named

    def assert_consistent(self) -> None:
        """Nothing half-written and nothing orphaned, in either direction."""
        assert self.temp_files == [], f"temp files left: {self.temp_files}"
        assert not self.objects_without_row, f"objects without a row: {self.objects_without_row}"
        assert not self.rows_without_object, f"rows without an object: {self.rows_without_object}"
        assert not self.inbox_without_row, f"inbox files without a row: {self.inbox_without_row}"


def data_state(data: Path) -> DataState:
    inbox = inbox_path(data)
    temp = sorted(p for folder in (data / "tmp", inbox / ".tmp") for p in folder.glob("*.part"))
    with open_catalog(data) as catalog:
        owners = {user.id: user.name for user in catalog.list_users()}
        rows = {r.id: r for owner in owners for r in catalog.list_images(owner)}
    objects = set(FileBlobStore(data).iter_ids())
    inbox_files = set(Inbox(inbox).iter_files())
    return DataState(temp, rows, owners, objects, inbox_files)


def inbox_bytes(data: Path, owner: str, inbox_name: str) -> bytes:
    return Inbox(inbox_path(data)).path_of(owner, inbox_name).read_bytes()


# -- an in-process server ----------------------------------------------------------


@dataclass
class InProcessServer:
    """A real server on 127.0.0.1:0 in this process; ``close()`` stops it."""

    data: Path
    server: Server
    thread: threading.Thread
    context: ssl.SSLContext
    stopped: bool = field(default=False)

    @property
    def port(self) -> int:
        return self.server.address[1]

    def stop(self, grace: float) -> None:
        if not self.stopped:
            self.stopped = True
            self.server.stop(grace)
        self.thread.join(timeout=10)

    def close(self) -> None:
        try:
            self.stop(0.0)
        finally:
            self.server.service.close()


@contextlib.contextmanager
def in_process_server(data: Path, users: list[str], **settings: Any) -> Iterator[InProcessServer]:
    """Build and serve ``ServerSettings(data=data, port=0, **settings)``.

    The users get cheap hashes; the server's ``Accounts`` uses the cheap hasher too,
    so it never rehashes them to the expensive defaults.
    """
    add_users(data, users)
    server = build_server(ServerSettings(data=data, port=0, **settings), cheap_hasher())
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="accept", daemon=True
    )
    handle = InProcessServer(data, server, thread, client_context(data))
    thread.start()
    try:
        yield handle
    finally:
        handle.close()


# -- a server process --------------------------------------------------------------


class ServerProcess:
    """``imgshare serve`` as a child process; a context manager that kills it on exit."""

    def __init__(self, data: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.data = data
        self.log = log
        environment = {k: v for k, v in os.environ.items() if not k.startswith("IMGSHARE_")}
        environment.update(env or {})
        self._log_handle = log.open("ab")
        self._start_offset = log.stat().st_size
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imgshare", "serve", "--data", str(data), "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=self._log_handle,
            env=environment,
            start_new_session=True,  # a process group of its own, for kill()
        )
        self.port = 0

    def log_text(self) -> str:
        """This run's part of the log file."""
        with self.log.open("rb") as handle:
            handle.seek(self._start_offset)
            return handle.read().decode("utf-8", "replace")

    def wait_listening(self, timeout: float = 15.0) -> int:
        def port() -> int | None:
            match = _LISTENING.search(self.log_text())
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log_text()}")
            return None

        self.port = wait_for(port, timeout, "the server's listening line")
        return self.port

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """A crash: SIGKILL to the supervisor and its workers at the same instant (its
        process group), so that nobody gets to clean up."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.kill()
        finally:
            self._log_handle.close()


def upload_and_check(session: ClientSession, path: Path, original: bytes) -> UploadResult:
    """Upload ``path`` and check the receipt against the original bytes."""
    result = session.upload(path, sha256=True)
    assert result.size == len(original)
    assert result.sha256 == sha256(original)
    assert result.receipt.body.hmac.hex() == result.hmac
    assert result.receipt.body.username == session.username
    return result
