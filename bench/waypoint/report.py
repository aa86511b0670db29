"""From samples to figures for the waypoint benchmark: bench.mesh's medians, this benchmark's
metrics and targets.

Medians over rounds, latencies with their spread, come from bench.mesh.report. Added here: CPU
per 1,000 requests at saturation (besides at the fixed 1,000 req/s), per proxy process tree, and
the issue's targets — the waypoint path's saturation at least half of nginx's, and the waypoint
process at most 0.30 CPU-seconds per 1,000 requests (0.30 vCPU at 1,000 req/s; Istio's
waypoint: 0.25 vCPU).
"""

from __future__ import annotations

import math
import statistics

from bench.mesh import report as mesh_report
from bench.mesh.report import Metric, Target, expand, fmt_cell, fmt_ratio, median, ratio
from bench.mesh.runner import Sample

ANCHOR = "nginx"
WAYPOINT = "waypoint"

METRICS = (
    Metric("saturation_rps", "saturation, 16 keep-alive connections", "req/s", 0),
    Metric("sat_cpu_per_1k_{proxy}", "{proxy} CPU-s per 1,000 requests at saturation", "s", 3),
    Metric("cpu_per_1k_{proxy}", "{proxy} CPU-s per 1,000 requests at 1,000 rps", "s", 3),
    Metric("rss_peak_mb_{proxy}", "{proxy} peak RSS at 1,000 rps", "MB", 1),
    Metric("p50_ms", "p50 at 1,000 rps", "ms", 3),
    Metric("p99_ms", "p99 at 1,000 rps", "ms", 3),
    Metric("added_p50_ms", "added p50 over direct", "ms", 3),
    Metric("added_p99_ms", "added p99 over direct", "ms", 3),
)

TARGETS = (
    Target("saturation req/s ≥ 0.5× nginx", ("saturation_rps",), 0.5, ANCHOR, True),
    Target("waypoint ≤ 0.30 vCPU per 1,000 rps", ("cpu_per_1k_waypoint",), 0.30, None, False),
)


def summarise(samples: list[Sample], contenders: tuple[str, ...]) -> dict:
    """bench.mesh's summary plus `sat_cpu_per_1k_<proxy>` (median over rounds)."""
    out = mesh_report.summarise(samples, contenders)
    per: dict[tuple[str, str], list[float]] = {}
    for s in samples:
        if s.measure != "saturation" or not s.result.get("requests"):
            continue
        for name, proxy in s.proxies.items():
            per.setdefault((s.contender, f"sat_cpu_per_1k_{name}"), []).append(
                proxy["cpu_s"] / (s.result["requests"] / 1000))
    for (contender, metric), rounds in per.items():
        out.setdefault(contender, {})[metric] = {"median": statistics.median(rounds), "min": min(rounds),
                                                 "max": max(rounds), "rounds": rounds}
    return out


def proxy_names(summary: dict) -> list[str]:
    names = {key.removeprefix("sat_cpu_per_1k_").removeprefix("cpu_per_1k_")
             for metrics in summary.values() for key in metrics if "cpu_per_1k_" in key}
    return sorted(names)


def table(summary: dict, names: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    """One row per metric: each contender's median, then each contender ÷ nginx."""
    contenders = tuple(summary)
    others = [c for c in contenders if c != ANCHOR] if ANCHOR in summary else []
    head = ["measure", "unit", *(names[c] for c in contenders), *(f"{c} ÷ {ANCHOR}" for c in others)]
    rows = []
    for metric in expand(METRICS, proxy_names(summary)):
        cells = [median(summary, c, metric.key) for c in contenders]
        if all(math.isnan(v) for v in cells):
            continue
        rows.append([metric.heading, metric.unit, *(fmt_cell(summary, c, metric) for c in contenders),
                     *(fmt_ratio(ratio(summary, c, ANCHOR, metric.key)) for c in others)])
    return head, rows


def path_cpu(summary: dict, contender: str, prefix: str = "sat_cpu_per_1k_") -> float:
    """CPU-s per 1,000 requests summed over every proxy of a contender's path."""
    values = [cell["median"] for key, cell in summary.get(contender, {}).items() if key.startswith(prefix)]
    return sum(values) if values else math.nan


def bound(samples: list[Sample]) -> dict | None:
    """What a waypoint costing nothing could reach at saturation, two ways, against nginx.

    - From CPU: at saturation the cores are full, so req/s ≈ cores in use ÷ CPU per request of
      everything on the path (load generator, server, every proxy). Take the waypoint path's
      measured CPU per request, remove the waypoint's, and scale its req/s by the ratio. Optimistic:
      it keeps the ztunnels' per-request cost, which grows as the rate falls and would not shrink.
    - Measured: the ztunnel pair alone. A free waypoint leaves the same two ztunnels on the path
      (client ztunnel → waypoint is one HBONE hop, waypoint → server ztunnel another), so the
      path cannot beat the pair's own saturation.
    Medians over rounds; None without saturation samples of waypoint and nginx."""
    def per_round(contender: str) -> list[Sample]:
        return [s for s in samples if s.contender == contender and s.measure == "saturation"
                and s.result.get("requests")]

    wp, anchor = per_round(WAYPOINT), per_round(ANCHOR)
    if not wp or not anchor:
        return None
    nginx_rps = statistics.median(s.result["req_s"] for s in anchor)
    rps, total, waypoint, free = [], [], [], []
    for s in wp:
        requests = s.result["requests"]
        cpu = s.generator_cpu + s.server_cpu + sum(p["cpu_s"] for p in s.proxies.values())
        own = s.proxies.get("waypoint", {}).get("cpu_s", 0.0)
        rps.append(s.result["req_s"])
        total.append(cpu / requests * 1e6)
        waypoint.append(own / requests * 1e6)
        free.append(s.result["req_s"] * cpu / (cpu - own))
    out = {"nginx_rps": nginx_rps, "waypoint_rps": statistics.median(rps),
           "path_us": statistics.median(total), "waypoint_us": statistics.median(waypoint),
           "free_rps": statistics.median(free)}
    out["free_ratio"] = out["free_rps"] / nginx_rps
    pair = per_round("ztunnel")
    if pair:
        out["pair_rps"] = statistics.median(s.result["req_s"] for s in pair)
        out["pair_ratio"] = out["pair_rps"] / nginx_rps
    return out


def bound_line(b: dict) -> str:
    text = (f"Bound for a waypoint that cost nothing: the waypoint path spent {b['path_us']:.0f} µs of CPU per "
            f"request at saturation (load generator, server and every proxy), {b['waypoint_us']:.0f} µs of it in "
            f"the waypoint; without those, the same cores would carry ~{b['free_rps']:,.0f} req/s = "
            f"{b['free_ratio']:.2f}× nginx's {b['nginx_rps']:,.0f}")
    if "pair_rps" in b:
        text += (f"; measured directly, the two ztunnels alone (the ztunnel pair, which a free waypoint would "
                 f"leave on the path) reach {b['pair_rps']:,.0f} req/s = {b['pair_ratio']:.2f}× nginx")
    return text


def evaluate(summary: dict) -> list[dict]:
    out = []
    if WAYPOINT not in summary:
        return out
    for target in TARGETS:
        metric = target.metrics[0]
        value = (ratio(summary, WAYPOINT, target.relative_to, metric) if target.relative_to
                 else median(summary, WAYPOINT, metric))
        if math.isnan(value):
            continue
        ok = value >= target.bound if target.at_least else value <= target.bound
        out.append({"target": target.label, "contender": WAYPOINT, "value": value,
                    "relative": bool(target.relative_to), "metric": metric, "pass": ok})
    return out
