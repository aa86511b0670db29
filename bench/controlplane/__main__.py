"""`python -m bench.controlplane [--quick] [--docs]`: measure, print the table, save JSON.

Targets (10,000 pods, 1,000 services, 500 policies): full build ≤ 1 s; one pod change
delivered to 100 subscribers ≤ 50 ms at p99; control plane peak RSS ≤ 300 MB.
`--kube`: the watch path instead (bench/controlplane/kube.py): the cluster written to the test
bed's real API server, listed by the operator's Kubernetes source, then a burst of 1,000 pod
changes and each one's lag until published; peak RSS ≤ 300 MB, the burst kept up with.
`--render bench/results/controlplane-….json [--docs]` prints (and publishes) a saved run.
Every run records how busy other programs kept the machine ("others", in cores).
Exit status 2 when a target is missed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import sys
from pathlib import Path

from bench.publish import DOCS, ROOT, save_results
from wisp import log as wisp_log
from . import kube, report, runner
from .load import OtherLoad
from .scenario import Scale



def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.controlplane", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="20 pod changes and 3 builds (about a minute)")
    p.add_argument("--changes", type=int, help="pod changes delivered (default 100, quick 20)")
    p.add_argument("--spacing-ms", type=float, default=500.0,
                   help="time between pod changes (default 500: more than one change takes to reach all 100)")
    p.add_argument("--docs", action="store_true", help=f"rewrite this section's figures in {DOCS.relative_to(ROOT)}")
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/controlplane-<date>.json")
    p.add_argument("--render", type=Path, metavar="JSON", help="measure nothing: print a saved results file")
    p.add_argument("--kube", action="store_true", help="the watch path against the test bed's API server")
    p.add_argument("--pods", type=int, default=10_000,
                   help="--kube: pods (services a tenth, policies a twentieth; default 10,000)")
    p.add_argument("--burst", type=int, default=1_000, help="--kube: pod changes in the burst (default 1,000)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.kube or (args.render and json.loads(args.render.read_text()).get("kind") == "kube"):
        return main_kube(args)
    if args.render:
        run = json.loads(args.render.read_text())
    else:
        quick = args.quick
        plan = runner.Plan(repeats=3 if quick else 5, pod_changes_offline=50 if quick else 200,
                           changes=args.changes or (20 if quick else 100), spacing=args.spacing_ms / 1000)
        now = dt.datetime.now(dt.timezone.utc)
        command = "python -m bench.controlplane" + (" --quick" if quick else "")
        run = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "command": command, "plan": plan.describe(),
               "machine": report.machine(), "source": report.source(ROOT)}

        def progress(message: str) -> None:
            print(message, file=sys.stderr, flush=True)

        # A polite kill stops the child processes too (the runner's finally does it).
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        load = OtherLoad().start()
        try:
            run["results"] = runner.run(plan, progress)
        except runner.BenchError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted; child processes stopped", file=sys.stderr)
            return 130
        run["others"] = load.report()
        if not args.no_json:
            path = save_results("controlplane", now, run)
            print(f"results: {path.relative_to(ROOT)}", file=sys.stderr)
    figures = report.summary(run["results"])
    print(report.table(run["results"], figures))
    if args.docs:
        report.update_docs(DOCS, report.docs_block(run, figures))
        print(f"updated {DOCS.relative_to(ROOT)}", file=sys.stderr)
    return 0 if all(row["pass"] for row in figures["rows"]) else 2


def main_kube(args: argparse.Namespace) -> int:
    if args.render:
        run = json.loads(args.render.read_text())
    else:
        pods = args.pods
        plan = kube.KubePlan(scale=Scale(pods=pods, services=max(1, pods // 10), policies=max(1, pods // 20),
                                         namespaces=min(50, max(1, pods // 200))),
                             nodes=max(4, pods // 200), burst=min(args.burst, pods))
        now = dt.datetime.now(dt.timezone.utc)
        command = "python -m bench.controlplane --kube" + (f" --pods {pods}" if pods != 10_000 else "") \
            + (f" --burst {args.burst}" if args.burst != 1_000 else "")
        run = {"kind": "kube", "date": now.strftime("%Y-%m-%d %H:%M UTC"), "command": command,
               "plan": plan.describe(), "machine": report.machine(), "source": report.source(ROOT)}
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        wisp_log.configure("warning")  # the test bed's progress is ours to print
        load = OtherLoad().start()
        try:
            run["results"] = kube.run(plan, lambda message: print(message, file=sys.stderr, flush=True))
        except kube.KubeBenchError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
        run["others"] = load.report()
        if not args.no_json:
            path = save_results("controlplane-kube", now, run)
            print(f"results: {path.relative_to(ROOT)}", file=sys.stderr)
    print(kube.table(run["results"], run["plan"]))
    if args.docs:
        report.update_kube_docs(DOCS, report.kube_docs_block(run))
        print(f"updated {DOCS.relative_to(ROOT)}", file=sys.stderr)
    return 0 if all(kube.verdicts(run["results"]).values()) else 2


if __name__ == "__main__":
    sys.exit(main())
