"""Where the waypoint path's CPU goes: py-spy on the waypoint, perf by layer on every proxy.

Both are extra, unmeasured runs after the rounds (a sampler pausing or interrupting a process
adds its own cost), of the measure named by `--profile-measure` (saturation by default: the
figure the issue's ratio is about).
- `--profile`: bench.mesh's py-spy recording (bench/mesh/profile.py), of the waypoint's busiest
  process instead of a ztunnel: top entries by own and total samples, idle waits left out.
- `--layers`: bench.mesh's perf recording and layer sorting (bench/mesh/layers.py), but split by
  proxy — each sample is charged to the proxy whose process tree its pid belongs to — so the
  waypoint, each ztunnel and nginx each get µs of CPU per request by layer (CPython, OpenSSL,
  kernel TCP/IP, netfilter …) instead of one average over the path's proxies.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

from bench.mesh import layers, procstat, runner
from bench.mesh.contenders import Contender
from bench.mesh.mesh import Mesh

_HEADER = re.compile(r"^\s*(\d+)\s*$")


def py_spy(plan: runner.Plan, contender: Contender, mesh: Mesh, scratch: Path, keep: Path | None) -> dict:
    """bench.mesh's py-spy run, on the proxy named `plan.profile` of `contender` (the waypoint)."""
    return runner._profile(plan, contender, mesh, scratch, runner.pinning.LAYOUTS["none"], keep)


def parse_script_by_pid(text: str) -> dict[int, Counter[str]]:
    """{pid: {layer: samples}} from `perf script -F pid,ip,sym,dso` (a header line holding the
    pid, the sample's frames innermost first, a blank line)."""
    out: dict[int, Counter[str]] = {}
    pid: int | None = None
    stack: list[layers.Frame] | None = None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if stack is not None and pid is not None:
                out.setdefault(pid, Counter())[layers.layer(stack)] += 1
            stack, pid = None, None
            continue
        if stack is None:
            found = _HEADER.match(line)
            if not found:
                raise layers.LayerError(f"perf script: expected a pid header, got {line[:200]!r}")
            pid, stack = int(found.group(1)), []
            continue
        frame = layers._FRAME.match(line)
        if frame:
            stack.append(layers.Frame(frame.group(1), frame.group(2)))
    return out


def per_proxy_layers(plan: runner.Plan, contender: Contender, mesh: Mesh, scratch: Path) -> dict:
    """One unmeasured `plan.profile_measure` run with perf on every process of every proxy of
    `contender`; µs of CPU per request by layer for each proxy apart."""
    roots = contender.proxies(mesh)
    parents, _ = procstat.processes()
    owner = {pid: name for name, root in roots.items()
             for pid in (procstat.descendants(root, parents) if root in parents else [root])}
    seconds = runner._command(plan, plan.profile_measure, contender.route(mesh), scratch)[1]
    output = scratch / f"perf-{contender.key}.data"
    try:
        with layers.Recording(sorted(owner), seconds, output) as recording:
            sample = runner.measure_one(plan, 0, plan.profile_measure, contender, mesh, scratch,
                                        layout=runner.pinning.LAYOUTS["none"], run=0)
        if recording.returncode != 0 or not output.exists():
            raise layers.LayerError(f"perf record exited with {recording.returncode}: {recording.log.strip()[-800:]}")
        script = subprocess.run(["perf", "script", "-i", str(output), "-F", "pid,ip,sym,dso"],
                                capture_output=True, text=True, timeout=300)
        if script.returncode != 0:
            raise layers.LayerError(f"perf script exited with {script.returncode}: {script.stderr.strip()[-800:]}")
        by_pid = parse_script_by_pid(script.stdout)
    except (OSError, layers.LayerError, runner.BenchError) as exc:
        raise runner.BenchError(f"{contender.key} perf layers: {exc}") from exc
    requests = sample.result.get("requests", 0)
    if requests <= 0:
        raise runner.BenchError(f"{contender.key} perf layers: the {plan.profile_measure} run did no work")
    per_name: dict[str, Counter[str]] = {name: Counter() for name in roots}
    for pid, counts in by_pid.items():
        # `pid` is the process (every thread of it); one outside the trees is nobody's proxy.
        if pid in owner:
            per_name[owner[pid]].update(counts)
    return {"measure": plan.profile_measure, "unit": "request", "units": requests,
            "req_s": sample.result.get("req_s"), "frequency": layers.FREQUENCY,
            "proxies": {name: {"samples": sum(c.values()), "us_per_unit": layers.per_unit(c, requests, 1)}
                        for name, c in per_name.items()}}


def layers_table(results: dict[str, dict], names: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    """Rows: layers, then the total; columns: each contender's proxies (µs per request)."""
    columns = [(key, proxy) for key, figures in results.items() for proxy in figures["proxies"]]
    head = ["layer", *(f"{names.get(key, key)}: {proxy}" for key, proxy in columns)]
    rows = []
    for layer_name in (*layers.LAYERS, "total"):
        values = [results[key]["proxies"][proxy]["us_per_unit"].get(layer_name) for key, proxy in columns]
        if any(values):
            rows.append([layer_name, *("–" if v is None else f"{v:.1f}" for v in values)])
    return head, rows
