"""`python -m bench.waypoint [--quick] [--docs]`: the waypoint against nginx, on the local runtime.

Issue #11's benchmark: HTTP/1.1, 1 KiB responses (the server pod is bench.mesh's nginx backend),
contenders in bench/waypoint/contenders.py — direct, nginx as the native L7 proxy anchor, the L4
mesh alone (ztunnel pair) and the waypoint path (client ztunnel → waypoint → server ztunnel).
Measures, from bench.mesh's runner and load generators: (a) h2load at a fixed 1,000 req/s over
4 connections, where CPU per 1,000 requests and latency are read; (b) wrk saturation over 16
keep-alive connections. Rounds alternate the contenders. One mesh (`wisp up`, prefix
wisp-w<random>) carries every contender and always goes down at the end; results go to
bench/results/waypoint-<date>.json, and with --docs to docs/performance.md's "Waypoint" section.
`bench/run waypoint [options]` installs what this needs and runs it under the benchmark lock.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import datetime as dt
import json
import math
import secrets
import shutil
import signal
import sys
from dataclasses import asdict
from pathlib import Path

from bench.hbone import machine
from bench.mesh import pinning, runner
from bench.mesh import report as mesh_report
from bench.mesh.__main__ import _version, tool_versions
from bench.mesh.mesh import Mesh, MeshError
from bench.publish import DOCS, RESULTS, ROOT, save_results, update_section

from . import profiling, report
from .contenders import CONTENDERS, make

HEADING = "## Waypoint (bench/waypoint)"
BEGIN = "<!-- bench.waypoint results: begin (rewritten by `bench/run waypoint --docs`) -->"
END = "<!-- bench.waypoint results: end -->"
MEASURED_CODE = ("wisp", "ztunnel", "waypoint", "operator", "bench/waypoint", "bench/mesh")
MEASURES = ("fixed", "saturation")

PRESETS = {
    "quick": dict(rounds=1, fixed_seconds=6, fixed_runs=1, saturation_seconds=6),
    "default": dict(rounds=3, fixed_seconds=10, fixed_runs=1, saturation_seconds=10),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run waypoint", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one short round, about 3 minutes with the mesh")
    p.add_argument("--rounds", type=int, help="rounds (each runs every contender once per measure)")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset of %(default)s")
    p.add_argument("--docs", action="store_true", help=f"rewrite the Waypoint section of {DOCS.relative_to(ROOT)}")
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/waypoint-<date>.json")
    p.add_argument("--render", type=Path, metavar="JSON", help="measure nothing: print (and publish) a saved run")
    p.add_argument("--profile", action="store_true",
                   help="after the rounds, one extra --profile-measure run with py-spy on the waypoint; prints its top entries")
    p.add_argument("--layers", action="store_true",
                   help="after the rounds, one extra --profile-measure run per proxied contender with perf on "
                        "every proxy: CPU µs per request per proxy by layer (CPython, OpenSSL, kernel …)")
    p.add_argument("--profile-measure", default="saturation", choices=MEASURES,
                   help="the measure of the --profile and --layers runs (default %(default)s)")
    args = p.parse_args(argv)
    chosen = {x for x in args.contenders.split(",") if x}
    if chosen - set(CONTENDERS) or not chosen:
        p.error(f"--contenders takes a comma-separated subset of {','.join(CONTENDERS)}")
    if args.profile and "waypoint" not in chosen:
        p.error("--profile records the waypoint: keep waypoint among --contenders")
    if args.layers and shutil.which("perf") is None:
        p.error("--layers needs perf (Debian: apt-get install linux-perf)")
    args.contenders = tuple(x for x in CONTENDERS if x in chosen)
    return args


def make_plan(args: argparse.Namespace) -> runner.Plan:
    preset = dict(PRESETS["quick" if args.quick else "default"])
    if args.rounds:
        preset["rounds"] = args.rounds
    # The profile and layer runs are this module's (profiling.py), not runner.run's: profile
    # names the proxy py-spy records and stays off the plan unless asked for.
    return runner.Plan(**preset, connect_seconds=0, bulk_seconds=0, idle_connections=0,
                       contenders=args.contenders, measures=MEASURES, pin=pinning.DEFAULT_LAYOUT,
                       profile="waypoint" if getattr(args, "profile", False) else "",
                       profile_measure=getattr(args, "profile_measure", "saturation"),
                       layers=getattr(args, "layers", False))


def describe_plan(plan: runner.Plan) -> str:
    return (f"{plan.rounds} round(s), contenders alternating within each; (a) h2load HTTP/1.1, "
            f"{plan.fixed_rate:,} req/s over {plan.fixed_connections} connections for {plan.fixed_seconds:g} s, "
            f"1 KiB responses; (b) wrk, {plan.saturation_connections} keep-alive connections, "
            f"{plan.saturation_seconds:g} s; nothing pinned; one worker process per ztunnel, the waypoint and nginx")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def progress(names: dict[str, str]):
    def show(sample: runner.Sample) -> None:
        r = sample.result
        figure = (f"{r['requests'] / r['seconds']:.0f} req/s p50 {r['p50_us'] / 1000:.3f} p99 {r['p99_us'] / 1000:.3f} ms"
                  if sample.measure == "fixed" else f"{r['req_s']:.0f} req/s")
        cpu = ", ".join(f"{n} {p['cpu_s']:.2f} CPU-s" for n, p in sample.proxies.items())
        log(f"round {sample.round + 1}  {sample.measure:10}  {names[sample.contender]:22}  {figure}"
            + (f"  ({cpu})" if cpu else "") + f"  others {sample.other_cpu / sample.wall:.0%}")
    return show


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.render:
        return publish(json.loads(args.render.read_text()), args, saved=None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = make_plan(args)
    contenders = make(plan.contenders)
    names = {c.key: c.label for c in contenders}
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    host, tools = machine.describe(), tool_versions()
    log(f"bench.waypoint: {describe_plan(plan)}")
    log(f"machine: {machine.summary(host)}")
    namespaces = list(dict.fromkeys(c.namespace for c in contenders))
    mesh = Mesh(namespaces, f"wisp-w{secrets.token_hex(3)}", log)
    for contender in contenders:
        if hasattr(contender, "prepare"):
            contender.prepare(mesh.work)  # files its manifests name, in the mesh's work directory
    mesh.extra = [obj for c in contenders for obj in c.manifests()]
    try:
        with mesh:
            try:
                for contender in contenders:
                    contender.start(mesh, log)
                # runner.run profiles and layers by its own rules (ztunnel nodes, averaged): off here.
                inner = dataclasses.replace(plan, profile="", layers=False)
                samples = runner.run(inner, contenders, {c.key: mesh for c in contenders}, progress(names))[0]
                reuse = next((c.reuse(mesh) for c in contenders if hasattr(c, "reuse")), None)
                if reuse is not None:
                    log(f"waypoint upstream reuse: {reuse_line(reuse)}")
                profiles, cpu_layers = extra_runs(plan, contenders, mesh, RESULTS / f"waypoint-{now:%Y-%m-%dT%H%M%SZ}")
                restarts = mesh.restarts()
            finally:
                for contender in contenders:
                    contender.stop()
    except KeyboardInterrupt:
        log("interrupted; mesh and proxies stopped")
        return 130
    except (runner.BenchError, MeshError) as exc:
        log(f"bench.waypoint failed: {exc}")
        return 1
    summary = report.summarise(samples, tuple(names))
    data = {"benchmark": "bench.waypoint", "date": now.isoformat(), "machine": host, "tools": tools,
            "source": machine.source(ROOT, MEASURED_CODE), "names": names, "restarts": restarts,
            "command": " ".join(["bench/run", "waypoint", *argv]), "plan": asdict(plan),
            "summary": summary, "targets": report.evaluate(summary), "profiles": profiles, "layers": cpu_layers,
            "reuse": reuse,
            "samples": [asdict(s) for s in samples]}
    saved = None if args.no_json else save_results("waypoint", now, data)
    return publish(data, args, saved=saved)


def publish(data: dict, args: argparse.Namespace, *, saved: Path | None) -> int:
    plan = runner.Plan(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["plan"].items()})
    samples = [runner.Sample(**s) for s in data["samples"]]
    names = data["names"]
    summary = report.summarise(samples, tuple(names))
    results = report.evaluate(summary)
    problems = mesh_report.errors(samples) + [f"{name} restarted {n} time(s) during the run"
                                              for name, n in data["restarts"].items() if n]
    print()
    print(mesh_report.text_table(*report.table(summary, names)))
    print()
    print(path_line(summary, names))
    print()
    if results:
        print(mesh_report.text_table(*mesh_report.target_rows(results, names)))
        print()
    print("\n".join([*problems, mesh_report.noise(samples)]))
    if data.get("reuse"):
        print(f"upstream reuse: {reuse_line(data['reuse'])}")
    limit = report.bound(samples)
    if limit is not None:
        print(report.bound_line(limit))
    for block in extra_blocks(data, names):
        print(block)
    if saved is not None:
        print(f"\nresults: {saved.relative_to(ROOT)}")
    if args.docs:
        update_section(DOCS, HEADING, BEGIN, END, markdown(data, plan, summary, results, samples, problems))
        print(f"updated: {DOCS.relative_to(ROOT)}")
    return 0


def reuse_line(reuse: dict) -> str:
    return (f"{reuse['requests']:,.0f} requests through the waypoint since it started; "
            f"{reuse.get('http1_upstream_connections_opened_total', 0):,.0f} HTTP/1.1 connections (HBONE streams) "
            f"opened upstream, {reuse.get('http1_upstream_requests_reused_total', 0):,.0f} requests on a kept-alive "
            f"one; {reuse.get('hbone_connections_dialled_total', 0):,.0f} HBONE connections dialled, "
            f"{reuse.get('hbone_connections_open', 0):,.0f} open")


def extra_runs(plan: runner.Plan, contenders: list, mesh: Mesh, keep: Path) -> tuple[dict, dict]:
    """The py-spy and perf runs asked for (profiling.py), after the measured rounds."""
    profiles, cpu_layers = {}, {}
    if not (plan.profile or plan.layers):
        return profiles, cpu_layers
    with tempfile.TemporaryDirectory(prefix=f"{mesh.prefix}-profile-") as scratch:
        for contender in contenders:
            if plan.profile and plan.profile in contender.proxies(mesh):
                log(f"py-spy on {contender.key}'s {plan.profile} during one {plan.profile_measure} run")
                profiles[contender.key] = profiling.py_spy(plan, contender, mesh, Path(scratch), keep)
            if plan.layers and contender.proxies(mesh):
                log(f"perf on {contender.key}'s proxies during one {plan.profile_measure} run")
                cpu_layers[contender.key] = profiling.per_proxy_layers(plan, contender, mesh, Path(scratch))
    return profiles, cpu_layers


def extra_blocks(data: dict, names: dict[str, str], markdown: bool = False) -> list[str]:
    """The py-spy top entries and the perf layers table of a run, as text or markdown."""
    table = (lambda head, rows: mesh_report.markdown_table(head, rows, left=1)) if markdown else mesh_report.text_table
    out = []
    for contender, profile in data.get("profiles", {}).items():
        out.append(f"\npy-spy, {names[contender]}: the waypoint (pid {profile['pid']}) during a {profile['measure']} "
                   f"run, {profile['samples']:,} working samples at {profile['rate']} Hz ({profile['idle_samples']:,} "
                   f"more in a wait, left out)" + (f"; raw stacks: bench/results/{profile['raw']}" if profile.get("raw") else ""))
        for title, head, rows in mesh_report.profile_tables(profile, n=12):
            if markdown and title != "by own time":
                continue  # the docs keep the own-time entries; by total, the top is the call tree's trunk
            out += [f"\n{title}:\n", table(head, rows)]
    if data.get("layers"):
        first = next(iter(data["layers"].values()))
        runs = ", ".join(f"{names[k]} {v['units']:,} requests ({v['req_s'] or 0:,.0f} req/s)" for k, v in data["layers"].items())
        out.append(f"\nperf, CPU µs per request per proxy by layer, one extra {first['measure']} run each "
                   f"({runs}; {first['frequency']} Hz, kernel included):\n")
        out.append(table(*profiling.layers_table(data["layers"], names)))
    return out


def path_line(summary: dict, names: dict[str, str]) -> str:
    parts = [f"{names[c]} {report.path_cpu(summary, c):.3f}" for c in summary
             if not math.isnan(report.path_cpu(summary, c))]
    return "Whole path, CPU-s per 1,000 requests at saturation (every proxy process summed): " + ", ".join(parts)


def markdown(data: dict, plan: runner.Plan, summary: dict, results: list[dict], samples: list[runner.Sample],
             problems: list[str]) -> str:
    names = data["names"]
    source = data["source"]
    changes = ", ".join(source["changes"])
    revision = source["commit"] + (f" plus uncommitted changes in {changes}" if changes else "")
    date = dt.datetime.fromisoformat(data["date"])
    tools = ", ".join(f"{name} {_version(line)}" for name, line in data["tools"].items()
                      if name in ("nginx", "h2load", "wrk"))
    lines = [
        f"Measured {date:%Y-%m-%d %H:%M} UTC on {machine.summary(data['machine'])}; {tools}; wisp at {revision}.",
        "",
        f"Command: `{data['command']}` — {describe_plan(plan)}.",
        "",
        mesh_report.markdown_table(*report.table(summary, names), left=2),
        "",
        path_line(summary, names) + ".",
        "",
    ]
    if results:
        lines += ["Targets (ratios from this run):", "",
                  mesh_report.markdown_table(*mesh_report.target_rows(results, names), left=2), ""]
    lines += [*(f"- {line}" for line in problems), "", mesh_report.noise(samples)]
    limit = report.bound(samples)
    if limit is not None:
        lines += ["", report.bound_line(limit) + "."]
    if data.get("reuse"):
        lines += ["", f"Upstream reuse, from the waypoint's metrics after the rounds: {reuse_line(data['reuse'])}."]
    lines += extra_blocks(data, names, markdown=True)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
