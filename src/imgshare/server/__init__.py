"""The imgshare server: ``service`` (what a request does) and ``network`` (how bytes move)."""

from imgshare.server.app import build_server, build_service, open_catalog
from imgshare.server.network import Server

__all__ = ["Server", "build_server", "build_service", "open_catalog"]
