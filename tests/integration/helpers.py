"""Helpers for the integration tests: test images, data-folder probes, a raw client,
and ``RunningServer`` (the in-process server behind ``conftest.make_server``).

Everything here works on real files, real SQLite and real TLS sockets; nothing is
mocked. The fixtures that use these helpers live in ``conftest.py``.
"""

from __future__ import annotations

import io
import logging
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from PIL import Image

from imgshare import pki, tls
from imgshare.client import ClientSession, ca_verifier
from imgshare.errors import ProtocolError
from imgshare.protocol import ClientConnection, StreamOpener, StreamSealer, UploadHeader
from imgshare.protocol import events as ev
from imgshare.protocol.constants import TAG_SIZE
from imgshare.protocol.keys import ServerVerifier
from imgshare.protocol.stream import new_upload
from imgshare.server import Server, build_server, open_catalog
from imgshare.server.accounts import Accounts
from imgshare.server.config import ServerSettings
from imgshare.store import User, load_or_create_storage_key

HOST = "127.0.0.1"
#: argon2id with the cheapest parameters: hashes verify in well under a millisecond.
#: Tests only; the server verifies a hash with the parameters stored in it.
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "correct horse battery staple"
HMAC_LINE = "HMAC of image on server side: "

# Pillow format -> file suffix, for the six formats the server accepts.
FORMATS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "TIFF": "tif", "BMP": "bmp"}


# --- polling ----------------------------------------------------------------------------


def wait_until(condition: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {condition!r}")
        time.sleep(interval)


# --- test images ------------------------------------------------------------------------


def noise_bytes(count: int, seed: int = 0) -> bytes:
    """``count`` pseudo-random bytes, the same for the same seed."""
    return random.Random(seed).randbytes(count)


def noise_image(
    path: Path, fmt: str = "PNG", size: tuple[int, int] = (64, 48), seed: int = 0
) -> Path:
    """Write an RGB image of random pixels (so it does not compress) in ``fmt``."""
    width, height = size
    image = Image.frombytes("RGB", size, noise_bytes(width * height * 3, seed))
    image.save(path, format=fmt)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_of_exact_size(path: Path, total: int, seed: int = 0) -> Path:
    """A valid PNG of exactly ``total`` bytes: a small noise image plus a private
    ancillary chunk (``prVt``) of padding right after IHDR, which decoders skip."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (16, 16), noise_bytes(16 * 16 * 3, seed)).save(buffer, "PNG")
    base = buffer.getvalue()
    after_ihdr = 8 + 25  # signature, then IHDR: length, type, 13 bytes, CRC
    padding = total - len(base) - 12
    if padding < 0:
        raise ValueError(f"a PNG cannot be as small as {total} bytes here")
    data = base[:after_ihdr] + _png_chunk(b"prVt", bytes(padding)) + base[after_ihdr:]
    assert len(data) == total
    path.write_bytes(data)
    return path


def decompression_bomb_png(path: Path, width: int = 20_000, height: int = 20_000) -> Path:
    """A genuine bomb: a 1-bit PNG of ``width`` x ``height`` black pixels, a few dozen
    KiB on disk; decoding it would take width x height pixels of memory."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grey
    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    block = row * 250
    parts = [compressor.compress(block) for _ in range(height // 250)]
    parts.append(compressor.compress(row * (height % 250)))
    parts.append(compressor.flush())
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )
    return path


def truncated_jpeg(path: Path, keep: float = 0.6) -> Path:
    """A noise JPEG cut after ``keep`` of its bytes: right magic number, cannot decode."""
    noise_image(path, "JPEG", (96, 96), seed=7)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# --- looking into a data folder ---------------------------------------------------------


def stored_files(data: Path) -> set[str]:
    """Every file (not folder) under DATA/objects, DATA/inbox and DATA/tmp, relative.

    What an upload may create; a rejected upload must leave this set unchanged.
    """
    found: set[str] = set()
    for part in ("objects", "inbox", "tmp"):
        root = data / part
        if root.exists():
            found |= {str(p.relative_to(data)) for p in root.rglob("*") if not p.is_dir()}
    return found


def object_path(data: Path, image_id: str) -> Path:
    return data / "objects" / image_id[:2] / image_id


def inbox_files(data: Path, user: str) -> list[Path]:
    folder = data / "inbox" / user
    return sorted(folder.iterdir()) if folder.exists() else []


def catalog_images(data: Path) -> list[dict[str, Any]]:
    """Every row of the images table, read through a separate SQLite connection."""
    with closing(sqlite3.connect(data / "catalog.sqlite3")) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM images ORDER BY created_at, id").fetchall()
        return [dict(row) for row in rows]


def catalog_image(data: Path, image_id: str) -> dict[str, Any] | None:
    rows = [row for row in catalog_images(data) if row["id"] == image_id]
    return rows[0] if rows else None


def open_sealed_object(data: Path, image_id: str) -> bytes:
    """Decrypt a stored object the hard way: unwrap its content key with DATA/storage.key,
    then open each stored chunk with the header from the catalog. Proves the object is
    exactly the uploader's STREAM chunks (and checks the stored HMAC)."""
    row = catalog_image(data, image_id)
    assert row is not None, f"no catalog row for {image_id}"
    storage_key = load_or_create_storage_key(data / "storage.key")
    content_key = storage_key.unwrap(row["wrapped_key"], bytes.fromhex(image_id))
    header = UploadHeader.parse(row["header"])
    opener = StreamOpener(header, content_key)
    sealed = object_path(data, image_id).read_bytes()
    assert len(sealed) == header.size + TAG_SIZE * header.chunk_count
    plaintext, offset = [], 0
    for index in range(header.chunk_count):
        length = header.plaintext_length(index) + TAG_SIZE
        plaintext.append(opener.open(sealed[offset : offset + length]))
        offset += length
    opener.finish(row["hmac"])
    return b"".join(plaintext)


def server_hmacs(records: Iterable[logging.LogRecord]) -> list[str]:
    """The hex HMACs of the server's ``HMAC of image on server side: <hex>`` log lines."""
    return [
        r.getMessage()[len(HMAC_LINE) :]
        for r in records
        if r.name == "imgshare.server.upload" and r.getMessage().startswith(HMAC_LINE)
    ]


# --- a raw client -----------------------------------------------------------------------


@dataclass
class RawUpload:
    """An upload prepared by ``RawClient.prepare_upload``: header, key and sealed chunks."""

    header: UploadHeader
    content_key: bytes
    chunks: list[bytes]
    hmac: bytes


class RawClient:
    """The sans-IO ``ClientConnection`` over a real TLS socket, one record at a time.

    For what ``ClientSession`` will not do: tampered chunks, wrong HMACs, uploads cut
    short, vanishing mid-stream. Use as a context manager or call ``close``.
    """

    def __init__(self, sock: ssl.SSLSocket, conn: ClientConnection) -> None:
        self.sock = sock
        self.conn = conn

    @classmethod
    def connect(
        cls,
        address: tuple[str, int],
        context: ssl.SSLContext,
        verifier: ServerVerifier,
        timeout: float = 10.0,
        source: str | None = None,
    ) -> RawClient:
        """TLS, then the application handshake; raises if either fails. ``source`` is
        the local address to connect from (another 127.x.y.z plays another host)."""
        raw = socket.create_connection(
            address, timeout=timeout, source_address=(source, 0) if source else None
        )
        try:
            sock = context.wrap_socket(raw, server_hostname=address[0])
        except BaseException:
            raw.close()
            raise
        client = cls(sock, ClientConnection(verifier))
        try:
            client.sock.sendall(client.conn.initiate())
            event = client.receive()
            if not isinstance(event, ev.HandshakeComplete):
                raise AssertionError(f"handshake failed: {event!r}")
            client.flush()
        except BaseException:
            client.close()
            raise
        return client

    def flush(self) -> None:
        pending = self.conn.data_to_send()
        if pending:
            self.sock.sendall(pending)

    def send(self, event: ev.Event) -> None:
        """Send one event (and whatever the connection has queued)."""
        self.sock.sendall(self.conn.send(event) + self.conn.data_to_send())

    def receive(self) -> ev.Event:
        """The next event from the server; ``ConnectionClosed`` at end of stream."""
        while True:
            try:
                event = self.conn.next_event()
            except ProtocolError:
                self.flush()
                raise
            if isinstance(event, ev.Event):
                return event
            self.flush()
            self.conn.receive_data(self.sock.recv(256 * 1024))

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        """Whether the server closes the connection within ``timeout`` (anything it
        still sends is read and dropped)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(64 * 1024):
                pass
        except TimeoutError:
            return False
        except OSError:  # a reset is a close too
            pass
        return True

    def login(self, username: str, password: str = PASSWORD) -> None:
        self.send(ev.Login(username, password))
        answer = self.receive()
        assert isinstance(answer, ev.LoginOk), answer

    def prepare_upload(
        self, data: bytes, name: str = "raw.png", chunk_size: int = 4096
    ) -> RawUpload:
        """Seal ``data`` as STREAM chunks under a fresh content key, without sending."""
        header, content_key = new_upload(name, len(data), os.urandom, chunk_size)
        sealer = StreamSealer(header, content_key)
        chunks = [
            sealer.seal(data[i * chunk_size : (i + 1) * chunk_size])
            for i in range(header.chunk_count)
        ]
        return RawUpload(header, content_key, chunks, sealer.finish())

    def begin_upload(self, upload: RawUpload) -> ev.Event:
        """Send UPLOAD_BEGIN; return the answer (``UploadReady`` or an ``Error``)."""
        self.send(ev.UploadBegin(upload.header, upload.content_key))
        return self.receive()

    def send_chunk(self, upload: RawUpload, index: int, data: bytes | None = None) -> None:
        """Send chunk ``index``, or ``data`` in its place (same length: a tampered chunk)."""
        last = index == upload.header.chunk_count - 1
        self.send(ev.Chunk(index, upload.chunks[index] if data is None else data, last))

    def vanish(self) -> None:
        """Disappear without a goodbye: no TLS close_notify, a TCP reset."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def flip_bit(data: bytes, index: int = 0) -> bytes:
    """``data`` with one bit of byte ``index`` flipped."""
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# --- an in-process server --------------------------------------------------------------


@dataclass
class RunningServer:
    """A server serving on a thread, plus what a test needs to reach and inspect it."""

    server: Server
    settings: ServerSettings
    accounts: Accounts
    _thread: threading.Thread
    ca_file: Path | None = None  # None: DATA/certs/ca.pem, made on first start
    _clients: list[ClientSession | RawClient] = field(default_factory=list)
    stopped: bool = False

    # -- where it is ----------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address

    @property
    def port(self) -> int:
        return self.server.address[1]

    @property
    def data(self) -> Path:
        return self.settings.data

    @property
    def ca(self) -> Path:
        """The CA certificate that signed the server's."""
        return self.ca_file or self.data / "certs" / "ca.pem"

    # -- clients --------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        return tls.create_client_context(self.ca)

    def verifier(self) -> ServerVerifier:
        return ca_verifier([pki.load_certificate(self.ca)], HOST)

    def connect(self, timeout: float = 10.0) -> ClientSession:
        """A new session (TLS + application handshake done, not logged in)."""
        session = ClientSession.connect(
            HOST, self.port, self.ssl_context(), verifier=self.verifier(), timeout=timeout
        )
        self._clients.append(session)
        return session

    def login(self, username: str = "alice", password: str = PASSWORD) -> ClientSession:
        """A new session logged in as ``username``."""
        session = self.connect()
        session.login(username, password)
        return session

    def raw(self, timeout: float = 10.0, source: str | None = None) -> RawClient:
        """A ``RawClient`` (handshake done), for sending what ``ClientSession`` won't;
        ``source`` picks the local address (127.0.0.2 plays another host)."""
        client = RawClient.connect(
            (HOST, self.port), self.ssl_context(), self.verifier(), timeout=timeout, source=source
        )
        self._clients.append(client)
        return client

    def add_user(self, name: str, password: str = PASSWORD) -> User:
        """Create a user (cheap hash); works while the server runs."""
        return self.accounts.add_user(name, password)

    # -- inspection -----------------------------------------------------------------

    def files(self) -> set[str]:
        """Files under DATA/objects, DATA/inbox and DATA/tmp (see ``stored_files``)."""
        return stored_files(self.data)

    # -- lifetime -------------------------------------------------------------------

    def stop(self, grace: float = 0.0) -> None:
        """Stop serving (idempotent); clients stay open until ``close``."""
        if self.stopped:
            return
        self.stopped = True
        self.server.stop(grace)
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "serve_forever did not return"

    def close(self) -> None:
        """Close the clients, stop the server, close its catalog."""
        for client in self._clients:
            client.close()
        try:
            self.stop()
        finally:
            self.server.service.close()


def add_users(data: Path, names: list[str], password: str = PASSWORD) -> None:
    """Create ``names`` (cheap hashes) in the catalog of ``data``, server running or not."""
    with open_catalog(data) as catalog:
        setup = Accounts(catalog, hasher=CHEAP_HASHER)
        for name in names:
            if catalog.get_user_by_name(name) is None:
                setup.add_user(name, password)


def start_server(
    data: Path, users: tuple[str, ...] = (), ca: Path | None = None, **settings: Any
) -> RunningServer:
    """Build a server from ``ServerSettings(data=data, **settings)`` and serve it on a
    thread; ``host`` defaults to 127.0.0.1 and ``port`` to 0.

    ``users`` are added (cheap hashes, password ``PASSWORD``) through a catalog
    connection that is closed before the server opens its own; the server's
    ``Accounts`` uses the cheap hasher. Give ``ca`` when ``cert``/``key`` come from
    elsewhere than the first-start generator. Call ``close()`` when done.
    """
    settings.setdefault("host", HOST)
    settings.setdefault("port", 0)
    config = ServerSettings(data=data, **settings)
    add_users(data, list(users))
    server = build_server(config, password_hasher=CHEAP_HASHER)
    accounts = server.service.accounts
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="accept", daemon=True
    )
    thread.start()
    return RunningServer(server, config, accounts, thread, ca)


# --- the console script in a subprocess --------------------------------------------------

_BESIDE_PYTHON = Path(sys.executable).parent / "imgshare"
IMGSHARE = str(_BESIDE_PYTHON) if _BESIDE_PYTHON.exists() else shutil.which("imgshare")
if IMGSHARE is None:  # pragma: no cover - the package is installed in the test venv
    raise RuntimeError("the imgshare console script is not installed in this venv")


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSHARE_")}
    env.update(extra or {})
    return env


def imgshare(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run the console script; capture stdout and stderr as text."""
    return subprocess.run(
        [IMGSHARE, *map(str, args)],
        cwd=cwd,
        env=environment(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class ServeProcess:
    """``imgshare serve`` as a child process whose stderr is read line by line."""

    def __init__(self, *args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [IMGSHARE, "serve", *map(str, args)],
            cwd=cwd,
            env=environment(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """The first stderr line matching ``pattern``, waiting up to ``timeout`` s."""

        def found() -> re.Match[str] | None:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            if self.proc.poll() is not None:
                self._reader.join(timeout=5)
                raise AssertionError("serve exited early:\n" + "\n".join(self.lines))
            return None

        result: re.Match[str] = wait_until(found, timeout=timeout)
        return result

    def terminate(self, timeout: float = 5.0) -> tuple[int, float]:
        """SIGTERM; return the exit status and how long it took to exit."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        status = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return status, time.monotonic() - start

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        assert self.proc.stderr is not None
        self.proc.stderr.close()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
