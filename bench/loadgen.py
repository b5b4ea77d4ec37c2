"""The load generator: a worker process that the harness drives with JSON lines.

It runs apart from every server, and uses the same machinery for both systems where
that is sensible: Python threads with blocking TLS sockets, imgshare's client context
(TLS 1.3, same groups, same CA), 256 KiB reads and writes. For imgshare it uses the
library client ``imgshare.client.ClientSession``; for nginx ``http.client``
``HTTPSConnection`` PUTs (``blocksize`` 256 KiB).

Protocol on stdin/stdout, one JSON object a line. Most commands answer at once.
``upload`` and ``sessions`` are two-phase so that several workers start together and
the harness can warm memory right before the start: the worker answers
``{"armed": true}`` when its threads wait, then starts on the line ``go`` and answers
with the results. Times are ``time.monotonic()`` (system-wide on Linux), so the
harness can measure every upload from its own ``go`` instant.

An imgshare pool may live on another port than ``--imgshare-port`` (``open``'s
``port``: a second server instance). The library client retries a request the server
answers TRY_LATER; ``open``, ``ping`` and ``upload`` report how many such answers
came (``try_later``), counted from the client's "server busy" log records.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import resource
import socket
import ssl
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import rawtls
from imgshare import pki, tls
from imgshare.client import ClientSession, ca_verifier

PIECE = 256 * 1024
HOST = "127.0.0.1"


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


class NginxClient:
    """One keep-alive HTTPS connection that PUTs files (the nginx side of 'photos')."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.conn = http.client.HTTPSConnection(
            HOST, port, context=context, timeout=120, blocksize=PIECE
        )
        self.conn.connect()

    def upload(self, path: Path) -> None:
        size = path.stat().st_size
        with path.open("rb") as body:
            self.conn.request(
                "PUT",
                f"/upload/{uuid.uuid4().hex}-{path.name}",
                body=body,
                headers={"Content-Length": str(size), "Content-Type": "image/jpeg"},
            )
            response = self.conn.getresponse()
            response.read()
        if response.status not in (201, 204):
            raise RuntimeError(f"nginx answered {response.status} {response.reason}")

    def ping(self) -> None:
        """Keep-alive check: reconnects (outside any timing) if nginx closed it."""
        if self.conn.sock is None:
            self.conn.connect()

    def close(self) -> None:
        self.conn.close()


class BusyCounter(logging.Handler):
    """Counts the client's "server busy, retrying" records (TRY_LATER answers)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("server busy"):
            self.count += 1  # Handler.handle holds the handler's lock

    @classmethod
    def install(cls) -> BusyCounter:
        counter = cls()
        client_log = logging.getLogger("imgshare.client.session")
        client_log.setLevel(logging.INFO)
        client_log.propagate = False
        client_log.addHandler(counter)
        return counter


class Worker:
    def __init__(self, imgshare_port: int, nginx_port: int, ca: Path) -> None:
        self.imgshare_port = imgshare_port
        self.nginx_port = nginx_port
        self.context = tls.create_client_context(ca)
        self.verifier = ca_verifier([pki.load_certificate(ca)], HOST)
        self.pools: dict[str, list[Any]] = {}
        self.logins: dict[str, list[tuple[str, str]]] = {}
        self.ports: dict[str, int] = {}  # imgshare pools on another port than the default
        self.busy = BusyCounter.install()
        self.token: str | None = None

    # -- connections -------------------------------------------------------------

    def _session(self, user: str, password: str, port: int | None = None) -> ClientSession:
        session = ClientSession.connect(
            HOST, port or self.imgshare_port, self.context, verifier=self.verifier, timeout=300
        )
        try:
            session.login(user, password)
        except BaseException:
            session.close()
            raise
        return session

    def op_open(
        self, pool: str, system: str, logins: list[list[str]], threads: int, port: int = 0
    ) -> dict[str, Any]:
        """Open one connection per login (imgshare: connected and logged in, on ``port``
        if given)."""
        start = time.monotonic()
        busy = self.busy.count
        errors: Counter[str] = Counter()
        port = port or self.imgshare_port
        self.ports[pool] = port

        def one(login: list[str]) -> Any:
            try:
                if system == "nginx":
                    return NginxClient(self.nginx_port, self.context)
                return self._session(login[0], login[1], port)
            except Exception as exc:
                errors[_reason(exc)] += 1
                return None

        with ThreadPoolExecutor(threads) as executor:
            opened = list(executor.map(one, logins))
        self.pools[pool] = opened
        self.logins[pool] = [(login[0], login[1]) for login in logins]
        return {
            "opened": sum(item is not None for item in opened),
            "failed": sum(item is None for item in opened),
            "seconds": time.monotonic() - start,
            "errors": dict(errors.most_common(5)),
            "try_later": self.busy.count - busy,
        }

    def op_ping(self, pool: str, reconnect: bool, threads: int = 16) -> dict[str, Any]:
        """Check each connection with a cheap request; optionally replace dead ones."""
        items = self.pools.get(pool, [])
        logins = self.logins.get(pool, [])
        port = self.ports.get(pool)
        busy = self.busy.count
        errors: Counter[str] = Counter()
        replaced = 0

        def check(index: int) -> bool:
            nonlocal replaced
            item = items[index]
            try:
                if item is None:
                    raise ConnectionError("never opened")
                if isinstance(item, NginxClient):
                    item.ping()
                else:
                    item.list_images()
                return True
            except Exception as exc:
                errors[_reason(exc)] += 1
                if item is not None:
                    item.close()
                items[index] = None
                if reconnect:
                    try:
                        if isinstance(item, NginxClient) or (item is None and not logins):
                            items[index] = NginxClient(self.nginx_port, self.context)
                        else:
                            items[index] = self._session(*logins[index], port)
                        replaced += 1
                    except Exception as again:
                        errors["reconnect " + _reason(again)] += 1
                return False

        with ThreadPoolExecutor(threads) as executor:
            alive = sum(executor.map(check, range(len(items))))
        return {
            "alive": alive,
            "total": len(items),
            "replaced": replaced,
            "errors": dict(errors.most_common(5)),
            "try_later": self.busy.count - busy,
        }

    def op_close(self, pool: str) -> dict[str, Any]:
        for item in self.pools.pop(pool, []):
            if item is not None:
                item.close()
        self.logins.pop(pool, None)
        self.ports.pop(pool, None)
        return {"closed": True}

    # -- timed work: arm, wait for "go", run ---------------------------------------

    def _armed_run(self, tasks: list[Callable[[], Any]]) -> dict[str, Any]:
        """Run every task in its own thread, all released at once on ``go``."""
        release = threading.Event()
        results: list[dict[str, Any]] = [{} for _ in tasks]

        def run(index: int) -> None:
            release.wait()
            begin = time.monotonic()
            try:
                extra = tasks[index]()
                results[index] = {"ok": True, "begin": begin, "end": time.monotonic()}
                if isinstance(extra, dict):
                    results[index].update(extra)
            except Exception as exc:
                results[index] = {
                    "ok": False,
                    "begin": begin,
                    "end": time.monotonic(),
                    "error": _reason(exc),
                }

        workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(tasks))]
        for thread in workers:
            thread.start()
        _reply({"armed": True})
        line = sys.stdin.readline().strip()
        if line != "go":
            release.set()
            raise RuntimeError(f"expected 'go', got {line!r}")
        busy = self.busy.count
        go = time.monotonic()
        release.set()
        for thread in workers:
            thread.join()
        return {"go": go, "results": results, "try_later": self.busy.count - busy}

    def op_upload(self, pool: str, files: list[str]) -> dict[str, Any]:
        """Every connection of ``pool`` uploads one file (round-robin over ``files``)."""
        items = self.pools[pool]
        paths = [Path(name) for name in files]

        def task(item: Any, path: Path) -> Callable[[], Any]:
            def upload() -> Any:
                if item is None:
                    raise ConnectionError("no connection")
                result = item.upload(path)
                return {"bytes": path.stat().st_size} if result is None else {"bytes": result.size}

            return upload

        tasks = [task(item, paths[i % len(paths)]) for i, item in enumerate(items)]
        return self._armed_run(tasks)

    def op_raw(self, port: int, file: str) -> dict[str, Any]:
        return self._armed_run([lambda: rawtls.send_file(port, self.context, Path(file))])

    def op_sessions(
        self, kind: str, seconds: float, threads: int, user: str = "", password: str = ""
    ) -> dict[str, Any]:
        """Closed loop: ``threads`` threads open and close sessions for ``seconds``."""
        one = self._session_maker(kind, user, password)
        state: dict[str, float] = {}

        def loop() -> dict[str, Any]:
            deadline = state.setdefault("deadline", time.monotonic() + seconds)
            done, failed, latencies = 0, 0, []
            errors: Counter[str] = Counter()
            while time.monotonic() < deadline:
                begin = time.monotonic()
                try:
                    one()
                    done += 1
                    latencies.append(time.monotonic() - begin)
                except Exception as exc:
                    failed += 1
                    errors[_reason(exc)] += 1
            return {
                "done": done,
                "failed": failed,
                "latencies": latencies,
                "errors": dict(errors.most_common(3)),
            }

        return self._armed_run([loop] * threads)

    def _session_maker(self, kind: str, user: str, password: str) -> Callable[[], None]:
        def tls_only(port: int) -> Callable[[], None]:
            def handshake() -> None:
                raw = socket.create_connection((HOST, port), timeout=60)
                with self.context.wrap_socket(raw, server_hostname=HOST):
                    pass

            return handshake

        def app(login: bool) -> Callable[[], None]:
            def session() -> None:
                s = ClientSession.connect(
                    HOST, self.imgshare_port, self.context, verifier=self.verifier, timeout=60
                )
                try:
                    if login:
                        s.login(user, password)
                finally:
                    s.close()

            return session

        def token_login(token: str) -> Callable[[], None]:
            def session() -> None:
                s = ClientSession.connect(
                    HOST,
                    self.imgshare_port,
                    self.context,
                    verifier=self.verifier,
                    timeout=60,
                    token=token,  # logged in in the handshake's last flight, as the CLI does
                )
                s.close()

            return session

        if kind == "imgshare_token":
            return token_login(self._token(user, password))
        makers: dict[str, Callable[[], None]] = {
            "nginx_tls": tls_only(self.nginx_port),
            "imgshare_tls": tls_only(self.imgshare_port),
            "imgshare_app": app(False),
            "imgshare_login": app(True),
        }
        return makers[kind]

    def _token(self, user: str, password: str) -> str:
        """One API token per load generator process, made once with the password."""
        if self.token is None:
            with self._session(user, password) as session:
                self.token = session.create_token("bench").secret
        return self.token


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--imgshare-port", type=int, required=True)
    parser.add_argument("--nginx-port", type=int, required=True)
    parser.add_argument("--ca", type=Path, required=True)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,000+ held connections
    worker = Worker(args.imgshare_port, args.nginx_port, args.ca)
    _reply({"ready": True})
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        op = command.pop("op")
        try:
            _reply(getattr(worker, f"op_{op}")(**command))
        except Exception as exc:
            _reply({"error": _reason(exc)})


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
