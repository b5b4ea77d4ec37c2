"""The GUI's parts that need no display: the worker's hand-over to the window's thread,
and the words the window shows (imgshare.gui.worker, imgshare.gui.model)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from imgshare.client.api import Progress
from imgshare.errors import ConfigError, PeerError
from imgshare.gui.model import (
    Controller,
    LoginForm,
    Tile,
    describe,
    progress_text,
    shares_text,
    tile_text,
)
from imgshare.gui.worker import Worker
from imgshare.protocol.constants import ErrorCode
from imgshare.protocol.events import ImageEntry, ShareInfo


def drain(worker: Worker, until: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    ran = 0
    while ran < until:
        ran += worker.poll()
        assert time.monotonic() < deadline, "the worker did not hand its results back"
        time.sleep(0.005)


def test_jobs_run_in_order_off_the_calling_thread_and_come_back_on_it() -> None:
    worker = Worker()
    caller = threading.get_ident()
    seen: list[tuple[str, object, bool]] = []

    def failing() -> int:
        raise ConfigError("no good")

    worker.submit(threading.get_ident, lambda r: seen.append(("ran on", r, True)), seen.append)
    worker.submit(
        failing,
        lambda r: seen.append(("done", r, True)),
        lambda e: seen.append(("error", str(e), threading.get_ident() == caller)),
    )
    worker.submit(
        lambda: 42, lambda r: seen.append(("done", r, threading.get_ident() == caller)), seen.append
    )
    assert worker.busy
    drain(worker, 3)
    assert not worker.busy
    assert seen[0][0] == "ran on" and seen[0][1] != caller  # the job ran elsewhere
    assert seen[1:] == [("error", "no good", True), ("done", 42, True)]
    worker.stop()


def test_posted_callbacks_run_at_the_next_poll_and_one_failure_stops_none() -> None:
    worker = Worker()
    ran: list[int] = []
    posting = threading.Thread(
        target=lambda: [worker.post(lambda i=i: ran.append(i)) for i in range(3)]
    )
    posting.start()
    posting.join()
    worker.post(lambda: 1 / 0)
    worker.post(lambda: ran.append(3))
    assert ran == []  # nothing runs until the window's thread polls
    assert worker.poll() == 5
    assert ran == [0, 1, 2, 3]
    worker.stop()


def report(state: str, sent: int = 0, total: int = 2048, error: str | None = None) -> Progress:
    return Progress(Path("a.png"), "a.png", sent, total, state, None, error)  # type: ignore[arg-type]


def test_progress_words() -> None:
    assert progress_text(report("queued")) == "queued"
    assert progress_text(report("connecting")) == "connecting..."
    assert progress_text(report("sending", 1024)) == "sending 50 % (1.00 KiB of 2.00 KiB)"
    assert progress_text(report("verifying", 2048)) == "the server checks it..."
    assert progress_text(report("skipped", error="not an image")) == "skipped: not an image"
    assert progress_text(report("failed", error="too large")) == "failed: too large"


def test_error_words() -> None:
    refused = PeerError("server: not an image", ErrorCode.NOT_AN_IMAGE)
    assert describe(refused) == (
        "server: not an image (imgshare accepts JPEG, PNG, GIF, WebP, TIFF and BMP images)"
    )
    assert describe(ConfigError("server: this field is empty")) == "server: this field is empty"
    assert describe(FileNotFoundError(2, "No such file or directory", "x.png")) == (
        "x.png: No such file or directory"
    )
    assert describe(RuntimeError("bug")).startswith("unexpected error (RuntimeError: bug)")


def test_names_from_others_are_shown_escaped() -> None:
    entry = ImageEntry(bytes(16), 2048, 0, bytes(32), "mallory\u202e", "gnp.exe\u202e.png")
    assert tile_text(Tile(entry, None), shared=True) == (
        "gnp.exe\\u202e.png\nfrom mallory\\u202e\n2.00 KiB, 00000000"
    )
    assert shares_text([ShareInfo("eve\x1b[2J", 0, 0)]) == "shared with eve\\x1b[2J (no end)"
    assert describe(PeerError("server: bad\u2028name", ErrorCode.NOT_FOUND)) == (
        "server: bad\\u2028name"
    )


def test_share_words() -> None:
    assert shares_text([]) == "not shared"
    shares = [ShareInfo("bob", 0, 0), ShareInfo("carol", 0, 1_780_000_000_000)]
    assert shares_text(shares) == (
        "shared with bob (no end), carol (until 2026-05-28T20:26:40.000Z)"
    )


def test_an_empty_field_is_named_before_anything_connects(tmp_path: Path) -> None:
    controller = Controller(tmp_path / "profile.json")
    with pytest.raises(ConfigError, match=r"^server: this field is empty"):
        controller.log_in(LoginForm("", "", "alice", "secret"))
    with pytest.raises(ConfigError, match=r"^password: this field is empty"):
        controller.log_in(LoginForm("127.0.0.1:1", "", "alice", ""))
    with pytest.raises(ConfigError, match="not logged in"):
        controller.gallery(False)
    assert "secret" not in repr(LoginForm("s", "", "alice", "secret"))
