"""The ``backends`` scenario (issue 13): PostgreSQL + SeaweedFS against the embedded
default, and one node against two behind haproxy.

It starts, besides the harness's main server (the embedded default: SQLite and the
data folder), the real components the tests use (tests/services/): a PostgreSQL
cluster, durable this time (fsync and full page writes on, on the same disk as the
data), a SeaweedFS with one bucket (its S3 requests counted by its Prometheus
metrics), two imgshare nodes on them (``catalog_url``, ``object_store_url`` and
``inbox_location`` in the bucket, one storage key; default workers, the bench's
settings otherwise) and two haproxy instances (tests/services/haproxy.py, the
configuration docs/operations.md shows): one in front of node A alone, one in front
of nodes A and B. Then, systems taking turns run by run (warm runs only):

* photos (the photos scenario's burst: many clients at once, images/s) on
  ``embedded`` (the main server), ``pg_s3`` (node A, directly), ``lb_1`` (haproxy ->
  node A) and ``lb_2`` (haproxy -> nodes A and B; connections alternate);
* the big image (MB/s) on ``embedded`` and ``pg_s3``.

The goals compare ``pg_s3`` with ``embedded`` (photos and big image, >= 0.6 x) and
report ``lb_2`` against ``lb_1``. On top of the usual figures, for the shared
systems: the CPU of PostgreSQL's and SeaweedFS's processes per image, SeaweedFS's
S3 requests by HTTP method per image (its metrics), and PostgreSQL's transactions,
row changes and WAL syncs per stored image over the whole scenario (pg_stat_database
and pg_stat_wal, read after the 10 s that idle backends may take to report).
Uploads are deleted after every run, from the data folder and from the bucket
(then SeaweedFS compacts its volumes), so that the disk looks alike to every run.
"""

from __future__ import annotations

import base64
import contextlib
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import scenarios, util
from bench.scenarios import MB, Bench, ExtraServer

REPO = Path(__file__).resolve().parent.parent
BUCKET = "imgshare-bench"
PREFIX = "bench"
PHOTO_SYSTEMS = ("embedded", "pg_s3", "lb_1", "lb_2")
BIG_SYSTEMS = ("embedded", "pg_s3")
SHARED = ("pg_s3", "lb_1", "lb_2")
#: Idle PostgreSQL backends report their statistics within 10 s (PGSTAT_IDLE_INTERVAL).
PG_STATS_SETTLE = 11.0
PG_COUNTERS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted",
               "tup_fetched", "blks_read", "blks_hit")  # fmt: skip
WAL_COUNTERS = ("wal_records", "wal_bytes", "wal_write", "wal_sync")
_METRIC = re.compile(
    r'^SeaweedFS_s3_request_total\{[^}]*code="(\d+)"[^}]*type="(\w+)"[^}]*\} (\S+)$'
)


def _services() -> tuple[Any, Any, Any]:
    """The test suite's start-up code for PostgreSQL, SeaweedFS and haproxy, once
    Debian's PostgreSQL and haproxy are there (the repository's install scripts:
    idempotent, apt-get as root when one is missing)."""
    for script in ("install-postgres.sh", "install-haproxy.sh"):
        done = subprocess.run(
            ["bash", str(REPO / "scripts" / "services" / script)],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{script} failed: {(done.stdout + done.stderr).strip()[-400:]}")
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from services.haproxy import Haproxy
    from services.postgres import PostgresCluster
    from services.seaweedfs import SeaweedFS

    return PostgresCluster, SeaweedFS, Haproxy


def run(bench: Bench) -> dict[str, Any]:
    cfg = bench.config
    postgres_cluster, seaweedfs, haproxy = _services()
    payload = scenarios._photo_payload(bench)
    big_size = bench.big_file.stat().st_size
    bench.log(
        f"backends: {cfg.photos} clients x photos on {', '.join(PHOTO_SYSTEMS)}; "
        f"{big_size / MB:.0f} MB TIFF on {', '.join(BIG_SYSTEMS)}; {cfg.runs} warm runs"
    )
    stopped: dict[str, Any] = {}
    servers: dict[str, ExtraServer] = {}
    pools: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        began = time.monotonic()
        # PostgreSQL runs as the 'postgres' user: its folder goes where that user can
        # reach it (the bench's own folder is private), on the same disk.
        pg = postgres_cluster(durable=True, parent=str(bench.root.parent))
        stack.callback(pg.stop)
        pg.start()
        url = pg.new_database(schema=False)
        weed = seaweedfs(bench.root / "seaweedfs", bucket=BUCKET, metrics=True)
        stack.callback(weed.stop)
        weed.start()
        bench.log(
            f"  PostgreSQL {pg.started_in:.1f} s, SeaweedFS {weed.ready_after:.1f} s to ready"
        )
        _add_users(url, bench)
        location = f"s3://{BUCKET}/{PREFIX}"
        env = {
            **weed.env(),
            "IMGSHARE_CATALOG_URL": url,
            "IMGSHARE_OBJECT_STORE_URL": location,
            "IMGSHARE_INBOX_LOCATION": location,
            "IMGSHARE_STORAGE_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        }
        workers = len(util.process_tree(bench.imgshare_pid)) - 1  # the main server's
        try:
            for name in ("node_a", "node_b"):
                servers[name] = bench.start_server(name, workers, env)
            try:
                lb_1 = haproxy(bench.root, [servers["node_a"].port], name="haproxy-1")
                stack.callback(lb_1.stop)
                lb_2 = haproxy(bench.root, [s.port for s in servers.values()], name="haproxy-2")
                stack.callback(lb_2.stop)
            except AssertionError as exc:  # the helper's way of failing
                raise RuntimeError(str(exc)) from exc
            ports = {"embedded": bench.imgshare_port, "pg_s3": servers["node_a"].port,
                     "lb_1": lb_1.port, "lb_2": lb_2.port}  # fmt: skip
            node_a = servers["node_a"].pids
            both = lambda: [p for s in servers.values() for p in s.pids()]  # noqa: E731
            pids = {"embedded": bench.server_pids("imgshare"), "pg_s3": node_a,
                    "lb_1": node_a, "lb_2": both}  # fmt: skip
            pg_pids, weed_pids = _backend_pids(pg, weed)
            bucket = _bucket(weed)
            setup_s = time.monotonic() - began
            bench.log(f"  started in {setup_s:.1f} s; nodes {[s.port for s in servers.values()]}")

            opened: dict[str, Any] = {}
            for system in PHOTO_SYSTEMS:
                pools[system] = f"backends_{system}"
                opened[system] = _open(bench, pools[system], ports[system])
                answer = opened[system]
                bench.log(
                    f"  {system}: {answer['opened']} sessions logged in in"
                    f" {answer['seconds']:.1f} s"
                    + (f"  errors {answer['errors']}" if answer["errors"] else "")
                )
                if answer["opened"] != cfg.photos:
                    raise RuntimeError(f"{system}: only {answer['opened']} of {cfg.photos} in")
            for system in BIG_SYSTEMS:
                pools[f"big_{system}"] = f"backends_big_{system}"
                answer = bench.open_pool(
                    pools[f"big_{system}"], "imgshare", [["big", bench.password]],
                    port=ports[system],
                )  # fmt: skip
                if answer["opened"] != 1:
                    raise RuntimeError(f"{system}: cannot log in for the big image: {answer}")

            def clear() -> None:
                bench.clear_uploads()
                _clear_bucket(bucket, weed)

            s3_total: dict[str, float] = {}
            runs: dict[str, dict[str, list[dict[str, Any]]]] = {
                "warm": {s: [] for s in PHOTO_SYSTEMS}
            }
            big_runs: dict[str, dict[str, list[dict[str, Any]]]] = {
                "warm": {s: [] for s in BIG_SYSTEMS}
            }
            for number in range(cfg.runs):
                for system in scenarios._rotate(PHOTO_SYSTEMS, number):
                    clear()
                    bench.ping_pool(pools[system], reconnect=True)
                    s3_before = _s3_requests(weed)
                    with util.RssSampler(pg_pids) as pg_cpu, util.RssSampler(weed_pids) as weed_cpu:
                        figures = bench.timed_upload(
                            pools[system], bench.photo_files, "warm", payload, "imgshare",
                            pids=pids[system],
                        )  # fmt: skip
                    _backend_figures(figures, pg_cpu, weed_cpu, s3_before, weed, system, s3_total)
                    runs["warm"][system].append(figures)
                    _log_photos(bench, number, system, figures)
                for system in scenarios._rotate(BIG_SYSTEMS, number):
                    clear()
                    s3_before = _s3_requests(weed)
                    with util.RssSampler(pg_pids) as pg_cpu, util.RssSampler(weed_pids) as weed_cpu:
                        figures = _big(bench, pools[f"big_{system}"], big_size, pids[system])
                    _backend_figures(figures, pg_cpu, weed_cpu, s3_before, weed, system, s3_total)
                    figures["cpu_s_per_gb"] = figures["server_cpu_s"] / (big_size / 1e9)
                    big_runs["warm"][system].append(figures)
                    bench.log(
                        f"  run {number + 1} big   {system:9} {figures['mb_s']:7.1f} MB/s"
                        f"  RSS peak {figures['rss_peak'] / util.MIB:.0f} MiB"
                        f"  CPU {figures['server_cpu_s']:.2f} s"
                        + (
                            f" + PostgreSQL {figures['postgres_cpu_s']:.2f} s"
                            f" + SeaweedFS {figures['seaweedfs_cpu_s']:.2f} s"
                            if system in SHARED
                            else ""
                        )
                    )
            catalog = _count_catalog(bench, pools["pg_s3"], payload, pg, url, clear)
            bench.log(
                "  PostgreSQL per stored image: "
                + ", ".join(f"{k} {v:.2f}" for k, v in catalog["per_image"].items())
            )
            for system, server in servers.items():
                if server.proc.poll() is not None:
                    raise RuntimeError(f"{system} exited with {server.proc.returncode}")
            backend_rss = {
                "postgres_summed": util.rss_bytes(pg_pids()),
                "seaweedfs": weed.rss_bytes(),
            }
        finally:
            for pool in pools.values():
                with contextlib.suppress(RuntimeError):
                    bench.close_pool(pool)
            for name, server in servers.items():
                stopped[name] = bench.stop_server(server)
    bench.check_alive()
    photo_summary = scenarios._photo_summary(runs, PHOTO_SYSTEMS, ("warm",))
    backend_names = ("backend_cpu_s", "backend_cpu_ms_per_image", "postgres_cpu_ms_per_image",
                     "seaweedfs_cpu_ms_per_image", "s3_requests_per_image")  # fmt: skip
    for system in SHARED:
        items = runs["warm"][system]
        for name in backend_names:
            photo_summary["warm"][system][name] = util.summary([i[name] for i in items])
    big_summary = scenarios._collect(
        big_runs, ("mb_s", "seconds", "rss_peak", "rss_growth", "server_cpu_s", "cpu_s_per_gb",
                   "backend_cpu_s", "postgres_cpu_s", "seaweedfs_cpu_s", "s3_requests_per_image")
    )  # fmt: skip

    def photo_median(system: str) -> float | None:
        value: float | None = photo_summary["warm"][system]["images_s"]["median"]
        return value

    ratios = {
        "warm": {
            "photos_pg_s3_vs_embedded": scenarios._ratio(
                photo_median("pg_s3"), photo_median("embedded")
            ),
            "big_pg_s3_vs_embedded": scenarios._ratio(
                big_summary["warm"]["pg_s3"]["mb_s"]["median"],
                big_summary["warm"]["embedded"]["mb_s"]["median"],
            ),
            "photos_2_nodes_vs_1": scenarios._ratio(photo_median("lb_2"), photo_median("lb_1")),
            "photos_lb_1_vs_direct": scenarios._ratio(photo_median("lb_1"), photo_median("pg_s3")),
        }
    }
    return {
        "systems": {
            "embedded": "the main server: SQLite + data folder (the default)",
            "pg_s3": "node A: PostgreSQL catalog, SeaweedFS objects and inbox, directly",
            "lb_1": "haproxy (TCP) -> node A",
            "lb_2": "haproxy (TCP, round robin) -> nodes A and B",
        },
        "clients": cfg.photos,
        "payload_bytes": payload,
        "big_bytes": big_size,
        "node_workers": workers,
        "runs": cfg.runs,
        "setup_s": setup_s,
        "login_setup": opened,
        "postgres": {"durable": True, "started_in_s": pg.started_in, **catalog},
        "s3_requests_by_kind": s3_total,
        "backend_rss_end": backend_rss,
        "servers": stopped,
        "figures": photo_summary,
        "big": big_summary,
        "ratios": ratios,
        "raw": {"photos": runs, "big": big_runs},
    }


def _count_catalog(
    bench: Bench, pool: str, payload: int, pg: Any, url: str, clear: Any
) -> dict[str, Any]:
    """One more photo burst on node A, untimed, for PostgreSQL's counters per stored
    image: idle backends report theirs within 10 s, so the counters are read after a
    pause before and after it (and the pool's pings and logins come before)."""
    clear()
    bench.ping_pool(pool, reconnect=True)
    time.sleep(PG_STATS_SETTLE)
    before = _pg_stats(pg, url)
    figures = bench.timed_upload(pool, bench.photo_files, "warm", payload, "imgshare")
    time.sleep(PG_STATS_SETTLE)
    after = _pg_stats(pg, url)
    clear()
    return {**_per_image(before, after, figures["ok"]), "stored_images": figures["ok"]}


def _open(bench: Bench, pool: str, port: int, threads: int = 2) -> dict[str, Any]:
    """Log the photo clients in (untimed set-up), ``threads`` at a time per load
    generator: every login after a user's first costs the server's full argon2id, and
    a login that waits its turn longer than the server's 10 s login timeout fails
    (with the 8 of the other scenarios, some did on these shared 2 cores). The few
    that fail anyway log in again (the ping before each run would, too)."""
    logins = scenarios._photo_logins(bench)
    for worker, part in zip(bench.workers, bench.split(logins), strict=True):
        worker.send("open", pool=pool, system="imgshare", logins=part, threads=threads, port=port)
    answer = scenarios._merge(
        [worker._read() for worker in bench.workers], ("opened", "failed", "try_later"), "seconds"
    )
    if answer["opened"] != len(logins):
        again = bench.ping_pool(pool, reconnect=True)
        answer["opened"] = again["alive"] + again["replaced"]
        answer["again"] = again
    return answer


def _add_users(url: str, bench: Bench) -> None:
    """The photo users and ``big`` in the shared catalog, with the cheap hash."""
    from argon2 import PasswordHasher

    from bench.run import CHEAP_ARGON2
    from imgshare.server.accounts import Accounts
    from imgshare.store.postgres import PostgresCatalog

    names = sorted({login[0] for login in scenarios._photo_logins(bench)} | {"big"})
    with PostgresCatalog(url, pool_size=1) as catalog:
        accounts = Accounts(catalog, hasher=PasswordHasher(**CHEAP_ARGON2))
        for name in names:
            accounts.add_user(name, bench.password)


def _backend_pids(pg: Any, weed: Any) -> tuple[Any, Any]:
    """PostgreSQL's postmaster and backends, and SeaweedFS's process(es), now."""
    postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
    weed_pid = weed.process.pid
    return (lambda: util.process_tree(postmaster)), (lambda: util.process_tree(weed_pid))


def _bucket(weed: Any) -> Any:
    import botocore.config
    import botocore.session

    return botocore.session.Session().create_client(
        "s3",
        endpoint_url=weed.endpoint_url,
        aws_access_key_id=weed.access_key,
        aws_secret_access_key=weed.secret_key,
        region_name="us-east-1",
        config=botocore.config.Config(s3={"addressing_style": "path"}),
    )


def _clear_bucket(bucket: Any, weed: Any) -> None:
    """Delete every key under the prefix, then let SeaweedFS compact its volumes."""
    removed = 0
    for page in bucket.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX):
        keys = [{"Key": entry["Key"]} for entry in page.get("Contents", [])]
        if keys:
            bucket.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})
            removed += len(keys)
    if removed:
        url = f"{weed.master_url}/vol/vacuum?garbageThreshold=0.0001"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=120) as answer:
            answer.read()


def _s3_requests(weed: Any) -> dict[str, float]:
    """SeaweedFS's S3 requests so far, by HTTP method (and error status)."""
    counts: dict[str, float] = {}
    for line in weed.metrics_text().splitlines():
        match = _METRIC.match(line)
        if match:
            code, method, value = match.groups()
            name = method if code.startswith("2") else f"{method} {code}"
            counts[name] = counts.get(name, 0.0) + float(value)
    return counts


def _backend_figures(
    figures: dict[str, Any],
    pg_cpu: util.RssSampler,
    weed_cpu: util.RssSampler,
    s3_before: dict[str, float],
    weed: Any,
    system: str,
    s3_total: dict[str, float],
) -> None:
    """The backends' CPU and the S3 requests of one run (the embedded default's run
    counts the idle backends, about 0)."""
    stored = figures.get("ok", 1)
    after = _s3_requests(weed)
    requests = {k: v - s3_before.get(k, 0.0) for k, v in after.items()}
    requests = {k: v for k, v in requests.items() if v}
    cpu = pg_cpu.cpu_seconds + weed_cpu.cpu_seconds
    figures["backend_cpu_s"] = cpu
    figures["postgres_cpu_s"] = pg_cpu.cpu_seconds
    figures["seaweedfs_cpu_s"] = weed_cpu.cpu_seconds
    figures["backend_cpu_ms_per_image"] = cpu * 1000 / stored if stored else None
    figures["postgres_cpu_ms_per_image"] = pg_cpu.cpu_seconds * 1000 / stored if stored else None
    figures["seaweedfs_cpu_ms_per_image"] = weed_cpu.cpu_seconds * 1000 / stored if stored else None
    figures["s3_requests"] = requests
    figures["s3_requests_per_image"] = sum(requests.values()) / stored if stored else 0.0
    if system in SHARED:
        for kind, count in requests.items():
            s3_total[kind] = s3_total.get(kind, 0.0) + count


def _big(bench: Bench, pool: str, size: int, pids: Any) -> dict[str, Any]:
    """One big upload on ``pool`` (one connection), timed by the load generator."""
    worker = bench.workers[0]
    worker.call("ping", pool=pool, reconnect=True)
    worker.arm("upload", pool=pool, files=[str(bench.big_file)])
    bench.prepare("warm", size)
    with util.RssSampler(pids) as rss:
        worker.go()
        answer = worker.result()
    result = answer["results"][0]
    if not result["ok"]:
        raise RuntimeError(f"big upload on {pool} failed: {result['error']}")
    seconds = result.get("seconds", result["end"] - result["begin"])
    return {
        "ok": 1,
        "mb_s": size / MB / seconds,
        "seconds": seconds,
        "rss_before": rss.before,
        "rss_peak": rss.peak,
        "rss_growth": rss.growth,
        "server_cpu_s": rss.cpu_seconds,
    }


def _log_photos(bench: Bench, number: int, system: str, figures: dict[str, Any]) -> None:
    cpu = figures["cpu_ms_per_image"]
    backend = figures.get("backend_cpu_ms_per_image")
    bench.log(
        f"  run {number + 1} photos {system:8} {figures['ok']:4}/{figures['count']}"
        f" ok {figures['images_s']:7.1f} img/s {figures['mb_s']:6.1f} MB/s"
        f" p50 {figures['p50']:.2f} s p99 {figures['p99']:.2f} s"
        f"  RSS peak {figures['rss_peak'] / util.MIB:.0f} MiB"
        f"  CPU {'-' if cpu is None else f'{cpu:.1f}'} ms/img"
        + (
            f" + PostgreSQL {figures['postgres_cpu_ms_per_image']:.1f}"
            f" + SeaweedFS {figures['seaweedfs_cpu_ms_per_image']:.1f} ms/img,"
            f" S3 {figures['s3_requests_per_image']:.2f} req/img"
            if system in SHARED and backend is not None
            else ""
        )
        + (f"  TRY_LATER {figures['try_later']}" if figures["try_later"] else "")
        + (f"  errors {figures['errors']}" if figures["errors"] else "")
    )


def _pg_stats(pg: Any, url: str) -> dict[str, float]:
    """The database's and the WAL's counters (cumulative)."""
    database = url.rsplit("/", 1)[1]
    columns = ", ".join(PG_COUNTERS)
    row = pg.admin_execute(
        "postgres", f"SELECT {columns} FROM pg_stat_database WHERE datname = '{database}'"
    )[0]
    wal = pg.admin_execute("postgres", f"SELECT {', '.join(WAL_COUNTERS)} FROM pg_stat_wal")[0]
    stats = {name: float(value) for name, value in zip(PG_COUNTERS, row, strict=True)}
    stats.update({name: float(value) for name, value in zip(WAL_COUNTERS, wal, strict=True)})
    return stats


def _per_image(before: dict[str, float], after: dict[str, float], images: int) -> dict[str, Any]:
    delta = {name: after[name] - before[name] for name in after}
    return {
        "delta": delta,
        "per_image": {name: value / images for name, value in delta.items()} if images else {},
    }
