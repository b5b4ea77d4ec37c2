"""Fixtures for the desktop GUI's test: a real X server without a screen (Xvfb) and
the real imgshare server of the integration tests (tests/integration/helpers.py,
reused as is: docs/design.md, C8, no mocks).

Xvfb comes from Debian's ``xvfb`` (``make services`` runs
scripts/services/install-xvfb.sh). When it, or tkinter, is missing the test fails
and says what to install: a GUI test that skipped itself would prove nothing.
"""

from __future__ import annotations

import gc
import logging
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# The integration tests' helpers (the in-process server on 127.0.0.1:0), under the
# same module name they have there, so that a run of both imports them once.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))

from helpers import RunningServer, start_server

INSTALL = "run `make services` (scripts/services/install-xvfb.sh installs xvfb and python3-tk)"
#: The screen the window fills (no window manager), and so its screenshot's size.
SCREEN = "1200x760x24"
#: No TCP listener (local socket only), and no reset when the last client leaves.
QUIET = ("-nolisten", "tcp", "-noreset")


@pytest.fixture(autouse=True)
def tk_objects_freed_on_this_thread() -> Iterator[None]:
    """Collect a test's Tk objects (variables, images, widgets) on the main thread as
    it ends. Left to the garbage collector they may be freed later on any thread,
    say a server thread of another test, where Tk refuses ("main thread is not in
    main loop") and that test fails for it."""
    yield
    gc.collect()


@pytest.fixture(scope="module")
def xdisplay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh Xvfb on a display number it picks itself (``-displayfd``: no race for
    a free one with other tests or users); its name, like ``:5``."""
    try:
        import tkinter  # noqa: F401
    except ImportError:
        pytest.fail(f"this Python has no tkinter: {INSTALL}")
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.fail(f"Xvfb is not installed: {INSTALL}")
    log = tmp_path_factory.mktemp("xvfb") / "xvfb.log"
    read_end, write_end = os.pipe()
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [xvfb, "-displayfd", str(write_end), "-screen", "0", SCREEN, *QUIET],
            pass_fds=(write_end,),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
    os.close(write_end)
    try:
        number = b""
        deadline = time.monotonic() + 15
        while not number.endswith(b"\n"):
            ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(read_end, 16) if ready else b""
            if not chunk:
                pytest.fail(f"Xvfb did not start: {log.read_text(errors='replace')[-2000:]}")
            number += chunk
        yield f":{int(number)}"
    finally:
        os.close(read_end)
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningServer]:
    """The real server on 127.0.0.1, users ``alice`` and ``bob`` (password
    ``helpers.PASSWORD``), open to registration; its ``HMAC of image on server side``
    lines go to caplog. No profile of whoever runs the tests is read (as in
    tests/integration)."""
    monkeypatch.delenv("IMGSHARE_STORAGE_KEY", raising=False)  # use DATA/storage.key
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("IMGSHARE_CONFIG", raising=False)
    caplog.set_level(logging.INFO, logger="imgshare")
    running = start_server(tmp_path / "data", ("alice", "bob"), registration="open")
    yield running
    running.close()
