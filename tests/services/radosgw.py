"""A throwaway single-node Ceph cluster with radosgw on 127.0.0.1: a second real S3
server for the S3 contract tests, opt-in (the ``radosgw`` marker, ``make test-radosgw``).

Everything lives in one temp folder: one monitor, one OSD, the S3 gateway, their
config, admin sockets and logs. What issue 13 measured, and what this module chose:

* Debian's Ceph 16.2 (``scripts/services/install-radosgw.sh`` installs ceph-mon,
  ceph-osd and radosgw); no ceph-mgr: one mon and one OSD serve I/O without it;
* cephx off (``auth_* = none``), and the messenger in "crc" mode only (a daemon's
  default, "secure", needs cephx: radosgw would retry its mon connection forever);
  msgr2 only, on 127.0.0.1;
* the OSD is a memstore (its objects in the OSD's memory): mkfs takes 0.2 s, it needs
  no block device, sparse file or root, and the data is thrown away anyway. One OSD,
  so pools have one replica and few placement groups;
* the S3 user (access and secret key of our own) comes from ``radosgw-admin``, the
  bucket from a SigV4-signed PUT (``services.seaweedfs.sigv4_headers``), so radosgw
  checks signatures as SeaweedFS does;
* ``tls=True`` serves HTTPS only, with a self-signed certificate for 127.0.0.1 made by
  openssl (the tests' fixture does: over TLS botocore sends bodies differently);
* teardown kills every daemon (SIGKILL to each process group) and removes the
  folder; a run that died leaves its daemons running, and the next start kills them.

Nothing needs root: the tests run the daemons as whoever runs the tests. Start-up,
from an empty folder to the bucket, takes 2-3 s here (``ready_after`` says; issue 13's
23 s to the first PUT had an OSD on a file); most of it goes to making the pools.

Run by hand (prints the environment to use, serves until Ctrl-C)::

    .venv/bin/python tests/services/radosgw.py
"""

from __future__ import annotations

import contextlib
import glob
import os
import random
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

if __package__ in (None, ""):  # run as a script: make ``services`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.base import ServiceError
from services.seaweedfs import REGION, sigv4_headers

HOST = "127.0.0.1"
#: Ports for the monitor and the gateway (SeaweedFS takes 10000-19999, bench/util.py
#: 20000-30000, PostgreSQL 30001-32767; the OSD binds Ceph's own 6800-7300).
PORT_RANGE = (7400, 7999)
PREFIX = "imgshare-radosgw-"
INSTALL_HINT = "run scripts/services/install-radosgw.sh (as root) to install Ceph's radosgw"
#: Test parameters for "every S3 server": SeaweedFS, and radosgw behind its opt-in
#: marker; for ``s3_server`` (tests/services/plugin.py), with ``indirect=True``.
S3_SERVERS = ("seaweedfs", pytest.param("radosgw", marks=pytest.mark.radosgw))
#: The programs used, from Debian's ceph-mon, ceph-osd, radosgw and ceph-common.
TOOLS = ("monmaptool", "ceph-mon", "ceph", "ceph-osd", "radosgw-admin", "radosgw")


def find_bin_dir() -> Path | None:
    """The folder of the Ceph programs: $IMGSHARE_CEPH_BIN if set (and only it), else
    /usr/bin (Debian's), else the folder of PATH's ``radosgw``."""
    explicit = os.environ.get("IMGSHARE_CEPH_BIN")
    candidates = [Path(explicit)] if explicit else [Path("/usr/bin")]
    if not explicit and (on_path := shutil.which("radosgw")):
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if all(os.access(folder / tool, os.X_OK) for tool in TOOLS):
            return folder
    return None


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports of ``PORT_RANGE`` that bind on 127.0.0.1 now."""
    low, high = PORT_RANGE
    ports: list[int] = []
    for port in random.sample(range(low, high), min(20 * count, high - low)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise ServiceError(f"no {count} free ports in {low}-{high} on {HOST}")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not yet waited for, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _reap_leftovers() -> None:
    """Kill the daemons of runs that died without stopping theirs, and remove their
    folders. A folder is a leftover when the process that made it (``owner.pid``) is
    gone; its daemons are the processes whose command line names its config."""
    for path in map(Path, glob.glob(os.path.join(tempfile.gettempdir(), PREFIX + "*"))):
        try:
            owner = int((path / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        config = str(path / "ceph.conf").encode()
        for proc in glob.glob("/proc/[0-9]*/cmdline"):
            with contextlib.suppress(OSError, ValueError):
                if config in Path(proc).read_bytes().split(b"\0"):
                    os.kill(int(proc.split("/")[2]), signal.SIGKILL)
        shutil.rmtree(path, ignore_errors=True)


class Radosgw:
    """One throwaway Ceph cluster with radosgw; a context manager that kills it and
    removes its folder.

    ``endpoint_url``, ``access_key``, ``secret_key`` and ``bucket`` say how to reach it
    once ``start`` returns; ``ready_after`` how long the start took (seconds).
    """

    def __init__(
        self, *, bucket: str = "imgshare-test", bin_dir: Path | None = None, tls: bool = False
    ) -> None:
        """``tls``: serve HTTPS only, with a self-signed certificate for 127.0.0.1
        (``ca_path``; ``env`` names it in AWS_CA_BUNDLE)."""
        self.bin_dir = bin_dir or find_bin_dir()
        self.tls = tls
        self.folder: Path | None = None
        self.bucket = bucket
        self.access_key = "AK" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.mon_port = 0
        self.rgw_port = 0
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.ready_after: float | None = None
        self.timings: dict[str, float] = {}  # seconds from start to each step's end

    def __repr__(self) -> str:  # never the secret key
        return f"Radosgw({self.endpoint_url if self.rgw_port else 'not started'})"

    @property
    def endpoint_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.rgw_port}"

    @property
    def ca_path(self) -> Path:
        """The gateway's self-signed certificate (with ``tls``), its own CA."""
        assert self.folder is not None
        return self.folder / "rgw" / "cert.pem"

    @property
    def config_path(self) -> Path:
        assert self.folder is not None
        return self.folder / "ceph.conf"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": REGION,
            **({"AWS_CA_BUNDLE": str(self.ca_path)} if self.tls else {}),
        }

    # --- start and stop -----------------------------------------------------------

    def start(self, timeout: float = 120.0) -> Self:
        """Make the cluster, start the daemons, create the S3 user and the bucket.
        Raises ``ServiceError`` with the end of the logs."""
        if self.bin_dir is None:
            raise ServiceError(
                f"Ceph's programs ({', '.join(TOOLS)}) were not found: {INSTALL_HINT}"
            )
        _reap_leftovers()
        started = time.monotonic()
        deadline = started + timeout
        self.folder = Path(tempfile.mkdtemp(prefix=PREFIX))
        (self.folder / "owner.pid").write_text(str(os.getpid()))
        try:
            self.mon_port, self.rgw_port = free_ports(2)
            fsid = str(uuid.uuid4())
            for name in ("mon", "osd", "rgw", "run", "log"):
                (self.folder / name).mkdir()
            if self.tls:
                self._make_certificate()
            self.config_path.write_text(self._config(fsid))
            self._run(
                "monmaptool", "--create", "--fsid", fsid, "--addv", "a",
                f"[v2:{HOST}:{self.mon_port}]", str(self.folder / "monmap"),
            )  # fmt: skip
            self._run("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(self.folder / "monmap"))
            self._launch("mon", "ceph-mon", "-i", "a")
            self._step("mon", started)
            osd_uuid = str(uuid.uuid4())
            osd_id = self._run("ceph", "--connect-timeout", "30", "osd", "new", osd_uuid).strip()
            self._run("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
            self._launch("osd", "ceph-osd", "-i", osd_id)
            self._step("osd", started)
            # Waits for the OSD: it writes the user into the pools it makes first.
            self._run(
                "radosgw-admin", "user", "create", "--uid=imgshare", "--display-name=imgshare",
                f"--access-key={self.access_key}", f"--secret-key={self.secret_key}",
                timeout=max(1.0, deadline - time.monotonic()),
            )  # fmt: skip
            self._step("user", started)
            self._launch("rgw", "radosgw", "-n", "client.rgw.a")
            self._wait_bucket(deadline)
            self._step("bucket", started)
        except BaseException:
            self.stop()
            raise
        self.ready_after = time.monotonic() - started
        return self

    def _step(self, name: str, started: float) -> None:
        self.timings[name] = round(time.monotonic() - started, 2)

    def _make_certificate(self) -> None:
        """A self-signed certificate for 127.0.0.1 (openssl, so that the server under
        test is set up independently of what the tests check)."""
        key = self.ca_path.with_name("key.pem")
        args = [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-subj", f"/CN={HOST}", "-addext",
            f"subjectAltName=IP:{HOST}", "-keyout", str(key), "-out", str(self.ca_path),
        ]  # fmt: skip
        try:
            subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30,
                check=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise ServiceError(
                f"cannot make a certificate for radosgw with openssl: {exc}"
            ) from exc

    def _config(self, fsid: str) -> str:
        folder = self.folder
        if self.tls:
            key = self.ca_path.with_name("key.pem")
            frontend = (
                f"beast ssl_endpoint={HOST}:{self.rgw_port} ssl_certificate={self.ca_path} "
                f"ssl_private_key={key}"
            )
        else:
            frontend = f"beast endpoint={HOST}:{self.rgw_port}"
        return f"""\
[global]
fsid = {fsid}
mon_host = v2:{HOST}:{self.mon_port}
public_addr = {HOST}
ms_bind_ipv6 = false
ms_bind_msgr1 = false
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
ms_cluster_mode = crc
ms_service_mode = crc
ms_client_mode = crc
ms_mon_cluster_mode = crc
ms_mon_service_mode = crc
ms_mon_client_mode = crc
keyring = /dev/null
run_dir = {folder}/run
admin_socket = {folder}/run/$name.asok
pid_file = {folder}/run/$name.pid
log_file = {folder}/log/$name.log
mon_cluster_log_file = {folder}/log/cluster.log
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_max_pg_per_osd = 1000
mon_data_avail_warn = 1
mon_data_avail_crit = 1
paxos_propose_interval = 0.1

[mon.a]
mon_data = {folder}/mon

[osd.0]
osd_data = {folder}/osd
osd_objectstore = memstore
memstore_device_bytes = 8589934592
osd_crush_initial_weight = 1

[client.rgw.a]
rgw_frontends = {frontend}
rgw_data = {folder}/rgw
rgw_thread_pool_size = 64
rgw_enable_usage_log = false
"""

    def _command(self, tool: str, *args: str) -> list[str]:
        assert self.bin_dir is not None
        return [str(self.bin_dir / tool), "-c", str(self.config_path), *args]

    def _run(self, tool: str, *args: str, timeout: float = 60.0) -> str:
        """Run a Ceph tool to its end; its standard output. Raises ``ServiceError``."""
        try:
            done = subprocess.run(
                self._command(tool, *args),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(
                f"{tool} {args[0]} did not finish in {timeout:.0f} s; the logs end:\n"
                f"{self.log_tail()}"
            ) from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace").strip()[-2000:]
            raise ServiceError(
                f"{tool} {args[0]} failed ({done.returncode}): {output}\n"
                f"the logs end:\n{self.log_tail()}"
            )
        return done.stdout.decode()

    def _launch(self, name: str, tool: str, *args: str) -> None:
        """Start a daemon in the foreground (``-f``), in a process group of its own."""
        assert self.folder is not None
        with (self.folder / "log" / f"{name}.out").open("ab") as out:
            self.processes[name] = subprocess.Popen(
                self._command(tool, "-f", *args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_bucket(self, deadline: float) -> None:
        """Until the gateway answers and the bucket is made (a signed PUT)."""
        status: int | None = None
        while True:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise ServiceError(
                        f"Ceph's {name} exited ({process.returncode}) at start-up; "
                        f"the logs end:\n{self.log_tail()}"
                    )
            status = self._signed_request("PUT", f"/{self.bucket}")
            if status in (200, 409):
                return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"radosgw not ready in time (creating the bucket: {status}); "
                    f"the logs end:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _signed_request(self, method: str, path: str) -> int | None:
        """An empty-bodied SigV4-signed request; its HTTP status, or None if the
        gateway cannot be reached yet."""
        request = urllib.request.Request(
            self.endpoint_url + path,
            method=method,
            headers=sigv4_headers(
                method, f"{HOST}:{self.rgw_port}", path, self.access_key, self.secret_key
            ),
        )
        context = ssl.create_default_context(cafile=str(self.ca_path)) if self.tls else None
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def log_tail(self, lines: int = 12) -> str:
        """The last lines of every daemon's log and output."""
        if self.folder is None:
            return "(no logs)"
        parts = []
        for path in sorted((self.folder / "log").glob("*")):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts) or "(no logs)"

    def rss_bytes(self) -> int:
        """Resident memory of the daemons (the OSD's objects included)."""
        total = 0
        for process in self.processes.values():
            with contextlib.suppress(OSError, IndexError):
                fields = Path(f"/proc/{process.pid}/statm").read_text().split()
                total += int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
        return total

    def stop(self) -> None:
        """Kill every daemon and remove the folder."""
        processes, self.processes = self.processes, {}
        for process in processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # throwaway data: no graceful stop
        for process in processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        folder, self.folder = self.folder, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main() -> None:  # pragma: no cover - a manual tool
    with Radosgw() as server:
        print(f"radosgw ready in {server.ready_after:.1f} s ({server.timings})")
        for name, value in server.env().items():
            print(f"export {name}={value}")
        print(f"# bucket: {server.bucket}; folder: {server.folder}; Ctrl-C stops it")
        with contextlib.suppress(KeyboardInterrupt):
            while all(process.poll() is None for process in server.processes.values()):
                time.sleep(1)


if __name__ == "__main__":
    main()
