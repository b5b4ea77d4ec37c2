"""`imgshare gui`: the desktop client's command (registered in imgshare.cli).

Tk is in the standard library, but Debian packages it apart (python3-tk), and a
window needs a display: both are checked first, and their absence is an
``ImgshareError`` that says what to install or do, which the command line prints
(docs/design.md, C11: only the CLI prints), instead of a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from imgshare.errors import ConfigError

NO_TK = (
    "the desktop GUI needs Tk for Python, and this Python has no tkinter: on Debian or "
    "Ubuntu run `sudo apt install python3-tk` (a Python built elsewhere, such as with "
    "pyenv, must be rebuilt after `sudo apt install tk-dev`); every command line "
    "command works without it"
)

EPILOG = """\b
The fields start from --server, --ca and --user, else from IMGSHARE_SERVER,
IMGSHARE_CA and IMGSHARE_USER, else from the login that `imgshare login` saved
(IMGSHARE_CONFIG, else ~/.config/imgshare/profile.json), which the window's
"Use saved login" button uses without a password."""


@click.command(epilog=EPILOG)
@click.option("--server", metavar="HOST:PORT", help="The server to fill in.")
@click.option(
    "--ca",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The CA certificate that signed the server's (ca.pem), to fill in.",
)
@click.option("--user", metavar="NAME", help="The user name to fill in.")
def gui(server: str | None, ca: Path | None, user: str | None) -> None:
    """Open the desktop client: log in or register, send images with a progress bar
    each and see their receipts and HMACs, browse yours and those shared with you as
    thumbnails, share, unshare, delete and save them. Needs Tk (python3-tk) and a
    display."""
    try:
        import tkinter as tk

        from PIL import ImageTk  # noqa: F401 - it needs tkinter too: checked here
    except ImportError:
        raise ConfigError(NO_TK) from None
    try:
        root = tk.Tk(className="imgshare")
    except tk.TclError as exc:
        raise ConfigError(
            f"cannot open a window ({exc}): imgshare gui needs a graphical desktop "
            "(DISPLAY; over ssh, `ssh -X`); the command line does all the window does"
        ) from None
    from imgshare.gui.app import App

    App(
        root,
        server=server or os.environ.get("IMGSHARE_SERVER", ""),
        ca=str(ca or os.environ.get("IMGSHARE_CA", "")),
        user=user or os.environ.get("IMGSHARE_USER", ""),
    )
    root.mainloop()
