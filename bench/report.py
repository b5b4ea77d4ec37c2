"""Goals, the table on stdout, the JSON file and the chart of the ratios.

Goal figures are the warm medians (see docs/performance.md); cold medians stand
beside them. Memory goals use the worst run, counts the worst run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _goal(
    gid: str, text: str, value: float | None, goal: float, at_least: bool,
    cold: float | None = None, unit: str = "x",
) -> dict[str, Any]:  # fmt: skip
    passed = None
    if value is not None and not (isinstance(value, float) and math.isnan(value)):
        passed = value >= goal if at_least else value <= goal
    return {
        "id": gid,
        "goal": text,
        "value": value,
        "cold": cold,
        "limit": goal,
        "at_least": at_least,
        "unit": unit,
        "pass": passed,
    }


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The goals of the issues so far (5, 10, 11, 12), checked against this run (warm
    medians)."""
    s = results.get("scenarios", {})
    big, photos, held, sessions, workers = (
        s.get(k, {}) for k in ("big_image", "photos", "held", "sessions", "photos_workers")
    )
    goals = []
    goals.append(_goal(
        "big_vs_nginx", "big image: imgshare >= 0.45 x nginx MB/s",
        _get(big, "ratios", "warm", "vs_nginx"), 0.45, True,
        _get(big, "ratios", "cold", "vs_nginx"),
    ))  # fmt: skip
    growth = _get(big, "figures", "warm", "imgshare", "rss_growth", "max")
    goals.append(_goal(
        "big_rss", "big image: server RSS growth <= 64 MiB (worst run)",
        growth / MIB if growth is not None else None, 64, False,
        _scale(_get(big, "figures", "cold", "imgshare", "rss_growth", "max")), "MiB",
    ))  # fmt: skip
    goals.append(_goal(
        "photos_vs_nginx", "photos: imgshare >= 0.35 x nginx images/s",
        _get(photos, "ratios", "warm", "images_vs_nginx"), 0.35, True,
        _get(photos, "ratios", "cold", "images_vs_nginx"),
    ))  # fmt: skip
    clients = photos.get("clients")
    goals.append(_goal(
        "photos_ok", f"photos: {clients} of {clients} succeed (worst run)",
        _get(photos, "figures", "warm", "imgshare", "ok", "min"), clients or 0, True,
        _get(photos, "figures", "cold", "imgshare", "ok", "min"), "uploads",
    ))  # fmt: skip
    goals.append(_goal(
        "photos_tail", "photos: p99 <= 3 x p50",
        _get(photos, "figures", "warm", "imgshare", "p99_over_p50", "median"), 3.0, False,
        _get(photos, "figures", "cold", "imgshare", "p99_over_p50", "median"),
    ))  # fmt: skip
    goals.append(_goal(
        "photos_cpu", "photos: imgshare server CPU per image <= 3 x nginx's",
        _get(photos, "ratios", "warm", "cpu_per_image_vs_nginx"), 3.0, False,
        _get(photos, "ratios", "cold", "cpu_per_image_vs_nginx"),
    ))  # fmt: skip
    goals.append(_goal(
        "photos_workers", "photos: --workers 2 not slower than --workers 1",
        _get(workers, "ratios", "warm", "images_2_vs_1"), 1.0, True,
        _get(workers, "ratios", "cold", "images_2_vs_1"),
    ))  # fmt: skip
    target = held.get("held_target")
    goals.append(_goal(
        "held_held", f"held: {target} of {target} sessions held (worst run)",
        _get(held, "figures", "warm", "imgshare", "held", "min"), target or 0, True,
        _get(held, "figures", "cold", "imgshare", "held", "min"), "sessions",
    ))  # fmt: skip
    uploads = held.get("uploads")
    goals.append(_goal(
        "held_ok", f"held: {uploads} of {uploads} uploads succeed (worst run)",
        _get(held, "figures", "warm", "imgshare", "ok", "min"), uploads or 0, True,
        _get(held, "figures", "cold", "imgshare", "ok", "min"), "uploads",
    ))  # fmt: skip
    peaks = [
        _get(held, "figures", "warm", "imgshare", "rss_peak", "max"),
        _get(held, "rss_peak_setup"),
    ]
    peak = max((p for p in peaks if p is not None), default=None)
    goals.append(_goal(
        "held_rss", "held: RSS of all server processes together <= 400 MiB (peak)",
        peak / MIB if peak is not None else None, 400, False,
        _scale(_get(held, "figures", "cold", "imgshare", "rss_peak", "max")), "MiB",
    ))  # fmt: skip
    goals.append(_goal(
        "sessions_vs_nginx", "new sessions: TLS + app handshake >= 0.50 x nginx TLS handshakes/s",
        _get(sessions, "ratios", "warm", "app_vs_nginx_tls"), 0.50, True,
    ))  # fmt: skip
    goals.append(_goal(
        "sessions_token", "new sessions: TLS + app handshake + token login >= 0.45 x nginx",
        _get(sessions, "ratios", "warm", "token_vs_nginx_tls"), 0.45, True,
    ))  # fmt: skip
    goals += cli_goals(s.get("cli", {}))
    goals += backend_goals(s.get("backends", {}))
    return goals


#: Issue 12: each command as a whole process, beside curl against nginx in the same run.
CLI_GOALS = (
    ("cli_send", "command line: imgshare send (4 MB photo, saved login) <= 5 x curl -T",
     "send_vs_curl_put", 5.0, False),
    ("cli_list", "command line: imgshare list <= 5 x a curl GET of a small file",
     "list_vs_curl_get", 5.0, False),
    ("cli_big", "command line: imgshare send of the big TIFF >= 0.30 x curl -T MB/s",
     "big_vs_curl_put", 0.30, True),
    ("cli_many", "command line: imgshare send --parallel 4 >= 0.30 x 4 curl -T loops images/s",
     "many_vs_curl_loops", 0.30, True),
)  # fmt: skip


def cli_goals(cli: dict[str, Any]) -> list[dict[str, Any]]:
    """The command line's goals (issue 12), from the ``cli`` scenario's ratios."""
    return [
        _goal(gid, text, _get(cli, "ratios", "warm", ratio), limit, at_least)
        for gid, text, ratio, limit, at_least in CLI_GOALS
    ]


def backend_goals(backends: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 13's goals, from the ``backends`` scenario (same-run ratios), and that
    every photo sent through haproxy to two nodes is stored (worst run)."""
    clients = backends.get("clients")
    return [
        _goal(
            "backends_photos",
            "PostgreSQL + SeaweedFS, one node: photos >= 0.6 x the embedded default's images/s",
            _get(backends, "ratios", "warm", "photos_pg_s3_vs_embedded"), 0.6, True,
        ),
        _goal(
            "backends_big",
            "PostgreSQL + SeaweedFS, one node: big image >= 0.6 x the embedded default's MB/s",
            _get(backends, "ratios", "warm", "big_pg_s3_vs_embedded"), 0.6, True,
        ),
        _goal(
            "backends_lb_ok",
            f"two nodes behind haproxy: {clients} of {clients} photos stored (worst run)",
            _get(backends, "figures", "warm", "lb_2", "ok", "min"), clients or 0, True,
            unit="uploads",
        ),
    ]  # fmt: skip


BACKEND_SYSTEMS = {
    "embedded": "embedded (SQLite + folder)",
    "pg_s3": "PostgreSQL + SeaweedFS, node A",
    "lb_1": "haproxy -> node A",
    "lb_2": "haproxy -> nodes A, B",
}


def _backend_rows(s: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The ``backends`` scenario's rows (its big image figures live apart)."""
    rows: list[tuple[str, str, str, str]] = []

    def add(where: str, label: str, path: tuple[str, ...], scale: float = 1.0, d: int = 1) -> None:
        warm = _get(s, "backends", where, "warm", *path)
        rows.append(("backends", label, _triple(warm, scale, d), "-"))

    for system, label in BACKEND_SYSTEMS.items():
        add("figures", f"photos {label} images/s", (system, "images_s"))
    for system, label in BACKEND_SYSTEMS.items():
        add("figures", f"photos {label} p99 s", (system, "p99"), 1.0, 2)
        add("figures", f"photos {label} succeeded", (system, "ok"), 1.0, 0)
        add("figures", f"photos {label} server CPU ms/image", (system, "cpu_ms_per_image"))
        add("figures", f"photos {label} server RSS peak MiB", (system, "rss_peak"), MIB, 0)
    for system in ("pg_s3", "lb_2"):
        label = BACKEND_SYSTEMS[system]
        for name, what in (("postgres", "PostgreSQL"), ("seaweedfs", "SeaweedFS")):
            add("figures", f"photos {label}: {what} CPU ms/image",
                (system, f"{name}_cpu_ms_per_image"))  # fmt: skip
        add("figures", f"photos {label}: S3 requests/image", (system, "s3_requests_per_image"),
            1.0, 2)  # fmt: skip
    for system in ("embedded", "pg_s3"):
        label = BACKEND_SYSTEMS[system]
        add("big", f"big image {label} MB/s", (system, "mb_s"))
        add("big", f"big image {label} server CPU s/GB", (system, "cpu_s_per_gb"), 1.0, 2)
        add("big", f"big image {label} server RSS peak MiB", (system, "rss_peak"), MIB, 0)
    add("big", "big image pg_s3: SeaweedFS CPU s", ("pg_s3", "seaweedfs_cpu_s"), 1.0, 2)
    ratios = _get(s, "backends", "ratios", "warm") or {}
    for name in ("photos_2_nodes_vs_1", "photos_lb_1_vs_direct"):
        if ratios.get(name) is not None:
            rows.append(("backends", f"{name} x (medians)", _fmt(ratios[name], 2), "-"))
    return rows


def _scale(value: float | None) -> float | None:
    return value / MIB if value is not None else None


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}f}"
    return str(value)


def _triple(summary: dict[str, Any] | None, scale: float = 1.0, digits: int = 1) -> str:
    if not summary or summary.get("median") is None:
        return "-"
    med, low, high = (summary[k] / scale for k in ("median", "min", "max"))
    return f"{med:.{digits}f} [{low:.{digits}f}-{high:.{digits}f}]"


CLI_LABELS = {
    "imgshare_send": "imgshare send (4 MB photo, saved login)",
    "curl_put": "curl -T (same photo)",
    "imgshare_list": "imgshare list (saved login)",
    "curl_get": "curl GET (1 KiB)",
}
CLI_BULK_LABELS = {
    "imgshare_send_big": "imgshare send (big TIFF)",
    "curl_put_big": "curl -T (big TIFF)",
    "imgshare_send_many": "imgshare send --parallel 4 (photos)",
    "curl_put_many": "4 loops of curl -T (photos)",
}


def figure_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(scenario, figure, warm median [min-max], cold median [min-max]) rows."""
    rows: list[tuple[str, str, str, str]] = []
    s = results.get("scenarios", {})

    def add(
        scenario: str, label: str, path: tuple[str, ...], scale: float = 1.0, d: int = 1
    ) -> None:
        warm = _get(s, scenario, "figures", "warm", *path)
        cold = _get(s, scenario, "figures", "cold", *path)
        rows.append((scenario, label, _triple(warm, scale, d), _triple(cold, scale, d)))

    for system in ("imgshare", "nginx", "raw_tls"):
        add("big_image", f"{system} MB/s", (system, "mb_s"))
    for system in ("imgshare", "nginx", "raw_tls"):
        add("big_image", f"{system} server RSS growth MiB", (system, "rss_growth"), MIB, 0)
    add("big_image", "imgshare server RSS peak MiB", ("imgshare", "rss_peak"), MIB, 0)
    for system in ("imgshare", "nginx"):
        add("photos", f"{system} images/s", (system, "images_s"))
        add("photos", f"{system} MB/s", (system, "mb_s"))
        add("photos", f"{system} p50 s", (system, "p50"), 1.0, 2)
        add("photos", f"{system} p99 s", (system, "p99"), 1.0, 2)
        add("photos", f"{system} succeeded", (system, "ok"), 1.0, 0)
        add("photos", f"{system} server RSS peak MiB", (system, "rss_peak"), MIB, 0)
        add("photos", f"{system} server CPU ms/image", (system, "cpu_ms_per_image"))
    for system in ("workers_1", "workers_2"):
        add("photos_workers", f"{system} images/s", (system, "images_s"))
        add("photos_workers", f"{system} p99 s", (system, "p99"), 1.0, 2)
        add("photos_workers", f"{system} succeeded", (system, "ok"), 1.0, 0)
        add("photos_workers", f"{system} server CPU ms/image", (system, "cpu_ms_per_image"))
        add("photos_workers", f"{system} server RSS peak MiB", (system, "rss_peak"), MIB, 0)
    add("held", "sessions held after uploads", ("imgshare", "held"), 1.0, 0)
    add("held", "uploads succeeded", ("imgshare", "ok"), 1.0, 0)
    add("held", "upload p50 s", ("imgshare", "p50"), 1.0, 2)
    add("held", "upload p99 s", ("imgshare", "p99"), 1.0, 2)
    add("held", "server RSS peak MiB", ("imgshare", "rss_peak"), MIB, 0)
    for kind in ("nginx_tls", "imgshare_tls", "imgshare_app", "imgshare_login"):
        add("sessions", f"{kind} per s", (kind, "per_s"))
        add("sessions", f"{kind} p50 ms", (kind, "p50"), 1e-3, 1)
    for command, label in CLI_LABELS.items():
        add("cli", f"{label} s", (command, "seconds"), 1.0, 3)
    for command, label in CLI_LABELS.items():
        add("cli", f"{label} CPU s", (command, "cpu_s"), 1.0, 3)
    for command, label in CLI_BULK_LABELS.items():
        add("cli", f"{label} s", (command, "seconds"), 1.0, 2)
    for command in ("imgshare_send_big", "curl_put_big"):
        add("cli", f"{CLI_BULK_LABELS[command]} MB/s", (command, "mb_s"))
    for command in ("imgshare_send_many", "curl_put_many"):
        add("cli", f"{CLI_BULK_LABELS[command]} images/s", (command, "images_s"))
    for command, label in CLI_BULK_LABELS.items():
        add("cli", f"{label} CPU s", (command, "cpu_s"), 1.0, 2)
    add("cli", "send / curl -T, time (per run) x", ("send_vs_curl_put", "x"), 1.0, 2)
    add("cli", "list / curl GET, time (per run) x", ("list_vs_curl_get", "x"), 1.0, 2)
    add("cli", "big send / curl -T, MB/s (per run) x", ("big_vs_curl_put", "x"), 1.0, 2)
    add("cli", "--parallel 4 / curl loops, images/s (per run) x",
        ("many_vs_curl_loops", "x"), 1.0, 2)  # fmt: skip
    rows += _backend_rows(s)
    return [row for row in rows if row[2] != "-" or row[3] != "-"]


def print_table(results: dict[str, Any], goals: list[dict[str, Any]]) -> None:
    print()
    print(
        f"imgshare benchmark ({results['mode']}), commit {results['git']['commit'][:10]}"
        f"{' (dirty)' if results['git']['dirty'] else ''}, {results['machine']['cores']} cores,"
        f" {results['versions']['nginx']}"
    )
    server = results.get("server", {})
    print(
        f"imgshare: {server.get('workers', '?')} worker processes, listen mode"
        f" {server.get('listen_mode', 'shared')}"
        f"{'' if server.get('listen_mode_set') else ' (default)'};"
        " server RSS and CPU: all its processes"
    )
    print("figures: median [min-max] of the runs")
    rows = figure_rows(results)
    widths = [max(len(r[i]) for r in rows) for i in range(4)] if rows else [0] * 4
    header = ("scenario", "figure", "warm", "cold")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    for row in (header, *rows):
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    print()
    print("goals (warm medians; cold beside):")
    for goal in goals:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[goal["pass"]]
        value = _fmt(goal["value"], 2)
        cold = f" (cold {_fmt(goal['cold'], 2)})" if goal.get("cold") is not None else ""
        op = ">=" if goal["at_least"] else "<="
        print(
            f"  {verdict}  {goal['goal']}: {value} {goal['unit']}{cold}"
            f"  [{op} {_fmt(goal['limit'], 2)}]"
        )
    nodes = _get(results, "scenarios", "backends", "ratios", "warm") or {}
    if nodes.get("photos_2_nodes_vs_1") is not None:
        print(
            "backends (report, no goal): photos through haproxy, 2 nodes / 1 node "
            f"{_fmt(nodes['photos_2_nodes_vs_1'], 2)} x on this machine's 2 cores (medians)"
        )
    servers = {"imgshare server": results.get("server", {})}
    for name, extra in (results.get("extra_servers") or {}).items():
        servers[f"imgshare server {name}"] = extra
    for name, info in servers.items():
        problems = info.get("log") or {}
        if problems.get("lines"):
            print(f"\n{name} log: {problems['lines']} warning/error lines, {problems['levels']}")
            for line in problems["first"][:5]:
                print(f"  {line[:160]}")
    exits = ", ".join(f"{name} {info.get('exit_code')}" for name, info in servers.items())
    print(f"\nexit codes: {exits}; run took {results.get('duration_s', 0):.0f} s")


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")


def chart(results: dict[str, Any], goals: list[dict[str, Any]], path: Path) -> None:
    """Two panels: throughput ratios against their goals; bounded figures against limits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratio_ids = (
        "big_vs_nginx", "big_vs_raw", "photos_vs_nginx", "photos_workers", "sessions_vs_nginx",
        "cli_big", "cli_many", "backends_photos", "backends_big",
    )  # fmt: skip
    labels = {
        "big_vs_nginx": "big image\nvs nginx",
        "big_vs_raw": "big image\nvs raw TLS",
        "photos_vs_nginx": "photos/s\nvs nginx",
        "sessions_vs_nginx": "sessions/s\nvs nginx",
        "big_rss": "big image\nRSS growth",
        "photos_tail": "photos\np99 / p50",
        "photos_workers": "photos/s\n-w 2 vs -w 1",
        "photos_cpu": "photos CPU/img\nvs nginx",
        "held_rss": "held\nserver RSS",
        "cli_big": "CLI big send\nvs curl -T",
        "backends_photos": "photos/s PG+S3\nvs embedded",
        "backends_big": "big MB/s PG+S3\nvs embedded",
        "cli_many": "CLI -p 4 send\nvs curl loops",
        "cli_send": "CLI send\nvs curl -T",
        "cli_list": "CLI list\nvs curl GET",
    }
    by_id = {g["id"]: g for g in goals}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [5, 4]})
    _panel(
        left,
        [by_id[i] for i in ratio_ids if i in by_id],
        labels,
        "imgshare / reference",
        lambda g: g["value"],
        lambda g: g["cold"],
        lambda g: g["limit"],
    )
    left.set_title("Throughput ratios (higher is better; line = goal)")
    bounded_ids = ("big_rss", "photos_tail", "photos_cpu", "held_rss", "cli_send", "cli_list")
    bounded = [by_id[i] for i in bounded_ids if i in by_id]
    _panel(
        right,
        bounded,
        labels,
        "figure / limit",
        lambda g: g["value"] / g["limit"] if g["value"] is not None else None,
        lambda g: g["cold"] / g["limit"] if g["cold"] is not None else None,
        lambda g: 1.0,
    )
    right.set_title("Bounded figures (lower is better; line = limit)")
    commit = results["git"]["commit"][:10]
    fig.suptitle(
        f"imgshare benchmark ({results['mode']} run, commit {commit}, "
        f"{results['machine']['cores']} cores): warm median, cold hatched",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _panel(axis: Any, goals: list[dict[str, Any]], labels: dict[str, str], ylabel: str,
           warm: Any, cold: Any, limit: Any) -> None:  # fmt: skip
    width = 0.38
    for index, goal in enumerate(goals):
        value, cold_value = warm(goal), cold(goal)
        ok = goal["pass"]
        colour = "#3a7d44" if ok else "#b03a2e"
        if value is not None:
            axis.bar(index - width / 2, value, width, color=colour)
            axis.text(
                index - width / 2, value, f"{value:.2f}", ha="center", va="bottom", fontsize=8
            )
        if cold_value is not None:
            axis.bar(
                index + width / 2, cold_value, width, color="white", edgecolor=colour, hatch="///"
            )
            axis.text(
                index + width / 2,
                cold_value,
                f"{cold_value:.2f}",
                ha="center",
                va="bottom",
                fontsize=7,
                color="#555",
            )
        axis.hlines(limit(goal), index - 0.48, index + 0.48, colors="black", linestyles="--")
    axis.set_xticks(range(len(goals)), [labels.get(g["id"], g["id"]) for g in goals], fontsize=8)
    axis.set_ylabel(ylabel)
    axis.set_xlim(-0.6, len(goals) - 0.4)


def markdown(results: dict[str, Any], goals: list[dict[str, Any]]) -> str:
    """The figures and goals as Markdown tables, for docs/performance.md."""
    lines = ["| scenario | figure | warm: median [min-max] | cold: median [min-max] |",
             "|---|---|---|---|"]  # fmt: skip
    for scenario, label, warm, cold in figure_rows(results):
        lines.append(f"| {scenario} | {label} | {warm} | {cold} |")
    lines += ["", "| goal | this run (warm) | cold | verdict |", "|---|---|---|---|"]
    for goal in goals:
        verdict = {True: "**PASS**", False: "**FAIL**", None: "n/a"}[goal["pass"]]
        value = f"{_fmt(goal['value'], 2)} {goal['unit']}"
        cold = _fmt(goal.get("cold"), 2)
        lines.append(f"| {goal['goal']} | {value} | {cold} | {verdict} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m bench.report [results.json]: Markdown for the docs
    import sys

    source = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/latest.json")
    data = json.loads(source.read_text())
    print(markdown(data, data.get("goals") or evaluate(data)))
