"""How evenly the workers share connections, by listen mode (issue 10: "an inherited
socket or SO_REUSEPORT: measure which balances better").

``python -m bench.balance [--sessions N]`` starts ``imgshare serve --workers 2`` once
per listen mode and opens N sessions from 127.0.0.1 twice: one after another (each
logs in and closes), then all held open at once (opened by 16 threads). Every login is
logged with the worker that served it (``worker=N``); the figure is the busiest
worker's share of the sessions (50 % is perfect balance for two workers).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import util
from bench.run import CHEAP_ARGON2, LISTEN_MODES, PASSWORD, SERVER_SETTINGS

WORKERS = 2
_LOGIN = re.compile(r"\blogin\b.*\bworker=(\d+)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=400)
    args = parser.parse_args(argv)
    imgshare = Path(sys.executable).with_name("imgshare")
    print(f"{args.sessions} sessions, {WORKERS} workers; busiest worker's share (50 % = even)")
    for mode in LISTEN_MODES:
        sequential, held = measure(imgshare, mode, args.sessions)
        print(f"  {mode:<10} one after another: {sequential}   all at once: {held}")
    return 0


def measure(imgshare: Path, mode: str, sessions: int) -> tuple[str, str]:
    from argon2 import PasswordHasher

    from imgshare.server import open_catalog
    from imgshare.server.accounts import Accounts

    children = util.Children()
    with tempfile.TemporaryDirectory(prefix="imgshare-balance-") as temp:
        data = Path(temp) / "data"
        with open_catalog(data) as catalog:
            Accounts(catalog, hasher=PasswordHasher(**CHEAP_ARGON2)).add_user("bal", PASSWORD)
        port = util.free_port()
        log_path = Path(temp) / "server.log"
        try:
            with log_path.open("w") as log:
                env = {**os.environ, **SERVER_SETTINGS, "IMGSHARE_LISTEN_MODE": mode}
                argv = [str(imgshare), "serve", "--data", str(data), "--port", str(port),
                        "--workers", str(WORKERS), "--log-level", "info"]  # fmt: skip
                proc = children.start("imgshare serve", argv, stdout=log, stderr=log, env=env)
                util.wait_for_port(port, 30, proc)
                ca = data / "certs" / "ca.pem"
                before = _logins(log_path)
                for _ in range(sessions):
                    _session(port, ca).close()
                sequential = _logins(log_path) - before
                held = _held(port, ca, sessions, log_path) - sequential - before
        finally:
            children.stop_all()
    return _share(sequential), _share(held)


def _session(port: int, ca: Path) -> Any:
    import imgshare

    client = imgshare.Client(f"127.0.0.1:{port}", ca=ca, timeout=30)
    client.login("bal", PASSWORD)
    return client


def _held(port: int, ca: Path, sessions: int, log_path: Path) -> collections.Counter[str]:
    """Open ``sessions`` sessions from 16 threads and keep them all open; count the
    logins while they are. (A thread per session would wait out the server's 10 s
    login timeout behind its two password-hash slots: that is the login flood defence
    at work, not a balance figure.)"""
    clients: list[Any] = []
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        clients = list(pool.map(lambda _: _session(port, ca), range(sessions)))
    time.sleep(0.5)  # the last log lines are written
    counts = _logins(log_path)
    for client in clients:
        client.close()
    return counts


def _logins(log_path: Path) -> collections.Counter[str]:
    text = log_path.read_text(errors="replace")
    return collections.Counter(match.group(1) for match in _LOGIN.finditer(text))


def _share(counts: collections.Counter[str]) -> str:
    total = sum(counts.values())
    if not total:
        return "no logins logged"
    busiest = max(counts.values())
    spread = " / ".join(str(counts[k]) for k in sorted(counts))
    return f"{100 * busiest / total:.0f} % ({spread})"


if __name__ == "__main__":
    raise SystemExit(main())
