"""The probe's attacks at full size, against ``imgshare serve`` on its defaults (issue 9).

Opt-in: ``pytest -m stress`` (``make stress``; ``.ci/run`` runs it after ``make test``).
Each test starts the real server as a process with its default settings and an
attacker process (``attackers.py``) on many loopback addresses, then checks what a
normal user gets meanwhile. Figures go to the log (``-o log_cli=true`` shows them).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    PASSWORD,
    ServeProcess,
    add_users,
    noise_image,
    stored_files,
    wait_until,
)

from imgshare import pki, tls
from imgshare.client import ClientSession, ca_verifier
from imgshare.server import open_catalog
from imgshare.server.accounts import default_hasher
from imgshare.server.app import memory_bound
from imgshare.server.config import ServerSettings

pytestmark = pytest.mark.stress
log = logging.getLogger(__name__)
ATTACKERS = Path(__file__).resolve().parent / "attackers.py"
MIB = 1024 * 1024


class Attack:
    """``attackers.py`` as a process; ``counts`` is its latest progress line."""

    def __init__(self, mode: str, port: int, ca: Path, **options: Any) -> None:
        args = [sys.executable, str(ATTACKERS), mode, "--port", str(port), "--ca", str(ca)]
        for name, value in options.items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            preexec_fn=_lift_open_file_limit,
        )
        self.counts: dict[str, int] = {}
        self.final: dict[str, int] | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            record = json.loads(line)
            if "final" in record:
                self.final = record["final"]
            elif "started" not in record:
                self.counts = record

    def wait(self, what: str, condition: Any, timeout: float) -> None:
        wait_until(lambda: condition(self.counts), timeout=timeout)
        log.info("attack %s: %s", what, self.counts)

    def stop(self) -> dict[str, int]:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=60)
        self._reader.join(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        assert self.final is not None, "the attacker printed no final counts"
        return self.final


def _lift_open_file_limit() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _peak_rss(pid: int) -> int:
    """The peak resident memory (VmHWM) of the server: its supervisor and workers
    summed, each at its own peak (an upper bound of what they held together)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    total = 0
    for process in [pid, *map(int, children)]:
        for line in Path(f"/proc/{process}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) * 1024
    return total


@contextmanager
def serving(tmp_path: Path, users: list[str]) -> Iterator[tuple[ServeProcess, int, Path]]:
    """``imgshare serve`` on its defaults (a fresh data folder, an ephemeral port)."""
    data = tmp_path / "data"
    add_users(data, users)
    with ServeProcess("--data", data, "--port", "0", cwd=tmp_path) as server:
        port = int(server.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
        yield server, port, data / "certs" / "ca.pem"
        server.terminate(timeout=30)


def _session(port: int, ca: Path, timeout: float = 30.0) -> ClientSession:
    return ClientSession.connect(
        "127.0.0.1",
        port,
        tls.create_client_context(ca),
        verifier=ca_verifier([pki.load_certificate(ca)], "127.0.0.1"),
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "retry",
    [
        pytest.param(1.0, id="held: a refused squatter comes back after 1 s"),
        pytest.param(0.05, id="flood: a refused squatter comes back after 50 ms"),
    ],
)
def test_2100_connections_that_never_log_in_cannot_keep_a_user_out(
    tmp_path: Path, retry: float
) -> None:
    images = [noise_image(tmp_path / f"{i}.png", "PNG", (200, 150), seed=i) for i in range(20)]
    with serving(tmp_path, ["alice"]) as (server, port, ca):
        attack = Attack(
            "squat", port, ca, count=2100, sources=40, first_source="127.0.1.1", retry=retry
        )
        attack.wait(
            "running", lambda c: c.get("handshakes", 0) + c.get("failed", 0) >= 4200, timeout=120
        )
        times = []
        for path in images:
            started = time.monotonic()
            with _session(port, ca) as session:
                session.login("alice", PASSWORD)
                assert session.upload(path).size == path.stat().st_size
            times.append(time.monotonic() - started)
        counts = attack.stop()
        peak = _peak_rss(server.proc.pid)
    log.info(
        "20 of 20 uploads under 2,100 squatters: %.2f s median, %.2f s slowest; attacker %s; "
        "server peak RSS %d MiB",
        sorted(times)[10], max(times), counts, peak // MIB,
    )  # fmt: skip
    assert len(times) == 20
    assert counts["handshakes"] + counts["failed"] >= 4200


def _login_time(port: int, ca: Path, user: str) -> float:
    started = time.monotonic()
    with _session(port, ca) as session:
        assert session.login(user, PASSWORD) == user
    return time.monotonic() - started


def test_a_flood_of_wrong_passwords_does_not_keep_right_ones_out(tmp_path: Path) -> None:
    """300 connections from 300 addresses guess passwords (real argon2id, about 170 ms
    a check, 2 at once) while alice, who has logged in from her network before, logs
    in 30 times; a newcomer's network logs in too, behind alice's but before the
    guessers'."""
    data = tmp_path / "data"
    _add_real_users(data, ["alice", "newcomer"])
    with serving(tmp_path, []) as (_, port, ca):
        _login_time(port, ca, "alice")  # her network is known from now on
        attack = Attack("guess", port, ca, count=300, sources=300, first_source="127.0.2.1")
        attack.wait("flooding", lambda c: c.get("AUTH_FAILED", 0) >= 100, timeout=120)
        times = [_login_time(port, ca, "alice") for _ in range(30)]
        counts = attack.stop()
    log.info(
        "30 of 30 right passwords under a 300-connection flood: %.2f s median, %.2f s "
        "slowest; attacker %s",
        sorted(times)[15], max(times), counts,
    )  # fmt: skip
    assert max(times) < 10.0
    assert counts.get("AUTH_FAILED", 0) >= 100


def _add_real_users(data: Path, names: list[str]) -> None:
    """Users whose hashes have the real argon2id cost, all of one password: the one
    hash is made once (tests only: real users each get their own salt)."""
    password_hash = default_hasher().hash(PASSWORD)
    with open_catalog(data) as catalog:
        for name in names:
            catalog.add_user(name, password_hash)


def test_300_stalled_uploads_are_cut_and_memory_stays_bounded(tmp_path: Path) -> None:
    settings = ServerSettings(data=tmp_path / "data")
    _add_real_users(settings.data, [f"u{i}" for i in range(75)])
    with serving(tmp_path, []) as (server, port, ca):
        started = time.monotonic()
        attack = Attack(
            "stall", port, ca, count=300, users=75, sources=3, first_source="127.0.3.1", every=2
        )
        attack.proc.wait(timeout=180)  # every stalled upload ended
        took = time.monotonic() - started
        counts = attack.stop()
        peak = _peak_rss(server.proc.pid)
        with _session(port, ca) as session:  # the server serves on
            session.login("u0", PASSWORD)
            image = noise_image(tmp_path / "after.png", "PNG", (100, 100))
            assert session.upload(image).size == image.stat().st_size
        data = settings.data
        wait_until(lambda: not [f for f in stored_files(data) if f.endswith(".part")], timeout=10)
    bound = memory_bound(settings, settings.worker_count)
    log.info(
        "300 stalled uploads: %s in %.0f s; server peak RSS %d MiB (bound %d MiB)",
        counts, took, peak // MIB, bound // MIB,
    )  # fmt: skip
    admitted = counts.get("uploading", 0)
    assert admitted > 0
    assert counts.get("begin_TRY_LATER", 0) + admitted == 300
    assert (
        sum(v for k, v in counts.items() if k.startswith("cut_")) + counts.get("stall_ended", 0)
        == admitted
    )
    assert took < settings.transfer_window * 3 + 60
    assert peak < bound
    assert os.cpu_count()  # figures above are for this machine's cores
