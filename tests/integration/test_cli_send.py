"""`imgshare send` as a person runs it: the console script in a subprocess (or on a
pseudo-terminal), against the real server of ``conftest.make_server`` over real TLS,
with real files and real images made with Pillow (issue 12, item 1).

Most tests log in once with `imgshare login` (a token in a profile of the test's
own), as the README tells people to, so `send` runs with its default parallelism.
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
import subprocess
import time
from collections.abc import Callable
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

STORED = re.compile(r"^(\S+): stored as ([0-9a-f]{32}) \((\d+) bytes", re.MULTILINE)


class Person:
    """Someone at a shell with a profile of their own (``IMGSHARE_CONFIG``)."""

    def __init__(self, server: RunningServer, home: Path, name: str = "alice") -> None:
        self.server = server
        self.home = home
        self.name = name
        self.env = {"IMGSHARE_CONFIG": str(home / "profile.json")}
        (home / "password").write_text(PASSWORD + "\n")

    def login(self) -> None:
        done = self.run(
            "login",
            "--server",
            f"localhost:{self.server.port}",
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
