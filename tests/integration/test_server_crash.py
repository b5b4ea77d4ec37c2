"""SIGKILL while uploads are in flight: acknowledged means durable (issue 4).

A real ``imgshare serve`` process takes uploads of a few MB from several clients at
once and is killed with SIGKILL at three different moments; one extra client always
holds an upload stalled halfway, so there are half-written files at every kill. After
each restart (whose start-up sweep runs) every acknowledged image must be intact,
nothing half-written may remain, and every row must have its object.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

from _server import (
    ManualUpload,
    ServerProcess,
    add_users,
    client_context,
    data_state,
    inbox_bytes,
    login,
    noise_image,
    sha256,
    wait_for,
)

from imgshare.client.session import ClientSession, UploadResult
from imgshare.errors import ImgshareError

log = logging.getLogger(__name__)

RUNNERS = ["ann", "bob", "cyd"]
STALLER = "dee"
IMAGES_PER_RUNNER = 4
# Kill after this many receipts in each round: early, middle, later.
KILL_AFTER = (1, 2, 4)


@dataclass
class Round:
    """What the clients of one server run saw."""

    number: int
    started: list[str] = field(default_factory=list)  # upload names, in start order
    sent: dict[str, bytes] = field(default_factory=dict, repr=False)  # name -> original
    receipts: dict[str, UploadResult] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    logged_in: threading.Barrier = field(default_factory=lambda: threading.Barrier(len(RUNNERS)))

    @property
    def unacknowledged(self) -> set[str]:
        return set(self.started) - set(self.receipts)


def _runner(rnd: Round, port: int, data: Path, user: str, images: list[tuple[Path, bytes]]) -> None:
    """Log in, wait for the others, then upload one image after another until the kill."""
    try:
        session = login(port, client_context(data), user)
    except BaseException:
        rnd.logged_in.abort()
        raise
    with session:
        rnd.logged_in.wait(timeout=20)
        for k in range(IMAGES_PER_RUNNER):
            path, original = images[(RUNNERS.index(user) + k) % len(images)]
            name = f"r{rnd.number}-{user}-{k}{path.suffix}"
            with rnd.lock:
                rnd.started.append(name)
                rnd.sent[name] = original
            try:
                result = session.upload(path, name=name, sha256=True)
            except ImgshareError as exc:  # the server was killed
                rnd.errors[name] = exc
                return
            assert result.sha256 == sha256(original)
            with rnd.lock:
                rnd.receipts[name] = result


def _part_files(data: Path) -> list[Path]:
    return sorted([*(data / "tmp").glob("*.part"), *(data / "inbox" / ".tmp").glob("*.part")])


def _run_and_kill(
    rnd: Round, data: Path, log_file: Path, images: list[tuple[Path, bytes]], kill_after: int
) -> list[Path]:
    """Start the server, upload until ``kill_after`` receipts, SIGKILL; return leftovers."""
    staller: ClientSession | None = None
    threads: list[threading.Thread] = []
    with ServerProcess(data, log_file) as proc:
        try:
            port = proc.wait_listening()
            staller = login(port, client_context(data), STALLER)
            stalled_path, stalled_data = images[-1]
            stalled_name = f"r{rnd.number}-stalled{stalled_path.suffix}"
            upload = ManualUpload(staller, stalled_data, stalled_name, chunk_size=1 << 18)
            upload.send_chunks(upload.chunk_count // 2)
            rnd.started.append(stalled_name)
            rnd.sent[stalled_name] = stalled_data
            # Its sealed and inbox temp files exist once the server has taken a chunk.
            wait_for(lambda: len(_part_files(data)) >= 2, 10, "the stalled upload's temp files")

            threads = [
                threading.Thread(target=_runner, args=(rnd, port, data, user, images))
                for user in RUNNERS
            ]
            for thread in threads:
                thread.start()
            wait_for(lambda: len(rnd.receipts) >= kill_after, 20, f"{kill_after} receipt(s)")
            proc.kill()  # SIGKILL: no handler runs, no file is closed or removed
        finally:
            proc.kill()
            for thread in threads:
                thread.join(timeout=20)
            if staller is not None:
                staller.close()
    assert proc.proc.returncode == -signal.SIGKILL
    assert not any(thread.is_alive() for thread in threads)
    return _part_files(data)


def _check_everything(
    data: Path,
    log_file: Path,
    rounds: list[Round],
    originals: dict[str, bytes],
) -> None:
    """Restart and check every row, every receipt, and that nothing is left over."""
    acknowledged = {name: r for rnd in rounds for name, r in rnd.receipts.items()}
    with ServerProcess(data, log_file) as proc:
        port = proc.wait_listening()
        state = data_state(data)
        state.assert_consistent()
        by_name = {row.name: row for row in state.rows.values()}
        # Every acknowledged image has its row; unacknowledged ones may or may not
        # (a receipt can be lost in flight after the commit), but none is stalled.
        assert set(acknowledged) <= set(by_name)
        assert not any("stalled" in name for name in by_name)
        for name, result in acknowledged.items():
            assert by_name[name].id == result.id
            assert by_name[name].hmac.hex() == result.hmac
        # Every row, acknowledged or not, is intact: download it and read its inbox copy.
        for user in [*RUNNERS, STALLER]:
            owned = [row for row in state.rows.values() if state.owners[row.owner_id] == user]
            if not owned:
                continue
            with login(port, client_context(data), user) as session:
                for row in owned:
                    original = originals[row.name]
                    out = data.parent / f"check-{row.id}"
                    fetched = session.download(row.id, out)
                    assert fetched.hmac == row.hmac.hex()
                    assert fetched.sha256 == sha256(original)
                    assert out.read_bytes() == original
                    assert row.inbox_name is not None
                    assert inbox_bytes(data, user, row.inbox_name) == original
        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_sigkill_during_uploads_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log_file = tmp_path / "server.log"
    add_users(data, [*RUNNERS, STALLER])
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    images: list[tuple[Path, bytes]] = []
    for i, (side, suffix) in enumerate([(900, ".bmp"), (800, ".png"), (1000, ".bmp")]):
        path = pictures / f"p{i}{suffix}"  # 1.9 to 3 MB of noise
        images.append((path, noise_image(path, side, side, seed=100 + i)))

    rounds: list[Round] = []
    for number, kill_after in enumerate(KILL_AFTER):
        rnd = Round(number)
        rounds.append(rnd)
        leftovers = _run_and_kill(rnd, data, log_file, images, kill_after)
        # Meaningful kills: some uploads were acknowledged, some were not (at least the
        # stalled one), and half-written files were on disk at the kill.
        assert len(rnd.receipts) >= kill_after
        assert rnd.unacknowledged, "no upload was in flight at the kill"
        assert len(leftovers) >= 2, "no half-written file at the kill"
        for name, exc in rnd.errors.items():
            assert name in rnd.unacknowledged, f"{name} failed before the kill: {exc!r}"
        log.info(
            "round %d: killed after %d receipt(s), %d upload(s) unacknowledged, "
            "%d temp file(s) left",
            number, len(rnd.receipts), len(rnd.unacknowledged), len(leftovers),
        )  # fmt: skip

    originals = {name: sent for rnd in rounds for name, sent in rnd.sent.items()}
    _check_everything(data, log_file, rounds, originals)
    # The restarts' sweeps found and removed the leftovers of the kills.
    assert "start-up sweep removed leftovers of a crash" in log_file.read_text()
