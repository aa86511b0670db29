"""From per-round samples to medians, ratios against the anchors, a text table, JSON and markdown."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict

from .runner import Plan, Sample

NAMES = {"tcp": "plain TCP", "tls": "plain TLS", "hbone": "HBONE"}
SHORT = {"tcp": "TCP", "tls": "TLS", "hbone": "HBONE"}
# The table's columns: (metric, heading).
METRICS = (
    ("bulk_gbps", "bulk Gb/s"),
    ("bidir_gbps", "bidir Gb/s"),
    ("req_s", "1 KiB echo req/s"),
    ("p50_us", "p50 µs"),
    ("p99_us", "p99 µs"),
)
HEADINGS = dict(METRICS)
RATIOS = (("tls", "tcp"), ("hbone", "tcp"), ("hbone", "tls"))


def values(sample: Sample) -> dict[str, float]:
    """The metrics one sample contributes, plus each side's CPU use (fraction of one core)."""
    r = sample.result
    cpu = {f"{sample.measure}_client_cpu": sample.client_cpu / sample.wall,
           f"{sample.measure}_server_cpu": sample.server_cpu / sample.wall}
    if sample.measure in ("bulk", "bidir"):
        return {f"{sample.measure}_gbps": r["bytes"] * 8 / r["seconds"] / 1e9, **cpu}
    return {"req_s": r["requests"] / r["seconds"], "p50_us": r["p50_us"], "p99_us": r["p99_us"],
            "p90_us": r["p90_us"], **cpu}


def summarise(samples: list[Sample], contenders: tuple[str, ...]) -> dict:
    """{contender: {metric: {"median", "min", "max", "rounds": [...]}}}."""
    out: dict = {c: {} for c in contenders}
    for sample in samples:
        for metric, value in values(sample).items():
            out[sample.contender].setdefault(metric, []).append(value)
    for contender, metrics in out.items():
        for metric, rounds in metrics.items():
            metrics[metric] = {"median": statistics.median(rounds), "min": min(rounds),
                               "max": max(rounds), "rounds": rounds}
    return out


def ratios(summary: dict) -> dict:
    """{"HBONE/TLS": {metric: ratio of medians}} for every pair both present."""
    out = {}
    for a, b in RATIOS:
        if a in summary and b in summary:
            row = {}
            for metric in HEADINGS:
                value = _median(summary, a, metric) / _median(summary, b, metric)
                if not math.isnan(value):
                    row[metric] = value
            out[f"{SHORT[a]}/{SHORT[b]}"] = row
    return out


def _median(summary: dict, contender: str, metric: str) -> float:
    cell = summary[contender].get(metric)
    return cell["median"] if cell else float("nan")


def foreign_load(samples: list[Sample]) -> tuple[float, float]:
    """(median, max) CPU other programs used during a measurement, as a share of one core."""
    shares = [s.other_cpu / s.wall for s in samples] or [0.0]
    return statistics.median(shares), max(shares)


def spread(summary: dict) -> tuple[str, float]:
    """The cell whose rounds disagree most: (name, (max - min) / median)."""
    worst = ("", 0.0)
    for contender, metrics in summary.items():
        for metric in HEADINGS:
            cell = metrics.get(metric)
            if cell and cell["median"] and len(cell["rounds"]) > 1:
                s = (cell["max"] - cell["min"]) / cell["median"]
                if s > worst[1]:
                    worst = (f"{SHORT[contender]} {HEADINGS[metric]}", s)
    return worst


# -- rendering -----------------------------------------------------------------------------------
def _fmt(metric: str, value: float) -> str:
    if math.isnan(value):
        return "–"
    if metric.endswith("gbps"):
        return f"{value:.2f}"
    return f"{value:,.0f}"


def table_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    head = ["contender"] + list(HEADINGS.values())
    rows = [[NAMES[c]] + [_fmt(m, _median(summary, c, m)) for m in HEADINGS] for c in summary]
    return head, rows


def ratio_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    head = ["ratio"] + list(HEADINGS.values())
    rows = [[name] + [f"{r[m]:.2f}×" if m in r else "–" for m in HEADINGS]
            for name, r in ratios(summary).items()]
    return head, rows


def cpu_rows(summary: dict, measures: tuple[str, ...]) -> tuple[list[str], list[list[str]]]:
    head = ["CPU busy, client / server"] + list(measures)
    rows = []
    for c in summary:
        cells = []
        for measure in measures:
            client, server = (_median(summary, c, f"{measure}_{side}_cpu") for side in ("client", "server"))
            cells.append("–" if math.isnan(client) else f"{client:.0%} / {server:.0%}")
        rows.append([NAMES[c]] + cells)
    return head, rows


def text_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(head) - 1)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [head, align, *rows])


def noise(summary: dict, samples: list[Sample]) -> str:
    worst, s = spread(summary)
    median, peak = foreign_load(samples)
    return (f"Largest round-to-round spread: {worst}, {s:.0%} of its median. Other programs used "
            f"{median:.0%} of a core during the median measurement, {peak:.0%} at most.")


def text(summary: dict, plan: Plan, samples: list[Sample]) -> str:
    parts = [
        text_table(*table_rows(summary)), "",
        text_table(*ratio_rows(summary)), "",
        text_table(*cpu_rows(summary, plan.measures)), "",
        f"Medians of {plan.rounds} rounds. {noise(summary, samples)}",
    ]
    return "\n".join(parts)


def markdown(summary: dict, plan: Plan, samples: list[Sample], *, date: str, machine: str,
             revision: str, command: str) -> str:
    return "\n".join([
        f"Measured {date} on {machine}; wisp at {revision}.",
        "",
        f"Command: `{command}` — {describe_plan(plan)}.",
        "",
        markdown_table(*table_rows(summary)),
        "",
        "Ratios of medians (for µs, above 1× means slower):",
        "",
        markdown_table(*ratio_rows(summary)),
        "",
        "CPU time of each process over each measurement, as a share of one core (medians):",
        "",
        markdown_table(*cpu_rows(summary, plan.measures)),
        "",
        noise(summary, samples),
    ])


def describe_plan(plan: Plan) -> str:
    return (f"{plan.rounds} rounds, contenders alternating; bulk {_size(plan.bulk_size)} client→server "
            f"in 256 KiB writes, bidir {_size(plan.bidir_size)} each way at once (Gb/s counts both), "
            f"echo {plan.echo_seconds:g} s of 1 KiB ping-pong after {plan.warmup_seconds:g} s warm-up; "
            f"one connection (HBONE: one CONNECT stream) per measurement, set-up not timed"
            + (f"; HBONE through the data-path engine (shape {plan.engine}): client app → outbound "
               f"splice → CONNECT → inbound splice → server app, each app on loopback TCP"
               if plan.engine else ""))


def _size(n: int) -> str:
    return f"{n / 2**30:g} GiB" if n >= 2**30 else f"{n / 2**20:g} MiB"


def as_json(summary: dict, plan: Plan, samples: list[Sample], **meta) -> dict:
    return {
        "benchmark": "bench.hbone", **meta, "plan": asdict(plan),
        "summary": summary, "ratios": ratios(summary),
        "samples": [asdict(s) for s in samples],
    }
