"""The imgshare server: ``service`` (what a request does) and ``network`` (how bytes move).

The names below load on first use, so that admin commands which need one small
module of this package (``imgshare user add`` and the hash gate) do not import the
whole server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imgshare.server.app import build_server
    from imgshare.server.network import Server
    from imgshare.store import open_catalog

__all__ = ["Server", "build_server", "open_catalog"]

_HOMES = {
    "Server": "imgshare.server.network",
    "build_server": "imgshare.server.app",
    "open_catalog": "imgshare.store",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
