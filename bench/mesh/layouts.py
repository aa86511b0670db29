"""`python -m bench.mesh.layouts`: which core layout makes the fixed-rate latencies steadiest.

Brings the benchmark's mesh up once and runs only the fixed-rate measure (1,000 req/s, 1 KiB,
4 connections), layouts and contenders alternating within each run (layout A: direct, HAProxy,
ztunnel; layout B: …; then again), so every layout sees the same drift of the shared machine.
Prints, per layout and contender, p50 and p99 as median (min–max) over the runs, and saves the
samples to bench/results/layouts-<date>.json. bench/mesh/pinning.py's default layout is the one
whose direct p99 was lowest and steadiest here; docs/performance.md has the run that chose it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import secrets
import signal
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from bench.hbone import machine
from bench.publish import save_results

from . import pinning, report, runner
from .__main__ import log
from .contenders import CONTENDERS, make
from .mesh import Mesh, MeshError


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.mesh.layouts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layouts", default=",".join(pinning.LAYOUTS), help="comma-separated subset of %(default)s")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset of %(default)s")
    p.add_argument("--runs", type=int, default=3, help="runs of every layout and contender (default %(default)s)")
    p.add_argument("--seconds", type=float, default=8, help="seconds per run (default %(default)s)")
    args = p.parse_args(argv)
    args.layouts = [x for x in args.layouts.split(",") if x]
    if not args.layouts:
        p.error("--layouts takes comma-separated layout names")
    for name in args.layouts:
        try:
            pinning.layout(name)
        except pinning.PinError as exc:
            p.error(str(exc))
    chosen = {x for x in args.contenders.split(",") if x}
    if not chosen or chosen - set(CONTENDERS):
        p.error(f"--contenders takes a comma-separated subset of {','.join(CONTENDERS)}")
    args.contenders = tuple(k for k in CONTENDERS if k in chosen)
    return args


def rows(samples: list[runner.Sample], layouts: list[str], names: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    """Per layout and contender: p50 and p99 as median (min–max) over the runs, and p99's range."""
    head = ["layout", "contender", "p50 ms", "p99 ms", "p99 range ms"]
    out = []
    for layout in layouts:
        for contender, name in names.items():
            chosen = [s for s in samples if s.layout == layout and s.contender == contender]
            if not chosen:
                continue
            cells = []
            for key in ("p50_us", "p99_us"):
                ms = [s.result[key] / 1000 for s in chosen]
                cells.append(f"{statistics.median(ms):.3f} ({min(ms):.3f}–{max(ms):.3f})")
            p99 = [s.result["p99_us"] / 1000 for s in chosen]
            out.append([layout, name, *cells, f"{max(p99) - min(p99):.3f}"])
    return head, out


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = runner.Plan(rounds=1, fixed_seconds=args.seconds, saturation_seconds=0, connect_seconds=0,
                       bulk_seconds=0, idle_connections=0, contenders=args.contenders, measures=("fixed",))
    contenders = make(args.contenders)
    names = {c.key: c.label for c in contenders}
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    samples: list[runner.Sample] = []
    namespaces = list(dict.fromkeys(c.namespace for c in contenders))
    try:
        with Mesh(namespaces, f"wisp-b{secrets.token_hex(3)}", log) as mesh, \
                tempfile.TemporaryDirectory(prefix=f"{mesh.prefix}-logs-") as scratch:
            try:
                for contender in contenders:
                    contender.start(mesh, log)
                for contender in contenders:
                    runner.warm_up(contender.route(mesh))
                for run in range(args.runs):
                    for name in args.layouts:
                        for contender in contenders:
                            sample = runner.measure_one(plan, 0, "fixed", contender, mesh, Path(scratch),
                                                     layout=pinning.layout(name), run=run)
                            samples.append(sample)
                            r = sample.result
                            log(f"run {run + 1}/{args.runs}  {name:16} {contender.key:8} p50 {r['p50_us'] / 1000:.3f}"
                                f"  p99 {r['p99_us'] / 1000:.3f}  others {sample.other_cpu / sample.wall:.0%}")
            finally:
                for contender in contenders:
                    contender.stop()
    except KeyboardInterrupt:
        log("interrupted; mesh and proxies stopped")
        return 130
    except (runner.BenchError, MeshError, pinning.PinError) as exc:
        log(f"bench.mesh.layouts failed: {exc}")
        return 1
    print(report.text_table(*rows(samples, args.layouts, names)))
    print()
    print(report.noise(samples))
    saved = save_results("layouts", now, {"benchmark": "bench.mesh.layouts", "date": now.isoformat(),
                                          "machine": machine.describe(), "layouts": args.layouts,
                                          "runs": args.runs, "seconds": args.seconds,
                                          "samples": [asdict(s) for s in samples]})
    print(f"\nresults: {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
