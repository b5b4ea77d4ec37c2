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
    """The goals of the issues so far (5, 10, 11), checked against this run (warm
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
    return goals


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
    "imgshare_send": "imgshare send (4 MB photo)",
    "curl_put": "curl PUT (same photo)",
    "imgshare_list": "imgshare list",
    "curl_get": "curl GET (1 KiB)",
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
    add("cli", "send / curl PUT (per run) x", ("send_vs_curl_put", "x"), 1.0, 2)
    add("cli", "list / curl GET (per run) x", ("list_vs_curl_get", "x"), 1.0, 2)
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
    cli = _get(results, "scenarios", "cli", "ratios", "warm") or {}
    if cli:
        print(
            "command line (no goal): imgshare send / curl PUT "
            f"{_fmt(cli.get('send_vs_curl_put'), 2)} x, imgshare list / curl GET "
            f"{_fmt(cli.get('list_vs_curl_get'), 2)} x (medians)"
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
    bounded = [by_id[i] for i in ("big_rss", "photos_tail", "photos_cpu", "held_rss") if i in by_id]
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
