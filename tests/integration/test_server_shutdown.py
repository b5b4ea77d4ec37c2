"""Graceful shutdown: SIGTERM/SIGINT and ``Server.stop(grace)`` (issue 4).

On a stop request the server stops accepting, cuts idle connections at once, lets
uploads in flight finish within the grace period, then cuts the rest, whose uploads
roll back: nothing half-written remains, without waiting for a restart's sweep.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from _server import (
    HOST,
    InProcessServer,
    ManualUpload,
    ServerProcess,
    add_users,
    client_context,
    data_state,
    in_process_server,
    inbox_bytes,
    login,
    next_event,
    noise_image,
    wait_for,
)

from imgshare.client.session import ClientSession
from imgshare.errors import ProtocolError, TransportError
from imgshare.protocol import events as ev
from imgshare.protocol.constants import ErrorCode

SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]
CHUNK = 1 << 16  # small chunks: a 1.2 MB image is 19 of them, so "halfway" is clear


def _part_files(data: Path) -> list[Path]:
    return sorted([*(data / "tmp").glob("*.part"), *(data / "inbox" / ".tmp").glob("*.part")])


def _goodbye(session: ClientSession, timeout: float) -> str:
    """How the server ends ``session``: "SHUTTING_DOWN", "EOF" or "reset".

    Fails if nothing happens within ``timeout`` or if the server sends anything else.
    """
    session._sock.settimeout(timeout)
    try:
        event = next_event(session)
    except TransportError as exc:
        if isinstance(exc.__cause__, TimeoutError):
            raise AssertionError(f"the connection stayed open for {timeout} s") from exc
        return "reset"
    except ProtocolError:  # "connection closed in state ...": an EOF mid-request
        return "EOF"
    if isinstance(event, ev.ConnectionClosed):
        return "EOF"
    assert isinstance(event, ev.Error), f"unexpected {event!r}"
    assert event.code == ErrorCode.SHUTTING_DOWN, event
    return "SHUTTING_DOWN"


def _refusing(port: int) -> bool:
    """True once nobody listens on ``port`` any more."""
    try:
        probe = socket.create_connection((HOST, port), timeout=1.0)
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:  # it was queued when the listener closed: ask again
        return False
    probe.close()
    return False


def _image(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "photo.bmp"
    return path, noise_image(path, 640, 640, seed=5)  # 1.2 MB


def _assert_stored(data: Path, receipt: ev.Receipt, owner: str, original: bytes) -> None:
    state = data_state(data)
    state.assert_consistent()
    assert set(state.rows) == {receipt.body.image_id.hex()}
    row = state.rows[receipt.body.image_id.hex()]
    assert row.hmac == receipt.body.hmac
    assert row.inbox_name is not None
    assert inbox_bytes(data, owner, row.inbox_name) == original


def _assert_rolled_back(data: Path) -> None:
    state = data_state(data)
    state.assert_consistent()
    assert state.rows == {}
    assert state.objects == set()
    assert state.inbox_files == set()


# -- the server process ---------------------------------------------------------------


@pytest.mark.parametrize("signum", SIGNALS)
def test_signal_lets_an_upload_in_flight_finish(tmp_path: Path, signum: int) -> None:
    data = tmp_path / "data"
    add_users(data, ["ann", "bob"])
    path, original = _image(tmp_path)
    env = {"IMGSHARE_SHUTDOWN_GRACE": "5"}
    with ServerProcess(data, tmp_path / "server.log", env) as proc:
        port = proc.wait_listening()
        context = client_context(data)
        with login(port, context, "bob") as idle, login(port, context, "ann") as uploader:
            upload = ManualUpload(uploader, original, path.name, CHUNK)
            upload.send_chunks(upload.chunk_count // 2)
            wait_for(lambda: len(_part_files(data)) == 2, 10, "the upload's temp files")

            start = time.monotonic()
            proc.signal(signum)
            assert _goodbye(idle, 3.0) in ("SHUTTING_DOWN", "EOF", "reset")
            idle_cut = time.monotonic() - start
            wait_for(lambda: _refusing(port), 3, "the listener to close")
            assert proc.proc.poll() is None  # still running: the upload has its grace

            receipt = upload.finish()
            assert _goodbye(uploader, 3.0) == "SHUTTING_DOWN"
        assert proc.wait(timeout=10) == 0
        stopped = time.monotonic() - start
        log_text = proc.log_text()
    assert idle_cut < 2.0, f"the idle connection was cut only after {idle_cut:.2f} s"
    assert stopped < 4.0, f"exit took {stopped:.2f} s: the stop waited for the grace"
    assert "rolled_back=0" in log_text
    _assert_stored(data, receipt, "ann", original)


@pytest.mark.parametrize("signum", SIGNALS)
def test_short_grace_rolls_back_a_stalled_upload(tmp_path: Path, signum: int) -> None:
    data = tmp_path / "data"
    add_users(data, ["ann"])
    path, original = _image(tmp_path)
    env = {"IMGSHARE_SHUTDOWN_GRACE": "0.5"}
    with ServerProcess(data, tmp_path / "server.log", env) as proc:
        port = proc.wait_listening()
        with login(port, client_context(data), "ann") as uploader:
            upload = ManualUpload(uploader, original, path.name, CHUNK)
            upload.send_chunks(upload.chunk_count // 2)
            wait_for(lambda: len(_part_files(data)) == 2, 10, "the upload's temp files")

            start = time.monotonic()
            proc.signal(signum)
            assert _goodbye(uploader, 5.0) in ("EOF", "reset")
            cut = time.monotonic() - start
            assert proc.wait(timeout=5) == 0
            stopped = time.monotonic() - start
        log_text = proc.log_text()
    assert 0.4 <= cut < 2.0, f"the stalled upload was cut after {cut:.2f} s (grace 0.5 s)"
    assert stopped < 3.0, f"exit took {stopped:.2f} s"
    assert "rolled_back=1" in log_text
    _assert_rolled_back(data)  # by the stopping server itself, not a restart's sweep


def test_signal_with_no_connections_exits_at_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServerProcess(data, tmp_path / "server.log", {"IMGSHARE_SHUTDOWN_GRACE": "30"}) as proc:
        proc.wait_listening()
        start = time.monotonic()
        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    assert time.monotonic() - start < 3.0  # the accept loop's poll, not the 30 s grace


# -- in process: Server.stop(grace) from another thread -------------------------------


def _stop_in_background(
    srv: InProcessServer, grace: float
) -> tuple[threading.Thread, dict[str, float]]:
    timing: dict[str, float] = {"start": time.monotonic()}

    def stop() -> None:
        srv.stop(grace)
        timing["end"] = time.monotonic()

    thread = threading.Thread(target=stop, name="stopper")
    thread.start()
    return thread, timing


def test_stop_cuts_idle_connections_and_waits_for_a_transfer(tmp_path: Path) -> None:
    data = tmp_path / "data"
    path, original = _image(tmp_path)
    with in_process_server(data, ["ann", "bob"]) as srv:
        port = srv.port
        idle = [login(port, srv.context, "bob") for _ in range(3)]
        try:
            with login(port, srv.context, "ann") as uploader:
                upload = ManualUpload(uploader, original, path.name, CHUNK)
                upload.send_chunks(upload.chunk_count // 2)
                wait_for(lambda: len(_part_files(data)) == 2, 10, "the upload's temp files")

                stopper, timing = _stop_in_background(srv, grace=10.0)
                for session in idle:
                    assert _goodbye(session, 2.0) in ("SHUTTING_DOWN", "EOF", "reset")
                wait_for(lambda: _refusing(port), 2, "the listener to close")
                assert stopper.is_alive()  # waiting for the upload

                receipt = upload.finish()
                assert _goodbye(uploader, 2.0) == "SHUTTING_DOWN"
                stopper.join(timeout=5)
                assert not stopper.is_alive()
        finally:
            for session in idle:
                session.close()
        assert timing["end"] - timing["start"] < 3.0
        assert srv.server.open_connections == 0
    _assert_stored(data, receipt, "ann", original)


def test_stop_rolls_back_a_stalled_upload_after_the_grace(tmp_path: Path) -> None:
    data = tmp_path / "data"
    path, original = _image(tmp_path)
    with in_process_server(data, ["ann"]) as srv:
        with login(srv.port, srv.context, "ann") as uploader:
            upload = ManualUpload(uploader, original, path.name, CHUNK)
            upload.send_chunks(upload.chunk_count // 2)
            wait_for(lambda: len(_part_files(data)) == 2, 10, "the upload's temp files")

            stopper, timing = _stop_in_background(srv, grace=0.5)
            assert _goodbye(uploader, 5.0) in ("EOF", "reset")
            stopper.join(timeout=5)
            assert not stopper.is_alive()
        assert 0.45 <= timing["end"] - timing["start"] < 2.0
        assert srv.server.open_connections == 0
        _assert_rolled_back(data)  # while the process still runs: no sweep involved


def test_stop_cuts_connections_still_in_their_handshakes(tmp_path: Path) -> None:
    """A silent TCP peer and a peer that never starts the app handshake are not
    transfers: the stop does not wait the grace for them."""
    with in_process_server(tmp_path / "data", []) as srv:
        with (
            socket.create_connection((HOST, srv.port)) as silent,
            srv.context.wrap_socket(
                socket.create_connection((HOST, srv.port)), server_hostname=HOST
            ) as quiet,
        ):
            wait_for(lambda: srv.server.open_connections == 2, 2, "two connections")
            stopper, timing = _stop_in_background(srv, grace=10.0)
            stopper.join(timeout=5)
            assert not stopper.is_alive()
            assert timing["end"] - timing["start"] < 1.0
            for sock in (silent, quiet):
                sock.settimeout(2.0)
                try:
                    assert sock.recv(1) == b""
                except ConnectionError:
                    pass
