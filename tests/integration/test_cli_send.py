"""`imgshare send` as a person runs it: the console script in a subprocess (or on a
pseudo-terminal), against the real server of ``conftest.make_server`` over real TLS,
with real files and real images made with Pillow (issue 12, item 1).

Most tests log in once with `imgshare login` (a token in a profile of the test's
own), as the README tells people to, so `send` runs with its default parallelism.

Resume (docs/client.md, "Resuming"; docs/protocol.md, 7.10): `send` runs through a
``Gate``, a TCP relay in front of the server that forwards the client's bytes only up
to a budget and then stalls, as a hung network does. That makes "killed mid-upload"
deterministic: the test waits until the server made part of the upload durable and
the link is stalled, then kills `send` (SIGKILL, Ctrl-C) or cuts the link, and runs
the same command again. What the session-level tests of tests/integration/
test_resume.py already prove (a dropped session resumes, a receipt lost after
UPLOAD_END, another user, expiry, another worker process) is not repeated here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    IMGSHARE,
    PASSWORD,
    RunningServer,
    catalog_images,
    environment,
    imgshare,
    inbox_files,
    noise_image,
    server_hmacs,
    wait_until,
)
from PIL import Image

from imgshare.client.metadata import strip_metadata
from imgshare.protocol.events import ReceiptBody
from imgshare.protocol.keys import public_key_of, verify
from imgshare.protocol.stream import UploadHeader
from imgshare.store import open_catalog
from imgshare.store.resumable import PartialUpload
from imgshare.units import human_size

STORED = re.compile(r"^(\S+): stored as ([0-9a-f]{32}) \((\d+) bytes", re.MULTILINE)


class Person:
    """Someone at a shell with a profile of their own (``IMGSHARE_CONFIG``) and a
    state folder of their own (``XDG_STATE_HOME``: where resume records go). ``port``:
    where they reach the server (a ``Gate``'s), by default the server's own."""

    def __init__(
        self, server: RunningServer, home: Path, name: str = "alice", port: int | None = None
    ) -> None:
        self.server = server
        self.home = home
        self.name = name
        self.port = server.port if port is None else port
        self.env = {
            "IMGSHARE_CONFIG": str(home / "profile.json"),
            "XDG_STATE_HOME": str(home / "state"),
        }
        (home / "password").write_text(PASSWORD + "\n")

    @property
    def resume_folder(self) -> Path:
        """Where `send` keeps resume records by default, with ``XDG_STATE_HOME`` set."""
        return self.home / "state" / "imgshare" / "resume"

    def start(self, *args: str | Path) -> subprocess.Popen[str]:
        """`imgshare ARGS` running in the background, stdout and stderr piped."""
        return subprocess.Popen(
            [IMGSHARE, *map(str, args)],
            cwd=self.home,
            env=environment(self.env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def login(self) -> None:
        done = self.run(
            "login",
            "--server",
            f"localhost:{self.port}",
            "--ca",
            self.server.ca,
            "--user",
            self.name,
            "--password-file",
            self.home / "password",
        )
        assert done.returncode == 0, done.stderr

    def run(self, *args: str | Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return imgshare(*args, cwd=self.home, env=self.env, timeout=timeout)

    def send(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return self.run("send", *args)


@pytest.fixture
def alice(server: RunningServer, tmp_path: Path) -> Person:
    home = tmp_path / "alice-home"
    home.mkdir()
    person = Person(server, home)
    person.login()
    return person


def photo_with_gps(path: Path, seed: int = 0, size: tuple[int, int] = (320, 240)) -> Path:
    """A JPEG with EXIF: a camera make, an orientation and a GPS position."""
    image = Image.effect_noise(size, 40 + seed).convert("RGB")
    exif = Image.Exif()
    exif[0x010F] = "TestCam"  # Make
    exif[0x0112] = 6  # Orientation: turned
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (48.0, 51.0, 29.5)
    gps[3], gps[4] = "E", (2.0, 17.0, 40.2)
    image.save(path, "JPEG", quality=90, exif=exif)
    return path


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def on_terminal(
    argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 60.0
) -> tuple[str, int]:
    """Run ``argv`` on a pseudo-terminal (stdin, stdout and stderr); return all it
    wrote and its exit status. Anything that asks a question would wait and time out."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once, nothing else
        os.chdir(cwd)
        os.execve(argv[0], argv, {**environment(env), "COLUMNS": "120", "TERM": "xterm"})
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                if os.waitpid(pid, os.WNOHANG) != (0, 0):
                    break
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child is gone
                break
            if not chunk:
                break
            output += chunk
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"still running after {timeout} s:\n{output.decode()}")
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return output.decode("utf-8", "replace"), os.waitstatus_to_exitcode(status)


# --- folders, JSON and receipts ------------------------------------------------------------


def test_folders_with_mixed_content(
    alice: Person, server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    folder = alice.home / "holiday"
    (folder / "day2" / "evening").mkdir(parents=True)
    noise_image(folder / "beach.png", "PNG", seed=1)
    noise_image(folder / "day2" / "hills.jpg", "JPEG", seed=2)
    noise_image(folder / "day2" / "evening" / "sunset.webp", "WEBP", seed=3)
    # an image whose name says otherwise: the first bytes decide
    noise_image(folder / "day2" / "scan.dat", "GIF", seed=4)
    (folder / "notes.txt").write_text("remember the sun cream\n")
    (folder / "day2" / "empty.jpg").write_bytes(b"")

    done = alice.send(folder, "--json")

    assert done.returncode == 0, done.stderr
    records = json_lines(done.stdout)
    assert sorted(r["name"] for r in records) == [
        "beach.png",
        "hills.jpg",
        "scan.dat",
        "sunset.webp",
    ]
    stderr = done.stderr.splitlines()
    assert f"imgshare: skipped {folder / 'notes.txt'}: not an image" in stderr
    assert f"imgshare: skipped {folder / 'day2' / 'empty.jpg'}: empty" in stderr
    assert re.fullmatch(r"sent 4 images \(.+\) in [\d.]+ s, .+/s; 2 skipped", stderr[-1])
    # every image stored once, with the HMAC both sides computed
    rows = {row["id"]: row for row in catalog_images(server.data)}
    assert set(rows) == {r["id"] for r in records}
    assert sorted(r["hmac"] for r in records) == sorted(server_hmacs(caplog.records))
    for record in records:
        path = Path(record["file"])
        assert rows[record["id"]]["hmac"].hex() == record["hmac"]
        assert record["size"] == path.stat().st_size
        assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert record["owner"] == "alice"


def test_json_receipt_can_be_checked_later(alice: Person, server: RunningServer) -> None:
    """What --json prints is enough to check the receipt with the server's
    certificate alone (docs/protocol.md, 7.5, "Keeping a receipt as proof")."""
    image = noise_image(alice.home / "proof.png", "PNG", seed=5)
    done = alice.send(image, "--json")
    assert done.returncode == 0, done.stderr
    (record,) = json_lines(done.stdout)
    certificate = (server.data / "certs" / "server.pem").read_text()
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = x509.load_pem_x509_certificate(certificate.encode()).public_bytes(Encoding.DER)
    assert record["server_certificate_sha256"] == hashlib.sha256(der).hexdigest()
    receipt = bytes.fromhex(record["receipt"])
    signed = b"\x20" * 64 + b"imgshare v1 receipt\x00" + receipt
    signature = bytes.fromhex(record["signature"])
    assert verify(public_key_of(der), record["scheme"], signature, signed)
    body = ReceiptBody(
        bytes.fromhex(record["id"]),
        bytes.fromhex(record["upload_id"]),
        record["size"],
        bytes.fromhex(record["hmac"]),
        bytes.fromhex(record["header_sha256"]),
        record["server_time_ms"],
        record["owner"],
    )
    assert body.encode() == receipt
    tampered = bytearray(signed)
    tampered[-1] ^= 1
    assert not verify(public_key_of(der), record["scheme"], signature, bytes(tampered))


def test_plain_lines_when_not_a_terminal(alice: Person) -> None:
    images = [noise_image(alice.home / f"{n}.png", "PNG", seed=n) for n in range(3)]
    done = alice.send(*images)
    assert done.returncode == 0, done.stderr
    stored = STORED.findall(done.stdout)
    assert sorted(Path(p).name for p, _, _ in stored) == ["0.png", "1.png", "2.png"]
    assert done.stdout.count("HMAC of image on client side: ") == 3
    assert "\x1b" not in done.stdout + done.stderr  # no bars, no colours
    assert done.stderr.splitlines()[-1].startswith("sent 3 images (")


def test_quiet_prints_nothing(alice: Person, server: RunningServer) -> None:
    images = [noise_image(alice.home / f"q{n}.jpg", "JPEG", seed=n) for n in range(2)]
    done = alice.send("--quiet", *images)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert len(catalog_images(server.data)) == 2


def test_parallel_4_with_20_images_stores_each_once(
    alice: Person, server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    folder = alice.home / "twenty"
    folder.mkdir()
    for n in range(20):
        noise_image(folder / f"img{n:02}.png", "PNG", (96, 64), seed=n)
    done = alice.send(folder, "--parallel", "4", "--json")
    assert done.returncode == 0, done.stderr
    records = json_lines(done.stdout)
    assert sorted(r["name"] for r in records) == [f"img{n:02}.png" for n in range(20)]
    rows = catalog_images(server.data)
    assert len(rows) == 20
    assert sorted(row["name"] for row in rows) == [f"img{n:02}.png" for n in range(20)]
    assert {row["id"] for row in rows} == {r["id"] for r in records}
    assert sorted(server_hmacs(caplog.records)) == sorted(r["hmac"] for r in records)
    assert len(inbox_files(server.data, "alice")) == 20


# --- the bars on a terminal ---------------------------------------------------------------


def test_progress_bars_on_a_terminal(alice: Person, server: RunningServer) -> None:
    folder = alice.home / "big"
    folder.mkdir()
    noise_image(folder / "large.png", "PNG", (900, 700), seed=1)  # ~1.9 MB: several chunks
    noise_image(folder / "small.jpg", "JPEG", seed=2)
    (folder / "notes.txt").write_text("no")

    screen, status = on_terminal([IMGSHARE, "send", str(folder)], alice.env, alice.home)

    assert status == 0, screen
    assert "━" in screen  # a bar
    assert re.search(r"\b\d{1,3}%", screen)  # its percentage
    assert "total" in screen and "MiB" in screen
    assert "\x1b[" in screen  # drawn in place
    assert re.search(r"sent 2 images \(.+\) in [\d.]+ s, .+/s; 1 skipped", screen)
    assert f"skipped {folder / 'notes.txt'}: not an image" in screen
    assert screen.count("stored as ") == 2
    assert "Traceback" not in screen
    assert len(catalog_images(server.data)) == 2


# --- what is refused, and when ------------------------------------------------------------


def test_a_bad_path_is_reported_before_any_prompt(server: RunningServer, tmp_path: Path) -> None:
    """A typo must cost no password prompt: on a terminal, with a password to ask
    for, `send` names the missing path and stops before it asks or connects."""
    good = noise_image(tmp_path / "good.png", "PNG")
    missing = tmp_path / "missimg.png"
    argv = [IMGSHARE, "send", str(good), str(missing), str(tmp_path / "nope")]
    argv += ["--server", f"localhost:{server.port}", "--ca", str(server.ca), "--user", "alice"]
    started = time.monotonic()

    screen, status = on_terminal(argv, {}, tmp_path, timeout=20)

    assert status == 1, screen
    assert time.monotonic() - started < 15
    assert "assword" not in screen  # no prompt
    lines = screen.replace("\r", "").splitlines()
    assert f"imgshare: error: {missing}: no such file or folder" in lines
    assert f"imgshare: error: {tmp_path / 'nope'}: no such file or folder" in lines
    assert lines[-1].startswith("imgshare: error: nothing sent: 2 path(s) cannot be sent")
    assert catalog_images(server.data) == []


def test_too_large_is_refused_before_it_is_sent(
    make_server: Callable[..., RunningServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server(max_image_size=64 * 1024)
    home = tmp_path / "home"
    home.mkdir()
    person = Person(server, home)
    person.login()
    small = noise_image(home / "small.png", "PNG", (64, 48), seed=1)  # ~9 KB
    large = noise_image(home / "large.png", "PNG", (200, 150), seed=2)  # ~90 KB
    other = noise_image(home / "other.png", "PNG", (64, 48), seed=3)

    done = person.send(small, large, other)

    assert done.returncode == 1
    errors = done.stderr.splitlines()
    size = large.stat().st_size
    assert (
        f"imgshare: error: {large}: too large: {size / 1024:.1f} KiB, and the server takes at "
        "most 64.0 KiB an image (not sent)"
    ) in errors
    assert errors[-1] == "imgshare: error: 1 of 3 image(s) not sent"
    assert sorted(row["name"] for row in catalog_images(server.data)) == ["other.png", "small.png"]
    # the server never saw an UPLOAD_BEGIN for it (it would refuse it, fatally, and log it)
    assert not [r for r in caplog.records if "exceeds the limit" in r.getMessage()]


def test_nothing_to_send(alice: Person) -> None:
    folder = alice.home / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    done = alice.send(folder)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"imgshare: skipped {folder / 'a.txt'}: not an image",
        "imgshare: error: nothing to send: no images among the files given",
    ]


# --- metadata ----------------------------------------------------------------------------


def _pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return image.tobytes()


def test_strip_metadata_gps(alice: Person, server: RunningServer) -> None:
    original = photo_with_gps(alice.home / "trip.jpg").read_bytes()
    assert Image.open(io.BytesIO(original)).getexif().get_ifd(0x8825)  # it has a position

    done = alice.send(alice.home / "trip.jpg", "--strip-metadata", "gps", "--json")

    assert done.returncode == 0, done.stderr
    (record,) = json_lines(done.stdout)
    fetched = alice.home / "fetched.jpg"
    got = alice.run("get", record["id"], "-o", fetched, "--json")
    assert got.returncode == 0, got.stderr
    stored = fetched.read_bytes()
    with Image.open(io.BytesIO(stored)) as image:
        exif = image.getexif()
        assert exif.get_ifd(0x8825) == {}  # the position is gone
        assert exif[0x010F] == "TestCam"  # the rest of the EXIF stays
        assert exif[0x0112] == 6
    assert _pixels(stored) == _pixels(original)  # not re-encoded
    assert len(stored) == len(original)  # edited in place
    # the HMAC both sides showed is of the stripped bytes, which is what was sent
    assert stored == strip_metadata(original, "gps")
    assert record["size"] == len(stored)
    assert record["sha256"] == hashlib.sha256(stored).hexdigest()
    assert json.loads(got.stdout)["hmac"] == record["hmac"]  # `get` checked it
    (inbox_copy,) = inbox_files(server.data, "alice")
    assert inbox_copy.read_bytes() == stored
    assert (alice.home / "trip.jpg").read_bytes() == original  # the file is untouched


def test_strip_metadata_all(alice: Person, server: RunningServer) -> None:
    original = photo_with_gps(alice.home / "all.jpg", seed=3).read_bytes()
    done = alice.send(alice.home / "all.jpg", "--strip-metadata", "all", "--json")
    assert done.returncode == 0, done.stderr
    (inbox_copy,) = inbox_files(server.data, "alice")
    stored = inbox_copy.read_bytes()
    with Image.open(io.BytesIO(stored)) as image:
        exif = image.getexif()
        assert dict(exif) == {0x0112: 6}  # only the orientation is left
    assert _pixels(stored) == _pixels(original)
    assert b"TestCam" not in stored
    assert json_lines(done.stdout)[0]["size"] == len(stored) < len(original)


# --- Ctrl-C ---------------------------------------------------------------------------------


def test_ctrl_c_stops_cleanly(alice: Person, server: RunningServer) -> None:
    folder = alice.home / "many"
    folder.mkdir()
    for n in range(40):
        noise_image(folder / f"m{n:02}.png", "PNG", (400, 300), seed=n)  # ~360 KB each
    proc = subprocess.Popen(
        [IMGSHARE, "send", str(folder), "--parallel", "1"],
        cwd=alice.home,
        env=environment(alice.env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # raw pipes: communicate() must see every byte not read here
    )
    assert proc.stdout is not None
    first = b""
    while not first.endswith(b"\n"):  # the first receipt: the send is under way
        first += proc.stdout.read(1)
    assert first.startswith(b"HMAC of image on client side: ")
    proc.send_signal(signal.SIGINT)
    rest_bytes, error_bytes = proc.communicate(timeout=30)
    rest, errors = (first + rest_bytes).decode(), error_bytes.decode()

    assert proc.returncode == 130
    assert "Traceback" not in errors
    (line,) = errors.splitlines()
    stored = len(STORED.findall(rest))
    assert line == (
        f"imgshare: interrupted: {stored} of 40 image(s) sent and stored; the uploads "
        "under way were stopped, and the server keeps nothing of them"
    )
    assert 1 <= stored < 40
    assert len(catalog_images(server.data)) == stored
    # the half-sent upload is dropped: nothing is left behind in the data folder
    wait_until(lambda: not list((server.data / "tmp").glob("*")), timeout=10)
    assert len(inbox_files(server.data, "alice")) == stored


# --- resume: a cut upload goes on where the server kept it ------------------------------------

MIB = 1024 * 1024
#: The server makes an upload durable after every MiB here (4 chunks of 256 KiB).
SYNC = MIB
#: `send`'s chunks for a file of 16 MiB or less.
CHUNK = 256 * 1024


class Gate:
    """A TCP relay in front of the server, standing for the network between `send`
    and the server. What the client sends is forwarded only up to a budget (``allow``);
    then the link stalls, as a hung network does, until more is allowed or it is
    ``open``. ``cut`` drops every connection at once, both ways. Not a mock: the bytes
    are the real TLS stream, passed on unchanged.

    A client killed while the link is stalled cannot tell the server either: its
    goodbye waits behind the bytes the link holds, as on a hung network, and the
    server notices only after its minimum-rate window (20 s). The tests ``cut`` the
    link once the client is gone, so that the server notices at once."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.forwarded = 0  # client -> server bytes, all connections
        self.budget: int | None = None  # None: no limit
        self.closed = False
        self._cond = threading.Condition()
        self._sockets: list[socket.socket] = []
        self._servers: set[socket.socket] = set()  # the server's side of each connection
        self._holding = False  # keep the server's sides open, silent (``drop_clients``)
        threading.Thread(target=self._accept, daemon=True).start()

    def allow(self, more: int) -> None:
        """Let ``more`` bytes of the client's through from now on, then stall."""
        with self._cond:
            self.budget = self.forwarded + more
            self._cond.notify_all()

    def open(self) -> None:
        with self._cond:
            self.budget = None
            self._cond.notify_all()

    @property
    def stalled(self) -> bool:
        with self._cond:
            return self.budget is not None and self.forwarded >= self.budget

    def cut(self) -> None:
        """The network goes: every connection through the gate ends, both sides."""
        with self._cond:
            sockets, self._sockets = self._sockets, []
            self._cond.notify_all()
        for each in sockets:
            try:
                each.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            each.close()

    def drop_clients(self) -> None:
        """The client's side of every connection goes, the server's stays open and
        silent: a client whose network died, before the server noticed."""
        with self._cond:
            self._holding = True
            clients = [each for each in self._sockets if each not in self._servers]
        for each in clients:
            try:
                each.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def release_servers(self) -> None:
        """The server notices at last: the connections ``drop_clients`` left end."""
        with self._cond:
            self._holding = False
        self.cut()

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.cut()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self._cond:
                self._sockets += [client, server]
                self._servers.add(server)
            for args in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, metered: bool) -> None:
        try:
            while data := source.recv(65536):
                view = memoryview(data)
                while view:
                    count = len(view)
                    if metered:
                        with self._cond:
                            while self.budget is not None and self.forwarded >= self.budget:
                                if self.closed:
                                    return
                                self._cond.wait(0.05)
                            if self.budget is not None:
                                count = min(count, self.budget - self.forwarded)
                            self.forwarded += count
                    sink.sendall(view[:count])
                    view = view[count:]
        except OSError:
            pass
        finally:
            for each in (source, sink):
                if self._holding and each in self._servers:
                    continue
                try:
                    each.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def gated(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> Iterator[tuple[RunningServer, Gate, Person]]:
    """A server that makes uploads durable every MiB, a ``Gate`` in front of it, and
    alice logged in through the gate (her profile names the gate's port)."""
    server = make_server(upload_sync_bytes=SYNC)
    gate = Gate(server.port)
    home = tmp_path / "alice-home"
    home.mkdir()
    person = Person(server, home, port=gate.port)
    person.login()
    yield server, gate, person
    gate.close()


def big_image(path: Path, seed: int = 7) -> Path:
    """A noise BMP of 10,545,054 bytes (over the 8 MiB a file needs for a resume
    record): 41 chunks of 256 KiB, whatever the seed."""
    return noise_image(path, "BMP", (1900, 1850), seed=seed)


def partials(data: Path) -> list[PartialUpload]:
    with open_catalog(data) as catalog:
        return [p for user in catalog.list_users() for p in catalog.partials_of(user.id)]


def durable(data: Path) -> int:
    """Durable chunks of the one upload in flight or kept (0 if none yet)."""
    rows = partials(data)
    assert len(rows) <= 1, rows
    return rows[0].durable_chunks if rows else 0


def kept_upload(server: RunningServer, gate: Gate) -> PartialUpload:
    """The one kept upload, once the client is gone: the gate drops the link (see
    ``Gate``) and the server, noticing, parks the upload."""
    gate.cut()
    wait_until(lambda: server.server.service.upload_memory.used == 0, timeout=15)
    (row,) = partials(server.data)
    return row


def cut_mid_upload(server: RunningServer, gate: Gate, after: int) -> None:
    """Wait until the server made more than ``after`` chunks durable and the link is
    stalled: the upload is cut mid-way, with a durable part."""
    wait_until(lambda: gate.stalled and durable(server.data) > after, timeout=20)


def resume_record(person: Person) -> dict[str, Any]:
    """The one resume record: checked private (0600 in a 0700 folder), then parsed."""
    (record,) = person.resume_folder.glob("*.json")
    assert record.stat().st_mode & 0o777 == 0o600
    assert person.resume_folder.stat().st_mode & 0o777 == 0o700
    parsed: dict[str, Any] = json.loads(record.read_bytes())
    return parsed


def collect(stream: Any) -> list[str]:
    """The lines of ``stream`` as they come (a thread reads them)."""
    lines: list[str] = []

    def read() -> None:
        for line in stream:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def assert_one_intact_copy(person: Person, image: Path) -> str:
    """`imgshare list` shows exactly one image, and `imgshare get` of it gives back
    the file's bytes; the server keeps no partial upload."""
    listed = person.run("list", "--json")
    assert listed.returncode == 0, listed.stderr
    (entry,) = json_lines(listed.stdout)
    out = person.home / "fetched.bmp"
    got = person.run("get", entry["id"], "-o", out, "--force")
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == image.read_bytes()
    assert partials(person.server.data) == []
    return str(entry["id"])


def test_a_killed_then_interrupted_send_resumes_and_stores_one_copy(
    gated: tuple[RunningServer, Gate, Person],
) -> None:
    """SIGKILL mid-upload, the same command again (it resumes), Ctrl-C mid-upload,
    the same command once more: it goes on from the last durable chunk each time, and
    the server ends with one intact copy."""
    server, gate, alice = gated
    image = big_image(alice.home / "big.bmp")
    size = image.stat().st_size

    gate.allow(3 * MIB)
    first = alice.start("send", image, "--json")
    try:
        cut_mid_upload(server, gate, after=0)
        record = resume_record(alice)  # written before the upload began
        assert record["file"]["path"] == str(image)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        first.kill()
        out, _ = first.communicate()
    assert out == ""  # nothing was stored
    kept = kept_upload(server, gate)
    assert 0 < kept.durable_chunks < 41

    gate.allow(3 * MIB)
    second = alice.start("send", image)
    try:
        assert second.stderr is not None
        lines = collect(second.stderr)
        cut_mid_upload(server, gate, after=kept.durable_chunks)
        assert resume_record(alice)["content_key"] == record["content_key"]  # same upload
        second.send_signal(signal.SIGINT)
        second.wait(timeout=15)
    finally:
        second.kill()
        second.communicate()
    assert second.returncode == 130
    resumed = kept.durable_chunks * CHUNK
    assert lines[0] == (
        f"imgshare: resuming {image} at {human_size(resumed)} of {human_size(size)} (the "
        "part the server kept is not sent again)\n"
    )
    assert lines[-1] == (
        "imgshare: interrupted: 0 of 1 image(s) sent and stored; the uploads under way "
        "were stopped, the server keeps what it made durable of 1 of them: run the same "
        "command again to resume\n"
    )
    assert "Traceback" not in "".join(lines)
    again = kept_upload(server, gate)
    assert again.upload_id == kept.upload_id and again.durable_chunks > kept.durable_chunks

    gate.open()
    third = alice.send(image, "--json")
    assert third.returncode == 0, third.stderr
    (receipt,) = json_lines(third.stdout)
    assert receipt["resumed_from"] == again.durable_chunks * CHUNK  # not from 0
    assert receipt["upload_id"] == record_upload_id(record)  # the upload begun by the first
    assert receipt["size"] == size and receipt["id"] == again.image_id
    assert assert_one_intact_copy(alice, image) == receipt["id"]
    assert list(alice.resume_folder.glob("*.json")) == []  # the key went with the record


def record_upload_id(record: dict[str, Any]) -> str:
    return UploadHeader.parse(bytes.fromhex(record["header"])).upload_id.hex()


def test_a_file_changed_between_runs_is_sent_afresh_with_a_new_key(
    gated: tuple[RunningServer, Gate, Person],
) -> None:
    """The same size and modification time, other bytes: the record's digests catch
    it, and the rerun is a new upload under a new content key and upload id (no key
    and nonce ever seal two plaintexts); what is stored is the new file."""
    server, gate, alice = gated
    image = big_image(alice.home / "photo.bmp")
    gate.allow(3 * MIB)
    first = alice.start("send", image, "--json")
    try:
        cut_mid_upload(server, gate, after=0)
        old = resume_record(alice)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        first.kill()
        first.communicate()
    kept = kept_upload(server, gate)

    info = image.stat()
    changed = big_image(alice.home / "other.bmp", seed=8).read_bytes()
    assert len(changed) == info.st_size
    image.write_bytes(changed)
    os.utime(image, ns=(info.st_atime_ns, info.st_mtime_ns))

    gate.allow(2 * MIB)
    second = alice.start("send", image, "--json")
    try:

        def new_record() -> dict[str, Any] | None:
            found = list(alice.resume_folder.glob("*.json"))  # none while it hashes
            record = resume_record(alice) if found else None
            return record if record and record["content_key"] != old["content_key"] else None

        new: dict[str, Any] = wait_until(new_record, timeout=20)
        wait_until(lambda: gate.stalled, timeout=20)  # the new upload is under way
        gate.open()
        out, err = second.communicate(timeout=60)
    finally:
        second.kill()
    assert second.returncode == 0, err
    assert "resuming" not in err
    assert record_upload_id(new) != record_upload_id(old)
    old_header = UploadHeader.parse(bytes.fromhex(old["header"]))
    new_header = UploadHeader.parse(bytes.fromhex(new["header"]))
    assert new_header.nonce_prefix != old_header.nonce_prefix
    assert new["sha256"] != old["sha256"]
    (receipt,) = json_lines(out)
    assert receipt["resumed_from"] == 0
    assert receipt["upload_id"] == record_upload_id(new)
    assert receipt["sha256"] == hashlib.sha256(changed).hexdigest()
    rows = catalog_images(server.data)
    assert [row["id"] for row in rows] == [receipt["id"]]
    assert receipt["id"] != kept.image_id
    fetched = alice.home / "fetched.bmp"
    assert alice.run("get", receipt["id"], "-o", fetched).returncode == 0
    assert fetched.read_bytes() == changed
    # The old upload's durable part was never touched by the new bytes. Version 1 of
    # the protocol has no request to drop it, so the server keeps it parked, invisible
    # and unreadable without the old key, until it expires or makes room for another
    # (tests/integration/test_resume.py proves both).
    assert [p.upload_id for p in partials(server.data)] == [kept.upload_id]
    assert list(alice.resume_folder.glob("*.json")) == []


def test_a_dropped_connection_is_retried_as_a_resume(
    gated: tuple[RunningServer, Gate, Person],
) -> None:
    """The network goes mid-upload while `send` runs: it retries by itself, and the
    retry resumes (``resumed_from`` > 0) instead of starting again."""
    server, gate, alice = gated
    image = big_image(alice.home / "big.bmp")
    gate.allow(3 * MIB)
    proc = alice.start("send", image, "--json")
    try:
        cut_mid_upload(server, gate, after=0)
        before = durable(server.data)
        gate.cut()
        gate.open()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    (receipt,) = json_lines(out)
    assert before * CHUNK <= receipt["resumed_from"] < receipt["size"]
    assert receipt["resumed_from"] % CHUNK == 0
    assert assert_one_intact_copy(alice, image) == receipt["id"]


def test_a_resume_waits_while_the_server_still_holds_the_upload(
    gated: tuple[RunningServer, Gate, Person], caplog: pytest.LogCaptureFixture
) -> None:
    """The client's network dies but the server has not noticed yet: `send` retries,
    its resume is answered TRY_LATER (the old connection still holds the upload), it
    waits as told and asks again, and once the server lets go it goes on from there."""
    server, gate, alice = gated
    image = big_image(alice.home / "big.bmp")
    gate.allow(3 * MIB)
    proc = alice.start("send", image, "--json")
    try:
        cut_mid_upload(server, gate, after=0)
        gate.drop_clients()
        gate.open()
        held = "upload deferred: this upload is still being received on another connection"
        wait_until(lambda: any(held in r.getMessage() for r in caplog.records), timeout=20)
        assert proc.poll() is None  # waiting it out, not failed
        gate.release_servers()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    (receipt,) = json_lines(out)
    assert 0 < receipt["resumed_from"] < receipt["size"]
    assert assert_one_intact_copy(alice, image) == receipt["id"]


def test_a_resumed_upload_on_a_terminal(gated: tuple[RunningServer, Gate, Person]) -> None:
    """The bars of a resumed upload: the note above them, the file's bar from where
    the server was, and one copy at the end."""
    server, gate, alice = gated
    image = big_image(alice.home / "big.bmp")
    gate.allow(3 * MIB)
    first = alice.start("send", image)
    try:
        cut_mid_upload(server, gate, after=0)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        first.kill()
        first.communicate()
    kept = kept_upload(server, gate)
    gate.open()

    screen, status = on_terminal([IMGSHARE, "send", str(image)], alice.env, alice.home)

    assert status == 0, screen
    resumed = human_size(kept.durable_chunks * CHUNK)
    assert f"imgshare: resuming {image} at {resumed} of " in screen.replace("\r\n", " ")
    assert "━" in screen and "100%" in screen
    assert screen.count("stored as ") == 1 and "Traceback" not in screen
    assert assert_one_intact_copy(alice, image)


def test_no_resume_keeps_no_record(gated: tuple[RunningServer, Gate, Person]) -> None:
    """--no-resume: no record is written, and a cut upload starts again from 0."""
    server, gate, alice = gated
    image = big_image(alice.home / "big.bmp")
    gate.allow(3 * MIB)
    proc = alice.start("send", image, "--json", "--no-resume")
    try:
        wait_until(lambda: gate.stalled, timeout=20)
        assert not alice.resume_folder.exists()
        gate.cut()
        gate.open()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    (receipt,) = json_lines(out)
    assert receipt["resumed_from"] == 0
    assert not alice.resume_folder.exists()
    assert len(catalog_images(server.data)) == 1


# --- thumbnails: get --thumbnail ---------------------------------------------------------


def test_get_thumbnail_writes_a_small_image(alice: Person, server: RunningServer) -> None:
    photo = noise_image(alice.home / "wide.jpg", "JPEG", (1200, 800), seed=11)
    sent = alice.send(photo, "--json")
    assert sent.returncode == 0, sent.stderr
    image_id = json_lines(sent.stdout)[0]["id"]
    folder = alice.home / "thumbs"
    folder.mkdir()

    got = alice.run("get", "--thumbnail", image_id[:8], "-o", folder, "--json")

    assert got.returncode == 0, got.stderr
    (record,) = json_lines(got.stdout)
    path = folder / f"{image_id}.thumb.jpg"
    assert record == {
        "id": image_id,
        "thumbnail": True,
        "width": 256,
        "height": 171,
        "media_type": "image/jpeg",
        "size": path.stat().st_size,
        "path": str(path),
    }
    with Image.open(path) as thumb:
        thumb.load()
        assert thumb.format == "JPEG" and thumb.size == (256, 171)
        assert max(thumb.size) <= 256
        assert not thumb.getexif()
    # standard output, and a file named with -o
    to_stdout = subprocess.run(
        [IMGSHARE, "get", "-t", image_id, "-o", "-"],
        cwd=alice.home,
        env=environment(alice.env),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert to_stdout.returncode == 0, to_stdout.stderr
    assert to_stdout.stdout == path.read_bytes()
    named = alice.run("get", "--thumbnail", image_id, "-o", alice.home / "t.jpg")
    assert named.returncode == 0, named.stderr
    assert (alice.home / "t.jpg").read_bytes() == path.read_bytes()
    assert named.stdout.startswith(f"{alice.home / 't.jpg'}: thumbnail of {image_id}, 256x171 ")
    # not an image of hers: the words of `get`
    missing = alice.run("get", "--thumbnail", "0" * 32)
    assert missing.returncode == 1
    assert "no such id, or not shared with you" in missing.stderr
