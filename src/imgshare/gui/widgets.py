"""Small Tk building blocks the GUI's panes share: a scrolled frame and thumbnails.

Everything here runs on the window's thread (imgshare.gui.worker says why).
"""

from __future__ import annotations

import io
import tkinter as tk
from tkinter import ttk

from PIL import Image, ImageTk

#: Thumbnails are shown at most this many pixels on a side (the server makes them at
#: up to 256, docs/protocol.md, section 7.11; smaller fits more on the screen).
TILE_SIDE = 128

#: The server's thumbnails are 256 pixels at most on a side; a larger one is refused
#: before it is decoded, whatever the server sent.
MAX_THUMBNAIL_PIXELS = 512 * 512


class ScrolledFrame(ttk.Frame):
    """A frame whose content (``inner``) scrolls vertically: lists of uploads and
    galleries outgrow any window."""

    def __init__(self, master: tk.Misc, width: int = 300) -> None:
        super().__init__(master)
        self.canvas = tk.Canvas(self, highlightthickness=0, borderwidth=0, width=width)
        bar = ttk.Scrollbar(self, orient="vertical", command=self.canvas.yview)
        self.canvas.configure(yscrollcommand=bar.set)
        self.inner = ttk.Frame(self.canvas)
        window = self.canvas.create_window(0, 0, window=self.inner, anchor="nw")
        self.inner.bind(
            "<Configure>",
            lambda _e: self.canvas.configure(scrollregion=self.canvas.bbox("all")),
        )
        self.canvas.bind("<Configure>", lambda e: self.canvas.itemconfigure(window, width=e.width))
        self.canvas.pack(side="left", fill="both", expand=True)
        bar.pack(side="right", fill="y")


def photo(data: bytes, master: tk.Misc, side: int = TILE_SIDE) -> ImageTk.PhotoImage:
    """A Tk image of a thumbnail's bytes (JPEG or PNG), at most ``side`` pixels on a
    side. Raises ``OSError`` (Pillow's ``UnidentifiedImageError``) for bytes that
    are not an image. Keep a reference: Tk drops an image Python forgot."""
    with Image.open(io.BytesIO(data)) as image:
        if image.width * image.height > MAX_THUMBNAIL_PIXELS:
            raise OSError(f"the server sent a {image.width} x {image.height} thumbnail")
        image.thumbnail((side, side))
        return ImageTk.PhotoImage(image.convert("RGBA"), master=master)
