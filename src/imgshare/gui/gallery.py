"""A gallery pane: one tile per image (thumbnail and caption), one selected at a time.

The tiles come from ``Controller.gallery`` through the worker's queue; clicking one
selects it and tells the window (``on_select``), which fills in its actions.
"""

from __future__ import annotations

import logging
import tkinter as tk
from collections.abc import Callable
from dataclasses import dataclass
from tkinter import ttk

from PIL import ImageTk

from imgshare.gui.model import Tile, tile_text
from imgshare.gui.widgets import TILE_SIDE, ScrolledFrame, photo

log = logging.getLogger(__name__)

#: A tile's width on the screen: the thumbnail, its padding and border, the gap.
TILE_WIDTH = TILE_SIDE + 30
SELECTED, UNSELECTED = "#1a73e8", "#d0d0d0"


@dataclass
class TileView:
    """The widgets of one tile, and the Tk image its label shows (kept alive here)."""

    tile: Tile
    frame: tk.Frame
    picture: ttk.Label
    photo: ImageTk.PhotoImage | None


class Gallery(ScrolledFrame):
    """My images, or those shared with me (``shared``)."""

    def __init__(self, master: tk.Misc, *, shared: bool, on_select: Callable[[Tile], None]):
        super().__init__(master, width=3 * TILE_WIDTH)
        self.shared = shared
        self.on_select = on_select
        self.views: dict[str, TileView] = {}
        self.selected: str | None = None
        self.empty = ttk.Label(self.inner, text="", padding=12)
        self.columns = 1
        self.canvas.bind("<Configure>", self._resized, add="+")

    def show(self, tiles: list[Tile]) -> None:
        """Replace the tiles; keep the selection if its image is still there."""
        for view in self.views.values():
            view.frame.destroy()
        self.views.clear()
        self.empty.grid_forget()
        if not tiles:
            none = "nothing shared with you yet" if self.shared else "no images yet: send some"
            self.empty.configure(text=none)
            self.empty.grid(row=0, column=0, sticky="w")
        for tile in tiles:
            self.views[tile.image_id] = self._tile(tile)
        self._place()
        if self.selected not in self.views:
            self.selected = None
        elif self.selected is not None:
            self.select(self.selected)

    def _resized(self, event: tk.Event[tk.Canvas]) -> None:
        columns = max(1, event.width // TILE_WIDTH)
        if columns != self.columns:
            self.columns = columns
            self._place()

    def _place(self) -> None:
        """Lay the tiles out in as many columns as the pane is wide enough for."""
        for index, view in enumerate(self.views.values()):
            row, column = divmod(index, self.columns)
            view.frame.grid(row=row, column=column, padx=4, pady=4, sticky="n")

    def _tile(self, tile: Tile) -> TileView:
        frame = tk.Frame(
            self.inner, highlightthickness=3, highlightbackground=UNSELECTED, padx=4, pady=4
        )
        image = None
        if tile.thumbnail is not None:
            try:
                image = photo(tile.thumbnail, self)
            except OSError as exc:  # a bad thumbnail costs only its picture
                log.warning("thumbnail of %s: %s", tile.image_id, exc)
        picture = ttk.Label(frame, anchor="center")
        if image is not None:
            picture.configure(image=image)
        else:
            picture.configure(text=tile.error or "no preview", wraplength=TILE_SIDE)
        picture.pack()
        caption = ttk.Label(
            frame, text=tile_text(tile, shared=self.shared), justify="center", wraplength=TILE_SIDE
        )
        caption.pack()
        for widget in (frame, picture, caption):
            widget.bind("<Button-1>", self._clicked(tile.image_id))
        return TileView(tile, frame, picture, image)

    def _clicked(self, image_id: str) -> Callable[[tk.Event[tk.Misc]], None]:
        return lambda _event: self.select(image_id)

    def select(self, image_id: str) -> None:
        """Select a tile (as a click does) and tell the window."""
        self.selected = image_id
        for key, view in self.views.items():
            colour = SELECTED if key == image_id else UNSELECTED
            view.frame.configure(highlightbackground=colour, highlightcolor=colour)
        self.on_select(self.views[image_id].tile)
