"""``imgshare serve --workers 2``: a supervisor and its worker processes (issue 10).

Each test runs the real console script. Which worker serves a connection is the
kernel's choice; the server logs ``login peer=127.0.0.1:PORT ... worker=N``, so a
test logs in several connections and picks by the local port.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import (
    PASSWORD,
    RawClient,
    ServeProcess,
    add_users,
    noise_bytes,
    noise_image,
    stored_files,
    wait_until,
)

from imgshare import pki, tls
from imgshare.client import ClientSession, ca_verifier
from imgshare.protocol import events as ev
from imgshare.protocol.constants import ErrorCode

LOGIN_LINE = re.compile(r"login  peer=127\.0\.0\.1:(\d+) user=\S+ .*?worker=(\d+)")
_OPENED: list[RawClient] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Every connection a test opens is closed after it, whatever happened."""
    yield
    while _OPENED:
        _OPENED.pop().close()


@contextmanager
def workers(
    tmp_path: Path, users: list[str], count: int = 2, env: dict[str, str] | None = None
) -> Iterator[tuple[ServeProcess, int, Path]]:
    data = tmp_path / "data"
    add_users(data, users)
    with ServeProcess(
        "--data", data, "--port", "0", "--workers", str(count), cwd=tmp_path, env=env
    ) as serve:
        port = int(serve.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
        yield serve, port, data


def _raw(port: int, data: Path) -> RawClient:
    ca = data / "certs" / "ca.pem"
    client = RawClient.connect(
        ("127.0.0.1", port),
        tls.create_client_context(ca),
        ca_verifier([pki.load_certificate(ca)], "127.0.0.1"),
    )
    _OPENED.append(client)
    return client


def _worker_of(serve: ServeProcess, client: RawClient | ClientSession) -> int:
    sock = client.sock if isinstance(client, RawClient) else client._sock
    port = sock.getsockname()[1]

    def found() -> tuple[int] | None:  # a tuple: worker 0 must count as found
        for line in list(serve.lines):
            match = LOGIN_LINE.search(line)
            if match and int(match.group(1)) == port:
                return (int(match.group(2)),)
        return None

    result: tuple[int] = wait_until(found, timeout=5)
    return result[0]


def _one_per_worker(serve: ServeProcess, port: int, data: Path, user: str) -> list[RawClient]:
    """Logged-in connections, one on worker 0 and one on worker 1."""
    chosen: dict[int, RawClient] = {}
    spare: list[RawClient] = []
    for _ in range(40):
        raw = _raw(port, data)
        raw.login(user)
        worker = _worker_of(serve, raw)
        if worker in chosen:
            spare.append(raw)
        else:
            chosen[worker] = raw
        if len(chosen) == 2:
            break
    for raw in spare:
        raw.close()
    assert sorted(chosen) == [0, 1], "the kernel never gave a connection to both workers"
    return [chosen[0], chosen[1]]


def _worker_pids(serve: ServeProcess) -> list[int]:
    children = Path(f"/proc/{serve.proc.pid}/task/{serve.proc.pid}/children").read_text()
    return [int(pid) for pid in children.split()]


def _finish(raw: RawClient, upload: object, start: int) -> ev.Event:
    for index in range(start, upload.header.chunk_count):  # type: ignore[attr-defined]
        raw.send_chunk(upload, index)  # type: ignore[arg-type]
    raw.send(ev.UploadEnd(upload.hmac))  # type: ignore[attr-defined]
    return raw.receive()


def test_a_killed_worker_is_replaced_and_the_others_uploads_finish(tmp_path: Path) -> None:
    with workers(tmp_path, ["alice"]) as (serve, port, data):
        survivor, doomed = _one_per_worker(serve, port, data, "alice")
        original = noise_image(tmp_path / "a.png", "PNG", (400, 400)).read_bytes()
        upload = survivor.prepare_upload(original, chunk_size=16 * 1024)
        assert isinstance(survivor.begin_upload(upload), ev.UploadReady)
        for index in range(upload.header.chunk_count // 2):
            survivor.send_chunk(upload, index)
        dying = doomed.prepare_upload(original, chunk_size=16 * 1024)  # in flight, too
        assert isinstance(doomed.begin_upload(dying), ev.UploadReady)
        doomed.send_chunk(dying, 0)
        pids = _worker_pids(serve)
        victim = pids[1] if _worker_of(serve, doomed) == 1 else pids[0]
        os.kill(victim, signal.SIGKILL)
        serve.wait_for(rf"worker \d \(pid {victim}\) was killed by SIGKILL; starting another")
        receipt = _finish(survivor, upload, upload.header.chunk_count // 2)
        assert isinstance(receipt, ev.Receipt), receipt
        assert doomed.closed_by_server(5.0)
        wait_until(lambda: len(_worker_pids(serve)) == 2 and victim not in _worker_pids(serve))
        serve.wait_for(r"cleaned up after a dead worker")
        # Nothing of the killed upload is left, and the server serves on both workers.
        wait_until(lambda: not [f for f in stored_files(data) if f.endswith(".part")])
        for raw in _one_per_worker(serve, port, data, "alice"):
            raw.send(ev.ListImages())
            listed = raw.receive()
            assert isinstance(listed, ev.ImageList) and len(listed.images) == 1
            raw.close()
        status, _ = serve.terminate(timeout=30)
        assert status == 0


def test_sigterm_drains_every_worker_and_loses_nothing(tmp_path: Path) -> None:
    with workers(tmp_path, ["alice"], env={"IMGSHARE_SHUTDOWN_GRACE": "20"}) as (
        serve,
        port,
        data,
    ):
        clients = _one_per_worker(serve, port, data, "alice")
        originals = [
            noise_image(tmp_path / f"{i}.png", "PNG", (300, 300), seed=i).read_bytes()
            for i in range(2)
        ]
        uploads = [
            c.prepare_upload(o, chunk_size=8192) for c, o in zip(clients, originals, strict=True)
        ]
        for client, upload in zip(clients, uploads, strict=True):
            assert isinstance(client.begin_upload(upload), ev.UploadReady)
            client.send_chunk(upload, 0)
        serve.proc.send_signal(signal.SIGTERM)
        serve.wait_for(r"stopping")
        receipts = [_finish(c, u, 1) for c, u in zip(clients, uploads, strict=True)]
        assert all(isinstance(r, ev.Receipt) for r in receipts), receipts
        assert serve.proc.wait(timeout=30) == 0
    with workers(tmp_path, []) as (serve, port, data):  # after a restart, both are there
        raw = _raw(port, data)
        raw.login("alice")
        raw.send(ev.ListImages())
        listed = raw.receive()
        assert isinstance(listed, ev.ImageList)
        assert {e.image_id for e in listed.images} == {
            r.body.image_id for r in receipts if isinstance(r, ev.Receipt)
        }
        raw.close()
        serve.terminate()


def _server_certificate(port: int, ca: Path) -> bytes:
    with ClientSession.connect("127.0.0.1", port, tls.create_client_context(ca)) as session:
        der = session._sock.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_sighup_swaps_the_certificate_for_new_connections_only(tmp_path: Path) -> None:
    with workers(tmp_path, ["alice"]) as (serve, port, data):
        ca = data / "certs" / "ca.pem"
        old = _server_certificate(port, ca)
        held = [_raw(port, data) for _ in range(4)]
        for raw in held:
            raw.login("alice")
        renewed = subprocess.run(
            [str(Path(os.sys.executable).parent / "imgshare"), "certs", "server", "--dir",
             str(data / "certs"), "--force"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert renewed.returncode == 0, renewed.stderr
        serve.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: sum("certificate and key reloaded" in line for line in serve.lines) >= 2,
            timeout=5,
        )
        new = _server_certificate(port, ca)
        assert new != old
        for _ in range(6):  # every worker uses the new one
            assert _server_certificate(port, ca) == new
        for raw in held:  # and the connections opened before keep working
            raw.send(ev.ListImages())
            assert isinstance(raw.receive(), ev.ImageList)
            raw.close()
        serve.terminate()


def test_a_bad_certificate_on_sighup_keeps_the_old_one(tmp_path: Path) -> None:
    with workers(tmp_path, ["alice"]) as (serve, port, data):
        ca = data / "certs" / "ca.pem"
        old = _server_certificate(port, ca)
        (data / "certs" / "server.pem").write_text("not a certificate\n")
        serve.proc.send_signal(signal.SIGHUP)
        serve.wait_for(r"certificate not reloaded, the old one stays in use")
        assert _server_certificate(port, ca) == old
        serve.terminate()


def test_two_uploads_on_two_workers_cannot_overshoot_the_quota(tmp_path: Path) -> None:
    size = 600_000
    env = {"IMGSHARE_QUOTA_BYTES": str(size + size // 2)}
    with workers(tmp_path, ["alice"], env=env) as (serve, port, data):
        first, second = _one_per_worker(serve, port, data, "alice")
        uploads = [
            c.prepare_upload(noise_bytes(size, seed=i)) for i, c in enumerate((first, second))
        ]
        answers: list[ev.Event] = []
        barrier = threading.Barrier(2)

        def begin(client: RawClient, upload: object) -> None:
            barrier.wait()
            answers.append(client.begin_upload(upload))  # type: ignore[arg-type]

        threads = [
            threading.Thread(target=begin, args=pair)
            for pair in zip((first, second), uploads, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        ready = [a for a in answers if isinstance(a, ev.UploadReady)]
        refused = [a for a in answers if isinstance(a, ev.Error)]
        assert len(ready) == 1 and len(refused) == 1, answers
        assert refused[0].code == ErrorCode.QUOTA_EXCEEDED
        first.close()  # the upload in flight rolls back; nothing holds the server then
        second.close()
        serve.terminate()


def test_the_periodic_sweep_never_takes_an_image_just_committed(tmp_path: Path) -> None:
    """With the supervisor sweeping every second, 24 uploads over two workers all end
    stored and intact: an object committed a moment before its row is too young for
    the sweep."""
    env = {"IMGSHARE_SWEEP_AFTER": "1"}
    with workers(tmp_path, ["alice"], env=env) as (serve, port, data):
        ca = data / "certs" / "ca.pem"
        images = [noise_image(tmp_path / f"{i}.bmp", "BMP", (120, 120), seed=i) for i in range(24)]
        results: list[str] = []

        def send(paths: list[Path]) -> None:
            with ClientSession.connect(
                "127.0.0.1", port, tls.create_client_context(ca),
                verifier=ca_verifier([pki.load_certificate(ca)], "127.0.0.1"),
            ) as session:  # fmt: skip
                session.login("alice", PASSWORD)
                for path in paths:
                    results.append(session.upload(path).id)
                    time.sleep(0.1)

        threads = [threading.Thread(target=send, args=(images[i::4],)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(results) == 24
        time.sleep(2.5)  # at least two more sweeps
        objects = {f.rsplit("/", 1)[-1] for f in stored_files(data) if f.startswith("objects/")}
        assert objects == set(results)
        serve.terminate()
