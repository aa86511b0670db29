"""Figures from a run: latency statistics, the table with targets, machine facts, the docs block."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any

from bench.hbone.machine import source as machine_source
from bench.publish import update_section

TARGETS = {"full_build_s": 1.0, "delta_p99_ms": 50.0, "peak_rss_mb": 300.0}
MEASURED_CODE = ("operator", "wisp/controlplane", "wisp/model.py", "bench/controlplane")


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _number(version: str) -> int:
    return int(version.rpartition("-")[2])


def delivery(results: dict[str, Any]) -> dict[str, Any]:
    """Per delivery (change x subscriber): store change -> that subscriber applied the version.

    A subscriber that skipped a version (two coalesced into one delta) is counted at the first
    later version it applied; one that never applied it counts as missed.
    """
    records = results["plane"]["records"]
    applied, received = results["fleet"]["applied"], results["fleet"].get("received", {})
    by_subscriber = {sid: sorted((_number(v), t) for v, t in stamps.items()) for sid, stamps in applied.items()}
    latencies: list[float] = []
    client_side: list[float] = []
    last_per_change: list[float] = []
    last_applied: list[float] = []  # store change → last subscriber applied, per change
    last_received: list[float] = []
    missed = 0
    for record in records:
        number, t_change, version = _number(record["version"]), record["t_change"], record["version"]
        these = []
        arrivals = []
        for sid, stamps in by_subscriber.items():
            t = next((t for n, t in stamps if n >= number), None)
            if t is None:
                missed += 1
                continue
            these.append((t - t_change) / 1e6)
            arrived = received.get(sid, {}).get(version)
            if arrived is not None:
                arrivals.append(arrived)
                client_side.append((t - arrived) / 1e6)
        latencies += these
        if these:
            last_applied.append(max(these))
            last_per_change.append(max(these) - (record["t_published"] - t_change) / 1e6)
        if arrivals:
            last_received.append((max(arrivals) - record["t_published"]) / 1e6)

    def ms(key_from: str, key_to: str) -> list[float]:
        return [(r[key_to] - r[key_from]) / 1e6 for r in records]

    stages = {
        "store change → reconcile starts": ms("t_change", "t_reconcile_start"),
        "reconcile (patch)": ms("t_reconcile_start", "t_reconcile_end"),
        "reconcile → published": ms("t_reconcile_end", "t_published"),
        "published → first message handed to hypercorn": [(r["t_sent"][0] - r["t_published"]) / 1e6
                                                          for r in records if r.get("t_sent")],
        "published → last (of 100) handed to hypercorn": [(r["t_sent"][-1] - r["t_published"]) / 1e6
                                                           for r in records if r.get("t_sent")],
        "published → last subscriber read it": last_received,
        "one subscriber: read → applied (decode + apply)": client_side,
        "published → last subscriber applied": last_per_change,
        "store change → all acks seen (2 ms polls)": [(r["t_all_acked"] - r["t_change"]) / 1e6
                                                       for r in records if r["t_all_acked"] is not None],
    }
    return {
        "deliveries": len(latencies),
        "missed": missed,
        "patched_changes": sum(1 for r in records if r["patched"]),
        "changes": len(records),
        "changes_not_all_acked_in_5s": sum(1 for r in records if r["t_all_acked"] is None),
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
        "last_subscriber_p50_ms": percentile(last_applied, 50),
        "last_subscriber_p99_ms": percentile(last_applied, 99),
        "stages_ms": {name: {"p50": percentile(v, 50), "p99": percentile(v, 99), "max": max(v)}
                      for name, v in stages.items() if v},
        "latencies_ms": latencies,
    }


def summary(results: dict[str, Any]) -> dict[str, Any]:
    offline = results["offline"]
    d = delivery(results["delivery"])
    plane = results["delivery"]["plane"]
    rows = [
        ("full build (reconcile, median)", offline["full_build"]["median_s"], "s", TARGETS["full_build_s"]),
        ("delta delivered, p99 of all deliveries", d["p99_ms"], "ms", TARGETS["delta_p99_ms"]),
        ("control plane peak RSS (VmHWM)", plane["memory"]["peak_rss_mib"] * 2**20 / 1e6, "MB", TARGETS["peak_rss_mb"]),
    ]
    single = delivery(results["delivery"]["single"]) if "single" in results["delivery"] else None
    return {"delivery": d, "single": single, "rows": [
        {"measure": name, "value": value, "unit": unit, "target": target, "pass": value <= target}
        for name, value, unit, target in rows]}


def table(results: dict[str, Any], figures: dict[str, Any]) -> str:
    offline, delivered = results["offline"], results["delivery"]
    plane, d = delivered["plane"], figures["delivery"]
    lines = ["| measure | value | target | |", "| --- | ---: | ---: | --- |"]
    for row in figures["rows"]:
        lines.append(f"| {row['measure']} | {_fmt(row['value'])} {row['unit']} | ≤ {_fmt(row['target'])} "
                     f"{row['unit']} | {'PASS' if row['pass'] else 'MISS'} |")
    lines += ["", "| detail | value |", "| --- | ---: |"]
    detail = [
        ("cluster", f"{offline['objects']:,} objects → {offline['workloads']:,} workloads, "
                    f"{offline['services']:,} services, {offline['authorizations']:,} authorizations"),
        ("full build min / max", f"{_fmt(offline['full_build']['min_s'])} / {_fmt(offline['full_build']['max_s'])} s"),
        ("indexing the objects (ClusterState.of), median", f"{_fmt(offline['index']['median_s'])} s"),
        ("encode full snapshot (encode_resource + encode_snapshot), median",
         f"{_fmt(offline['encode_snapshot']['median_s'])} s for {offline['snapshot_bytes'] / 2**20:.1f} MiB"),
        ("encode full snapshot, resources already encoded (the distributor's cache)",
         f"{_fmt(offline['encode_snapshot_cached_resources']['median_s'])} s"),
        ("initial build in the control plane process", f"{_fmt(delivered['ready']['initial_build_s'])} s"),
    ]
    pod = offline["pod_change"]
    detail.append(("one pod change in process: store + snapshot + patch + publish + one delta message, median",
                   f"{pod['total']['median_s'] * 1e3:.2f} ms (patch {pod['patch']['median_s'] * 1e3:.2f}, "
                   f"snapshot {pod['snapshot']['median_s'] * 1e3:.2f}, "
                   f"publish {pod['publish']['median_s'] * 1e3:.3f}, "
                   f"message {pod['message']['median_s'] * 1e3:.3f})"))
    detail += [
        ("deliveries (changes × subscribers)", f"{d['deliveries']:,} ({d['changes']} × "
                                               f"{d['deliveries'] // max(1, d['changes'])}), missed {d['missed']}, "
                                               f"patched {d['patched_changes']}/{d['changes']}"),
        ("delivery p50 / p90 / p99 / max", f"{d['p50_ms']:.1f} / {d['p90_ms']:.1f} / {d['p99_ms']:.1f} / "
                                           f"{d['max_ms']:.1f} ms"),
        ("one subscriber alone (same changes, before the fleet connects): p50 / p99 / max",
         f"{figures['single']['p50_ms']:.1f} / {figures['single']['p99_ms']:.1f} / {figures['single']['max_ms']:.1f} ms"
         if figures.get("single") else "not measured"),
        ("until the last subscriber applied, per change: p50 / p99",
         f"{d['last_subscriber_p50_ms']:.1f} / {d['last_subscriber_p99_ms']:.1f} ms"),
    ]
    for name, s in d["stages_ms"].items():
        detail.append((f"stage: {name}, p50 / p99", f"{s['p50']:.2f} / {s['p99']:.2f} ms"))
    changes = d["changes"] or 1
    detail += [
        ("control plane CPU per change (all processing, incl. 100 streams and acks)",
         f"{plane['cpu_s'] / changes * 1e3:.1f} ms"),
        ("control plane CPU per change with one subscriber",
         f"{delivered['single']['plane']['cpu_s'] / changes * 1e3:.1f} ms" if "single" in delivered else "-"),
        ("subscribers' process CPU per change (100 subscribers)",
         f"{delivered['fleet']['cpu_s'] / changes * 1e3:.1f} ms"),
        ("GC during the changes, control plane: collections per generation / seconds",
         f"{plane['gc']['collections']} / {sum(plane['gc']['seconds']):.2f} s"),
        ("GC during the changes, subscribers' process",
         f"{delivered['fleet']['gc']['collections']} / {sum(delivered['fleet']['gc']['seconds']):.2f} s"),
        ("control plane RSS: after build / synced / end (peak)",
         f"{delivered['ready']['memory_after_build']['rss_mib']:.0f} / {plane['memory_synced']['rss_mib']:.0f} / "
         f"{plane['memory']['rss_mib']:.0f} ({plane['memory']['peak_rss_mib']:.0f}) MiB"),
        ("initial sync of all subscribers (snapshots)", f"{delivered['fleet_sync']['synced_s']:.1f} s"),
        ("subscriber reconnects; changes not acknowledged by all within 5 s",
         f"{delivered['fleet']['reconnects']}; {d['changes_not_all_acked_in_5s']}"),
    ]
    lines += [f"| {k} | {v} |" for k, v in detail]
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:,.0f}"


# --- where it ran ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
            "kernel": platform.release(), "python": platform.python_version(),
            "load_before": os.getloadavg()}


def source(root: Path) -> dict[str, Any]:
    return machine_source(root, MEASURED_CODE)


# --- docs/performance.md ---------------------------------------------------------------------------

HEADING = "## Control plane (bench/controlplane)"
BEGIN = "<!-- bench.controlplane results: begin (rewritten by `python -m bench.controlplane --docs`) -->"
END = "<!-- bench.controlplane results: end -->"


def where_and_load(run: dict[str, Any]) -> str:
    """The first line of a docs block: date, machine, code, and how busy the machine was."""
    m, src = run["machine"], run["source"]
    where = f"{src['commit']}" + (" plus uncommitted changes" if src["changes"] else "")
    load = ", ".join(f"{x:.2f}" for x in m["load_before"])
    others = run.get("others")
    during = (f"; others (other programs' CPU during the run) {others['others_cores']:.0%} of a core"
              if others else "")
    return (f"Measured {run['date']} on {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), "
            f"Linux {m['kernel']}, Python {m['python']}; wisp at {where}. Load average before the run: {load}"
            f"{during} (the machine is shared with other work).")


def docs_block(run: dict[str, Any], figures: dict[str, Any]) -> str:
    plan = run["plan"]
    return "\n".join([
        where_and_load(run),
        "",
        f"Command: `{run['command']}` — {plan['repeats']} full builds and encodings (median); "
        f"{plan['changes']} readiness flips of one pod, {plan['spacing'] * 1000:.0f} ms apart, each delivered to "
        f"{plan['subscribers']} ztunnel subscribers ({plan['nodes']} nodes × {plan['per_node']}, each on its own "
        "TLS connection, acks on the stream) in a second process; control plane alone in a third.",
        "",
        table(run["results"], figures),
    ])


def update_docs(path: Path, block: str) -> None:
    update_section(path, HEADING, BEGIN, END, block)


KUBE_HEADING = "### The watch path: the operator on the test bed's API server"
KUBE_BEGIN = ("<!-- bench.controlplane --kube results: begin "
              "(rewritten by `python -m bench.controlplane --kube --docs`) -->")
KUBE_END = "<!-- bench.controlplane --kube results: end -->"


def kube_docs_block(run: dict[str, Any]) -> str:
    from .kube import table as kube_table

    plan = run["plan"]
    return "\n".join([
        where_and_load(run),
        "",
        f"Command: `{run['command']}` — the test bed's kube-apiserver, etcd, controller manager and scheduler "
        f"on loopback, {plan['nodes']} simulated nodes (runtime/testbed), the cluster written over HTTP/2 with "
        f"{plan['concurrency']} requests in flight; the operator's KubeSource, Controller and Distributor in "
        f"their own process; a burst of {plan['burst']:,} pod label patches, {plan['concurrency']} in flight.",
        "",
        kube_table(run["results"], plan),
    ])


def update_kube_docs(path: Path, block: str) -> None:
    update_section(path, KUBE_HEADING, KUBE_BEGIN, KUBE_END, block)
