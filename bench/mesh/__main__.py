"""`python -m bench.mesh [--quick] [--docs]`: the mesh benchmark on the local runtime.

Brings a two-node mesh up (`wisp up`, prefix wisp-b<random>; one more per extra ztunnel engine
named with --engines, each brought up with WISP_ZTUNNEL_ENGINE set), starts the contenders, runs
the plan, always takes everything down again, prints the tables and saves JSON (and, with
--profile, py-spy's raw stacks) to bench/results/.
`--docs` also rewrites the generated part of docs/performance.md and the latency chart;
`--render bench/results/mesh-….json [--docs]` does that for a saved run without measuring.
`bench/run` installs what this needs and calls it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from bench.hbone import machine

from bench.publish import DOCS, RESULTS, ROOT, save_results
from . import chart, docs, pinning, report, runner
from .contenders import CONTENDERS, ENGINE_VARIABLE, ENGINES, Contender, make
from .mesh import CLIENT_NODE, SERVER_NODE, Mesh, MeshError

CHART = ROOT / "docs" / "img" / "mesh-latency.png"
MEASURED_CODE = ("wisp", "ztunnel", "cni", "operator", "bench/mesh")
TOOLS = {"haproxy": ["haproxy", "-v"], "nginx": ["nginx", "-v"], "h2load": ["h2load", "--version"],
         "wrk": ["wrk", "-v"], "iperf3": ["iperf3", "--version"]}

# Each contender's fixed-rate total: quick 3 × 6 s, default 3 rounds × 2 runs × 20 s (Istio runs
# ≥ 30 s once; several shorter runs give the same requests and a spread besides).
PRESETS = {
    "quick": dict(rounds=1, fixed_seconds=6, fixed_runs=3, saturation_seconds=4, connect_seconds=4,
                  bulk_seconds=4, idle_connections=10_000, quiet_budget=0.0),
    "default": dict(rounds=3, fixed_seconds=20, fixed_runs=2, saturation_seconds=10, connect_seconds=10,
                    bulk_seconds=10, idle_connections=10_000, quiet_budget=45.0),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one short round, under 5 minutes in all")
    p.add_argument("--rounds", type=int, help="rounds (each runs every contender once per measure)")
    p.add_argument("--fixed-seconds", type=float, help="seconds of each fixed 1,000 req/s run (Istio's: ≥ 30)")
    p.add_argument("--fixed-runs", type=int, help="fixed-rate runs per contender per round, alternating")
    p.add_argument("--pin", default=pinning.DEFAULT_LAYOUT,
                   help=f"core layout of the fixed-rate runs: {', '.join(pinning.LAYOUTS)}, each also with "
                        f"{pinning.REALTIME_SUFFIX} (default %(default)s; see bench/mesh/pinning.py)")
    p.add_argument("--engines", default=os.environ.get(ENGINE_VARIABLE, ""),
                   help=f"comma-separated ztunnel engines ({','.join(ENGINES)}), each its own contender "
                        f"ztunnel[<engine>] in a mesh of its own (default: ztunnel's default engine, "
                        f"or ${ENGINE_VARIABLE} if set)")
    p.add_argument("--profile", nargs="?", const=CLIENT_NODE, choices=(CLIENT_NODE, SERVER_NODE),
                   help="after the rounds, one extra fixed-rate run per ztunnel contender with py-spy recording "
                        "that node's ztunnel (default node: %(const)s); prints its top entries")
    p.add_argument("--profile-measure", default="fixed", choices=runner.MEASURES[:5],
                   help="the measure of --profile's extra run (default %(default)s)")
    p.add_argument("--layers", action="store_true",
                   help="after the rounds, one extra --profile-measure run per proxied contender with perf "
                        "recording all its proxies: CPU per request per proxy by layer (kernel, OpenSSL, "
                        "the proxy's own code)")
    p.add_argument("--ztunnel-workers", type=int, help="worker processes per ztunnel (wisp up --ztunnel-workers)")
    p.add_argument("--idle-connections", type=int, help="idle connections opened through each contender")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset of %(default)s")
    p.add_argument("--measures", default=",".join(runner.MEASURES), help="comma-separated subset of %(default)s")
    p.add_argument("--docs", action="store_true",
                   help=f"rewrite the generated part of {DOCS.relative_to(ROOT)} and {CHART.relative_to(ROOT)}")
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/mesh-<date>.json")
    p.add_argument("--render", type=Path, metavar="JSON", help="measure nothing: print (and publish) a saved run")
    args = p.parse_args(argv)
    for name, allowed in (("contenders", tuple(CONTENDERS)), ("measures", runner.MEASURES)):
        chosen = {x for x in getattr(args, name).split(",") if x}
        if chosen - set(allowed) or not chosen:
            p.error(f"--{name} takes a comma-separated subset of {','.join(allowed)}")
        # Canonical order: anchors first, so tables and ratios read the same every run.
        setattr(args, name, tuple(x for x in allowed if x in chosen))
    engines = [x for x in args.engines.split(",") if x]
    if set(engines) - set(ENGINES) or len(set(engines)) != len(engines):
        p.error(f"--engines takes distinct names from {','.join(ENGINES)}")
    args.engines = tuple(engines) or ("",)
    try:
        pinning.layout(args.pin)
    except pinning.PinError as exc:
        p.error(str(exc))
    if args.layers and shutil.which("perf") is None:
        p.error("--layers needs perf (Debian: apt-get install linux-perf)")
    if args.profile and "ztunnel" not in args.contenders:
        p.error("--profile records ztunnel: keep ztunnel among --contenders")
    return args


def make_plan(args: argparse.Namespace) -> runner.Plan:
    preset = dict(PRESETS["quick" if args.quick else "default"])
    overrides = {"rounds": args.rounds, "fixed_seconds": args.fixed_seconds, "idle_connections": args.idle_connections,
                 "ztunnel_workers": args.ztunnel_workers, "fixed_runs": args.fixed_runs}
    preset.update({k: v for k, v in overrides.items() if v})
    return runner.Plan(**preset, contenders=args.contenders, measures=args.measures, pin=args.pin,
                       engines=args.engines, profile=args.profile or "", profile_measure=args.profile_measure,
                       layers=args.layers)


def describe_plan(plan: runner.Plan) -> str:
    layout = pinning.layout(plan.pin)
    engines = [e for e in plan.engines if e]
    return (f"{plan.rounds} round(s), contenders alternating within each; (a) h2load HTTP/1.1, "
            f"{plan.fixed_rate:,} req/s over {plan.fixed_connections} connections, {plan.fixed_runs} run(s) of "
            f"{plan.fixed_seconds:g} s per round, 1 KiB responses, cores: {layout.name} ({layout.description}); (b) wrk, {plan.saturation_connections} keep-alive connections, "
            f"{plan.saturation_seconds:g} s; (c) wrk with `Connection: close`, {plan.saturation_connections} "
            f"connections, {plan.connect_seconds:g} s; (d) iperf3 client→server, 1 and 8 connections, "
            f"{plan.bulk_seconds:g} s each; (e) {plan.idle_connections:,} idle connections, once per contender "
            f"after the rounds; {plan.ztunnel_workers} worker process(es) per ztunnel, HAProxy 1 thread per node"
            + (f"; ztunnel engines {', '.join(engines)}, each in its own mesh ({ENGINE_VARIABLE})" if engines else "")
            + (f"; py-spy on {plan.profile}'s ztunnel in one extra {plan.profile_measure} run each" if plan.profile else "")
            + (f"; perf on every proxy in one extra {plan.profile_measure} run each" if plan.layers else ""))


def tool_versions() -> dict[str, str]:
    out = {}
    for name, argv in TOOLS.items():
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            lines = (done.stdout + done.stderr).strip().splitlines()
            out[name] = lines[0] if lines else "unknown"
        except (OSError, subprocess.SubprocessError):
            out[name] = "missing"
    return out


def _version(line: str) -> str:
    """The version number in a tool's first line of `--version` output."""
    found = re.search(r"\d+\.\d+(?:\.\d+)?", line)
    return found.group(0) if found else line


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def progress(plan: runner.Plan, names: dict[str, str]):
    def show(sample: runner.Sample) -> None:
        r = sample.result
        figure = {
            "fixed": lambda: (f"{r['requests'] / r['seconds']:.0f} req/s p50 {r['p50_us'] / 1000:.3f} "
                              f"p99 {r['p99_us'] / 1000:.3f} p99.9 {r['p999_us'] / 1000:.3f} ms"),
            "saturation": lambda: f"{r['req_s']:.0f} req/s",
            "connect": lambda: f"{r['req_s']:.0f} conn/s",
            "bulk1": lambda: f"{r['gbps']:.2f} Gb/s",
            "bulk8": lambda: f"{r['gbps']:.2f} Gb/s",
            "idle": lambda: f"{r['opened']:,} open",
        }[sample.measure]()
        proxies = ", ".join(f"{n} {p['cpu_s']:.2f} CPU-s" if "cpu_s" in p else
                            f"{n} {p['rss_before_kib'] / 1024:.0f}→{p['rss_after_kib'] / 1024:.0f} MiB"
                            for n, p in sample.proxies.items())
        where = "idle" if sample.measure == "idle" else f"round {sample.round + 1}/{plan.rounds}"
        if sample.measure == "fixed" and plan.fixed_runs > 1:
            where += f" run {sample.run + 1}/{plan.fixed_runs}"
        log(f"{where}  {sample.measure:10}  {names[sample.contender]:18}  {figure}"
            + (f"  ({proxies})" if proxies else "")
            + (f"  others {sample.other_cpu / sample.wall:.0%}" if sample.measure != "idle" else ""))
    return show


def measure(plan: runner.Plan, contenders: list[Contender], names: dict[str, str],
            keep: Path) -> tuple[list[runner.Sample], dict, dict]:
    """Bring up one mesh per distinct `wisp up` environment (each named engine has its own;
    direct and HAProxy, which no ztunnel carries, ride in the first), run the plan, take them
    all down."""
    envs = [tuple(sorted(c.mesh_env().items())) for c in contenders]
    first = next((env for env in envs if env), ())
    groups: dict[tuple, list[Contender]] = {}
    for contender, env in zip(contenders, envs):
        groups.setdefault(env or (first if contender.anchor else ()), []).append(contender)
    with contextlib.ExitStack() as stack:
        meshes: dict[str, Mesh] = {}
        for env, members in groups.items():
            namespaces = list(dict.fromkeys(c.namespace for c in members))
            extra = [obj for c in members for obj in c.manifests()]
            mesh = stack.enter_context(Mesh(namespaces, f"wisp-b{secrets.token_hex(3)}", log, extra,
                                            plan.ztunnel_workers, env=dict(env)))
            meshes.update({c.key: mesh for c in members})
        try:
            for contender in contenders:
                contender.start(meshes[contender.key], log)
            samples, profiles, cpu_layers = runner.run(plan, contenders, meshes, progress(plan, names), keep=keep)
            restarts = {}
            for env, members in groups.items():
                where = "" if len(groups) == 1 else f" ({', '.join(c.key for c in members)} mesh)"
                restarts.update({f"{name}{where}": n for name, n in meshes[members[0].key].restarts().items()})
            return samples, profiles, cpu_layers, restarts
        finally:
            for contender in contenders:
                contender.stop()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.render:
        return publish(json.loads(args.render.read_text()), args, saved=None)
    # `wisp down` and the contenders' stops run on SIGTERM too, not only on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = make_plan(args)
    contenders = make(plan.contenders, tuple(e or None for e in plan.engines))
    names = {c.key: c.label for c in contenders}
    short = {c.key: c.short for c in contenders}
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    host, tools = machine.describe(), tool_versions()
    source = machine.source(ROOT, MEASURED_CODE)
    log(f"bench.mesh: {describe_plan(plan)}")
    log(f"machine: {machine.summary(host)}")
    try:
        samples, profiles, cpu_layers, restarts = measure(plan, contenders, names, RESULTS / f"mesh-{now:%Y-%m-%dT%H%M%SZ}")
    except KeyboardInterrupt:
        log("interrupted; mesh and proxies stopped")
        return 130
    except (runner.BenchError, MeshError, pinning.PinError) as exc:
        log(f"bench.mesh failed: {exc}")
        return 1
    summary = report.summarise(samples, tuple(names))
    data = report.as_json(summary, plan, samples, date=now.isoformat(), machine=host, tools=tools,
                          source=source, names=names, short=short, restarts=restarts, profiles=profiles, layers=cpu_layers,
                          anchors=[c.key for c in contenders if c.anchor],
                          command=" ".join(["bench/run", *argv]))
    saved = None if args.no_json else save_results("mesh", now, data)
    return publish(data, args, saved=saved)


def publish(data: dict, args: argparse.Namespace, *, saved: Path | None) -> int:
    """Print the tables of a run (just measured or loaded); with --docs, update docs and chart."""
    plan = runner.Plan(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["plan"].items()})
    samples = [runner.Sample(**s) for s in data["samples"]]
    names, anchors = data["names"], tuple(data["anchors"])
    summary = report.summarise(samples, tuple(names))
    results = report.evaluate(summary)
    problems = report.errors(samples) + [f"{name} restarted {n} time(s) during the run"
                                         for name, n in data["restarts"].items() if n]
    print()
    print(report.text_table(*report.table(summary, names, anchors, data["short"])))
    print()
    print(report.latency_trust(summary))
    if "haproxy" in summary and any(map(report.is_wisp, summary)):
        print()
        print(report.text_table(*report.engine_table(summary, names)))
    print()
    print(report.text_table(*report.target_rows(results, names)))
    print()
    print("\n".join([*report.idle_detail(samples, names), *problems, report.noise(samples)]))
    for contender, profile in data.get("profiles", {}).items():
        print(f"\npy-spy, {names[contender]}: {profile_caption(profile)}")
        for title, head, rows in report.profile_tables(profile):
            print(f"\n{title}:")
            print(report.text_table(head, rows))
    if data.get("layers"):
        print(f"\n{report.layers_caption(data['layers'])}")
        print(report.text_table(*report.layers_table(data["layers"], data["short"])))
    if saved is not None:
        print(f"\nresults: {saved.relative_to(ROOT)}")
    if args.docs:
        date = dt.datetime.fromisoformat(data["date"])
        chart.latency_png(summary, names, CHART,
                          f"Latency at {plan.fixed_rate:,} req/s, HTTP/1.1 1 KiB, {plan.fixed_connections} "
                          f"connections (medians of {plan.rounds * plan.fixed_runs} runs), {date:%Y-%m-%d}")
        docs.update(DOCS, markdown(data, plan, summary, results, samples, problems))
        print(f"updated: {DOCS.relative_to(ROOT)}, {CHART.relative_to(ROOT)}")
    return 0


def profile_caption(profile: dict) -> str:
    return (f"{profile['node']}'s ztunnel (pid {profile['pid']}) during a {profile.get('measure', 'fixed')} run, "
            f"{profile['samples']:,} working samples at "
            f"{profile['rate']} Hz (shares are of these; {profile.get('idle_samples', 0):,} more in epoll_wait or "
            f"another wait, left out)"
            + (f"; raw stacks: bench/results/{profile['raw']}" if profile.get("raw") else ""))


def markdown(data: dict, plan: runner.Plan, summary: dict, results: list[dict], samples: list[runner.Sample],
             problems: list[str]) -> str:
    names, anchors = data["names"], tuple(data["anchors"])
    source = data["source"]
    changes = ", ".join(source["changes"])
    revision = source["commit"] + (f" plus uncommitted changes in {changes}" if changes else "")
    date = dt.datetime.fromisoformat(data["date"])
    tools = ", ".join(f"{name} {_version(line)}" for name, line in data["tools"].items())
    return "\n".join([
        f"Measured {date:%Y-%m-%d %H:%M} UTC on {machine.summary(data['machine'])}; {tools}; wisp at {revision}.",
        "",
        f"Command: `{data['command']}` — {describe_plan(plan)}.",
        "",
        f"![Latency percentiles at {plan.fixed_rate:,} req/s per contender]"
        f"({CHART.relative_to(DOCS.parent).as_posix()})",
        "",
        report.markdown_table(*report.table(summary, names, anchors, data["short"]), left=2),
        "",
        report.latency_trust(summary),
        "",
        *engine_block(summary, names),
        "Targets (ratios from this run):",
        "",
        report.markdown_table(*report.target_rows(results, names), left=2),
        "",
        *(f"- {line}" for line in [*report.idle_detail(samples, names), *problems]),
        "",
        report.noise(samples),
        *profile_block(data, names),
    ])


def engine_block(summary: dict, names: dict[str, str]) -> list[str]:
    if "haproxy" not in summary or sum(map(report.is_wisp, summary)) < 2:
        return []
    return ["Engine shapes (ratios to the HAProxy pair from this run; CPU and RSS: below 1× is better):", "",
            report.markdown_table(*report.engine_table(summary, names)), ""]


def profile_block(data: dict, names: dict[str, str]) -> list[str]:
    lines = []
    for contender, profile in data.get("profiles", {}).items():
        lines += ["", f"py-spy's top entries, {names[contender]}: {profile_caption(profile)}."]
        for title, head, rows in report.profile_tables(profile):
            lines += ["", f"{title.capitalize()}:", "", report.markdown_table(head, rows)]
    return lines


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
