"""The hostile probe's findings, one by one, against the real server (issue 9).

Each test names the finding it pins; each failed before the fix. The large versions
(2,100 squatters, a 300-connection login flood, 300 stalled uploads) are in
``test_stress.py`` behind the ``stress`` marker.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import (
    PASSWORD,
    RawClient,
    RunningServer,
    ServeProcess,
    add_users,
    imgshare,
    noise_bytes,
    noise_image,
    wait_until,
)

from imgshare import pki, tls
from imgshare.client import ClientSession, ca_verifier
from imgshare.errors import PeerError
from imgshare.logs import HumanFormatter
from imgshare.protocol import StreamOpener
from imgshare.protocol import events as ev
from imgshare.protocol.constants import ErrorCode
from imgshare.server import network

Factory = Callable[..., RunningServer]
OTHER_HOST = "127.0.0.2"  # loopback, but another address: plays another machine


def _png(tmp_path: Path, name: str = "photo.png", seed: int = 1) -> tuple[Path, bytes]:
    path = noise_image(tmp_path / name, "PNG", (64, 48), seed=seed)
    return path, path.read_bytes()


def _closed(session: ClientSession, timeout: float) -> bool:
    """Whether the server ends ``session`` within ``timeout`` s (whatever it says)."""
    session._sock.settimeout(timeout)
    try:
        while session._sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass
    return True


# --- 1. identity that cannot be inherited ------------------------------------------------


@pytest.fixture
def slow_user_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the per-request check may act: the periodic sweep of removed users waits."""
    monkeypatch.setattr(network, "USER_CHECK_INTERVAL", 3600.0, raising=False)


@pytest.mark.usefixtures("slow_user_check")
def test_a_removed_users_session_is_refused_and_never_reaches_the_next_account(
    make_server: Factory, tmp_path: Path
) -> None:
    server = make_server(users=("alice", "mallory"))
    mallory = server.login("mallory")
    assert mallory.list_images() == []
    old_id = server.server.service.catalog.get_user_by_name("mallory")
    assert old_id is not None
    removed = imgshare("user", "remove", "mallory", "--data", server.data, cwd=tmp_path)
    assert removed.returncode == 0, removed.stderr
    dave = server.add_user("dave")
    assert dave.id > old_id.id  # ids are never reused
    path, _ = _png(tmp_path)
    server.login("dave").upload(path)
    with pytest.raises(PeerError) as refused:
        mallory.list_images()
    assert refused.value.code == ErrorCode.AUTH_REQUIRED
    assert "no longer exists" in str(refused.value)
    assert _closed(mallory, 2.0)  # the refusal was fatal


def test_removing_a_user_ends_their_idle_session_within_seconds(
    make_server: Factory, tmp_path: Path
) -> None:
    server = make_server(users=("alice", "mallory"))
    mallory = server.login("mallory")
    alice = server.login("alice")
    imgshare("user", "remove", "mallory", "--data", server.data, cwd=tmp_path)
    started = time.monotonic()
    assert _closed(mallory, 5.0)
    assert time.monotonic() - started < 3.0
    assert alice.list_images() == []  # other sessions live on


def test_purging_a_user_mid_upload_leaves_no_file_and_no_folder(
    make_server: Factory, tmp_path: Path
) -> None:
    server = make_server(users=("alice", "mallory"))
    mallory = server.login("mallory")
    path, _ = _png(tmp_path)
    mallory.upload(path)  # an inbox folder and an object exist
    raw = server.raw()
    raw.login("mallory")
    upload = raw.prepare_upload(noise_image(tmp_path / "b.png", "PNG", (96, 96)).read_bytes())
    assert isinstance(raw.begin_upload(upload), ev.UploadReady)
    raw.send_chunk(upload, 0)  # in flight: temp files exist now
    wait_until(lambda: any("tmp" in f for f in server.files()), timeout=5)
    purged = imgshare("user", "remove", "mallory", "--purge", "--data", server.data, cwd=tmp_path)
    assert purged.returncode == 0, purged.stderr
    assert raw.closed_by_server(5.0)  # the upload in flight is cut
    wait_until(lambda: server.files() == set(), timeout=5)
    assert not (server.data / "inbox" / "mallory").exists()


# --- 2. logging in is a scarce resource ------------------------------------------------


def test_a_connection_that_never_logs_in_is_closed(make_server: Factory) -> None:
    server = make_server(login_timeout=0.5)
    raw = server.raw()
    started = time.monotonic()
    answer = raw.receive()
    assert isinstance(answer, ev.Error) and answer.fatal
    assert answer.code == ErrorCode.TIMEOUT and "not logged in" in answer.message
    assert 0.4 < time.monotonic() - started < 3.0


def test_squatters_that_never_log_in_cannot_take_the_slots(
    make_server: Factory, tmp_path: Path
) -> None:
    """Finding 2 in small: 60 never-logging-in connections from another host against
    a server with 40 places, 8 of them for connections not logged in yet."""
    server = make_server(max_connections=40, max_unauthenticated=8)
    logged_in = [server.login() for _ in range(5)]
    squatters = []
    for _ in range(60):
        try:
            squatters.append(server.raw(source=OTHER_HOST))
        except (OSError, AssertionError):
            pass  # evicted or refused during its own handshake: the cap at work
    assert server.server.not_logged_in <= 8
    path, original = _png(tmp_path)
    for _ in range(5):
        session = server.login()
        assert session.upload(path).size == len(original)
        session.close()
    for session in logged_in:  # sessions that logged in were never touched
        assert len(session.list_images()) == 5


# --- 3. overload says "try again" ------------------------------------------------------


def test_failed_logins_slow_that_account_only_and_the_right_password_still_gets_in(
    make_server: Factory,
) -> None:
    """Finding 3: 20 wrong passwords for bob slow bob's logins (TRY_LATER with a
    hint), not alice's; after the delay bob's right password gets in."""
    server = make_server(
        users=("alice", "bob"),
        login_failures_per_account=5,
        login_delay=0.2,
        login_delay_max=0.5,
        login_failures_per_address=1000,
    )
    failures = deferred = 0
    while failures < 20:
        raw = server.raw(source=OTHER_HOST)
        while failures < 20:
            raw.send(ev.Login("bob", "not bob's password"))
            answer = raw.receive()
            assert isinstance(answer, ev.Error) and not answer.fatal, answer
            if answer.code == ErrorCode.TRY_LATER:
                deferred += 1
                assert 0 < answer.retry_after_ms <= 500
                time.sleep(answer.retry_after_ms / 1000)
            else:
                assert answer.code == ErrorCode.AUTH_FAILED
                failures += 1
                if failures % 4 == 0:
                    break  # 5 failures end a connection: start a new one before that
        raw.close()
    assert deferred >= 10  # after the first 5, each failure was followed by a delay
    probe = server.raw()
    probe.send(ev.Login("bob", PASSWORD))
    answer = probe.receive()
    assert isinstance(answer, ev.Error) and answer.code == ErrorCode.TRY_LATER
    started = time.monotonic()
    server.login("alice")  # another account: not slowed at all
    assert time.monotonic() - started < 0.5
    assert server.connect().login("bob", PASSWORD) == "bob"  # retries after the hint


def test_too_many_failures_from_one_address_slow_every_name_from_it(
    make_server: Factory,
) -> None:
    server = make_server(login_failures_per_address=3, login_delay=5.0)
    raw = server.raw(source=OTHER_HOST)
    for name in ("ann", "ben", "cid"):  # names that do not even exist
        raw.send(ev.Login(name, "guessing away"))
        answer = raw.receive()
        assert isinstance(answer, ev.Error) and answer.code == ErrorCode.AUTH_FAILED
    raw.send(ev.Login("dan", "guessing away"))
    answer = raw.receive()
    assert isinstance(answer, ev.Error) and answer.code == ErrorCode.TRY_LATER
    assert answer.retry_after_ms > 4000
    assert server.login("alice").list_images() == []  # 127.0.0.1 is not slowed


# --- 5. stalls are cut, uploads in flight are capped ------------------------------------


def test_a_dribbling_upload_is_cut_and_leaves_nothing(make_server: Factory) -> None:
    server = make_server(min_transfer_bytes=4096, transfer_window=0.5)
    raw = server.raw()
    raw.login("alice")
    upload = raw.prepare_upload(noise_bytes(64 * 1024), chunk_size=16 * 1024)
    assert isinstance(raw.begin_upload(upload), ev.UploadReady)
    record = raw.conn.send(ev.Chunk(0, upload.chunks[0], False))
    started = time.monotonic()
    with pytest.raises(OSError):  # 1 byte per 0.1 s: 10 bytes/s against 8 KiB/s
        for byte in record:
            raw.sock.sendall(bytes([byte]))
            time.sleep(0.1)
    assert time.monotonic() - started < 4.0
    wait_until(lambda: server.files() == set(), timeout=5)


def test_uploads_in_flight_are_capped_per_user_with_try_later(make_server: Factory) -> None:
    server = make_server(max_uploads_per_user=2)
    held = []
    for _ in range(2):
        raw = server.raw()
        raw.login("alice")
        upload = raw.prepare_upload(noise_bytes(32 * 1024))
        assert isinstance(raw.begin_upload(upload), ev.UploadReady)
        held.append(raw)
    third = server.raw()
    third.login("alice")
    answer = third.begin_upload(third.prepare_upload(noise_bytes(32 * 1024)))
    assert isinstance(answer, ev.Error) and answer.code == ErrorCode.TRY_LATER
    assert answer.retry_after_ms > 0 and not answer.fatal
    held.pop().vanish()  # one ends: its place is free again
    alice = server.server.service.catalog.get_user_by_name("alice")
    assert alice is not None
    wait_until(lambda: server.server.service.catalog.uploads_in_flight(alice.id) == 1, timeout=5)
    upload = third.prepare_upload(noise_bytes(32 * 1024))
    assert isinstance(third.begin_upload(upload), ev.UploadReady)


def test_the_upload_memory_budget_is_a_cap_in_total(make_server: Factory) -> None:
    server = make_server(users=("alice", "bob", "cid"), upload_memory=2 * 1024 * 1024)
    held = []
    for name in ("alice", "bob"):  # each reserves at least 1 MiB
        raw = server.raw()
        raw.login(name)
        assert isinstance(raw.begin_upload(raw.prepare_upload(noise_bytes(8192))), ev.UploadReady)
        held.append(raw)
    raw = server.raw()
    raw.login("cid")
    answer = raw.begin_upload(raw.prepare_upload(noise_bytes(8192)))
    assert isinstance(answer, ev.Error) and answer.code == ErrorCode.TRY_LATER


def test_a_download_that_is_never_read_is_cut(make_server: Factory, tmp_path: Path) -> None:
    server = make_server(min_transfer_bytes=64 * 1024, transfer_window=0.5)
    big = noise_image(tmp_path / "big.bmp", "BMP", (2200, 2200))  # 14.5 MB
    image_id = server.login().upload(big).id
    raw = server.raw()
    raw.login("alice")
    raw.send(ev.Download(bytes.fromhex(image_id)))
    time.sleep(3.0)  # read nothing: the socket buffers fill, then the meter runs out
    assert raw.closed_by_server(5.0)
    assert server.server.open_connections <= 1  # only the uploader's idle session


# --- 6. limits that apply ------------------------------------------------------------


def _serve_with_open_file_limit(data: Path, limit: int, *flags: str) -> subprocess.Popen[str]:
    def lower_limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return subprocess.Popen(
        [sys.executable, "-m", "imgshare", "serve", "--data", str(data), "--port", "0", *flags],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lower_limit,
    )


def test_a_connection_cap_the_open_file_limit_cannot_hold_refuses_to_start(
    tmp_path: Path,
) -> None:
    proc = _serve_with_open_file_limit(tmp_path / "data", 1024)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "need" in stderr and "open files" in stderr and "hard limit" in stderr
    assert "max_connections" in stderr
    assert "Traceback" not in stderr


# --- 7. names safe to show ------------------------------------------------------------


def test_names_that_lie_are_shown_escaped(
    make_server: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server()
    path, original = _png(tmp_path)
    liar = "holiday\u202egnp.exe"  # shows as "holidayexe.png"
    hidden = "a\u200bb\ufeff.png"
    session = server.login()
    liar_id = session.upload(path, name=liar).id
    session.upload(path, name=hidden)
    password_file = tmp_path / "pw"
    password_file.write_text(PASSWORD + "\n")
    connection = [
        "--server", f"localhost:{server.port}", "--ca", str(server.ca),
        "--user", "alice", "--password-file", str(password_file),
    ]  # fmt: skip
    listed = imgshare("list", *connection, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "holiday\\u202egnp.exe" in listed.stdout
    assert "a\\u200bb\\ufeff.png" in listed.stdout
    assert "\u202e" not in listed.stdout and "\u200b" not in listed.stdout
    out = tmp_path / "out"
    out.mkdir()
    got = imgshare("get", liar_id, *connection, cwd=out)
    assert got.returncode == 0, got.stderr
    (written,) = out.iterdir()
    assert written.name == "holiday_u202egnp.exe"  # the override is visible, not obeyed
    assert written.read_bytes() == original
    named = [r for r in caplog.records if getattr(r, "fields", {}).get("name") == liar]
    assert named  # the server logs the name as sent...
    line = HumanFormatter().format(named[0])
    assert "\u202e" not in line and "holiday\\u202egnp.exe" in line  # ...escaped


# --- 8. no detours through symlinks ------------------------------------------------------


def test_a_symlink_inside_the_data_folder_is_refused_not_followed(
    make_server: Factory, tmp_path: Path
) -> None:
    server = make_server()
    outside = tmp_path / "outside"
    outside.mkdir()
    (server.data / "inbox" / "alice").symlink_to(outside)
    path, _ = _png(tmp_path)
    with pytest.raises(PeerError) as refused:
        server.login().upload(path)
    assert refused.value.code == ErrorCode.STORAGE_FAILED
    assert list(outside.iterdir()) == []
    assert {f for f in server.files() if not f.startswith("inbox/alice")} == set()
    (server.data / "inbox" / "alice").unlink()
    for prefix in range(256):  # every object folder a link outside
        folder = server.data / "objects" / f"{prefix:02x}"
        if folder.exists():
            folder.rmdir()  # only an empty one can be here: nothing was stored
        folder.symlink_to(outside)
    with pytest.raises(PeerError):
        server.login().upload(path)
    assert list(outside.iterdir()) == []
    assert not list((server.data / "inbox").glob("alice/*"))  # no plaintext left either


# --- 9. one server per data folder --------------------------------------------------------


def test_a_second_server_on_the_same_folder_is_refused_and_the_first_upload_completes(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    add_users(data, ["alice"])
    with ServeProcess("--data", data, "--port", "0", cwd=tmp_path) as first:
        port = int(first.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
        ca = data / "certs" / "ca.pem"
        context = tls.create_client_context(ca)
        verifier = ca_verifier([pki.load_certificate(ca)], "127.0.0.1")
        original = noise_image(tmp_path / "big.png", "PNG", (700, 700)).read_bytes()
        with RawClient.connect(("127.0.0.1", port), context, verifier) as raw:
            raw.login("alice")
            upload = raw.prepare_upload(original, chunk_size=64 * 1024)
            assert isinstance(raw.begin_upload(upload), ev.UploadReady)
            half = upload.header.chunk_count // 2
            for index in range(half):
                raw.send_chunk(upload, index)
            second = subprocess.run(
                [IMGSHARE_PY, "-m", "imgshare", "serve", "--data", str(data), "--port", "0"],
                capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            assert second.returncode == 1
            assert f"in use by another imgshare server (pid {first.proc.pid}," in second.stderr
            assert "Traceback" not in second.stderr
            for index in range(half, upload.header.chunk_count):
                raw.send_chunk(upload, index)
            raw.send(ev.UploadEnd(upload.hmac))
            receipt = raw.receive()
            assert isinstance(receipt, ev.Receipt), receipt
            raw.send(ev.Download(receipt.body.image_id))
            begin = raw.receive()
            assert isinstance(begin, ev.DownloadBegin)
            opener = StreamOpener(begin.header, begin.content_key)
            got = b""
            while not opener.done:
                chunk = raw.receive()
                assert isinstance(chunk, ev.Chunk)
                got += opener.open(chunk.data)
            end = raw.receive()
            assert isinstance(end, ev.DownloadEnd)
            opener.finish(end.hmac)
            assert got == original


IMGSHARE_PY = sys.executable


# --- 10. a data folder the server cannot write ------------------------------------------


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """Make a folder read-only for real: a read-only bind mount as root (permissions do
    not stop root), mode 0500 otherwise."""
    mounted: list[Path] = []

    def make(folder: Path) -> None:
        if os.geteuid() == 0:
            subprocess.run(["mount", "--bind", folder, folder], check=True)
            mounted.append(folder)
            subprocess.run(["mount", "-o", "remount,ro,bind", folder], check=True)
        else:
            folder.chmod(0o500)

    yield make
    for folder in mounted:
        subprocess.run(["umount", folder], check=False)


@pytest.mark.parametrize("part", [".", "tmp", "inbox/.tmp"])
def test_a_read_only_data_folder_is_refused_at_start(
    tmp_path: Path, read_only: Callable[[Path], None], part: str
) -> None:
    """Finding 10: with a folder where uploads write read-only, the server started
    and then failed every upload; now it refuses to start and names the folder."""
    data = tmp_path / "data"
    with ServeProcess("--data", data, "--port", "0", cwd=tmp_path) as first:
        first.wait_for(r"listening on")
        first.terminate()
    read_only(data / part)
    refused = subprocess.run(
        [IMGSHARE_PY, "-m", "imgshare", "serve", "--data", str(data), "--port", "0"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert refused.returncode == 1
    assert re.search(r"cannot write to (the data folder )?\S*data", refused.stderr), refused.stderr
    assert str(data / part).rstrip("/.") in refused.stderr
    assert "Traceback" not in refused.stderr


# --- 11. quiet logs under attack ------------------------------------------------------


def test_failed_tls_handshakes_are_summarised_not_logged_one_by_one(
    make_server: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server()
    for _ in range(100):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            sock.settimeout(5)
            try:
                while sock.recv(4096):
                    pass
            except OSError:
                pass
    wait_until(lambda: server.server.open_connections == 0, timeout=5)
    server.stop()
    lines = [r.getMessage() for r in caplog.records]
    assert sum(m == "TLS handshake failed" for m in lines) == 3
    (summary,) = [m for m in lines if "tls_failed" in m]
    assert summary.startswith("97 more tls_failed event(s)")
