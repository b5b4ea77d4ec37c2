"""imgshare benchmark harness: ``python -m bench.run [--quick]`` (``make bench``).

Starts everything it needs itself, in a temporary folder on the same disk as the
data: our server (default settings: a supervisor and one worker process per CPU;
``--listen-mode`` to choose how the workers listen), nginx (HTTPS, PUT to disk), a raw
TLS 1.3 receiver, and load-generator processes; runs the scenarios of
docs/performance.md (``photos_workers`` starts two more servers of its own;
``backends`` PostgreSQL, SeaweedFS, two nodes on them and two haproxy, see
bench/backends.py);
prints a table, writes ``bench/results/latest.json`` and (full run) the chart
``docs/performance.png``. Everything it started is stopped at the end, also on
Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import IO, Any

from bench import images, nginx, report, scenarios, util

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
CHART = REPO / "docs" / "performance.png"
PASSWORD = "bench-password-1"
LOGIN_PASSWORD = "bench-login-password-1"
# Cheap argon2id for the bench users, so that logins in the photos and held scenarios
# cost little. (The server upgrades such a hash to its own parameters on the first
# successful login, so only that first login of each user is cheap: see the docs.)
CHEAP_ARGON2 = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small payloads, 3 warm runs (<3 min)")
    parser.add_argument("--runs", type=int, help="runs per system and scenario (full: 5)")
    parser.add_argument(
        "--only",
        default=",".join(scenarios.SCENARIOS),
        help="comma-separated scenarios: " + ", ".join(scenarios.SCENARIOS),
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--chart", type=Path, help="write the chart here (full run: docs/)")
    parser.add_argument("--workers", type=int, help="load-generator processes (default 2)")
    parser.add_argument(
        "--listen-mode",
        choices=LISTEN_MODES,
        help="imgshare's listen_mode (IMGSHARE_LISTEN_MODE): one listening socket shared by"
        " the workers, or one SO_REUSEPORT socket each [default: the server's, shared]",
    )
    return parser.parse_args(argv)


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = scenarios.Config.quick() if args.quick else scenarios.Config.full()
    if args.runs:
        config = dataclasses.replace(config, runs=args.runs)
    if args.workers:
        config = dataclasses.replace(config, workers=args.workers)
    selected = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(selected) - set(scenarios.SCENARIOS)
    if unknown:
        print(f"unknown scenario(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    children = util.Children()
    root = Path(tempfile.mkdtemp(prefix="imgshare-bench-", dir="/var/tmp"))
    try:
        results = run(config, selected, root, children, args.listen_mode)
    except KeyboardInterrupt:
        print("bench: interrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
        if args.keep:
            print(f"bench: kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    goals = report.evaluate(results)
    results["goals"] = goals
    report.print_table(results, goals)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for path in (RESULTS / "latest.json", RESULTS / f"{config.mode}.json"):
        report.write_json(path, results)
    everything = len(selected) == len(scenarios.SCENARIOS)
    chart = args.chart or (CHART if config.mode == "full" and everything else None)
    if chart is not None:
        report.chart(results, goals, chart)
        print(f"chart: {chart}")
    print(f"results: {RESULTS / 'latest.json'}")
    return 0


def run(
    config: scenarios.Config,
    selected: list[str],
    root: Path,
    children: util.Children,
    listen_mode: str | None = None,
) -> dict[str, Any]:
    started = time.time()
    print(f"bench: {config.mode} run in {root}", flush=True)
    nginx_version = nginx.ensure_installed()
    imgshare = Path(sys.executable).parent / "imgshare"
    data = root / "data"
    data.mkdir(mode=0o700)
    certs = data / "certs"
    subprocess.run(
        [str(imgshare), "certs", "init", "--dir", str(certs)], check=True, stdout=subprocess.DEVNULL
    )
    _add_users(data, config)

    with scenarios_phase("test images"):
        big_file = root / "big.tif"
        images.make_tiff(big_file, config.big_side)
        photo_dir = root / "photos"
        photo_dir.mkdir()
        photo_files = images.make_jpegs(photo_dir, config.photo_files)

    ports = {name: util.free_port() for name in ("imgshare", "nginx", "raw")}
    server_log = (root / "imgshare.log").open("w")
    server = _start_imgshare(
        children, "imgshare serve", imgshare, data, ports["imgshare"], server_log, listen_mode
    )
    prefix = root / "nginx"
    config_file = nginx.write_config(
        prefix, ports["nginx"], certs / "server.pem", certs / "server.key"
    )
    nginx_proc = children.start(
        "nginx", nginx.argv(prefix, config_file),
        stdout=subprocess.DEVNULL, stderr=(prefix / "stderr.log").open("w"),
    )  # fmt: skip
    raw = children.start(
        "raw TLS receiver",
        [sys.executable, "-m", "bench.rawtls", "--port", str(ports["raw"]),
         "--cert", str(certs / "server.pem"), "--key", str(certs / "server.key")],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=(root / "rawtls.log").open("w"),
    )  # fmt: skip
    util.wait_for_port(ports["imgshare"], 30, server)
    util.wait_for_port(ports["nginx"], 30, nginx_proc)
    util.wait_for_port(ports["raw"], 30, raw)
    workers = []
    for index in range(config.workers):
        proc = children.start(
            f"load generator {index}",
            [sys.executable, "-m", "bench.loadgen", "--imgshare-port", str(ports["imgshare"]),
             "--nginx-port", str(ports["nginx"]), "--ca", str(certs / "ca.pem")],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        workers.append(scenarios.WorkerHandle(proc))

    def check_alive() -> None:
        if server.poll() is not None:
            raise RuntimeError(f"imgshare server exited with {server.returncode}; see its log")

    extra_servers: dict[str, Any] = {}

    def start_server(
        name: str, workers: int, env: dict[str, str] | None = None
    ) -> scenarios.ExtraServer:
        """Another imgshare server: own data folder (same CA and users), port and log;
        ``env``: more settings (``IMGSHARE_*``, ``AWS_*``: a node on shared storage)."""
        folder = root / f"data-{name}"
        folder.mkdir(mode=0o700)
        shutil.copytree(certs, folder / "certs")
        _add_users(folder, config)
        port = util.free_port()
        log_path = root / f"imgshare-{name}.log"
        with log_path.open("w") as log:
            proc = _start_imgshare(
                children, f"imgshare serve ({name})", imgshare, folder, port, log, listen_mode,
                workers=workers, env=env,
            )  # fmt: skip
        util.wait_for_port(port, 30, proc)
        return scenarios.ExtraServer(name, workers, port, folder, proc, log_path)

    def stop_server(extra: scenarios.ExtraServer) -> dict[str, Any]:
        findings = {
            "workers": extra.workers,
            "exit_code": children.stop(extra.proc),
            "log": _log_findings(extra.log),
        }
        extra_servers[extra.name] = findings
        return findings

    bench = scenarios.Bench(
        config=config,
        root=root,
        data=data,
        nginx_prefix=prefix,
        ca=certs / "ca.pem",
        big_file=big_file,
        photo_files=photo_files,
        imgshare_pid=server.pid,
        imgshare_port=ports["imgshare"],
        imgshare=imgshare,
        nginx_pids=lambda: nginx.worker_pids(nginx_proc.pid),
        nginx_port=ports["nginx"],
        raw_port=ports["raw"],
        raw_pid=raw.pid,
        workers=workers,
        password=PASSWORD,
        login_password=LOGIN_PASSWORD,
        check_alive=check_alive,
        start_server=start_server,
        stop_server=stop_server,
        log=lambda line: print(line, flush=True),
    )
    server_pids = bench.server_pids("imgshare")
    results: dict[str, Any] = {
        "mode": config.mode,
        "config": dataclasses.asdict(config),
        "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "versions": _versions(nginx_version),
        "git": _git(),
        "method": {
            "warm_factor": scenarios.WARM_FACTOR,
            "cold_pause_s": util.COLD_PAUSE,
            "bench_user_argon2": CHEAP_ARGON2,
            "mb": "10^6 bytes",
            "client": "bench.loadgen: Python threads, blocking TLS sockets, 256 KiB pieces",
        },
        "scenarios": {},
        "server": {
            "listen_mode": listen_mode or "shared",
            "listen_mode_set": listen_mode is not None,  # else the server's default
            "workers": len(server_pids()) - 1,  # worker processes (default: one per CPU)
            "rss_start": util.rss_bytes(server_pids()),
        },
        "extra_servers": extra_servers,
    }
    print(
        f"bench: imgshare runs {results['server']['workers']} worker processes,"
        f" listen mode {results['server']['listen_mode']}"
        f"{'' if listen_mode else ' (default)'}",
        flush=True,
    )
    for name in selected:
        begin = time.monotonic()
        try:
            results["scenarios"][name] = scenarios.SCENARIOS[name](bench)
        except RuntimeError as exc:  # keep the others: a failed scenario is a finding
            print(f"bench: scenario {name} failed: {exc}", flush=True)
            results["scenarios"][name] = {"failed": str(exc)}
            if server.poll() is not None:
                break
        results["scenarios"].setdefault(name, {})["duration_s"] = time.monotonic() - begin
        print(f"  ({name}: {time.monotonic() - begin:.0f} s)", flush=True)
    results["server"]["rss_end"] = util.rss_bytes(server_pids())
    for worker in workers:
        children.stop(worker.proc)
    results["server"]["exit_code"] = children.stop(server)
    server_log.close()
    results["server"]["log"] = _log_findings(root / "imgshare.log")
    results["nginx_errors"] = _log_findings(prefix / "error.log")
    results["duration_s"] = time.time() - started
    return results


class scenarios_phase:
    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        self.start = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        print(f"  ({self.name}: {time.monotonic() - self.start:.0f} s)", flush=True)


#: One host plays hundreds of clients here, so the caps meant for a public server's
#: distinct clients (docs/security.md) are lifted: loopback counts as trusted (no
#: per-address cap), every connection may wait to log in at once, and the photo and
#: held-upload users may each have all their uploads in flight. The throughput paths
#: measured are the same either way.
SERVER_SETTINGS = {
    "IMGSHARE_TRUSTED_NETWORKS": "127.0.0.0/8",
    "IMGSHARE_MAX_UNAUTHENTICATED": "2048",
    "IMGSHARE_MAX_UPLOADS_PER_USER": "256",
    "IMGSHARE_UPLOAD_MEMORY": str(1024 * 1024 * 1024),
}
#: Settings the harness chooses itself: never inherited from the caller's environment.
HARNESS_SETTINGS = ("IMGSHARE_WORKERS", "IMGSHARE_LISTEN_MODE")
LISTEN_MODES = ("shared", "reuseport")


def _start_imgshare(
    children: util.Children,
    name: str,
    imgshare: Path,
    data: Path,
    port: int,
    log: IO[str],
    listen_mode: str | None,
    workers: int | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[Any]:
    """``imgshare serve`` on ``data`` and ``port``: default workers (one per CPU) unless
    ``workers``, the server's listen mode unless ``listen_mode``; ``env``: more
    settings."""
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if k not in HARNESS_SETTINGS}
    env.update(SERVER_SETTINGS)
    env.update(extra)
    if listen_mode is not None:
        env["IMGSHARE_LISTEN_MODE"] = listen_mode
    argv = [str(imgshare), "serve", "--data", str(data), "--port", str(port),
            "--log-level", "warning"]  # fmt: skip
    if workers is not None:
        argv += ["--workers", str(workers)]
    return children.start(name, argv, stdout=log, stderr=subprocess.STDOUT, env=env)


def _add_users(data: Path, config: scenarios.Config) -> None:
    """Bench users with a cheap hash; ``login`` and ``cli`` with the server's default
    argon2id."""
    from argon2 import PasswordHasher

    from imgshare.server import open_catalog
    from imgshare.server.accounts import Accounts

    names = ["big", "held"]
    names += [f"photo{i:02d}" for i in range(config.photo_users)]
    names += [f"heldup{i:02d}" for i in range(10)]
    with open_catalog(data) as catalog:
        cheap = Accounts(catalog, hasher=PasswordHasher(**CHEAP_ARGON2))
        for name in names:
            cheap.add_user(name, PASSWORD)
        Accounts(catalog).add_user("login", LOGIN_PASSWORD)
        Accounts(catalog).add_user(scenarios.CLI_USER, LOGIN_PASSWORD)


def _machine() -> dict[str, Any]:
    import psutil

    model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "kernel": platform.release(),
        "os": _os_release(),
        "fd_limit": __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE),
    }


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def _versions(nginx_version: str) -> dict[str, str]:
    versions = {
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "nginx": nginx_version,
    }
    for package in ("imgshare", "cryptography", "Pillow", "argon2-cffi", "matplotlib", "psutil"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "missing"
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True)
    versions["curl"] = curl.stdout.split("\n", 1)[0]
    return versions


def _git() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.rstrip("\n")  # keep porcelain's leading status column

    # Changes outside the harness's own files (others' work in progress) make it dirty.
    changed = [
        line
        for line in git("status", "--porcelain").splitlines()
        if not line[3:].startswith(("bench/", "docs/performance", "Makefile"))
    ]
    return {"commit": git("rev-parse", "HEAD").strip(), "dirty": bool(changed), "changed": changed}


def _log_findings(path: Path) -> dict[str, Any]:
    """Warnings, errors and tracebacks in a server log: count and the first few lines."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"lines": 0, "first": []}
    interesting = [line for line in lines if line.strip()]
    levels: dict[str, int] = {}
    for line in interesting:
        for level in ("WARNING", "ERROR", "CRITICAL", "Traceback", "[error]", "[crit]", "[alert]"):
            if level in line:
                levels[level] = levels.get(level, 0) + 1
    return {"lines": len(interesting), "levels": levels, "first": interesting[:30]}


if __name__ == "__main__":
    sys.exit(main())
