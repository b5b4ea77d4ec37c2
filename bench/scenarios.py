"""The four scenarios: big image, photos, held connections, new sessions.

Each timed run is preceded by either ``warm_memory`` (a scratch file of
``WARM_FACTOR`` x the payload, written and deleted right before) or a cold pause,
and the systems take turns run by run (A B C, then B C A, ...), so that slow drift
of the VM hits every system alike. Every upload is deleted again after its run
(imgshare's files from the data folder behind the server's back, nginx's from its
folder), so the disk and the page cache look the same to every run.
"""

from __future__ import annotations

import json
import select
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
class Bench:
    """Everything a scenario needs: settings, folders, processes and their ports."""

    config: Config
    root: Path
    data: Path
    nginx_prefix: Path
    ca: Path
    big_file: Path
    photo_files: list[Path]
    imgshare_pid: int
    nginx_pids: Callable[[], list[int]]
    nginx_port: int
    raw_port: int
    raw_pid: int
    workers: list[WorkerHandle]
    password: str
    login_password: str
    check_alive: Callable[[], None]
    log: Callable[[str], None] = print

    # -- helpers ---------------------------------------------------------------------

    def prepare(self, temp: str, payload: int) -> float:
        """Warm memory right before a timed run, or stay idle for a cold one."""
        if temp == "warm":
            return util.warm_memory(self.root, int(payload * WARM_FACTOR))
        util.cold_pause()
        return 0.0

    def clear_uploads(self) -> None:
        """Delete the images of earlier runs, for both systems."""
        for folder in (self.data / "objects", self.data / "inbox"):
            if folder.is_dir():
                for path in folder.rglob("*"):
                    if path.is_file():
                        path.unlink()
        for path in (self.nginx_prefix / "www" / "upload").glob("*"):
            if path.is_file():
                path.unlink()

    def server_pids(self, system: str) -> list[int]:
        if system == "imgshare":
            return [self.imgshare_pid]
        if system == "nginx":
            return self.nginx_pids()
        return [self.raw_pid]

    def split(self, items: Sequence[Any]) -> list[list[Any]]:
        """Deal ``items`` to the workers round-robin."""
        count = len(self.workers)
        return [list(items[i::count]) for i in range(count)]

    def open_pool(self, pool: str, system: str, logins: Sequence[list[str]]) -> dict[str, Any]:
        answers = []
        for worker, part in zip(self.workers, self.split(logins), strict=True):
            worker.send("open", pool=pool, system=system, logins=part, threads=8)
        for worker in self.workers:
            answers.append(worker._read())
        return _merge(answers, ("opened", "failed"), "seconds")

    def ping_pool(self, pool: str, reconnect: bool) -> dict[str, Any]:
        for worker in self.workers:
            worker.send("ping", pool=pool, reconnect=reconnect)
        return _merge([w._read() for w in self.workers], ("alive", "total", "replaced"), None)

    def close_pool(self, pool: str) -> None:
        for worker in self.workers:
            worker.call("close", pool=pool)

    def timed_upload(
        self, pool: str, files: Sequence[Path], temp: str, payload: int, system: str
    ) -> dict[str, Any]:
        """All connections of ``pool`` upload at once; latencies from the common start."""
        for worker in self.workers:
            worker.arm("upload", pool=pool, files=[str(f) for f in files])
        self.prepare(temp, payload)
        with util.RssSampler(self.server_pids(system)) as rss:
            go = time.monotonic()
            for worker in self.workers:
                worker.go()
            results = [r for w in self.workers for r in w.result()["results"]]
        return _upload_figures(results, go, rss)


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


def photos(bench: Bench) -> dict[str, Any]:
    cfg = bench.config
    files = bench.photo_files
    payload = sum(files[i % len(files)].stat().st_size for i in range(cfg.photos))
    bench.log(
        f"photos: {cfg.photos} clients x ~{payload / cfg.photos / MB:.1f} MB JPEG, "
        f"{cfg.runs} runs x {'/'.join(cfg.temps)}"
    )
    logins = [[f"photo{i % cfg.photo_users:02d}", bench.password] for i in range(cfg.photos)]
    opened = bench.open_pool("photos", "imgshare", logins)
    bench.log(f"  imgshare: {opened['opened']} sessions logged in in {opened['seconds']:.1f} s")
    opened_nginx = bench.open_pool("photos_nginx", "nginx", [["", ""]] * cfg.photos)
    bench.log(f"  nginx: {opened_nginx['opened']} connections")
    pools = {"imgshare": "photos", "nginx": "photos_nginx"}
    systems = ("imgshare", "nginx")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        t: {s: [] for s in systems} for t in cfg.temps
    }
    for run in range(cfg.runs):
        for temp in cfg.temps:
            for system in _rotate(systems, run):
                bench.clear_uploads()
                bench.ping_pool(pools[system], reconnect=True)
                figures = bench.timed_upload(pools[system], files, temp, payload, system)
                runs[temp][system].append(figures)
                bench.log(
                    f"  run {run + 1} {temp:4} {system:8} {figures['ok']:4}/{figures['count']}"
                    f" ok {figures['images_s']:7.1f} img/s {figures['mb_s']:7.1f} MB/s"
                    f" p50 {figures['p50']:.2f} s p99 {figures['p99']:.2f} s"
                    f"  RSS peak {figures['rss_peak'] / util.MIB:.0f} MiB"
                    + (f"  errors {figures['errors']}" if figures["errors"] else "")
                )
    bench.clear_uploads()
    bench.close_pool("photos_nginx")
    bench.close_pool("photos")
    bench.check_alive()
    names = ("ok", "images_s", "mb_s", "p50", "p99", "seconds", "rss_peak", "rss_growth")
    summary = _collect(runs, names)
    for temp in cfg.temps:
        for system in systems:
            items = runs[temp][system]
            summary[temp][system]["p99_over_p50"] = util.summary(
                [i["p99"] / i["p50"] for i in items if i["ok"] and i["p50"] > 0]
            )
    ratios = {
        temp: {
            "images_vs_nginx": _ratio(
                summary[temp]["imgshare"]["images_s"]["median"],
                summary[temp]["nginx"]["images_s"]["median"],
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


# -- scenario 3: held connections ------------------------------------------------------------


def held(bench: Bench) -> dict[str, Any]:
    cfg = bench.config
    files = bench.photo_files
    payload = sum(files[i % len(files)].stat().st_size for i in range(cfg.held_uploads))
    bench.log(f"held connections: {cfg.held} idle sessions, then {cfg.held_uploads} uploads")
    pid = [bench.imgshare_pid]
    # Fresh sessions that have only logged in: sessions that uploaded before would
    # also measure what an upload leaves behind in the server.
    pools = ["held"]
    # The uploaders log in first, so that no held session idles long before run 1
    # (the server's default idle timeout is 300 s; each run pings every held session).
    uploaders = [[f"heldup{i % 10:02d}", bench.password] for i in range(cfg.held_uploads)]
    up_opened = bench.open_pool("held_up", "imgshare", uploaders)
    rss_start = util.rss_bytes(pid)
    with util.RssSampler(pid) as setup_rss:
        opened = bench.open_pool("held", "imgshare", [["held", bench.password]] * cfg.held)
    rss_held = util.rss_bytes(pid)
    bench.log(
        f"  {opened['opened']} held ({opened['failed']} failed) in {opened['seconds']:.1f} s;"
        f" server RSS {rss_start / util.MIB:.0f} -> {rss_held / util.MIB:.0f} MiB"
        f" (peak while logging in {setup_rss.peak / util.MIB:.0f} MiB)"
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
                + (f"  errors {figures['errors']}" if figures["errors"] else "")
                + (f"  ping errors {after['errors']}" if after["errors"] else "")
            )
    bench.clear_uploads()
    bench.close_pool("held_up")
    for pool in pools:
        bench.close_pool(pool)
    bench.check_alive()
    summary = _collect(runs, ("held", "held_before", "ok", "p50", "p99", "images_s", "rss_peak"))
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
    "imgshare_app": "imgshare: TLS + app handshake (stand-in for token login)",
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


SCENARIOS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "big_image": big_image,
    "photos": photos,
    "held": held,
    "sessions": sessions,
}
