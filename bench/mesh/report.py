"""From samples to figures: medians over rounds, ratios to each anchor, targets, tables, JSON.

Every figure is a median over rounds of one per-round value. Latency percentiles come from each
fixed-rate run's own h2load log (several per round: `Plan.fixed_runs`); "added" latency is a
contender's percentile minus direct's in the same round and run, then the median of those, and
every latency is shown with its spread (min–max over the runs) beside it. How far to trust them
is read off direct: its own p99 moves between runs with nothing in the path, and a difference
smaller than that movement is noise (`latency_trust`). Per-proxy figures are kept per node
("node1", "node2"), since a target "per ztunnel" must hold for each. Every ztunnel contender
(one per engine: `ztunnel`, `ztunnel[epoll]`, …) is held to every target and gets a row in the
engine table.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

from .runner import Plan, Sample

ANCHOR_FOR_ADDED = "direct"
TARGET_DIGITS = 3
NODES = ("node1", "node2")


@dataclass(slots=True, frozen=True)
class Metric:
    key: str
    heading: str
    unit: str
    digits: int


METRICS = (
    Metric("p50_ms", "p50 at 1,000 rps", "ms", 3),
    Metric("p90_ms", "p90 at 1,000 rps", "ms", 3),
    Metric("p99_ms", "p99 at 1,000 rps", "ms", 3),
    Metric("p999_ms", "p99.9 at 1,000 rps", "ms", 3),
    Metric("added_p50_ms", "added p50 over direct", "ms", 3),
    Metric("added_p90_ms", "added p90 over direct", "ms", 3),
    Metric("added_p99_ms", "added p99 over direct", "ms", 3),
    Metric("cpu_per_1k_{proxy}", "{proxy} proxy CPU-s per 1,000 requests", "s", 3),
    Metric("rss_peak_mb_{proxy}", "{proxy} proxy peak RSS at 1,000 rps", "MB", 1),
    Metric("saturation_rps", "saturation, 16 keep-alive connections", "req/s", 0),
    Metric("connect_rps", "new connections (Connection: close)", "conn/s", 0),
    Metric("bulk1_gbps", "bulk, 1 connection (iperf3)", "Gb/s", 2),
    Metric("bulk8_gbps", "bulk, 8 connections (iperf3)", "Gb/s", 2),
    Metric("idle_kb_{proxy}", "{proxy} proxy RSS per idle connection", "KB", 1),
)


def expand(metrics: tuple[Metric, ...], proxies: list[str]) -> list[Metric]:
    """Per-proxy metrics ("{proxy}" in the key) once for each proxy name seen, others as they are."""
    out = []
    for m in metrics:
        if "{proxy}" in m.key:
            out += [Metric(m.key.format(proxy=p), m.heading.format(proxy=p), m.unit, m.digits)
                    for p in proxies]
        else:
            out.append(m)
    return out


def proxy_names(summary: dict) -> list[str]:
    names = {key.rsplit("_", 1)[1] for metrics in summary.values() for key in metrics if key.startswith("cpu_per_1k_")}
    return sorted(names)


def is_wisp(contender: str) -> bool:
    """ztunnel with its default engine (`ztunnel`) or a named one (`ztunnel[epoll]`)."""
    return contender == "ztunnel" or contender.startswith("ztunnel[")


@dataclass(slots=True, frozen=True)
class Target:
    """A target every ztunnel contender is held to."""

    label: str
    metrics: tuple[str, ...]  # every one must meet the bound (e.g. both nodes' ztunnels)
    bound: float
    # None: an absolute bound; otherwise the metric is divided by this anchor's, same run.
    relative_to: str | None
    at_least: bool


# The data-path engine issue's targets (bulk at 0.9×: one TLS stream per direction through
# Python against HAProxy's, the ceiling study's margin).
TARGETS = (
    Target("saturation req/s ≥ 1.0× HAProxy pair", ("saturation_rps",), 1.0, "haproxy", True),
    Target("bulk Gb/s, 1 connection ≥ 0.9× HAProxy pair", ("bulk1_gbps",), 0.9, "haproxy", True),
    Target("bulk Gb/s, 8 connections ≥ 0.9× HAProxy pair", ("bulk8_gbps",), 0.9, "haproxy", True),
    Target("new connections/s ≥ 2× HAProxy pair", ("connect_rps",), 2.0, "haproxy", True),
    Target("added p99 at 1,000 rps ≤ 0.5 ms", ("added_p99_ms",), 0.5, None, False),
    Target("≤ 0.10 vCPU per 1,000 rps per ztunnel",
           tuple(f"cpu_per_1k_{n}" for n in NODES), 0.10, None, False),
    Target("≤ 40 MB RSS at 1,000 rps per ztunnel",
           tuple(f"rss_peak_mb_{n}" for n in NODES), 40.0, None, False),
    Target("≤ 16 KB RSS per idle connection per ztunnel",
           tuple(f"idle_kb_{n}" for n in NODES), 16.0, None, False),
)


# -- per-sample values ---------------------------------------------------------------------------------
def values(sample: Sample) -> dict[str, float]:
    """The metrics one sample contributes (added latency is computed per round, later)."""
    r = sample.result
    if sample.measure == "fixed":
        out = {f"p{q}_ms": r[f"p{q}_us"] / 1000 for q in ("50", "90", "99", "999")}
        out["fixed_rps"] = r["requests"] / r["seconds"]
        for node, proxy in sample.proxies.items():
            out[f"cpu_per_1k_{node}"] = proxy["cpu_s"] / (r["requests"] / 1000)
            out[f"rss_peak_mb_{node}"] = proxy["rss_peak_kib"] * 1024 / 1e6
        return out
    if sample.measure == "saturation":
        return {"saturation_rps": r["requests"] / r["seconds"]}
    if sample.measure == "connect":
        return {"connect_rps": r["requests"] / r["seconds"]}
    if sample.measure in ("bulk1", "bulk8"):
        return {f"{sample.measure}_gbps": r["gbps"]}
    if sample.measure == "idle":
        return {f"idle_kb_{node}": (p["rss_after_kib"] - p["rss_before_kib"]) * 1024 / 1e3 / r["opened"]
                for node, p in sample.proxies.items() if r["opened"]}
    raise ValueError(f"unknown measure {sample.measure!r}")


def summarise(samples: list[Sample], contenders: tuple[str, ...]) -> dict:
    """{contender: {metric: {"median", "min", "max", "rounds": [...]}}}, added latency included.

    "rounds" lists one value per round, or per fixed-rate run for the latency and fixed-rate
    metrics (a round's other measures sit with its first run)."""
    per_round: dict[tuple[str, int, int], dict[str, float]] = {}
    for sample in samples:
        per_round.setdefault((sample.contender, sample.round, sample.run), {}).update(values(sample))
    for (contender, round_, run), row in per_round.items():
        anchor = per_round.get((ANCHOR_FOR_ADDED, round_, run), {})
        for q in ("50", "90", "99"):
            if f"p{q}_ms" in row and f"p{q}_ms" in anchor:
                row[f"added_p{q}_ms"] = row[f"p{q}_ms"] - anchor[f"p{q}_ms"]
    out: dict = {c: {} for c in contenders}
    for (contender, _, _), row in sorted(per_round.items()):
        for metric, value in row.items():
            out.setdefault(contender, {}).setdefault(metric, []).append(value)
    for metrics in out.values():
        for metric, rounds in metrics.items():
            metrics[metric] = {"median": statistics.median(rounds), "min": min(rounds), "max": max(rounds),
                               "rounds": rounds}
    return out


def median(summary: dict, contender: str, metric: str) -> float:
    cell = summary.get(contender, {}).get(metric)
    return cell["median"] if cell else math.nan


def ratio(summary: dict, contender: str, anchor: str, metric: str) -> float:
    """contender ÷ anchor of the medians; NaN where either is missing or not positive (an added
    latency can be zero or negative when the tails are noise, and a ratio of those means nothing)."""
    a, b = median(summary, contender, metric), median(summary, anchor, metric)
    if math.isnan(a) or math.isnan(b) or a <= 0 or b <= 0:
        return math.nan
    return a / b


def ratio_pairs(contenders: tuple[str, ...], anchors: tuple[str, ...]) -> list[tuple[str, str]]:
    """(contender, anchor) for every contender and every anchor listed before it."""
    return [(c, a) for i, c in enumerate(contenders) for a in contenders[:i] if a in anchors]


def evaluate(summary: dict) -> list[dict]:
    """Each target for each ztunnel contender that ran: the measured value (worst over its
    metrics), PASS or MISS; grouped by target, contenders in table order."""
    out = []
    for target in TARGETS:
        if target.relative_to and target.relative_to not in summary:
            continue
        for contender in filter(is_wisp, summary):
            measured = [ratio(summary, contender, target.relative_to, m) if target.relative_to
                        else median(summary, contender, m) for m in target.metrics]
            measured = [v for v in measured if not math.isnan(v)]
            if not measured:
                continue
            worst = min(measured) if target.at_least else max(measured)
            ok = worst >= target.bound if target.at_least else worst <= target.bound
            result = {"target": target.label, "contender": contender, "value": worst,
                      "relative": bool(target.relative_to), "metric": target.metrics[0], "pass": ok}
            if target.metrics[0].startswith("added_p"):
                # A latency bound smaller than direct's own movement between runs is not shown
                # either way by this run.
                low, high, count = spread(summary, ANCHOR_FOR_ADDED, target.metrics[0].removeprefix("added_"))
                if count > 1:
                    result["noise"] = high - low
            out.append(result)
    return out


# -- rendering -------------------------------------------------------------------------------------------
def fmt(value: float, digits: int) -> str:
    return "–" if math.isnan(value) else f"{value:,.{digits}f}"


def fmt_ratio(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2f}×"


def spread(summary: dict, contender: str, metric: str) -> tuple[float, float, int]:
    """(min, max, how many values) of a metric over its rounds or runs."""
    cell = summary.get(contender, {}).get(metric)
    if not cell:
        return math.nan, math.nan, 0
    return cell["min"], cell["max"], len(cell["rounds"])


def is_latency(metric: str) -> bool:
    return metric.endswith("_ms")


def fmt_cell(summary: dict, contender: str, metric: Metric) -> str:
    """The median; for a latency measured more than once, its range beside it: `0.44 (0.41–0.52)`."""
    value = median(summary, contender, metric.key)
    low, high, count = spread(summary, contender, metric.key)
    text = fmt(value, metric.digits)
    if is_latency(metric.key) and count > 1 and not math.isnan(value) and not (low == high == 0):
        text += f" ({fmt(low, metric.digits)}–{fmt(high, metric.digits)})"
    return text


def table(summary: dict, names: dict[str, str], anchors: tuple[str, ...],
          short: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    """One row per metric: each contender's median (latencies with their min–max), then each
    ratio to an anchor."""
    contenders = tuple(summary)
    pairs = ratio_pairs(contenders, anchors)
    head = ["measure", "unit", *(names[c] for c in contenders), *(f"{short[c]} ÷ {short[a]}" for c, a in pairs)]
    rows = []
    for metric in expand(METRICS, proxy_names(summary)):
        cells = [median(summary, c, metric.key) for c in contenders]
        if all(math.isnan(v) for v in cells):
            continue
        ratios = [ratio(summary, c, a, metric.key) for c, a in pairs]
        rows.append([metric.heading, metric.unit, *(fmt_cell(summary, c, metric) for c in contenders),
                     *(fmt_ratio(r) for r in ratios)])
    return head, rows


def target_rows(results: list[dict], names: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    head = ["target", "contender", "measured", "result"]
    rows = [[r["target"], names[r["contender"]],
             f"{r['value']:.2f}×" if r["relative"] else f"{r['value']:,.{TARGET_DIGITS}f}",
             ("PASS" if r["pass"] else "MISS") + (f" (noise {r['noise']:.2f} ms)" if "noise" in r else "")]
            for r in results]
    return head, rows


def text_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


def markdown_table(head: list[str], rows: list[list[str]], left: int = 1) -> str:
    align = ["---"] * left + ["---:"] * (len(head) - left)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [head, align, *rows])


ENGINE_COLUMNS = (
    ("saturation_rps", "saturation", False),
    ("connect_rps", "new conn/s", False),
    ("bulk1_gbps", "bulk 1 conn", False),
    ("bulk8_gbps", "bulk 8 conn", False),
    ("cpu_per_1k_node1", "CPU-s/1k node1", True),
    ("cpu_per_1k_node2", "CPU-s/1k node2", True),
    ("rss_peak_mb_node1", "RSS node1", True),
    ("rss_peak_mb_node2", "RSS node2", True),
)


def engine_table(summary: dict, names: dict[str, str], anchor: str = "haproxy") -> tuple[list[str], list[list[str]]]:
    """One row per ztunnel contender (one per engine shape): each figure as a ratio to the
    anchor (for CPU and RSS, below 1× is better), then its added p50 and p99 with their ranges."""
    head = ["contender", *(f"{title} ÷ {anchor}" for _, title, _ in ENGINE_COLUMNS),
            "added p50 ms", "added p99 ms"]
    rows = []
    for contender in filter(is_wisp, summary):
        cells = [fmt_ratio(ratio(summary, contender, anchor, key)) for key, _, _ in ENGINE_COLUMNS]
        added = [fmt_cell(summary, contender, Metric(key, "", "ms", 3)) for key in ("added_p50_ms", "added_p99_ms")]
        rows.append([names[contender], *cells, *added])
    return head, rows


def latency_trust(summary: dict, anchor: str = ANCHOR_FOR_ADDED) -> str:
    """How far the latencies can be trusted: how much direct's own percentiles moved between
    runs with nothing in the path. A difference smaller than that is noise."""
    low99, high99, count = spread(summary, anchor, "p99_ms")
    low50, high50, _ = spread(summary, anchor, "p50_ms")
    if count < 2:
        return ("How much to trust the latencies: one fixed-rate run per contender, so no spread was measured; "
                "read the latencies as indicative only (more rounds or --fixed-runs give a spread).")
    return (f"How much to trust the latencies: over {count} fixed-rate runs direct's own p99 ranged "
            f"{low99:.3f}–{high99:.3f} ms and its p50 {low50:.3f}–{high50:.3f} ms, with nothing in the path; "
            f"differences in p99 below {high99 - low99:.2f} ms (in p50 below {high50 - low50:.2f} ms) are noise.")


def profile_tables(profile: dict, n: int | None = None) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, head, rows) for a py-spy profile's top entries, by own and by total samples;
    shares are of all samples (CPU the process used, idle waits excluded)."""
    samples = profile["samples"] or 1
    out = []
    for by, title in (("own", "by own time"), ("total", "by total time")):
        entries = profile[by][:n] if n else profile[by]
        rows = [[e["frame"], f"{e['own'] / samples:.1%}", f"{e['total'] / samples:.1%}"] for e in entries]
        out.append((title, ["entry", "own", "total"], rows))
    return out


def noise(samples: list[Sample]) -> str:
    timed = [s for s in samples if s.measure != "idle" and s.wall > 0]
    shares = [s.other_cpu / s.wall for s in timed] or [0.0]
    return (f"Other programs used {statistics.median(shares):.0%} of a core during the median measurement, "
            f"{max(shares):.0%} at most.")


def idle_detail(samples: list[Sample], names: dict[str, str]) -> list[str]:
    lines = []
    for s in samples:
        if s.measure != "idle":
            continue
        r = s.result
        per_node = ", ".join(f"{node} {p['rss_before_kib'] / 1024:.0f} → {p['rss_after_kib'] / 1024:.0f} MiB"
                             for node, p in s.proxies.items())
        lines.append(f"{names[s.contender]}: {r['opened']:,} of {r['asked']:,} opened ({r['failed']} failed), "
                     f"all established at the server after {r['established_seconds']:.1f} s"
                     + (f"; proxy RSS {per_node}" if per_node else ""))
    return lines


def errors(samples: list[Sample]) -> list[str]:
    """Failed requests or socket errors: a figure with errors is not comparable."""
    out = []
    for s in samples:
        r = s.result
        bad = r.get("failed", 0) + r.get("socket_errors", 0) + r.get("non_2xx", 0)
        if bad:
            out.append(f"round {s.round + 1} {s.contender} {s.measure}: {bad} failed requests or socket errors")
    return out


def as_json(summary: dict, plan: Plan, samples: list[Sample], **meta) -> dict:
    return {"benchmark": "bench.mesh", **meta, "plan": asdict(plan), "summary": summary,
            "targets": evaluate(summary), "samples": [asdict(s) for s in samples]}


def layers_caption(cpu_layers: dict) -> str:
    first = next(iter(cpu_layers.values()))
    unit = first["unit"]
    runs = ", ".join(f"{key} {figures['units']:,.0f} {unit}s, {figures['samples']:,} samples"
                     for key, figures in cpu_layers.items())
    return (f"perf, CPU µs per {unit} per proxy by layer, one extra {first['measure']} run each "
            f"({runs}; {first['frequency']} Hz, kernel included):")


def layers_table(cpu_layers: dict, short: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    """Rows: layers (as bench/mesh/layers.py orders them, then the total); columns: contenders."""
    from .layers import LAYERS

    keys = list(cpu_layers)
    head = ["layer", *(short.get(k, k) for k in keys)]
    rows = []
    for name in (*LAYERS, "total"):
        values = [cpu_layers[k]["us_per_unit"].get(name) for k in keys]
        if any(values):
            rows.append([name, *("–" if v is None else f"{v:.1f}" for v in values)])
    return head, rows
