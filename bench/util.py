"""Plumbing shared by the harness: ports, child processes, memory warming, RSS and CPU, stats.

Noise on this VM (see docs/performance.md): the first touch of a memory page costs
about 2.3 s/GiB and freed pages go back to the host within about a second. A timed
run therefore starts right after ``warm_memory`` (write and delete a scratch file
larger than the payload), and "cold" runs start after ``COLD_PAUSE`` seconds idle.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
PORT_RANGE = (20000, 30000)  # below 32768: never collides with the kernel's ephemeral ports
COLD_PAUSE = 2.5  # seconds idle: freed pages have gone back to the host by then
_WARM_BLOCK = 8 * MIB

_used_ports: set[int] = set()


def free_port() -> int:
    """A TCP port in PORT_RANGE that binds on 127.0.0.1 now (and was not handed out)."""
    low, high = PORT_RANGE
    for _ in range(500):
        port = random.randint(low, high)
        if port in _used_ports:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _used_ports.add(port)
        return port
    raise RuntimeError(f"no free port in {low}-{high}")


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[Any] | None = None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


class Children:
    """Every process the harness starts; ``stop_all`` ends them (also on Ctrl-C)."""

    def __init__(self) -> None:
        self._procs: list[tuple[str, subprocess.Popen[Any], int]] = []

    def start(
        self, name: str, argv: Sequence[str], *, stop_signal: int = signal.SIGTERM, **popen: Any
    ) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(list(argv), **popen)
        self._procs.append((name, proc, stop_signal))
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 20.0) -> int | None:
        for entry in list(self._procs):
            if entry[1] is proc:
                self._procs.remove(entry)
                return _stop(*entry, timeout=timeout)
        return proc.poll()

    def stop_all(self) -> None:
        while self._procs:
            _stop(*self._procs.pop(), timeout=20.0)


def _stop(name: str, proc: subprocess.Popen[Any], sig: int, *, timeout: float) -> int | None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"bench: {name} (pid {proc.pid}) did not stop in {timeout:.0f} s; killing it")
            proc.kill()
            proc.wait(5)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    return proc.returncode


def warm_memory(folder: Path, size: int) -> float:
    """Write and delete a ``size``-byte scratch file in ``folder``; return seconds taken.

    The kernel then holds freshly touched free pages that the next run's page cache
    and buffers reuse, instead of pages the host must fault in again.
    """
    start = time.perf_counter()
    path = folder / f"warm-{os.getpid()}.scratch"
    block = bytes(_WARM_BLOCK)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        written = 0
        while written < size:
            written += os.write(fd, block)
    finally:
        os.close(fd)
        os.unlink(path)
    return time.perf_counter() - start


def cold_pause() -> None:
    """Stay idle long enough for freed pages to return to the host."""
    time.sleep(COLD_PAUSE)


def _status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def rss_bytes(pids: Iterable[int]) -> int:
    """Summed VmRSS of ``pids`` (0 for a pid that is gone)."""
    return sum(_status_kib(pid, "VmRSS") for pid in pids) * 1024


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants as they are now (a server's supervisor and its
    workers; a worker may have been replaced since the last call).

    Reads ``/proc/PID/task/TID/children`` (cheap enough to call every sample); falls
    back to psutil where the kernel lacks that file.
    """
    if not os.path.exists(f"/proc/{pid}"):
        return []
    if not os.path.exists(f"/proc/{pid}/task/{pid}/children"):
        import psutil

        try:
            return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
        except psutil.Error:
            return [pid]
    found, queue = [pid], [pid]
    while queue:
        parent = queue.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as children:
                    kids = [int(child) for child in children.read().split()]
            except (OSError, ValueError):
                continue
            for kid in kids:
                if kid not in found:
                    found.append(kid)
                    queue.append(kid)
    return found


Pids = Sequence[int] | Callable[[], Sequence[int]]
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(start time, user+system CPU in ticks, RSS in pages) of ``pid``, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    # fields[0] is field 3 of proc(5): utime 14, stime 15, starttime 22, rss 24
    return int(fields[19]), int(fields[11]) + int(fields[12]), int(fields[21])


class RssSampler:
    """Samples the summed RSS and the CPU time of some processes in a thread.

    ``pids`` is a list, or a callable that names the processes at each sample (a
    server's supervisor and its current workers: ``lambda: process_tree(pid)``). RSS
    is the sum over the processes of one sample; ``peak`` is the highest sum. For a
    single process the peak also comes from VmHWM, reset at the start (``clear_refs``
    5, needs root or the same user), so it is exact even between samples.

    ``cpu_seconds`` is the user+system CPU the processes used between ``__enter__``
    and ``__exit__``: for each process (pid and start time), its last reading minus
    its reading at the start, or minus 0 for a process started during the run. A
    process that ends during the run counts up to its last sample (``interval``).
    """

    def __init__(self, pids: Pids, interval: float = 0.02) -> None:
        if callable(pids):
            self._resolve = pids
        else:
            fixed = list(pids)
            self._resolve = lambda: fixed
        self.interval = interval
        self.before = 0
        self.peak = 0
        self.after = 0
        self.cpu_seconds = 0.0
        self.processes = 0  # distinct processes seen during the run
        self._cpu_first: dict[tuple[int, int], int] = {}
        self._cpu_last: dict[tuple[int, int], int] = {}
        self._started = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> int:
        """One sample: RSS sum in bytes; CPU readings recorded."""
        rss = 0
        for pid in self._resolve():
            stat = _stat(pid)
            if stat is None:
                continue
            start, ticks, pages = stat
            key = (pid, start)
            if key not in self._cpu_first:
                self._cpu_first[key] = 0 if self._started else ticks
            self._cpu_last[key] = ticks
            rss += pages * _PAGE
        return rss

    def __enter__(self) -> RssSampler:
        pids = list(self._resolve())
        for pid in pids:
            with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as refs:
                refs.write("5")
        self.before = self._sample()
        self._started = True
        self.peak = self.before
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._sample())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.after = self._sample()
        self.peak = max(self.peak, self.after)
        self.processes = len(self._cpu_last)
        if self.processes == 1:
            pid = next(iter(self._cpu_last))[0]
            self.peak = max(self.peak, _status_kib(pid, "VmHWM") * 1024)
        ticks = sum(last - self._cpu_first[key] for key, last in self._cpu_last.items())
        self.cpu_seconds = ticks / _TICK

    @property
    def growth(self) -> int:
        return self.peak - self.before


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and every run, for a list of per-run figures."""
    if not values:
        return {"median": None, "min": None, "max": None, "runs": []}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": list(values),
    }


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 200 values is the 198th smallest)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return ordered[rank - 1]
