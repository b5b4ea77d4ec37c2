"""Fixtures for the integration tests: the real server on 127.0.0.1:0, real clients.

As in httpx's ``tests/conftest.py`` (docs/design.md, C8), the server is the real thing: built by
``imgshare.server.build_server`` from ``ServerSettings``, with certificates made by our
own generator on first start, serving on a thread with ``serve_forever()``, and
stopped with ``stop(grace)`` at teardown. Clients speak real TLS 1.3 to it.

Fixtures (all function-scoped, each server in its own data folder under ``tmp_path``):

``make_server(**settings) -> RunningServer``
    Factory: start a server with ``ServerSettings(data=..., host="127.0.0.1", port=0,
    **settings)``; any setting may be overridden, ``data`` included (to restart on the
    same folder). Every server it made is stopped at teardown, and every client opened
    through ``RunningServer.connect`` / ``login`` is closed.
``server -> RunningServer``
    ``make_server()`` with the default settings and one user, ``alice``.
``client -> ClientSession``
    A session logged in as ``alice`` on ``server``.

Accounts use cheap argon2id parameters (``helpers.CHEAP_HASHER``) so that logins cost
microseconds; the server's ``Accounts`` uses the same hasher, so it never rehashes them
to the expensive defaults (and skips the default-cost dummy hash at start). Users made
with the default parameters (``imgshare user add``) still log in: argon2 verifies with
the parameters stored in the hash.

The server's log records (``HMAC of image on server side: ...``) arrive in ``caplog``:
``make_server`` sets the ``imgshare`` loggers to INFO for the test.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import RunningServer, start_server

from imgshare.client import ClientSession


@pytest.fixture(autouse=True)
def _no_personal_profile(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Client commands never read or write the login profile or the resume records
    of whoever runs the tests: their default folders are empty ones of the test's own."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
    monkeypatch.delenv("IMGSHARE_RESUME_DIR", raising=False)


@pytest.fixture
def make_server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., RunningServer]]:
    """Factory: ``make_server(users=("alice",), ca=None, **settings) -> RunningServer``.

    ``settings`` are ``ServerSettings`` fields. Each call gets a fresh data folder
    ``tmp_path/data-N`` unless ``data=`` is given. ``ca`` is the CA to trust when
    ``cert``/``key`` are given. All servers are stopped (grace 0) and their clients
    closed at teardown.
    """
    monkeypatch.delenv("IMGSHARE_STORAGE_KEY", raising=False)  # use DATA/storage.key
    caplog.set_level(logging.INFO, logger="imgshare")
    running: list[RunningServer] = []

    def factory(
        users: tuple[str, ...] = ("alice",), ca: Path | None = None, **settings: Any
    ) -> RunningServer:
        data = settings.pop("data", None) or tmp_path / f"data-{len(running)}"
        handle = start_server(Path(data), tuple(users), ca, **settings)
        running.append(handle)
        return handle

    yield factory
    for handle in reversed(running):
        handle.close()


@pytest.fixture
def server(make_server: Callable[..., RunningServer]) -> RunningServer:
    """A server with the default settings and the user ``alice``."""
    return make_server()


@pytest.fixture
def client(server: RunningServer) -> ClientSession:
    """A session logged in as ``alice`` on ``server`` (closed at teardown)."""
    return server.login("alice")
