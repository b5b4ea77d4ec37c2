"""haproxy in TCP mode on 127.0.0.1 in front of some imgshare nodes: the load balancer
of the multi-node tests (tests/integration/multinode.py) and of the bench's
``backends`` scenario (bench/backends.py).

Debian's haproxy (``scripts/services/install-haproxy.sh``), in the foreground (``-db``)
with a configuration of our own (``haproxy_config``: the one docs/operations.md shows),
on a free loopback port.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

HAPROXY = "/usr/sbin/haproxy"
HOST = "127.0.0.1"
INSTALL_HINT = "run scripts/services/install-haproxy.sh (as root) to install haproxy"


def haproxy_config(port: int, backends: list[int]) -> str:
    """The load balancer of docs/operations.md, for ports on 127.0.0.1: TCP mode
    (TLS goes through to the nodes untouched), round robin, a connect check every
    half second, and a connection that finds its node down tried on another."""
    servers = "\n".join(
        f"    server node{i + 1} {HOST}:{p} check inter 500ms fall 1 rise 1"
        for i, p in enumerate(backends)
    )
    return f"""global
    maxconn 4096

defaults
    mode tcp
    timeout connect 2s
    timeout client 10m
    timeout server 10m
    retries 2
    option redispatch

frontend imgshare
    bind {HOST}:{port}
    default_backend nodes

backend nodes
    balance roundrobin
{servers}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class Haproxy:
    """haproxy in the foreground (``-db``) with a config of our own, listening on
    ``port`` once made; ``stop`` ends it. ``name`` tells the files of several apart."""

    def __init__(
        self, folder: Path, backends: list[int], *, name: str = "haproxy", timeout: float = 10.0
    ) -> None:
        if not Path(HAPROXY).exists():
            raise AssertionError(f"haproxy is not installed: {INSTALL_HINT}")
        self.port = free_port()
        self.config = folder / f"{name}.cfg"
        self.config.write_text(haproxy_config(self.port, backends))
        self.log = folder / f"{name}.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._listening():
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"haproxy not listening on {HOST}:{self.port} in time")
            time.sleep(0.01)

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"haproxy exited: {self.log.read_text(errors='replace')}")
        with socket.socket() as probe:
            return probe.connect_ex((HOST, self.port)) == 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
