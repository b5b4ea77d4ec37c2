"""The desktop GUI, for real (issue 12, item 4): the Tk window on Xvfb, driven through
its widgets, against the real server on 127.0.0.1 (conftest.py).

The window logs in, sends Pillow-made images (a file, then a folder), shows each
one's receipt and HMAC (equal to the server's log line), shows their thumbnails in the
gallery, shares one with bob (who then fetches it with ``imgshare.Client``), saves
one to a folder, unshares and deletes; a wrong password shows a message a person can
act on. The window never freezes: every network call runs on the worker's thread,
never on Tk's, and no pass of the event loop takes long. A screenshot of the whole
screen must not be blank. ``IMGSHARE_GUI_SCREENSHOT=PATH`` also writes it to PATH
(``docs/gui.png`` comes from this test).

The saved login of `imgshare login`, registering, and a CA that did not sign the
server's certificate (the TLS diagnosis, in the window) have a test of their own.

The command itself: without tkinter, or without a display, `imgshare gui` says what
to do, not a traceback.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import IMGSHARE, PASSWORD, RunningServer, environment, server_hmacs
from helpers import imgshare as imgshare_command
from PIL import Image, ImageDraw, ImageGrab

import imgshare
from imgshare import pki

# Without tkinter the xdisplay fixture fails the tests with what to install; the
# import is here so that this module still loads to say so.
tk: Any
try:
    import tkinter as tk

    from imgshare.gui.app import App, Dialogs
    from imgshare.gui.model import PARALLEL_WITH_TOKEN, Controller
except ImportError:  # pragma: no cover - see conftest.py
    tk = None

#: The longest one ``update()`` of the window may take: the network is the worker's.
MAX_FROZEN = 1.0
#: What waits on the network: none of it may run on the window's thread.
NETWORK = ("log_in", "log_in_saved", "register", "send", "gallery", "shares", "share")
NETWORK += ("unshare", "delete", "save")


def watched(controller: Controller) -> list[tuple[str, str]]:
    """Record which thread runs each of ``controller``'s network methods (the real
    ones, called through)."""
    calls: list[tuple[str, str]] = []
    for name in NETWORK:
        method = getattr(controller, name)

        def recorded(*args: Any, _name: str = name, _method: Any = method) -> Any:
            calls.append((_name, threading.current_thread().name))
            return _method(*args)

        setattr(controller, name, recorded)
    return calls


def picture(path: Path, seed: int, fmt: str = "PNG") -> Path:
    """A colourful picture: two gradients, a colour of its own, and shapes."""
    size = (480, 320)
    gradient = Image.linear_gradient("L").resize(size)
    base = Image.merge(
        "RGB",
        (
            gradient,
            gradient.transpose(Image.Transpose.ROTATE_90).resize(size),
            Image.new("L", size, (70 * seed) % 256),
        ),
    )
    draw = ImageDraw.Draw(base)
    rng = random.Random(seed)
    for _ in range(12):
        x, y, r = rng.randrange(480), rng.randrange(320), rng.randrange(20, 90)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline=(255, 255, 255))
    base.save(path, fmt)
    return path


class Driver:
    """Pumps the window's events (``update``) until something shows, timing each."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.longest = 0.0

    def update(self) -> None:
        started = time.monotonic()
        self.app.root.update()
        self.longest = max(self.longest, time.monotonic() - started)

    def until(self, condition: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.update()
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the window did not show {what} within {timeout} s; its message line "
                    f"says: {self.app.message.get()!r}"
                )
            time.sleep(0.01)

    def type(self, entry: Any, text: str) -> None:
        entry.delete(0, "end")
        entry.insert(0, text)


def distinct_colours(image: Image.Image) -> int:
    colours = image.convert("RGB").getcolors(maxcolors=1 << 24)
    assert colours is not None
    return len(colours)


def window(xdisplay: str) -> tk.Tk:
    """A Tk root on the Xvfb display (not $DISPLAY), filling the screen: there is no
    window manager to place it."""
    root = tk.Tk(screenName=xdisplay, className="imgshare")
    root.geometry(f"{root.winfo_screenwidth()}x{root.winfo_screenheight()}+0+0")
    return root


def test_the_window_sends_shows_shares_and_saves(
    server: RunningServer,
    xdisplay: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wanted = os.environ.get("IMGSHARE_GUI_SCREENSHOT")
    screenshot = Path(wanted).resolve() if wanted else None  # before the chdir
    monkeypatch.chdir(tmp_path)  # paths as a person types them: data/certs/ca.pem
    sunset = picture(tmp_path / "sunset.png", seed=1)
    album = tmp_path / "album"
    album.mkdir()
    picture(album / "harbour.jpg", seed=2, fmt="JPEG")
    picture(album / "meadow.png", seed=3)
    (album / "notes.txt").write_text("not an image")
    saved_to = tmp_path / "saved"
    saved_to.mkdir()
    questions: list[str] = []
    dialogs = Dialogs(
        ask_files=lambda: [str(sunset)],
        ask_folder=lambda: str(album),
        ask_save_folder=lambda: "saved",
        confirm=lambda question: questions.append(question) is None,
    )

    controller = Controller(tmp_path / "no-profile.json")
    calls = watched(controller)
    root = window(xdisplay)
    app = App(root, controller, dialogs)
    try:
        ui = Driver(app)
        ui.update()

        # A wrong password: said in the window, in words a person can act on.
        ui.type(app.entries["Server"], f"127.0.0.1:{server.port}")
        assert server.ca == tmp_path / "data/certs/ca.pem"
        ui.type(app.entries["CA file"], "data/certs/ca.pem")
        ui.type(app.entries["User"], "alice")
        ui.type(app.entries["Password"], "not the password")
        app.login_button.invoke()
        ui.until(lambda: "check the user name and the password" in app.message.get(), "refusal")
        assert str(app.message_label.cget("foreground")) == "#b00020"
        assert app.who.get() == "not logged in"

        ui.type(app.entries["Password"], PASSWORD)
        app.login_button.invoke()
        ui.until(lambda: app.who.get().startswith("logged in as alice"), "the login")
        assert app.password.get() == ""  # not kept in the window
        ui.until(lambda: app.mine.empty.winfo_ismapped(), "the empty gallery")

        # Send a file: its bar fills, then its receipt and both HMACs.
        app.send_files_button.invoke()
        row = ui.until(lambda: app.uploads.rows.get(sunset), "a row for sunset.png")
        ui.until(lambda: row.last.state == "done", "sunset.png stored", timeout=20)
        result = row.last.result
        assert result is not None
        assert float(row.bar["value"]) == float(row.bar["maximum"]) == sunset.stat().st_size
        assert f"stored as {result.id}" in row.state.cget("text")
        assert "signed receipt checked, server HMAC matches" in row.state.cget("text")
        assert row.client_hmac.get() == row.server_hmac.get() == result.hmac
        assert server_hmacs(caplog.records) == [result.hmac]  # the server's own log line

        # Its thumbnail in the gallery.
        view = ui.until(lambda: app.mine.views.get(result.id), "sunset.png in the gallery")
        assert view.photo is not None  # 480 x 320 -> 256 x 171 on the server -> 128 x 85
        assert view.photo.width() == 128 and 84 <= view.photo.height() <= 86
        assert str(view.photo) in str(view.picture.cget("image"))

        # A folder: images sent, the text file skipped.
        app.send_folder_button.invoke()
        ui.until(lambda: app.message.get().startswith("sent 2 of 2"), "the folder sent", 20)
        ui.until(lambda: len(app.mine.views) == 3, "three tiles")
        assert all(v.photo is not None for v in app.mine.views.values())
        assert len(server_hmacs(caplog.records)) == 3

        # Share with bob, by clicking the tile and the button.
        view = app.mine.views[result.id]
        view.picture.event_generate("<Button-1>", x=10, y=10)
        ui.until(lambda: app.shares.get() == "not shared", "the tile's shares")
        assert result.id in app.selection.get()
        ui.type(app.share_user_entry, "bob")
        ui.type(app.share_expiry_entry, "1d")
        app.share_button.invoke()
        ui.until(lambda: app.shares.get().startswith("shared with bob (until "), "the share")
        assert app.message.get() == "shared sunset.png with bob"
        with imgshare.Client(f"127.0.0.1:{server.port}", ca=server.ca) as bob:
            bob.login("bob", PASSWORD)
            assert [e.image_id.hex() for e in bob.list(shared_with_me=True)] == [result.id]
            (tmp_path / "bob").mkdir()
            fetched = bob.get(result.id, folder=tmp_path / "bob")
            assert fetched.hmac == result.hmac and fetched.path.read_bytes() == sunset.read_bytes()

        # Save to a folder, checked end to end.
        app.save_button.invoke()
        ui.until(lambda: app.message.get().startswith("saved "), "the saved image")
        assert (saved_to / "sunset.png").read_bytes() == sunset.read_bytes()

        # The screenshot: the whole screen, which the window fills.
        ui.update()
        shot = ImageGrab.grab(xdisplay=xdisplay)
        shot.save(tmp_path / "gui.png")
        if screenshot is not None:
            shot.save(screenshot, optimize=True)
        assert shot.size == (root.winfo_screenwidth(), root.winfo_screenheight())
        assert distinct_colours(shot) > 2000  # thumbnails, text, widgets: not one flat colour
        login_bar = shot.crop((0, 0, 600, 100))  # text on a background, not blank
        assert distinct_colours(login_bar) > 10

        # Unshare: bob's copy of the access is gone.
        app.unshare_button.invoke()
        ui.until(lambda: app.shares.get() == "not shared", "the share gone")
        with imgshare.Client(f"127.0.0.1:{server.port}", ca=server.ca) as bob:
            bob.login("bob", PASSWORD)
            assert bob.list(shared_with_me=True) == []

        # Delete, after the question.
        app.delete_button.invoke()
        ui.until(lambda: result.id not in app.mine.views, "the tile gone")
        assert questions == [f"Delete sunset.png ({result.id}) for good?"]
        assert len(app.mine.views) == 2

        # Never froze: every network call ran on the worker's thread, none on Tk's.
        assert {name for name, _ in calls} == set(NETWORK) - {"log_in_saved", "register"}
        assert {thread for _, thread in calls} == {"imgshare-gui-worker"}
        assert ui.longest < MAX_FROZEN, f"the window froze for {ui.longest:.2f} s"
    finally:
        app.close()


def test_saved_login_register_and_a_ca_that_does_not_sign(
    server: RunningServer, xdisplay: str, tmp_path: Path, pki_paths: pki.CertificatePaths
) -> None:
    # `imgshare login` saves a profile (a token, the CA as text); the window offers it.
    profile = tmp_path / "profile.json"
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    address = f"127.0.0.1:{server.port}"
    done = imgshare_command(
        "login",
        *("--server", address, "--ca", server.ca, "--user", "alice"),
        *("--password-file", password_file),
        cwd=tmp_path,
        env={"IMGSHARE_CONFIG": str(profile)},
    )
    assert done.returncode == 0, done.stderr
    root = window(xdisplay)
    app = App(root, Controller(profile), Dialogs(ask_files=lambda: []))
    try:
        ui = Driver(app)
        ui.update()
        assert (app.server.get(), app.user.get()) == (address, "alice")
        assert str(app.saved_button.cget("state")) == "normal"
        assert app.saved_button.cget("text") == f"Use saved login (alice on {address})"

        # A CA that did not sign the server's certificate: the diagnosis, in the window.
        ui.type(app.entries["CA file"], str(pki_paths.ca_cert))
        ui.type(app.entries["Password"], PASSWORD)
        app.login_button.invoke()
        ui.until(lambda: app.message.get().startswith("cannot trust"), "the TLS diagnosis")
        assert "SHA-256" in app.message.get() and app.who.get() == "not logged in"

        # The saved login needs no password.
        app.saved_button.invoke()
        ui.until(lambda: app.who.get() == f"logged in as alice on {address}", "saved login")
        assert app.controller._parallel == PARALLEL_WITH_TOKEN
        ui.until(lambda: app.mine.empty.winfo_ismapped(), "the empty gallery")

        # Register carol (the server is open to it): she is logged in at once. The
        # CA comes from the profile, which is for this server.
        ui.type(app.entries["CA file"], "")
        ui.type(app.entries["User"], "carol")
        ui.type(app.entries["Password"], "carol's long password")
        app.register_button.invoke()
        ui.until(lambda: app.who.get() == f"logged in as carol on {address}", "carol")
        ui.until(lambda: "nothing shared with you" in app.shared.empty.cget("text"), "shared")
        ui.type(app.entries["Password"], "carol's long password")
        app.register_button.invoke()  # again: she exists
        ui.until(lambda: app.message.get() == "server: the name 'carol' is taken", "the no")
        assert str(app.message_label.cget("foreground")) == "#b00020"
    finally:
        app.close()


def run_gui(*prelude: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "; ".join([*prelude, "from imgshare.cli import main", "raise SystemExit(main(['gui']))"])
    return subprocess.run(
        [sys.executable, "-c", code],
        env=environment(env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_without_tkinter_the_command_says_what_to_install() -> None:
    # As on a Debian without python3-tk: `import tkinter` fails.
    done = run_gui("import sys", "sys.modules['tkinter'] = None", env={})
    assert done.returncode == 1
    assert "sudo apt install python3-tk" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_without_a_display_the_command_says_so() -> None:
    env = {k: v for k, v in environment().items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    done = subprocess.run(
        [IMGSHARE, "gui"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 1
    assert "cannot open a window" in done.stderr and "graphical desktop" in done.stderr
    assert "Traceback" not in done.stderr
