"""`wisp rollout restart ztunnel [--node N]...`: replace ztunnel node by node, dropping no connection.

kubectl's `rollout restart daemonset/ztunnel` for the local mesh (`--prefix`): each node's new
ztunnel takes over while the old one drains its established connections (runtime/rollout.py;
docs/architecture.md, "Zero-drop ztunnel restart"). The command returns once every node's new
ztunnel serves its node; with `--wait-drained` also once every old one exited. On a Kubernetes
cluster `kubectl rollout restart -n istio-system daemonset/ztunnel` does the same with
deploy/ztunnel.yaml's maxSurge strategy.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def add_commands(sub: Any) -> None:
    parser = sub.add_parser("rollout", help="restart a mesh component without dropping connections")
    prefix_help = "the local mesh (default wisp)"
    parser.add_argument("--prefix", default=os.environ.get("WISP_PREFIX", "wisp"), help=prefix_help)
    actions = parser.add_subparsers(dest="rollout_command", required=True)
    restart = actions.add_parser("restart", help="replace each node's process; the old one drains")
    restart.add_argument("component", choices=["ztunnel"])
    restart.add_argument("--node", action="append", default=[], help="only this node (repeatable; default all)")
    # Given before or after `restart`; SUPPRESS keeps the subcommand from resetting it.
    restart.add_argument("--prefix", default=argparse.SUPPRESS, help=prefix_help)
    restart.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default 300)")
    restart.add_argument("--wait-drained", action="store_true",
                         help="also wait until every old process finished draining and exited")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from runtime.cli import daemon_pid, read_status
    from wisp.runpaths import RuntimePaths
    from runtime.rollout import RolloutError, node_rollouts_summary, request, wait

    paths = RuntimePaths(args.prefix)
    if os.geteuid() != 0:
        print("wisp rollout: the local mesh needs root", file=sys.stderr)
        return 1
    if daemon_pid(paths) is None:
        print(f"wisp rollout: no mesh with prefix {args.prefix!r} is up; run `wisp up` first", file=sys.stderr)
        return 1
    shown: list[str] = []

    def show(rollout: dict) -> None:
        for line in node_rollouts_summary(rollout):
            if line not in shown:
                print(line, flush=True)
                shown.append(line)

    try:
        rollout_id = request(paths, args.component, args.node)
        print(f"rollout restart {args.component} ({rollout_id})", flush=True)
        rollout = wait(lambda: read_status(paths), rollout_id, args.timeout, show,
                       drained=args.wait_drained)
    except RolloutError as exc:
        print(f"wisp rollout: {exc}", file=sys.stderr)
        return 1
    if rollout["state"] != "done":
        print(f"wisp rollout: {rollout['error']}", file=sys.stderr)
        return 1
    print(f"{args.component} restarted on {', '.join(n['node'] for n in rollout['nodes'])}")
    return 0
