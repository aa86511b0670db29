"""`wisp up/down/kubeconfig/apply/delete/get/label/exec`: the arguments of the runtime's verbs.

The verbs themselves are the runtime's (runtime/cli.py `run_command`, a component of its own):
this module only declares their parsers, and their handler imports the runtime when one of
them runs, so `wisp ca init`, `wisp waypoint ...` or `wisp --help` never import it (a component
imports `wisp`; `wisp` reaches a component only inside the command that drives it).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

VERBS = ("up", "down", "kubeconfig", "apply", "delete", "get", "label", "exec")


def run(args: argparse.Namespace) -> int:
    from runtime.cli import run_command

    return run_command(args)


def add_commands(sub) -> None:
    def prefixed(parser):
        parser.add_argument("--prefix", default=os.environ.get("WISP_PREFIX", "wisp"),
                            help="name prefix of this mesh's namespaces and files (default wisp)")
        return parser

    up = prefixed(sub.add_parser("up", help="run the mesh with the manifests in DIR, or on a Kubernetes "
                                            "control plane (--kubernetes)"))
    up.add_argument("directory", type=Path, nargs="?", help="manifests to run (the local mesh)")
    up.add_argument("--kubernetes", action="store_true",
                    help="run the test bed's real control plane with the nodes as its kubelets; "
                         "then use kubectl (docs/testbed.md)")
    up.add_argument("--nodes", type=int, default=2)
    up.add_argument("--timeout", type=float, default=180.0)
    up.add_argument("--restart-delay", type=float, default=1.0, help="seconds before a crashed process restarts")
    up.add_argument("--ztunnel-workers", type=int, default=1,
                    help="worker processes (cores) per ztunnel (default 1: the local mesh shares one machine)")
    up.add_argument("--ztunnel-drain-seconds", type=float, default=30.0,
                    help="how long a ztunnel replaced by `wisp rollout restart` serves its connections (default 30)")
    prefixed(sub.add_parser("down", help="stop the mesh and remove everything it made"))
    prefixed(sub.add_parser("kubeconfig", help="print the kubeconfig path of a mesh started with --kubernetes"))
    apply = prefixed(sub.add_parser("apply", help="add or change objects"))
    apply.add_argument("-f", "--filename", type=Path, required=True)
    delete = prefixed(sub.add_parser("delete", help="remove the objects defined in a file"))
    delete.add_argument("-f", "--filename", type=Path, required=True)
    get = prefixed(sub.add_parser("get", help="list objects (pods, svc, ap, pa, ra, gtw, …; as kubectl get)"))
    get.add_argument("kind", nargs="?", default="pods")
    get.add_argument("names", nargs="*", help="only these objects")
    get.add_argument("-n", "--namespace")
    get.add_argument("-A", "--all-namespaces", action="store_true")
    get.add_argument("-o", "--output", choices=["table", "wide", "json", "yaml", "name"], default="table")
    label = prefixed(sub.add_parser("label", help="set (k=v) or remove (k-) labels"))
    label.add_argument("kind")
    label.add_argument("name")
    label.add_argument("labels", nargs="+")
    label.add_argument("-n", "--namespace", default="default")
    execute = prefixed(sub.add_parser("exec", help="run a command inside a pod's network namespace"))
    execute.add_argument("-n", "--namespace", default="default")
    execute.add_argument("pod", help="pod name, or a Deployment name to pick one of its pods")
    execute.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                         help="the command to run, after --")
    for verb in VERBS:
        sub.choices[verb].set_defaults(handler=run)
