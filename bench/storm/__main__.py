"""`python -m bench.storm [--quick]`: connection storms and leaks through ztunnel (issue 15, item 6).

Brings up a two-node mesh with `wisp up` (bench/mesh/mesh.py, prefix wisp-s<random>, taken down
however the run ends): a client pod on node1 and an nginx server pod on node2, in the ambient
namespace `mesh` (through both nodes' ztunnels) and, for the HAProxy comparison, in `plain`
(through the HAProxy mTLS pair of bench/mesh/contenders.py). Then, through ztunnel:

1. concurrent: 10,000 connections held open at once: RSS per connection (first, on fresh
   processes, whose heaps have not yet grown);
2. storm: 2,000 new connections/s for 30 s, with the pods' defaults, once the TIME_WAIT sockets
   of phase 1 are gone: failed connections, the achieved rate (the client pod's ActiveOpens
   counter), every process's peak and settled RSS, crashes and restarts;
3. short: 100,000 short connections (h2load, one HTTP/1.1 request each, paced) in two batches,
   each followed by a settle time: every ztunnel process's descriptors and RSS before and after;
4. the storm again.

Phases 3 and 4 run with `tcp_tw_reuse=1` in the server pod. ztunnel, forwarding the client's FIN,
closes first towards the app, so each connection holds one of the server pod's 28,232 ports for
60 s (one client, one app port: ~470 new connections/s sustained) unless the pod lets connect
reuse it after a second; phase 2 shows the pod's default, phases 3 and 4 the proxy itself.

The HAProxy pair runs the concurrent phase (9,000 connections: its descriptor limit) and the storm
too, for a ratio line. The generators' namespaces (the client pods) get `tcp_tw_reuse=1` and the
whole local port range, as a load generator's host would: at 2,000/s the client's own TIME_WAIT
sockets would otherwise use up its ports within 15 s, which measures the client, not the proxy.
Results: printed, and saved to bench/results/storm-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import secrets
import signal
import subprocess
import sys

from bench.hbone import machine
from bench.mesh.contenders import MESH, PLAIN, HaproxyMtls, WispZtunnel
from bench.mesh.mesh import Mesh, MeshError, wait_for
from bench.publish import ROOT, save_results

from . import pacing, phases, report

MEASURED_CODE = ("wisp", "ztunnel", "bench/storm")
PRESETS = {
    "default": dict(short_total=100_000, short_rate=1_000, short_batches=2, storm_rate=2_000, storm_seconds=30,
                    concurrent=10_000, settle=10.0),
    "quick": dict(short_total=10_000, short_rate=1_000, short_batches=2, storm_rate=2_000, storm_seconds=5,
                  concurrent=2_000, settle=3.0),
}
HAPROXY_PHASES = ("concurrent", "storm")
WARM_UP = (500, 500)  # connections, per second: pools and certificates exist before anything is read
CLIENT_SYSCTLS = {"net.ipv4.tcp_tw_reuse": "1", "net.ipv4.ip_local_port_range": "1024 65535"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small numbers, about a minute of load")
    p.add_argument("--short-total", type=int, help="short connections of the leak check")
    p.add_argument("--short-rate", type=int, help="their rate per second")
    p.add_argument("--storm-rate", type=int, help="new connections per second of the storm")
    p.add_argument("--storm-seconds", type=int, help="how long the storm lasts")
    p.add_argument("--concurrent", type=int, help="connections held open at once")
    p.add_argument("--settle", type=float, help="seconds to wait after the server's connections are gone")
    p.add_argument("--ztunnel-workers", type=int, default=2,
                   help="processes per ztunnel (default %(default)s, ztunnel's own default on 2 cores)")
    p.add_argument("--haproxy", default=",".join(HAPROXY_PHASES),
                   help="phases the HAProxy pair also runs, comma-separated ('' for none; default %(default)s)")
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/storm-<date>.json")
    args = p.parse_args(argv)
    preset = dict(PRESETS["quick" if args.quick else "default"])
    for name in preset:
        if getattr(args, name, None) is not None:
            preset[name] = getattr(args, name)
    args.plan = preset
    args.haproxy = tuple(x for x in args.haproxy.split(",") if x)
    if set(args.haproxy) - {"short", "storm", "concurrent"}:
        p.error("--haproxy takes a comma-separated subset of short,storm,concurrent")
    try:
        pacing.pace(preset["short_rate"], preset["short_total"])
        pacing.pace(preset["storm_rate"], preset["storm_rate"] * preset["storm_seconds"])
    except ValueError as exc:
        p.error(str(exc))
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def tune(netns: str, sysctls: dict[str, str]) -> None:
    for key, value in sysctls.items():
        subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", f"{key}={value}"],
                       check=True, capture_output=True)


def run_phases(target: phases.Target, which: tuple[str, ...], plan: dict, out: dict) -> None:
    """The phases in a fixed order. Held connections first, on fresh processes: after a storm
    CPython keeps the arenas it grew and would seat 10,000 connections in them without growing,
    hiding their cost. The storm next, with the pods' defaults. Then `tcp_tw_reuse=1` in the
    server pod for the leak check (100,000 connections in under two minutes would otherwise
    run the pod out of ports, see the module docstring) and the second storm."""
    tune(target.contender.route(target.mesh).netns, CLIENT_SYSCTLS)
    phases.paced(target, rate=WARM_UP[1], total=WARM_UP[0], batches=1, settle_s=1.0, log=log)
    if "concurrent" in which:
        count = min(plan["concurrent"], target.contender.idle_limit or plan["concurrent"])
        out["concurrent"] = phases.concurrent(target, count, plan["settle"], log)
    storm = dict(rate=plan["storm_rate"], total=plan["storm_rate"] * plan["storm_seconds"], batches=1,
                 settle_s=plan["settle"], log=log)
    if "storm" in which:
        phases.drain_time_wait(target, log)
        out["storm"] = phases.paced(target, **storm)
    if "short" in which or "storm_tw_reuse" in which:
        tune(target.server_netns(), {"net.ipv4.tcp_tw_reuse": "1"})
    if "short" in which:
        out["short"] = phases.paced(target, rate=plan["short_rate"], total=plan["short_total"],
                                    batches=plan["short_batches"], settle_s=plan["settle"], log=log)
    if "storm_tw_reuse" in which:
        out["storm_tw_reuse"] = phases.paced(target, **storm)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # `wisp down` runs on SIGTERM too, not only on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # h2load inherits our limit: a storm the pair falls behind on holds thousands of connections.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    plan = args.plan
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    log(f"bench.storm: {plan}, {args.ztunnel_workers} process(es) per ztunnel, HAProxy phases {args.haproxy}")
    namespaces = [MESH] + ([PLAIN] if args.haproxy else [])
    ztunnel, haproxy = WispZtunnel(), HaproxyMtls()
    results: dict[str, dict] = {}
    try:
        with Mesh(namespaces, f"wisp-s{secrets.token_hex(3)}", log, ztunnel_workers=args.ztunnel_workers) as mesh:
            try:
                ztunnel.start(mesh, log)
                wait_for(lambda: all(len(phases.Target(ztunnel, mesh).readings()[n]) == args.ztunnel_workers
                                     for n in ztunnel.proxies(mesh)), 60, "every ztunnel worker running")
                results["ztunnel"] = {}
                run_phases(phases.Target(ztunnel, mesh), ("short", "storm", "storm_tw_reuse", "concurrent"), plan,
                           results["ztunnel"])
                if args.haproxy:
                    haproxy.start(mesh, log)
                    results["haproxy"] = {}
                    run_phases(phases.Target(haproxy, mesh), args.haproxy, plan, results["haproxy"])
            finally:
                haproxy.stop()
    except KeyboardInterrupt:
        log("interrupted; mesh and proxies stopped")
        return 130
    except (MeshError, phases.PhaseError) as exc:
        log(f"bench.storm failed: {exc}")
        failure = str(exc)
    else:
        failure = None
    data = {"date": now.isoformat(), "plan": plan, "ztunnel_workers": args.ztunnel_workers,
            "machine": machine.describe(), "source": machine.source(ROOT, MEASURED_CODE),
            "command": " ".join([".venv/bin/python -m bench.storm", *argv]), "phases": results,
            "failure": failure}
    print(report.render(data))
    if not args.no_json:
        print(f"\nresults: {save_results('storm', now, data).relative_to(ROOT)}")
    if failure:
        print(f"\nthe run stopped early: {failure}")
    crashed = [c for phases_ in results.values() for r in phases_.values() for c in r["crashed"]]
    return 1 if crashed or failure else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
