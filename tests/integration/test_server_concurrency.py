"""Many clients at once, stuck peers, timeouts and connection caps (issue 4).

Every test runs the real server in this process on 127.0.0.1:0 over real TLS, with
users whose argon2 hashes are cheap (``_server.cheap_hasher``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from _server import (
    InProcessServer,
    closed_by_peer,
    connect,
    data_state,
    in_process_server,
    inbox_bytes,
    login,
    next_event,
    noise_image,
    raise_fd_limit,
    raw_connection,
    sha256,
    upload_and_check,
    wait_for,
)

from imgshare.client.session import UploadResult
from imgshare.errors import ImgshareError, PeerError, TransportError
from imgshare.protocol import ClientConnection, PinnedCertificate
from imgshare.protocol import events as ev
from imgshare.protocol.constants import ErrorCode

log = logging.getLogger(__name__)

CLIENTS = 200
USERS = ["ann", "bob", "cyd", "dee"]


def _round_trip(srv: InProcessServer, user: str, path: Path, original: bytes, out: Path) -> None:
    """Connect, log in, upload, download and compare: one normal client's visit."""
    with login(srv.port, srv.context, user) as session:
        result = upload_and_check(session, path, original)
        if out.exists():
            out.unlink()
        fetched = session.download(result.id, out)
    assert fetched.hmac == result.hmac
    assert out.read_bytes() == original


def _timed_round_trip(srv: InProcessServer, path: Path, original: bytes, out: Path) -> float:
    start = time.monotonic()
    _round_trip(srv, "ann", path, original, out)
    return time.monotonic() - start


# -- 200 clients at once ------------------------------------------------------------


def _noise_images(folder: Path, count: int) -> list[tuple[Path, bytes]]:
    """``count`` distinct noise images of 70..235 KB (150..280 px), PNG and BMP."""
    folder.mkdir()
    images = []
    for i in range(count):
        side = 150 + (i * 37) % 131
        path = folder / f"img{i:03d}.{'png' if i % 2 else 'bmp'}"
        images.append((path, noise_image(path, side, side, seed=i)))
    assert len({sha256(data) for _, data in images}) == count
    return images


def _upload_all_at_once(
    srv: InProcessServer, images: list[tuple[Path, bytes]], timing: dict[str, float]
) -> dict[int, UploadResult]:
    """One thread and session per image: all log in, then all upload at the same time."""
    results: dict[int, UploadResult] = {}
    errors: dict[int, BaseException] = {}
    ready = threading.Barrier(len(images) + 1, timeout=30)

    def client(i: int) -> None:
        path, original = images[i]
        try:
            with login(srv.port, srv.context, USERS[i % len(USERS)]) as session:
                ready.wait()  # everyone connected and logged in: now upload at once
                results[i] = upload_and_check(session, path, original)
        except BaseException as exc:  # reported below, with the client's number
            errors[i] = exc
            ready.abort()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(images))]
    timing["start"] = time.monotonic()
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait()
    timing["connected"] = time.monotonic()
    timing["connections"] = srv.server.open_connections
    timing["threads"] = threading.active_count()
    for thread in threads:
        thread.join(timeout=60)
    timing["uploaded"] = time.monotonic()
    assert not errors, f"{len(errors)} clients failed, e.g. {next(iter(errors.items()))}"
    assert sorted(results) == list(range(len(images)))
    return results


def _download_and_compare(
    srv: InProcessServer,
    results: dict[int, UploadResult],
    images: list[tuple[Path, bytes]],
    folder: Path,
) -> None:
    """Fetch every image back, one fresh session per user, and compare the bytes."""
    folder.mkdir()
    for u, user in enumerate(USERS):
        with login(srv.port, srv.context, user) as session:
            for i in range(u, len(images), len(USERS)):
                fetched = session.download(results[i].id, folder / f"{i}")
                assert fetched.hmac == results[i].hmac
                assert fetched.path.read_bytes() == images[i][1]


def _check_rows_and_inbox(
    data: Path, results: dict[int, UploadResult], images: list[tuple[Path, bytes]]
) -> None:
    state = data_state(data)
    state.assert_consistent()
    assert set(state.rows) == {r.id for r in results.values()}
    for i, result in results.items():
        row = state.rows[result.id]
        assert row.hmac.hex() == result.hmac
        assert row.name == images[i][0].name
        owner = state.owners[row.owner_id]
        assert owner == USERS[i % len(USERS)]
        assert row.inbox_name is not None
        assert inbox_bytes(data, owner, row.inbox_name) == images[i][1]


def test_200_clients_upload_at_once_and_all_succeed(tmp_path: Path) -> None:
    raise_fd_limit(4 * CLIENTS + 256)  # client + server socket, image and temp files each
    images = _noise_images(tmp_path / "images", CLIENTS)
    timing: dict[str, float] = {}
    # One host plays 200 clients: trust it, and give each of the 4 users 50 uploads.
    many = {"trusted_networks": ("127.0.0.0/8",), "max_uploads_per_user": 50}
    with in_process_server(tmp_path / "data", USERS, **many) as srv:
        results = _upload_all_at_once(srv, images, timing)
        assert timing["connections"] == CLIENTS  # all were connected at once
        _download_and_compare(srv, results, images, tmp_path / "downloads")
        downloaded = time.monotonic()
    _check_rows_and_inbox(tmp_path / "data", results, images)
    log.info(
        "200 clients: connect+login %.2f s, concurrent uploads %.2f s, downloads %.2f s; "
        "%d server connections and %d threads in the process at the start signal",
        timing["connected"] - timing["start"],
        timing["uploaded"] - timing["connected"],
        downloaded - timing["uploaded"],
        timing["connections"],
        timing["threads"],
    )


# -- stuck peers and timeouts ---------------------------------------------------------


def _partial_tls_hello(port: int) -> socket.socket:
    """A TCP connection that sends the first bytes of a TLS ClientHello and stalls."""
    sock = raw_connection(port)
    sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # record + hello headers
    return sock


def _partial_app_hello(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    """A completed TLS connection that sends half an application ClientHello and stalls."""
    sock = context.wrap_socket(raw_connection(port), server_hostname="127.0.0.1")
    try:
        peer = sock.getpeercert(binary_form=True)
        assert peer
        hello = ClientConnection(PinnedCertificate(peer)).initiate()
        sock.sendall(hello[: len(hello) // 2])
    except BaseException:
        sock.close()
        raise
    return sock


def test_stuck_peers_do_not_delay_a_normal_client(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    original = noise_image(path, 300, 300, seed=7)  # 270 KB
    out = tmp_path / "copy.png"
    stuck: list[socket.socket] = []
    with in_process_server(tmp_path / "data", ["ann"]) as srv:
        try:
            _round_trip(srv, "ann", path, original, out)  # warm-up
            baseline = min(_timed_round_trip(srv, path, original, out) for _ in range(3))

            stuck.append(raw_connection(srv.port))  # a silent TCP peer
            for i in range(50):
                if i % 2:
                    stuck.append(_partial_app_hello(srv.port, srv.context))
                else:
                    stuck.append(_partial_tls_hello(srv.port))
            wait_for(lambda: srv.server.open_connections == 51, 5, "51 stuck connections")

            loaded = _timed_round_trip(srv, path, original, out)
            # The normal client's connection ends; every stuck one is still held.
            wait_for(lambda: srv.server.open_connections == 51, 2, "the client to leave")
        finally:
            for sock in stuck:
                sock.close()
        wait_for(lambda: srv.server.open_connections == 0, 5, "stuck connections to end")
    log.info("round trip: %.3f s alone, %.3f s beside 51 stuck peers", baseline, loaded)
    assert loaded < 2.0
    assert loaded < baseline + 1.0


def test_silent_peer_is_dropped_after_the_tls_handshake_timeout(tmp_path: Path) -> None:
    with in_process_server(tmp_path / "data", [], tls_handshake_timeout=0.5) as srv:
        with raw_connection(srv.port) as silent, _partial_tls_hello(srv.port) as partial:
            waited = closed_by_peer(silent, 5.0)
            assert waited is not None, "the silent peer was never dropped"
            assert 0.4 <= waited < 2.0
            waited = closed_by_peer(partial, 5.0)
            assert waited is not None, "the partial ClientHello was never dropped"
            assert waited < 2.0
        wait_for(lambda: srv.server.open_connections == 0, 2, "the connections to end")


def test_app_handshake_staller_is_dropped_after_the_app_handshake_timeout(
    tmp_path: Path,
) -> None:
    with in_process_server(tmp_path / "data", [], app_handshake_timeout=0.5) as srv:
        start = time.monotonic()
        with _partial_app_hello(srv.port, srv.context) as staller:
            waited = closed_by_peer(staller, 5.0)
        assert waited is not None, "the app handshake staller was never dropped"
        assert 0.3 <= time.monotonic() - start < 2.0
        # Completing TLS but never starting the app handshake is the same case.
        with srv.context.wrap_socket(raw_connection(srv.port), server_hostname="127.0.0.1") as s:
            waited = closed_by_peer(s, 5.0)
        assert waited is not None and 0.3 <= waited < 2.0
        wait_for(lambda: srv.server.open_connections == 0, 2, "the connections to end")


def test_idle_session_is_closed_with_a_timeout_error(tmp_path: Path) -> None:
    with in_process_server(tmp_path / "data", ["ann"], idle_timeout=0.5) as srv:
        with login(srv.port, srv.context, "ann") as session:
            start = time.monotonic()
            event = next_event(session)
            waited = time.monotonic() - start
            assert isinstance(event, ev.Error)
            assert event.code == ErrorCode.TIMEOUT
            assert event.fatal
            assert 0.4 <= waited < 2.0
            with pytest.raises(ImgshareError):  # the connection is closed
                session.list_images()
        wait_for(lambda: srv.server.open_connections == 0, 2, "the connection to end")


def test_a_busy_client_is_not_cut_by_the_idle_timeout(tmp_path: Path) -> None:
    """Requests reset the idle clock: 0.3 s apart for 1.5 s under a 0.5 s timeout."""
    with in_process_server(tmp_path / "data", ["ann"], idle_timeout=0.5) as srv:
        with login(srv.port, srv.context, "ann") as session:
            for _ in range(5):
                time.sleep(0.3)
                assert session.list_images() == []


# -- connection caps ------------------------------------------------------------------


def _refused(port: int, context: ssl.SSLContext) -> bool:
    """True if a new client is turned away (closed before or during its handshake)."""
    try:
        session = connect(port, context, timeout=5.0)
    except (TransportError, PeerError):
        return True
    session.close()
    return False


def test_total_connection_cap(tmp_path: Path) -> None:
    cap = 5
    path = tmp_path / "photo.bmp"
    original = noise_image(path, 100, 100, seed=3)
    with in_process_server(tmp_path / "data", ["ann"], max_connections=cap) as srv:
        sessions = [login(srv.port, srv.context, "ann") for _ in range(cap)]
        try:
            assert srv.server.open_connections == cap
            assert _refused(srv.port, srv.context)
            assert _refused(srv.port, srv.context)
            # The server keeps serving the connections it holds.
            for session in sessions:
                upload_and_check(session, path, original)
            # Closing one frees a place.
            sessions.pop().close()
            wait_for(lambda: srv.server.open_connections == cap - 1, 2, "a freed place")
            sessions.append(login(srv.port, srv.context, "ann"))
            assert _refused(srv.port, srv.context)
        finally:
            for session in sessions:
                session.close()
        wait_for(lambda: srv.server.open_connections == 0, 2, "all connections to end")
        # Every place is free again.
        sessions = [login(srv.port, srv.context, "ann") for _ in range(cap)]
        for session in sessions:
            session.close()
    assert len(data_state(tmp_path / "data").rows) == cap


def test_per_address_cap_applies_outside_trusted_networks(tmp_path: Path) -> None:
    per_address = 3
    settings = {"trusted_networks": (), "max_connections_per_address": per_address}
    with in_process_server(tmp_path / "data", ["ann"], **settings) as srv:
        sessions = [login(srv.port, srv.context, "ann") for _ in range(per_address)]
        try:
            assert _refused(srv.port, srv.context)
            # The ones admitted proceed normally while the extra one is refused.
            for session in sessions:
                assert session.list_images() == []
            sessions.pop(0).close()
            wait_for(lambda: srv.server.open_connections == per_address - 1, 2, "a free place")
            sessions.append(login(srv.port, srv.context, "ann"))
            assert _refused(srv.port, srv.context)
        finally:
            for session in sessions:
                session.close()
        wait_for(lambda: srv.server.open_connections == 0, 2, "all connections to end")
        sessions = [login(srv.port, srv.context, "ann") for _ in range(per_address)]
        for session in sessions:
            session.close()


def test_loopback_is_not_trusted_by_default(tmp_path: Path) -> None:
    """Finding 6: behind a same-host proxy every client is 127.0.0.1, so loopback must
    not be exempt from the per-address cap unless the operator says so."""
    with in_process_server(tmp_path / "data", ["ann"], max_connections_per_address=2) as srv:
        sessions = [login(srv.port, srv.context, "ann") for _ in range(2)]
        try:
            assert _refused(srv.port, srv.context)
        finally:
            for session in sessions:
                session.close()
    trusted = {"max_connections_per_address": 2, "trusted_networks": ("127.0.0.0/8",)}
    with in_process_server(tmp_path / "data2", ["ann"], **trusted) as srv:
        sessions = [login(srv.port, srv.context, "ann") for _ in range(4)]
        for session in sessions:
            session.close()


def test_refusals_do_not_leak_cap_counts(tmp_path: Path) -> None:
    """Many refusals in a row leave the counts intact: the cap is still exactly N."""
    cap = 2
    with in_process_server(tmp_path / "data", ["ann"], max_connections=cap) as srv:
        held = [login(srv.port, srv.context, "ann") for _ in range(cap)]
        try:
            for _ in range(20):
                with raw_connection(srv.port) as extra:
                    assert closed_by_peer(extra, 5.0) is not None
            assert srv.server.open_connections == cap
        finally:
            for session in held:
                session.close()
        wait_for(lambda: srv.server.open_connections == 0, 2, "all connections to end")
        held = [login(srv.port, srv.context, "ann") for _ in range(cap)]
        for session in held:
            session.close()
