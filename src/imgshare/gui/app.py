"""The desktop GUI's window: log in, send, see the receipts, browse, share, save.

``App`` lays out the widgets and wires them to a ``Controller`` through a ``Worker``:
a button starts a job on the worker's thread and returns at once, so the window never
freezes; the job's result comes back through the worker's queue, which ``App`` polls
every ``POLL_MS`` with Tk's ``after`` (docs/client.md, "Desktop GUI"). Only this
thread touches Tk. Errors show in the message line at the bottom, in the words the
command line uses (``model.describe``).

File and folder choosers and the delete confirmation are ``Dialogs``, so that a test
can answer them without a person.
"""

from __future__ import annotations

import tkinter as tk
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from tkinter import filedialog, messagebox, ttk
from typing import TYPE_CHECKING, TypeVar

from imgshare.gui.gallery import Gallery
from imgshare.gui.model import (
    Controller,
    LoginForm,
    Saved,
    Tile,
    describe,
    shares_text,
    shown,
)
from imgshare.gui.uploads import UploadList
from imgshare.gui.worker import Worker

if TYPE_CHECKING:
    from imgshare.client.api import Progress, ShareInfo

T = TypeVar("T")

POLL_MS = 40
ERROR_COLOUR = "#b00020"
BAR_COLOUR = "#1a73e8"
DEFAULT_EXPIRY = "7d"


def _ask_files() -> Sequence[str]:
    return filedialog.askopenfilenames(title="Images to send")


def _ask_folder() -> str:
    return filedialog.askdirectory(title="A folder of images to send", mustexist=True)


def _ask_save_folder() -> str:
    return filedialog.askdirectory(title="Save the image in", mustexist=True)


def _confirm(question: str) -> bool:
    return bool(messagebox.askyesno("imgshare", question))


@dataclass
class Dialogs:
    """The window's questions to a person (tests give their own answers)."""

    ask_files: Callable[[], Sequence[str]] = field(default=_ask_files)
    ask_folder: Callable[[], str] = field(default=_ask_folder)
    ask_save_folder: Callable[[], str] = field(default=_ask_save_folder)
    confirm: Callable[[str], bool] = field(default=_confirm)


class App:
    """The window. ``root`` is the Tk root it fills; ``server``, ``ca`` and ``user``
    prefill the login (else the saved profile does)."""

    def __init__(
        self,
        root: tk.Tk,
        controller: Controller | None = None,
        dialogs: Dialogs | None = None,
        *,
        server: str = "",
        ca: str = "",
        user: str = "",
    ) -> None:
        self.root = root
        self.controller = controller or Controller()
        self.dialogs = dialogs or Dialogs()
        self.worker = Worker()
        self.current: Tile | None = None
        self.current_shared = False
        root.title("imgshare")
        style = ttk.Style(root)
        if "clam" in style.theme_names():  # Tk's X11 default looks of 1995
            style.theme_use("clam")
        # clam draws a bar barely darker than its trough: a full bar looked empty.
        style.configure("Horizontal.TProgressbar", background=BAR_COLOUR)
        root.minsize(900, 560)

        self.server = tk.StringVar(root, server)
        self.ca = tk.StringVar(root, ca)
        self.user = tk.StringVar(root, user)
        self.password = tk.StringVar(root)
        self.share_user = tk.StringVar(root)
        self.share_expiry = tk.StringVar(root, DEFAULT_EXPIRY)
        self.message = tk.StringVar(root, "")
        self.who = tk.StringVar(root, "not logged in")
        self.selection = tk.StringVar(root, "select an image")
        self.shares = tk.StringVar(root, "")

        self._login_bar(root).pack(fill="x", padx=8, pady=(8, 4))
        panes = ttk.PanedWindow(root, orient="horizontal")
        panes.pack(fill="both", expand=True, padx=8, pady=4)
        panes.add(self._send_pane(panes), weight=1)
        panes.add(self._gallery_pane(panes), weight=1)
        self.message_label = ttk.Label(root, textvariable=self.message, wraplength=1000)
        self.message_label.pack(fill="x", padx=8, pady=(0, 8))
        root.protocol("WM_DELETE_WINDOW", self.close)
        self._prefill()
        self._poll()

    # -- layout --------------------------------------------------------------------

    def _login_bar(self, master: tk.Misc) -> ttk.LabelFrame:
        bar = ttk.LabelFrame(master, text="Server and login", padding=6)
        fields = (
            ("Server", self.server, 22, ""),
            ("CA file", self.ca, 22, ""),
            ("User", self.user, 12, ""),
            ("Password", self.password, 14, "\u2022"),  # shown as dots
        )
        self.entries: dict[str, ttk.Entry] = {}
        for column, (label, variable, width, show) in enumerate(fields):
            ttk.Label(bar, text=label).grid(row=0, column=2 * column, sticky="e", padx=(6, 2))
            entry = ttk.Entry(bar, textvariable=variable, width=width, show=show)
            entry.grid(row=0, column=2 * column + 1, sticky="ew")
            self.entries[label] = entry
        self.entries["Password"].bind("<Return>", lambda _e: self.log_in())
        buttons = ttk.Frame(bar)
        buttons.grid(row=1, column=0, columnspan=8, sticky="w", pady=(6, 0))
        self.login_button = ttk.Button(buttons, text="Log in", command=self.log_in)
        self.register_button = ttk.Button(buttons, text="Register", command=self.register)
        self.saved_button = ttk.Button(
            buttons, text="Use saved login", command=self.log_in_saved, state="disabled"
        )
        self.ca_button = ttk.Button(buttons, text="Choose CA file...", command=self._choose_ca)
        for button in (self.login_button, self.register_button, self.saved_button, self.ca_button):
            button.pack(side="left", padx=(0, 6))
        ttk.Label(buttons, textvariable=self.who, font="TkHeadingFont").pack(side="left", padx=12)
        return bar

    def _send_pane(self, master: tk.Misc) -> ttk.LabelFrame:
        pane = ttk.LabelFrame(master, text="Send", padding=6)
        buttons = ttk.Frame(pane)
        buttons.pack(fill="x")
        self.send_files_button = ttk.Button(buttons, text="Send files...", command=self.send_files)
        self.send_folder_button = ttk.Button(
            buttons, text="Send a folder...", command=self.send_folder
        )
        self.send_files_button.pack(side="left", padx=(0, 6))
        self.send_folder_button.pack(side="left")
        self.uploads = UploadList(pane)
        self.uploads.pack(fill="both", expand=True, pady=(6, 0))
        return pane

    def _gallery_pane(self, master: tk.Misc) -> ttk.LabelFrame:
        pane = ttk.LabelFrame(master, text="Gallery", padding=6)
        top = ttk.Frame(pane)
        top.pack(fill="x")
        ttk.Label(top, textvariable=self.selection, font="TkHeadingFont").pack(side="left")
        self.refresh_button = ttk.Button(top, text="Refresh", command=self.refresh)
        self.refresh_button.pack(side="right")
        self.notebook = ttk.Notebook(pane)
        self.mine = Gallery(self.notebook, shared=False, on_select=self._selected_mine)
        self.shared = Gallery(self.notebook, shared=True, on_select=self._selected_shared)
        self.notebook.add(self.mine, text="My images")
        self.notebook.add(self.shared, text="Shared with me")
        self.notebook.pack(fill="both", expand=True, pady=(4, 0))

        share = ttk.Frame(pane, padding=(0, 6, 0, 0))
        share.pack(fill="x")
        ttk.Label(share, text="Share with").pack(side="left")
        self.share_user_entry = ttk.Entry(share, textvariable=self.share_user, width=12)
        self.share_user_entry.pack(side="left", padx=4)
        ttk.Label(share, text="for").pack(side="left")
        self.share_expiry_entry = ttk.Entry(share, textvariable=self.share_expiry, width=6)
        self.share_expiry_entry.pack(side="left", padx=4)
        self.share_button = ttk.Button(share, text="Share", command=self.share)
        self.unshare_button = ttk.Button(share, text="Unshare", command=self.unshare)
        self.share_button.pack(side="left", padx=(0, 4))
        self.unshare_button.pack(side="left")
        others = ttk.Frame(pane, padding=(0, 4, 0, 0))
        others.pack(fill="x")
        self.delete_button = ttk.Button(others, text="Delete", command=self.delete)
        self.save_button = ttk.Button(others, text="Save to folder...", command=self.save)
        self.delete_button.pack(side="left", padx=(0, 4))
        self.save_button.pack(side="left")
        ttk.Label(pane, textvariable=self.shares, wraplength=560).pack(fill="x", pady=(4, 0))
        self._enable_actions()
        return pane

    # -- plumbing ------------------------------------------------------------------

    def _poll(self) -> None:
        self.worker.poll()
        self.root.after(POLL_MS, self._poll)

    def run(self, job: Callable[[], T], done: Callable[[T], None], doing: str) -> None:
        """Run ``job`` on the worker; ``done(result)`` here once it is back; say what
        is going on meanwhile (unless ``doing`` is empty), and show its error if it
        fails."""
        if doing:
            self.say(doing)
        self.worker.submit(job, done, self._failed)

    def say(self, text: str, *, error: bool = False) -> None:
        self.message.set(text)
        self.message_label.configure(foreground=ERROR_COLOUR if error else "")

    def _failed(self, exc: BaseException) -> None:
        self.say(describe(exc), error=True)

    def close(self) -> None:
        """Close the window; the worker closes the connection after its current job."""
        self.worker.submit(self.controller.close, lambda _r: None, lambda _e: None)
        self.worker.stop()
        self.root.destroy()

    # -- logging in ----------------------------------------------------------------

    def _prefill(self) -> None:
        try:
            saved = self.controller.saved_profile()
        except Exception as exc:  # a damaged profile: say so, a password still works
            self._failed(exc)
            return
        if saved is None:
            return
        if not self.server.get():
            self.server.set(saved.server)
        if not self.user.get():
            self.user.set(saved.user)
        if saved.token is not None:
            self.saved_button.configure(
                state="normal", text=f"Use saved login ({saved.user} on {saved.server})"
            )

    def _form(self) -> LoginForm:
        return LoginForm(self.server.get(), self.ca.get(), self.user.get(), self.password.get())

    def _choose_ca(self) -> None:
        path = filedialog.askopenfilename(
            title="The CA certificate that signed the server's (ca.pem)",
            filetypes=[("PEM certificate", "*.pem *.crt"), ("All files", "*")],
        )
        if path:
            self.ca.set(path)

    def log_in(self) -> None:
        form = self._form()
        self.run(lambda: self.controller.log_in(form), self._logged_in, "logging in...")

    def log_in_saved(self) -> None:
        self.run(self.controller.log_in_saved, self._logged_in, "logging in (saved login)...")

    def register(self) -> None:
        form = self._form()
        self.run(lambda: self.controller.register(form), self._logged_in, "registering...")

    def _logged_in(self, name: str) -> None:
        self.password.set("")
        self.who.set(f"logged in as {shown(name)} on {self.controller.server}")
        self.say(f"logged in as {shown(name)}")
        self.refresh()

    # -- sending -------------------------------------------------------------------

    def send_files(self) -> None:
        self._send(list(self.dialogs.ask_files() or ()))

    def send_folder(self) -> None:
        folder = self.dialogs.ask_folder()
        self._send([folder] if folder else [])

    def _send(self, paths: list[str]) -> None:
        if not paths:
            return

        def progress(update: Progress) -> None:  # send's threads: no Tk here
            self.worker.post(lambda: self.uploads.show(update))

        self.run(
            lambda: self.controller.send(paths, progress), self._sent, f"sending {len(paths)}..."
        )

    def _sent(self, results: list[Progress]) -> None:
        done = sum(report.state == "done" for report in results)
        failed = [report for report in results if report.state == "failed"]
        summary = f"sent {done} of {done + len(failed)} images"
        if failed:
            first = failed[0]
            self.say(f"{summary}; {shown(first.path.name)}: {shown(first.error or '')}", error=True)
        else:
            self.say(summary)
        self.refresh()

    # -- the gallery ---------------------------------------------------------------

    def refresh(self) -> None:
        """Load both galleries again (the message line keeps what it said)."""
        self.run(lambda: self.controller.gallery(False), self.mine.show, "")
        self.run(lambda: self.controller.gallery(True), self.shared.show, "")

    def _selected_mine(self, tile: Tile) -> None:
        self._select(tile, shared=False)
        self.run(lambda: self.controller.shares(tile.image_id), self._shares_shown, "")

    def _selected_shared(self, tile: Tile) -> None:
        self._select(tile, shared=True)
        self.shares.set(f"shared with you by {shown(tile.entry.owner)}")

    def _select(self, tile: Tile, *, shared: bool) -> None:
        self.current, self.current_shared = tile, shared
        self.selection.set(f"{shown(tile.entry.name)}  ({tile.image_id})")
        self.shares.set("")
        self._enable_actions()

    def _enable_actions(self) -> None:
        own = self.current is not None and not self.current_shared
        for button in (self.share_button, self.unshare_button, self.delete_button):
            button.configure(state="normal" if own else "disabled")
        self.save_button.configure(state="normal" if self.current is not None else "disabled")

    def _shares_shown(self, shares: list[ShareInfo]) -> None:
        self.shares.set(shares_text(shares))

    def share(self) -> None:
        tile, user, expiry = self.current, self.share_user.get(), self.share_expiry.get()
        if tile is None:
            return

        def done(shares: list[ShareInfo]) -> None:
            self._shares_shown(shares)
            self.say(f"shared {shown(tile.entry.name)} with {shown(user.strip())}")

        self.run(lambda: self.controller.share(tile.image_id, user, expiry), done, "sharing...")

    def unshare(self) -> None:
        tile, user = self.current, self.share_user.get()
        if tile is None:
            return

        def done(shares: list[ShareInfo]) -> None:
            self._shares_shown(shares)
            self.say(f"{shown(tile.entry.name)} is no longer shared with {shown(user.strip())}")

        self.run(lambda: self.controller.unshare(tile.image_id, user), done, "unsharing...")

    def delete(self) -> None:
        tile = self.current
        if tile is None or not self.dialogs.confirm(
            f"Delete {shown(tile.entry.name)} ({tile.image_id}) for good?"
        ):
            return

        def done(_: None) -> None:
            self.current = None
            self.selection.set("select an image")
            self.shares.set("")
            self._enable_actions()
            self.say(f"deleted {shown(tile.entry.name)}")
            self.refresh()

        self.run(lambda: self.controller.delete(tile.image_id), done, "deleting...")

    def save(self) -> None:
        tile = self.current
        folder = self.dialogs.ask_save_folder() if tile is not None else ""
        if tile is None or not folder:
            return

        def done(saved: Saved) -> None:
            if saved.failed:
                self.say(f"not saved: {saved.failed[0][1]}", error=True)
            else:
                written = saved.written[0]
                self.say(f"saved {shown(str(written.path))} (HMAC verified: {written.hmac})")

        self.run(lambda: self.controller.save([tile.image_id], Path(folder)), done, "saving...")
