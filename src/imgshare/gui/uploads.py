"""The send pane's list: a progress bar per image, then its receipt and both HMACs.

``UploadList.show`` takes the reports of ``Client.send`` (docs/client.md, "The
progress contract"), handed to the window's thread by the worker's queue.
"""

from __future__ import annotations

import tkinter as tk
from dataclasses import dataclass
from pathlib import Path
from tkinter import font as tkfont
from tkinter import ttk
from typing import TYPE_CHECKING

from imgshare.gui.model import hmac_texts, progress_text, shown
from imgshare.gui.widgets import ScrolledFrame

if TYPE_CHECKING:
    from imgshare.client.api import Progress

#: Wide enough for a label and an HMAC's 64 hex digits in a small fixed font.
WIDTH = 590


@dataclass
class UploadRow:
    """The widgets of one file: name, bar and state; the HMACs once it is stored."""

    frame: ttk.Frame
    bar: ttk.Progressbar
    state: ttk.Label
    client_hmac: tk.StringVar
    server_hmac: tk.StringVar
    last: Progress | None = None


class UploadList(ScrolledFrame):
    """One row per file sent in this window, newest at the bottom."""

    def __init__(self, master: tk.Misc) -> None:
        super().__init__(master, width=WIDTH)
        self.rows: dict[Path, UploadRow] = {}
        self.hmac_font: tkfont.Font | None = None

    def show(self, update: Progress) -> None:
        """Draw one report (creating the file's row at its first)."""
        row = self.rows.get(update.path)
        if row is None:
            row = self.rows[update.path] = self._add_row(update)
        row.last = update
        total = max(update.total, 1)
        row.bar.configure(maximum=total)
        row.bar["value"] = total if update.state == "done" else min(update.sent, total)
        row.state.configure(
            text=progress_text(update),
            foreground="#b00020" if update.state == "failed" else "",
        )
        if update.state == "done" and update.result is not None:
            here, signed = hmac_texts(update.result)
            row.client_hmac.set(here)
            row.server_hmac.set(signed)
            self._hmac_fields(row)

    def _add_row(self, update: Progress) -> UploadRow:
        frame = ttk.Frame(self.inner, padding=(4, 4))
        frame.pack(fill="x", expand=True)
        frame.columnconfigure(1, weight=1)
        ttk.Label(frame, text=shown(update.name), font="TkHeadingFont").grid(
            row=0, column=0, sticky="w", padx=(0, 8)
        )
        bar = ttk.Progressbar(frame, mode="determinate", length=160)
        bar.grid(row=0, column=1, sticky="ew")
        state = ttk.Label(frame, text="", wraplength=360, justify="left")
        state.grid(row=1, column=0, columnspan=2, sticky="w")
        frame.bind("<Configure>", lambda e: state.configure(wraplength=max(200, e.width - 12)))
        return UploadRow(frame, bar, state, tk.StringVar(frame), tk.StringVar(frame))

    def _hmac_fields(self, row: UploadRow) -> None:
        if len(row.frame.grid_slaves(row=2)) > 0:
            return
        if self.hmac_font is None:
            fixed = tkfont.nametofont("TkFixedFont", root=self)
            self.hmac_font = tkfont.Font(root=self, family=fixed.actual("family"), size=8)
        # The server side's HMAC is the one it signed in the receipt, the value its log
        # line shows (README.md).
        for line, (label, value) in enumerate(
            (("HMAC, client:", row.client_hmac), ("HMAC, server:", row.server_hmac)),
            start=2,
        ):
            ttk.Label(row.frame, text=label).grid(row=line, column=0, sticky="w")
            # Read-only entries: a person can select and copy the HMAC, to compare.
            field = ttk.Entry(row.frame, textvariable=value, state="readonly", font=self.hmac_font)
            field.grid(row=line, column=1, sticky="ew")
