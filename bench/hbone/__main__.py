"""`python -m bench.hbone [--quick] [--docs]`: run the plan, print the tables, save JSON.

`--render bench/results/hbone-….json [--docs]` prints (and publishes) a saved run instead.
The HBONE contender runs on the data-path engine in the shape WISP_ENGINE names (default
trio-epoll, see runner.DEFAULT_SHAPE).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from bench.publish import DOCS, ROOT, save_results
from wisp.engine.runtime import shape_from_environment
from . import docs, machine, report, runner
from .client import CONTENDERS, MEASURES

MiB = 2**20

PRESETS = {
    "quick": dict(rounds=3, bulk_size=256 * MiB, bidir_size=64 * MiB, echo_seconds=3.0,
                  warmup_seconds=0.2, quiet_budget=0.0),
    "default": dict(rounds=5, bulk_size=1024 * MiB, bidir_size=256 * MiB, echo_seconds=5.0,
                    warmup_seconds=0.5, quiet_budget=45.0),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.hbone", description=__doc__)
    p.add_argument("--quick", action="store_true", help="3 short rounds, under a minute")
    p.add_argument("--rounds", type=int, help="rounds (each runs every contender once per measure)")
    p.add_argument("--bulk-mib", type=int, help="MiB sent client→server per bulk measurement")
    p.add_argument("--bidir-mib", type=int, help="MiB sent each way per bidir measurement")
    p.add_argument("--echo-seconds", type=float, help="seconds of 1 KiB ping-pong per echo measurement")
    p.add_argument("--quiet-budget", type=float,
                   help="seconds the whole run may wait for other programs to go quiet (0: never wait)")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset of %(default)s")
    p.add_argument("--measures", default=",".join(MEASURES), help="comma-separated subset of %(default)s")
    p.add_argument("--docs", action="store_true", help=f"rewrite the generated part of {DOCS.relative_to(ROOT)}")
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/hbone-<date>.json")
    p.add_argument("--render", type=Path, metavar="JSON",
                   help="measure nothing: print (and with --docs, publish) a saved results file")
    args = p.parse_args(argv)
    for name, allowed in (("contenders", CONTENDERS), ("measures", MEASURES)):
        chosen = tuple(x for x in getattr(args, name).split(",") if x)
        unknown = set(chosen) - set(allowed)
        if unknown or not chosen:
            p.error(f"--{name} takes a comma-separated subset of {','.join(allowed)}")
        # Keep the canonical order: anchors first, so ratios and tables read the same every run.
        setattr(args, name, tuple(x for x in allowed if x in chosen))
    return args


def make_plan(args: argparse.Namespace) -> runner.Plan:
    preset = dict(PRESETS["quick" if args.quick else "default"])
    if args.quiet_budget is not None:
        preset["quiet_budget"] = args.quiet_budget
    overrides = {"rounds": args.rounds, "echo_seconds": args.echo_seconds,
                 "bulk_size": args.bulk_mib and args.bulk_mib * MiB,
                 "bidir_size": args.bidir_mib and args.bidir_mib * MiB}
    preset.update({k: v for k, v in overrides.items() if v})
    return runner.Plan(**preset, contenders=args.contenders, measures=args.measures,
                       engine=shape_from_environment(runner.DEFAULT_SHAPE))


def progress(plan: runner.Plan):
    def show(sample: runner.Sample) -> None:
        value = report.values(sample)
        figure = (f"{value[sample.measure + '_gbps']:6.2f} Gb/s" if sample.measure != "echo"
                  else f"{value['req_s']:6.0f} req/s p50 {value['p50_us']:.0f} µs p99 {value['p99_us']:.0f} µs")
        print(f"round {sample.round + 1}/{plan.rounds}  {sample.measure:5}  {report.SHORT[sample.contender]:5}  "
              f"{figure}  (CPU client {sample.client_cpu / sample.wall:.0%}, "
              f"server {sample.server_cpu / sample.wall:.0%}, others {sample.other_cpu / sample.wall:.0%}"
              f"{f', waited {sample.waited:.1f} s' if sample.waited >= 1 else ''})",
              file=sys.stderr, flush=True)
    return show


def started(run: runner.Run) -> None:
    print(f"server pid {run.server_pid}, client pid {run.client_pid}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.render:
        return publish(json.loads(args.render.read_text()), args, saved=None)
    plan = make_plan(args)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    host = machine.describe()
    print(f"bench.hbone: {report.describe_plan(plan)}", file=sys.stderr)
    print(f"machine: {machine.summary(host)}", file=sys.stderr, flush=True)
    # Taken before the run: the code measured is the code in the tree when it started.
    source = machine.source(ROOT)
    try:
        result = runner.run(plan, progress(plan), started)
    except KeyboardInterrupt:
        print("interrupted; child processes stopped", file=sys.stderr)
        return 130
    except runner.BenchError as exc:
        print(f"bench.hbone failed: {exc}", file=sys.stderr)
        return 1
    summary = report.summarise(result.samples, plan.contenders)
    data = report.as_json(summary, plan, result.samples, date=now.isoformat(), machine=host,
                          source=source, command=" ".join(["python -m bench.hbone", *argv]))
    saved = None if args.no_json else save_results("hbone", now, data)
    return publish(data, args, saved=saved)


def publish(data: dict, args: argparse.Namespace, *, saved: Path | None) -> int:
    """Print the tables of a run (just measured or loaded from JSON); with --docs, update the docs."""
    plan = runner.Plan(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["plan"].items()})
    samples = [runner.Sample(**s) for s in data["samples"]]
    summary = report.summarise(samples, plan.contenders)
    print()
    print(report.text(summary, plan, samples))
    if saved is not None:
        print(f"\nresults: {saved.relative_to(ROOT)}")
    if args.docs:
        source = data["source"]
        changes = ", ".join(source["changes"])
        revision = source["commit"] + (f" plus uncommitted changes in {changes}" if changes else "")
        date = dt.datetime.fromisoformat(data["date"])
        block = report.markdown(summary, plan, samples, date=f"{date:%Y-%m-%d %H:%M} UTC",
                                machine=machine.summary(data["machine"]), revision=revision,
                                command=data["command"])
        docs.update(DOCS, block)
        print(f"updated: {DOCS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
