"""The scenarios: big image, photos, held connections, new sessions, photos with one
and two server workers, and the command-line client timed as whole processes.

Each timed run is preceded by either ``warm_memory`` (a scratch file of
``WARM_FACTOR`` x the payload, written and deleted right before) or a cold pause,
and the systems take turns run by run (A B C, then B C A, ...), so that slow drift
of the VM hits every system alike. Every upload is deleted again after its run
(imgshare's files from the data folder behind the server's back, nginx's from its
folder), so the disk and the page cache look the same to every run.

A server is all its processes: imgshare's supervisor and its workers (named again at
every sample, since a worker may be replaced), nginx's master and its workers. Their
RSS is summed, and their CPU time over a timed run is counted (``util.RssSampler``).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import util

WARM_FACTOR = 2.5  # imgshare writes two copies of each image (sealed + inbox)
MB = 1e6  # throughput is in decimal MB/s, like curl's and most tools'


@dataclass(frozen=True)
class Config:
    mode: str
    runs: int
    temps: tuple[str, ...]  # ("warm", "cold") or ("warm",)
    big_side: int
    photos: int
    photo_files: int
    photo_users: int
    held: int
    held_uploads: int
    session_seconds: float
    session_threads: int
    login_threads: int = 2  # per worker: the server hashes 2 passwords at a time
    workers: int = 2
    cli_runs: int = 5

    @classmethod
    def full(cls) -> Config:
        return cls("full", 5, ("warm", "cold"), 8192, 200, 8, 20, 1000, 100, 5.0, 8)

    @classmethod
    def quick(cls) -> Config:
        return cls("quick", 3, ("warm",), 4608, 50, 4, 10, 200, 25, 1.5, 8)


class WorkerHandle:
    """One load-generator process, driven with JSON lines (see ``bench.loadgen``)."""

    def __init__(self, proc: subprocess.Popen[str], timeout: float = 900.0) -> None:
        self.proc = proc
        self.timeout = timeout
        ready = self._read()
        if not ready.get("ready"):
            raise RuntimeError(f"load generator did not start: {ready}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        if not readable:
            raise RuntimeError(f"load generator silent for {self.timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator exited ({self.proc.poll()})")
        message: dict[str, Any] = json.loads(line)
        if "error" in message:
            raise RuntimeError(f"load generator: {message['error']}")
        return message

    def send(self, op: str, **arguments: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self.proc.stdin.flush()

    def call(self, op: str, **arguments: Any) -> dict[str, Any]:
        self.send(op, **arguments)
        return self._read()

    def arm(self, op: str, **arguments: Any) -> None:
        self.send(op, **arguments)
        if not self._read().get("armed"):
            raise RuntimeError("load generator did not arm")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, Any]:
        return self._read()


@dataclass
class ExtraServer:
    """An imgshare server started by a scenario (own data folder, port and log)."""

    name: str
    workers: int
    port: int
    data: Path
    proc: subprocess.Popen[Any]
    log: Path

    def pids(self) -> list[int]:
        """The supervisor and its workers, now."""
        return util.process_tree(self.proc.pid)


@dataclass
class Bench:
    """Everything a scenario needs: settings, folders, processes and their ports."""

    config: Config
    root: Path
    data: Path
    nginx_prefix: Path
    ca: Path
    big_file: Path
    photo_files: list[Path]
    imgshare_pid: int  # the supervisor; its workers are found at each sample
    imgshare_port: int
    imgshare: Path  # the command
    nginx_pids: Callable[[], list[int]]
    nginx_port: int
    raw_port: int
    raw_pid: int
    workers: list[WorkerHandle]
    password: str
    login_password: str
    check_alive: Callable[[], None]
    #: Start another imgshare server (name, --workers[, more settings in its
    #: environment]) / stop it: {"exit_code", "log"}.
    start_server: Callable[..., ExtraServer]
    stop_server: Callable[[ExtraServer], dict[str, Any]]
    log: Callable[[str], None] = print

    # -- helpers ---------------------------------------------------------------------

    def prepare(self, temp: str, payload: int) -> float:
        """Warm memory right before a timed run, or stay idle for a cold one."""
        if temp == "warm":
            return util.warm_memory(self.root, int(payload * WARM_FACTOR))
        util.cold_pause()
        return 0.0

    def clear_uploads(self, *data: Path) -> None:
        """Delete the images of earlier runs, for both systems (and more data folders)."""
        folders = [folder / name for folder in (self.data, *data) for name in ("objects", "inbox")]
        for folder in folders:
            if folder.is_dir():
                for path in folder.rglob("*"):
                    if path.is_file():
                        path.unlink()
        for path in (self.nginx_prefix / "www" / "upload").glob("*"):
            if path.is_file():
                path.unlink()

    def server_pids(self, system: str) -> Callable[[], list[int]]:
        """Names a server's processes when called (for each RSS and CPU sample)."""
        if system == "imgshare":
            return lambda: util.process_tree(self.imgshare_pid)
        if system == "nginx":
            return self.nginx_pids
        return lambda: [self.raw_pid]

    def split(self, items: Sequence[Any]) -> list[list[Any]]:
        """Deal ``items`` to the workers round-robin."""
        count = len(self.workers)
        return [list(items[i::count]) for i in range(count)]

    def open_pool(
        self, pool: str, system: str, logins: Sequence[list[str]], port: int = 0
    ) -> dict[str, Any]:
        """Open ``pool`` in every worker (imgshare: on ``port``, default the main server)."""
        answers = []
        for worker, part in zip(self.workers, self.split(logins), strict=True):
            worker.send("open", pool=pool, system=system, logins=part, threads=8, port=port)
        for worker in self.workers:
            answers.append(worker._read())
        return _merge(answers, ("opened", "failed", "try_later"), "seconds")

    def ping_pool(self, pool: str, reconnect: bool) -> dict[str, Any]:
        for worker in self.workers:
            worker.send("ping", pool=pool, reconnect=reconnect)
        return _merge(
            [w._read() for w in self.workers], ("alive", "total", "replaced", "try_later"), None
        )

    def close_pool(self, pool: str) -> None:
        for worker in self.workers:
            worker.call("close", pool=pool)

    def timed_upload(
        self,
        pool: str,
        files: Sequence[Path],
        temp: str,
        payload: int,
        system: str,
        pids: Callable[[], list[int]] | None = None,
    ) -> dict[str, Any]:
        """All connections of ``pool`` upload at once; latencies from the common start.

        The server's RSS and CPU are sampled over the run: ``system``'s processes, or
        those ``pids`` names (a server a scenario started)."""
        for worker in self.workers:
            worker.arm("upload", pool=pool, files=[str(f) for f in files])
        self.prepare(temp, payload)
        with util.RssSampler(pids or self.server_pids(system)) as rss:
            go = time.monotonic()
            for worker in self.workers:
                worker.go()
            answers = [w.result() for w in self.workers]
        results = [r for answer in answers for r in answer["results"]]
        figures = _upload_figures(results, go, rss)
        figures["try_later"] = sum(answer.get("try_later", 0) for answer in answers)
        return figures


def _merge(
    answers: list[dict[str, Any]], counts: Sequence[str], slowest: str | None
) -> dict[str, Any]:
    merged: dict[str, Any] = {name: sum(a[name] for a in answers) for name in counts}
    if slowest:
        merged[slowest] = max(a[slowest] for a in answers)
    errors: dict[str, int] = {}
    for answer in answers:
        for reason, count in answer.get("errors", {}).items():
            errors[reason] = errors.get(reason, 0) + count
    merged["errors"] = errors
    return merged


def _upload_figures(
    results: list[dict[str, Any]], go: float, rss: util.RssSampler
) -> dict[str, Any]:
    ok = [r for r in results if r.get("ok")]
    latencies = [r["end"] - go for r in ok]
    wall = max((r["end"] for r in results), default=go) - go
    total = sum(r["bytes"] for r in ok)
    errors: dict[str, int] = {}
    for r in results:
        if not r.get("ok"):
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    return {
        "count": len(results),
        "ok": len(ok),
        "seconds": wall,
        "images_s": len(ok) / wall if wall > 0 else 0.0,
        "mb_s": total / MB / wall if wall > 0 else 0.0,
        "p50": util.percentile(latencies, 0.50),
        "p99": util.percentile(latencies, 0.99),
        "rss_before": rss.before,
        "rss_peak": rss.peak,
        "rss_growth": rss.growth,
        "server_processes": rss.processes,
        "server_cpu_s": rss.cpu_seconds,
        # CPU of all the server's processes over the run, per image it stored
        "cpu_ms_per_image": rss.cpu_seconds * 1000 / len(ok) if ok else None,
        "errors": errors,
    }


def _rotate(systems: Sequence[str], run: int) -> list[str]:
    shift = run % len(systems)
    return list(systems[shift:]) + list(systems[:shift])


def _collect(
    runs: dict[str, dict[str, list[dict[str, Any]]]], names: Sequence[str]
) -> dict[str, Any]:
    """{temp: {system: [run dicts]}} -> {temp: {system: {figure: summary}}}."""
    out: dict[str, Any] = {}
    for temp, systems in runs.items():
        out[temp] = {}
        for system, items in systems.items():
            out[temp][system] = {
                name: util.summary([item[name] for item in items if item.get(name) is not None])
                for name in names
                if any(name in item for item in items)
            }
            errors: dict[str, int] = {}
            for item in items:
                for reason, count in item.get("errors", {}).items():
                    errors[reason] = errors.get(reason, 0) + count
            out[temp][system]["errors"] = errors
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# -- scenario 1: one big image ------------------------------------------------------------


def big_image(bench: Bench) -> dict[str, Any]:
    cfg = bench.config
    size = bench.big_file.stat().st_size
    bench.log(f"big image: {size / MB:.0f} MB TIFF, {cfg.runs} runs x {'/'.join(cfg.temps)}")
    opened = bench.open_pool("big", "imgshare", [["big", bench.password]])
    if opened["opened"] != 1:
        raise RuntimeError(f"cannot log in for the big image: {opened['errors']}")
    systems = ("imgshare", "nginx", "raw_tls")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        t: {s: [] for s in systems} for t in cfg.temps
    }
    first = bench.workers[0]
    for run in range(cfg.runs):
        for temp in cfg.temps:
            for system in _rotate(systems, run):
                bench.clear_uploads()
                if system == "imgshare":
                    first.call("ping", pool="big", reconnect=True)
                    figures = _big_via_worker(
                        bench, first, "upload", temp, size, pool="big", files=[str(bench.big_file)]
                    )
                elif system == "raw_tls":
                    figures = _big_via_worker(
                        bench,
                        first,
                        "raw",
                        temp,
                        size,
                        port=bench.raw_port,
                        file=str(bench.big_file),
                    )
                else:
                    figures = _big_curl(bench, temp, size)
                runs[temp][system].append(figures)
                bench.log(
                    f"  run {run + 1} {temp:4} {system:8} {figures['mb_s']:7.1f} MB/s"
                    f"  server RSS {figures['rss_before'] / util.MIB:6.0f} -> "
                    f"{figures['rss_peak'] / util.MIB:6.0f} MiB"
                )
    bench.clear_uploads()
    bench.close_pool("big")
    bench.check_alive()
    summary = _collect(runs, ("mb_s", "seconds", "rss_before", "rss_peak", "rss_growth"))
    ratios = {
        temp: {
            "vs_nginx": _ratio(
                summary[temp]["imgshare"]["mb_s"]["median"],
                summary[temp]["nginx"]["mb_s"]["median"],
            ),
            "vs_raw_tls": _ratio(
                summary[temp]["imgshare"]["mb_s"]["median"],
                summary[temp]["raw_tls"]["mb_s"]["median"],
            ),
        }
        for temp in cfg.temps
    }
    return {
        "payload_bytes": size,
        "runs": cfg.runs,
        "figures": summary,
        "ratios": ratios,
        "raw": runs,
    }


def _big_via_worker(
    bench: Bench, worker: WorkerHandle, op: str, temp: str, size: int, **arguments: Any
) -> dict[str, Any]:
    system = "imgshare" if op == "upload" else "raw_tls"
    worker.arm(op, **arguments)
    bench.prepare(temp, size)
    with util.RssSampler(bench.server_pids(system)) as rss:
        worker.go()
        answer = worker.result()
    result = answer["results"][0]
    if not result["ok"]:
        raise RuntimeError(f"{system} big upload failed: {result['error']}")
    seconds = result.get("seconds", result["end"] - result["begin"])
    return {
        "mb_s": size / MB / seconds,
        "seconds": seconds,
        "rss_before": rss.before,
        "rss_peak": rss.peak,
        "rss_growth": rss.growth,
    }


def _big_curl(bench: Bench, temp: str, size: int) -> dict[str, Any]:
    url = f"https://127.0.0.1:{bench.nginx_port}/upload/big-{time.monotonic_ns()}.tif"
    argv = [
        "curl", "-T", str(bench.big_file), url, "--cacert", str(bench.ca), "--tlsv1.3",
        "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_appconnect} %{time_total}",
    ]  # fmt: skip
    bench.prepare(temp, size)
    with util.RssSampler(bench.server_pids("nginx")) as rss:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    code, appconnect, total = done.stdout.split()
    if done.returncode != 0 or code not in ("201", "204"):
        raise RuntimeError(f"curl PUT failed: {code} {done.stderr.strip()}")
    seconds = float(total) - float(appconnect)  # like the others: after the TLS handshake
    return {
        "mb_s": size / MB / seconds,
        "seconds": seconds,
        "rss_before": rss.before,
        "rss_peak": rss.peak,
        "rss_growth": rss.growth,
    }


# -- scenario 2: many photos at once --------------------------------------------------------


PHOTO_FIGURES = (
    "ok", "images_s", "mb_s", "p50", "p99", "seconds", "rss_peak", "rss_growth",
    "server_cpu_s", "cpu_ms_per_image", "try_later",
)  # fmt: skip


def photos(bench: Bench) -> dict[str, Any]:
    cfg = bench.config
    files = bench.photo_files
    payload = _photo_payload(bench)
    bench.log(
        f"photos: {cfg.photos} clients x ~{payload / cfg.photos / MB:.1f} MB JPEG, "
        f"{cfg.runs} runs x {'/'.join(cfg.temps)}"
    )
    opened = bench.open_pool("photos", "imgshare", _photo_logins(bench))
    bench.log(
        f"  imgshare: {opened['opened']} sessions logged in in {opened['seconds']:.1f} s"
        + (f"  TRY_LATER answers {opened['try_later']}" if opened["try_later"] else "")
    )
    opened_nginx = bench.open_pool("photos_nginx", "nginx", [["", ""]] * cfg.photos)
    bench.log(f"  nginx: {opened_nginx['opened']} connections")
    pools = {"imgshare": "photos", "nginx": "photos_nginx"}
    systems = ("imgshare", "nginx")
    runs = _photo_runs(bench, systems, pools, {}, payload)
    bench.close_pool("photos_nginx")
    bench.close_pool("photos")
    bench.check_alive()
    summary = _photo_summary(runs, systems, cfg.temps)
    ratios = {
        temp: {
            "images_vs_nginx": _ratio(
                summary[temp]["imgshare"]["images_s"]["median"],
                summary[temp]["nginx"]["images_s"]["median"],
            ),
            "cpu_per_image_vs_nginx": _ratio(
                summary[temp]["imgshare"]["cpu_ms_per_image"]["median"],
                summary[temp]["nginx"]["cpu_ms_per_image"]["median"],
            ),
        }
        for temp in cfg.temps
    }
    return {
        "clients": cfg.photos,
        "payload_bytes": payload,
        "distinct_files": len(files),
        "login_setup": opened,
        "runs": cfg.runs,
        "figures": summary,
        "ratios": ratios,
        "raw": runs,
    }


def _photo_payload(bench: Bench) -> int:
    files = bench.photo_files
    return sum(files[i % len(files)].stat().st_size for i in range(bench.config.photos))


def _photo_logins(bench: Bench) -> list[list[str]]:
    cfg = bench.config
    return [[f"photo{i % cfg.photo_users:02d}", bench.password] for i in range(cfg.photos)]


def _photo_runs(
    bench: Bench,
    systems: Sequence[str],
    pools: dict[str, str],
    servers: dict[str, ExtraServer],
    payload: int,
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The timed photo bursts, systems taking turns; ``servers``: started by a scenario."""
    cfg = bench.config
    extra_data = [server.data for server in servers.values()]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        t: {s: [] for s in systems} for t in cfg.temps
    }
    for run in range(cfg.runs):
        for temp in cfg.temps:
            for system in _rotate(systems, run):
                bench.clear_uploads(*extra_data)
                bench.ping_pool(pools[system], reconnect=True)
                server = servers.get(system)
                figures = bench.timed_upload(
                    pools[system],
                    bench.photo_files,
                    temp,
                    payload,
                    "nginx" if system == "nginx" else "imgshare",
                    pids=server.pids if server is not None else None,
                )
                runs[temp][system].append(figures)
                cpu = figures["cpu_ms_per_image"]
                bench.log(
                    f"  run {run + 1} {temp:4} {system:9} {figures['ok']:4}/{figures['count']}"
                    f" ok {figures['images_s']:7.1f} img/s {figures['mb_s']:7.1f} MB/s"
                    f" p50 {figures['p50']:.2f} s p99 {figures['p99']:.2f} s"
                    f"  RSS peak {figures['rss_peak'] / util.MIB:.0f} MiB"
                    f" ({figures['server_processes']} proc)"
                    f"  CPU {'-' if cpu is None else f'{cpu:.1f}'} ms/img"
                    + (f"  TRY_LATER {figures['try_later']}" if figures["try_later"] else "")
                    + (f"  errors {figures['errors']}" if figures["errors"] else "")
                )
    bench.clear_uploads(*extra_data)
    return runs


def _photo_summary(
    runs: dict[str, dict[str, list[dict[str, Any]]]], systems: Sequence[str], temps: Sequence[str]
) -> dict[str, Any]:
    summary = _collect(runs, PHOTO_FIGURES)
    for temp in temps:
        for system in systems:
            items = runs[temp][system]
            summary[temp][system]["p99_over_p50"] = util.summary(
                [i["p99"] / i["p50"] for i in items if i["ok"] and i["p50"] > 0]
            )
    return summary


# -- scenario 2b: photos with one and with two server workers ----------------------------------


WORKER_COUNTS = {"workers_1": 1, "workers_2": 2}


def photos_workers(bench: Bench) -> dict[str, Any]:
    """The photos burst against two more imgshare servers, ``--workers 1`` and
    ``--workers 2``, each on a data folder of its own (same CA and users) and its own
    port, both started before the first run so that their runs take turns like the
    systems of the photos scenario. (nginx and the main server stay up, idle.)"""
    cfg = bench.config
    payload = _photo_payload(bench)
    systems = tuple(WORKER_COUNTS)
    bench.log(
        f"photos, --workers 1 vs 2: {cfg.photos} clients, {cfg.runs} runs x {'/'.join(cfg.temps)}"
    )
    servers: dict[str, ExtraServer] = {}
    stopped: dict[str, Any] = {}
    pools = {system: f"photos_{system}" for system in systems}
    opened: dict[str, Any] = {}
    try:
        for system, count in WORKER_COUNTS.items():
            servers[system] = bench.start_server(system, count)
        for system, server in servers.items():
            opened[system] = bench.open_pool(
                pools[system], "imgshare", _photo_logins(bench), port=server.port
            )
            answer = opened[system]
            bench.log(
                f"  {system}: {len(server.pids()) - 1} worker processes, {answer['opened']}"
                f" sessions logged in in {answer['seconds']:.1f} s"
                + (f"  TRY_LATER answers {answer['try_later']}" if answer["try_later"] else "")
                + (f"  errors {answer['errors']}" if answer["errors"] else "")
            )
            if answer["opened"] != cfg.photos:
                raise RuntimeError(f"{system}: only {answer['opened']} of {cfg.photos} logged in")
        workers_seen = {system: len(server.pids()) - 1 for system, server in servers.items()}
        runs = _photo_runs(bench, systems, pools, servers, payload)
        for system, server in servers.items():
            if server.proc.poll() is not None:
                raise RuntimeError(f"{system} server exited with {server.proc.returncode}")
    finally:
        for system in servers:
            with contextlib.suppress(RuntimeError):
                bench.close_pool(pools[system])
        for system, server in servers.items():
            stopped[system] = bench.stop_server(server)
    summary = _photo_summary(runs, systems, cfg.temps)
    ratios = {
        temp: {
            "images_2_vs_1": _ratio(
                summary[temp]["workers_2"]["images_s"]["median"],
                summary[temp]["workers_1"]["images_s"]["median"],
            ),
        }
        for temp in cfg.temps
    }
    return {
        "clients": cfg.photos,
        "payload_bytes": payload,
        "workers": WORKER_COUNTS,
        "workers_seen": workers_seen,
        "login_setup": opened,
        "servers": stopped,
        "runs": cfg.runs,
        "figures": summary,
        "ratios": ratios,
        "raw": runs,
    }


# -- scenario 3: held connections ------------------------------------------------------------


def held(bench: Bench) -> dict[str, Any]:
    cfg = bench.config
    files = bench.photo_files
    payload = sum(files[i % len(files)].stat().st_size for i in range(cfg.held_uploads))
    bench.log(f"held connections: {cfg.held} idle sessions, then {cfg.held_uploads} uploads")
    pids = bench.server_pids("imgshare")
    # Fresh sessions that have only logged in: sessions that uploaded before would
    # also measure what an upload leaves behind in the server.
    pools = ["held"]
    # The uploaders log in first, so that no held session idles long before run 1
    # (the server's default idle timeout is 300 s; each run pings every held session).
    uploaders = [[f"heldup{i % 10:02d}", bench.password] for i in range(cfg.held_uploads)]
    up_opened = bench.open_pool("held_up", "imgshare", uploaders)
    rss_start = util.rss_bytes(pids())
    with util.RssSampler(pids) as setup_rss:
        opened = bench.open_pool("held", "imgshare", [["held", bench.password]] * cfg.held)
    rss_held = util.rss_bytes(pids())
    bench.log(
        f"  {opened['opened']} held ({opened['failed']} failed) in {opened['seconds']:.1f} s;"
        f" server RSS {rss_start / util.MIB:.0f} -> {rss_held / util.MIB:.0f} MiB"
        f" (peak while logging in {setup_rss.peak / util.MIB:.0f} MiB)"
        + (f"  TRY_LATER answers {opened['try_later']}" if opened["try_later"] else "")
        + (f"  errors {opened['errors']}" if opened["errors"] else "")
    )

    def ping_held(reconnect: bool) -> dict[str, Any]:
        answers = [bench.ping_pool(pool, reconnect) for pool in pools]
        return _merge(answers, ("alive", "total", "replaced"), None)

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {t: {"imgshare": []} for t in cfg.temps}
    for run in range(cfg.runs):
        for temp in cfg.temps:
            bench.clear_uploads()
            before = ping_held(reconnect=False)
            bench.ping_pool("held_up", reconnect=True)
            figures = bench.timed_upload("held_up", files, temp, payload, "imgshare")
            after = ping_held(reconnect=True)
            figures["held_before"] = before["alive"]
            figures["held"] = after["alive"]
            figures["rss_peak_total"] = figures["rss_peak"]
            runs[temp]["imgshare"].append(figures)
            bench.log(
                f"  run {run + 1} {temp:4} held {before['alive']}->{after['alive']}"
                f"/{cfg.held}  uploads {figures['ok']}/{figures['count']} ok"
                f"  p50 {figures['p50']:.2f} s p99 {figures['p99']:.2f} s"
                f"  server RSS peak {figures['rss_peak'] / util.MIB:.0f} MiB"
                + (f"  TRY_LATER {figures['try_later']}" if figures["try_later"] else "")
                + (f"  errors {figures['errors']}" if figures["errors"] else "")
                + (f"  ping errors {after['errors']}" if after["errors"] else "")
            )
    bench.clear_uploads()
    bench.close_pool("held_up")
    for pool in pools:
        bench.close_pool(pool)
    bench.check_alive()
    names = ("held", "held_before", "ok", "p50", "p99", "images_s", "rss_peak", "try_later")
    summary = _collect(runs, names)
    return {
        "held_target": cfg.held,
        "uploads": cfg.held_uploads,
        "open": opened,
        "uploaders_open": up_opened,
        "rss_start": rss_start,
        "rss_held_idle": rss_held,
        "rss_peak_setup": setup_rss.peak,
        "runs": cfg.runs,
        "figures": summary,
        "raw": runs,
    }


# -- scenario 4: new sessions -----------------------------------------------------------------


SESSION_KINDS = {
    "nginx_tls": "nginx: TLS 1.3 handshake",
    "imgshare_tls": "imgshare: TLS 1.3 handshake only (diagnostic)",
    "imgshare_app": "imgshare: TLS + app handshake, no login",
    "imgshare_token": "imgshare: TLS + app handshake + token login",
    "imgshare_login": "imgshare: TLS + app handshake + password login (argon2id)",
}


def sessions(bench: Bench) -> dict[str, Any]:
    cfg = bench.config
    threads = cfg.session_threads
    bench.log(
        f"new sessions: {len(bench.workers)} x {threads} client threads,"
        f" {cfg.session_seconds:g} s a run, {cfg.runs} runs"
    )
    kinds = tuple(SESSION_KINDS)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {"warm": {k: [] for k in kinds}}
    for run in range(cfg.runs):
        for kind in _rotate(kinds, run):
            for worker in bench.workers:
                worker.arm(
                    "sessions",
                    kind=kind,
                    seconds=cfg.session_seconds,
                    threads=cfg.login_threads if kind == "imgshare_login" else threads,
                    user="login",
                    password=bench.login_password,
                )
            bench.prepare("warm", 64 * util.MIB)
            system = "nginx" if kind.startswith("nginx") else "imgshare"
            with util.RssSampler(bench.server_pids(system)) as rss:
                go = time.monotonic()
                for worker in bench.workers:
                    worker.go()
                results = [r for w in bench.workers for r in w.result()["results"]]
            figures = _session_figures(results, go, rss)
            runs["warm"][kind].append(figures)
            bench.log(
                f"  run {run + 1} {kind:15} {figures['per_s']:8.1f}/s"
                f"  p50 {figures['p50'] * 1000:6.1f} ms  failed {figures['failed']}"
                + (f"  errors {figures['errors']}" if figures["errors"] else "")
            )
            time.sleep(0.5)
    bench.check_alive()
    summary = _collect(runs, ("per_s", "p50", "p99", "done", "failed", "rss_peak"))
    ratios = {
        "warm": {
            "app_vs_nginx_tls": _ratio(
                summary["warm"]["imgshare_app"]["per_s"]["median"],
                summary["warm"]["nginx_tls"]["per_s"]["median"],
            ),
            "tls_vs_nginx_tls": _ratio(
                summary["warm"]["imgshare_tls"]["per_s"]["median"],
                summary["warm"]["nginx_tls"]["per_s"]["median"],
            ),
            "token_vs_nginx_tls": _ratio(
                summary["warm"]["imgshare_token"]["per_s"]["median"],
                summary["warm"]["nginx_tls"]["per_s"]["median"],
            ),
            "login_vs_nginx_tls": _ratio(
                summary["warm"]["imgshare_login"]["per_s"]["median"],
                summary["warm"]["nginx_tls"]["per_s"]["median"],
            ),
        }
    }
    return {
        "kinds": SESSION_KINDS,
        "client_threads": threads * len(bench.workers),
        "login_client_threads": cfg.login_threads * len(bench.workers),
        "seconds_per_run": cfg.session_seconds,
        "runs": cfg.runs,
        "figures": summary,
        "ratios": ratios,
        "raw": {
            t: {
                k: [{x: v for x, v in r.items() if x != "latencies"} for r in items]
                for k, items in kinds_.items()
            }
            for t, kinds_ in runs.items()
        },
    }


def _session_figures(
    results: list[dict[str, Any]], go: float, rss: util.RssSampler
) -> dict[str, Any]:
    done = sum(r.get("done", 0) for r in results)
    failed = sum(r.get("failed", 0) for r in results)
    latencies = [x for r in results for x in r.get("latencies", [])]
    wall = max(r["end"] for r in results) - go
    errors: dict[str, int] = {}
    for r in results:
        if not r.get("ok"):
            errors[r["error"]] = errors.get(r["error"], 0) + 1
        for reason, count in r.get("errors", {}).items():
            errors[reason] = errors.get(reason, 0) + count
    return {
        "done": done,
        "failed": failed,
        "seconds": wall,
        "per_s": done / wall if wall > 0 else 0.0,
        "p50": util.percentile(latencies, 0.5) if latencies else 0.0,
        "p99": util.percentile(latencies, 0.99) if latencies else 0.0,
        "rss_peak": rss.peak,
        "errors": errors,
    }


# -- scenario 5: the command-line client as a user runs it ------------------------------------


CLI_COMMANDS = {
    "imgshare_send": "imgshare send PHOTO (saved login: a token): start to checked receipt",
    "curl_put": "curl -T PHOTO https://nginx/upload/NAME",
    "imgshare_list": "imgshare list (saved login): start, connect, log in, list",
    "curl_get": "curl https://nginx/upload/SMALL (1 KiB)",
}
#: The big image and the burst of photos, each one process (or four loops) a run.
CLI_BULK = {
    "imgshare_send_big": "imgshare send BIG.tif",
    "curl_put_big": "curl -T BIG.tif",
    "imgshare_send_many": "imgshare send --parallel 4 PHOTOS (one process)",
    "curl_put_many": "4 parallel loops of curl -T PHOTO, one process per photo",
}
#: ratio name -> (ours, theirs, figure): times (lower is better) or rates (higher).
CLI_RATIOS = {
    "send_vs_curl_put": ("imgshare_send", "curl_put", "seconds"),
    "list_vs_curl_get": ("imgshare_list", "curl_get", "seconds"),
    "big_vs_curl_put": ("imgshare_send_big", "curl_put_big", "mb_s"),
    "many_vs_curl_loops": ("imgshare_send_many", "curl_put_many", "images_s"),
}
CLI_USER = "cli"  # the server's default argon2id hash: only the untimed login pays it
CLI_PARALLEL = 4


def cli(bench: Bench) -> dict[str, Any]:
    """Whole processes, start to finish, each beside curl against nginx in the same
    run: ``imgshare send`` of one ~4 MB photo and ``imgshare list`` with the login that
    ``imgshare login`` saved (a token; logged in once, untimed), against ``curl -T`` of
    the same photo and a ``curl`` GET of a 1 KiB file; ``imgshare send`` of the big
    TIFF against ``curl -T``; ``imgshare send --parallel 4`` of the photo burst
    against 4 parallel loops of ``curl -T``, one curl process per photo."""
    cfg = bench.config
    photo = bench.photo_files[0]
    small_name = "cli-small.txt"
    nginx_url = f"https://127.0.0.1:{bench.nginx_port}/upload/"
    env = _cli_environment(bench)
    curl = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(bench.ca)]
    burst = _burst_folder(bench, cfg.photos)
    burst_bytes = sum(path.stat().st_size for path in burst)
    big_bytes = bench.big_file.stat().st_size

    def argv(kind: str) -> list[str]:
        if kind == "imgshare_send":
            return [str(bench.imgshare), "send", "--json", str(photo)]
        if kind == "imgshare_list":
            return [str(bench.imgshare), "list"]
        if kind == "curl_put":
            return [*curl, "-T", str(photo), f"{nginx_url}cli-{time.monotonic_ns()}.jpg"]
        if kind == "imgshare_send_big":
            return [str(bench.imgshare), "send", "--json", str(bench.big_file)]
        if kind == "curl_put_big":
            return [*curl, "--tlsv1.3", "-T", str(bench.big_file), f"{nginx_url}cli-big.tif"]
        if kind == "imgshare_send_many":
            return [str(bench.imgshare), "send", "--json", "--parallel", str(CLI_PARALLEL),
                    *map(str, burst)]  # fmt: skip
        if kind == "curl_put_many":
            return ["bash", "-c", _curl_loops(curl, burst, nginx_url)]
        return [*curl, nginx_url + small_name]

    expected = {"imgshare_send": 1, "imgshare_send_big": 1, "imgshare_send_many": len(burst)}
    bench.log(
        f"command line: {photo.stat().st_size / MB:.1f} MB photo and list ({cfg.cli_runs} "
        f"timed runs each), {big_bytes / MB:.0f} MB TIFF and {len(burst)} photos with "
        f"--parallel {CLI_PARALLEL} ({cfg.runs} each), every one beside curl"
    )

    def clear() -> None:  # every upload of the run, and the small file back for curl GET
        bench.clear_uploads()
        (bench.nginx_prefix / "www" / "upload" / small_name).write_bytes(bytes(range(256)) * 4)

    clear()
    login = subprocess.run(
        [str(bench.imgshare), "login", "--server", f"127.0.0.1:{bench.imgshare_port}",
         "--ca", str(bench.ca), "--user", CLI_USER, "--name", "bench"],
        env={**env, "IMGSHARE_PASSWORD": bench.login_password},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if login.returncode != 0:
        raise RuntimeError(f"imgshare login failed: {login.stderr.strip()[-300:]}")
    kinds = tuple(CLI_COMMANDS)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        "warm": {k: [] for k in (*kinds, *CLI_BULK)}
    }
    for kind in kinds:  # untimed: the page cache holds the programs and their modules
        _run_command(kind, argv(kind), env, expected.get(kind))
    for run in range(cfg.cli_runs):
        for kind in _rotate(kinds, run):
            bench.prepare("warm", 16 * util.MIB)
            runs["warm"][kind].append(_run_command(kind, argv(kind), env, expected.get(kind)))
        line = "  ".join(f"{k} {runs['warm'][k][-1]['seconds']:.3f} s" for k in kinds)
        bench.log(f"  run {run + 1}  {line}")
        clear()
    sizes = {"imgshare_send_big": (big_bytes, 1), "curl_put_big": (big_bytes, 1),
             "imgshare_send_many": (burst_bytes, len(burst)),
             "curl_put_many": (burst_bytes, len(burst))}  # fmt: skip
    for pair in (("imgshare_send_big", "curl_put_big"), ("imgshare_send_many", "curl_put_many")):
        for run in range(cfg.runs):
            for kind in _rotate(pair, run):
                bench.clear_uploads()
                payload, count = sizes[kind]
                bench.prepare("warm", payload)
                figures = _run_command(kind, argv(kind), env, expected.get(kind))
                figures["mb_s"] = payload / MB / figures["seconds"]
                figures["images_s"] = count / figures["seconds"]
                runs["warm"][kind].append(figures)
            bench.log(
                "  run " + str(run + 1) + "  " + "  ".join(
                    f"{k} {runs['warm'][k][-1]['seconds']:.2f} s"
                    f" ({runs['warm'][k][-1]['mb_s']:.0f} MB/s)" for k in pair
                )
            )  # fmt: skip
    bench.clear_uploads()
    bench.check_alive()
    summary = _collect(runs, ("seconds", "cpu_s", "mb_s", "images_s"))
    for name, (ours, theirs, figure) in CLI_RATIOS.items():
        pairs = zip(runs["warm"][ours], runs["warm"][theirs], strict=True)
        summary["warm"][name] = {
            "x": util.summary([a[figure] / b[figure] for a, b in pairs])
        }  # per run, for the spread
    ratios = {
        "warm": {
            name: _ratio(
                summary["warm"][ours][figure]["median"],
                summary["warm"][theirs][figure]["median"],
            )
            for name, (ours, theirs, figure) in CLI_RATIOS.items()
        }
    }
    return {
        "commands": {**CLI_COMMANDS, **CLI_BULK},
        "user": CLI_USER,
        "login": "token (imgshare login, once, untimed)",
        "photo_bytes": photo.stat().st_size,
        "big_bytes": big_bytes,
        "burst_photos": len(burst),
        "burst_bytes": burst_bytes,
        "parallel": CLI_PARALLEL,
        "runs": cfg.cli_runs,
        "bulk_runs": cfg.runs,
        "figures": summary,
        "ratios": ratios,
        "raw": runs,
    }


def _cli_environment(bench: Bench) -> dict[str, str]:
    """The commands' environment: a profile of their own, nothing of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSHARE_")}
    env["IMGSHARE_CONFIG"] = str(bench.root / "cli-profile.json")
    return env


def _burst_folder(bench: Bench, count: int) -> list[Path]:
    """``count`` photos under names of their own (hard links to the bench's photos)."""
    folder = bench.root / "cli-burst"
    folder.mkdir(exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"photo-{index:03d}.jpg"
        if not path.exists():
            os.link(bench.photo_files[index % len(bench.photo_files)], path)
        paths.append(path)
    return paths


def _curl_loops(curl: list[str], files: list[Path], url: str) -> str:
    """A shell script: ``CLI_PARALLEL`` loops at once, each a curl process per photo."""
    quoted = " ".join(shlex.quote(part) for part in curl)
    loops = []
    for loop in range(CLI_PARALLEL):
        names = " ".join(shlex.quote(str(path)) for path in files[loop::CLI_PARALLEL])
        loops.append(
            f'(for f in {names}; do code=$({quoted} -T "$f" {shlex.quote(url)}'
            f'many-{loop}-$(basename "$f")) || exit 1; case $code in 201|204) ;; '
            '*) echo "HTTP $code" >&2; exit 1;; esac; done) &'
        )
    return "\n".join([*loops, "status=0", "for job in $(jobs -p); do wait $job || status=1; done",
                      "exit $status"])  # fmt: skip


def _run_command(
    kind: str, argv: list[str], env: dict[str, str] | None = None, images: int | None = None
) -> dict[str, Any]:
    """Run one command to its end: wall seconds and its CPU (user + system). An
    ``imgshare send`` must print ``images`` checked receipts (``--json``)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    expected = {"curl_put": ("201", "204"), "curl_get": ("200",),
                "curl_put_big": ("201", "204")}.get(kind)  # fmt: skip
    if done.returncode != 0 or (expected is not None and done.stdout.strip() not in expected):
        output = (done.stdout + done.stderr).strip()[-300:]
        raise RuntimeError(f"{kind} failed ({done.returncode}): {output}")
    if images is not None:
        receipts = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        if len([r for r in receipts if r.get("id")]) != images:
            raise RuntimeError(
                f"{kind}: {len(receipts)} receipts, not {images}: {done.stdout[-300:]}"
            )
    return {
        "seconds": seconds,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "stderr": done.stderr.strip()[-300:],
    }


# -- scenario 6: PostgreSQL + SeaweedFS, and two nodes behind haproxy (bench/backends.py) ----


def backends(bench: Bench) -> dict[str, Any]:
    """Issue 13's goals: photos and the big image on PostgreSQL + SeaweedFS against
    the embedded default, and photos on one node against two behind haproxy."""
    from bench import backends as scenario  # it uses this module's helpers

    return scenario.run(bench)


SCENARIOS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "big_image": big_image,
    "photos": photos,
    "held": held,
    "sessions": sessions,
    "photos_workers": photos_workers,
    "cli": cli,
    "backends": backends,
}
