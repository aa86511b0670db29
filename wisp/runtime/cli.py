"""`wisp up/down/apply/delete/get/label/exec`: the local mesh from the command line.

Each command prints what it did or one line saying what went wrong and what to do; bad
arguments and bad manifests change nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio
import yaml

from .daemon import clean
from .manifests import (
    MANIFEST_SUFFIXES,
    ManifestProblem,
    allocate_cluster_ips,
    load_directory,
    namespace_of,
    parse_documents,
    taken_cluster_ips,
)
from .operator_client import OperatorClient, OperatorError
from .paths import RuntimePaths

CLUSTER_SCOPED = {"Namespace", "Node", "GatewayClass"}
KIND_ALIASES = {
    "ns": "Namespace", "namespace": "Namespace", "namespaces": "Namespace",
    "po": "Pod", "pod": "Pod", "pods": "Pod",
    "svc": "Service", "service": "Service", "services": "Service",
    "deploy": "Deployment", "deployment": "Deployment", "deployments": "Deployment",
    "authorizationpolicy": "AuthorizationPolicy", "authorizationpolicies": "AuthorizationPolicy",
    "peerauthentication": "PeerAuthentication", "peerauthentications": "PeerAuthentication",
    "gateway": "Gateway", "gateways": "Gateway",
}


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def add_commands(sub) -> None:
    def prefixed(parser):
        parser.add_argument("--prefix", default=os.environ.get("WISP_PREFIX", "wisp"),
                            help="name prefix of this mesh's namespaces and files (default wisp)")
        return parser

    up = prefixed(sub.add_parser("up", help="run the mesh with the manifests in DIR"))
    up.add_argument("directory", type=Path)
    up.add_argument("--nodes", type=int, default=2)
    up.add_argument("--timeout", type=float, default=180.0)
    up.add_argument("--restart-delay", type=float, default=1.0, help="seconds before a crashed process restarts")
    up.add_argument("--ztunnel-workers", type=int, default=1,
                    help="worker processes (cores) per ztunnel (default 1: the local mesh shares one machine)")
    prefixed(sub.add_parser("down", help="stop the mesh and remove everything it made"))
    apply = prefixed(sub.add_parser("apply", help="add or change objects"))
    apply.add_argument("-f", "--filename", type=Path, required=True)
    delete = prefixed(sub.add_parser("delete", help="remove the objects defined in a file"))
    delete.add_argument("-f", "--filename", type=Path, required=True)
    get = prefixed(sub.add_parser("get", help="list objects (pods, services, namespaces, …)"))
    get.add_argument("kind", nargs="?", default="pods")
    get.add_argument("-n", "--namespace")
    get.add_argument("-A", "--all-namespaces", action="store_true")
    get.add_argument("-o", "--output", choices=["table", "json"], default="table")
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


def run_command(args) -> int:
    try:
        if os.geteuid() != 0:
            raise CliError("the local mesh needs root (network namespaces and iptables)")
        paths = RuntimePaths(args.prefix)
        handler = {"up": up, "down": down, "apply": apply, "delete": delete, "get": get, "label": label,
                   "exec": execute}[args.command]
        return handler(paths, args) or 0
    except CliError as exc:
        print(f"wisp {args.command}: {exc}", file=sys.stderr)
        return 1


# -- up / down ---------------------------------------------------------------------------------------
def daemon_pid(paths: RuntimePaths) -> int | None:
    try:
        pid = int(paths.pidfile.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def read_status(paths: RuntimePaths) -> dict[str, Any]:
    try:
        return json.loads(paths.status.read_text())
    except (OSError, ValueError):
        return {}


def up(paths: RuntimePaths, args) -> int:
    if not args.directory.is_dir():
        raise CliError(f"{args.directory} is not a directory of manifests")
    if not 1 <= args.nodes <= 20:
        raise CliError("--nodes must be between 1 and 20")
    if not 1 <= args.ztunnel_workers <= 64:
        raise CliError("--ztunnel-workers must be between 1 and 64")
    if daemon_pid(paths):
        raise CliError(f"a mesh with prefix {paths.prefix!r} is already up; run `wisp down` first")
    leftovers = clean(paths.prefix)
    if leftovers:
        print(f"removed leftovers of an earlier run: {', '.join(leftovers)}")
    files = _read_manifest_tree(args.directory)
    paths.manifests.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    for rel, objects in files.items():
        objects = allocate_cluster_ips(objects, taken)
        taken |= taken_cluster_ips(objects)
        target = paths.manifests / "app" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    with open(paths.logs / "daemon.log", "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "wisp.runtime.daemon", "--prefix", paths.prefix, "--nodes", str(args.nodes),
             "--restart-delay", str(args.restart_delay), "--ztunnel-workers", str(args.ztunnel_workers)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    paths.pidfile.write_text(str(process.pid))
    print(f"starting mesh {paths.prefix!r}: {args.nodes} node(s), manifests from {args.directory}")
    deadline = time.monotonic() + args.timeout
    while True:
        status = read_status(paths)
        phase = status.get("phase")
        if phase == "ready":
            break
        if phase == "failed" or process.poll() is not None:
            detail = status.get("error") or f"the runtime exited with {process.poll()}"
            _stop(paths, process.pid)
            raise CliError(f"the mesh did not start: {detail}\n  logs: {paths.logs}")
        if time.monotonic() > deadline:
            waiting = [f"{p['namespace']}/{p['name']} ({p.get('message') or p['phase']})"
                       for p in status.get("pods", []) if not p.get("ready")]
            _stop(paths, process.pid)
            raise CliError(f"the mesh was not ready after {args.timeout:g} s; waiting for: "
                           f"{', '.join(waiting) or 'system components'}\n  logs: {paths.logs}")
        time.sleep(0.25)
    _print_summary(status)
    return 0


def _read_manifest_tree(directory: Path) -> dict[Path, list[dict[str, Any]]]:
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.suffix in MANIFEST_SUFFIXES and p.is_file()):
        try:
            files[path.relative_to(directory)] = parse_documents(path.read_text(), str(path))
        except ManifestProblem as exc:
            raise CliError(str(exc)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read {path}: {exc}") from None
    if not files:
        raise CliError(f"{directory} has no .yaml or .yml files")
    return files


def _print_summary(status: dict[str, Any]) -> None:
    print(f"mesh {status['prefix']!r} is ready")
    for node in status["nodes"]:
        print(f"  node {node['name']:<8} netns {node['netns']:<20} {node['ip']:<14} pods {node['pod_network']}")
    print(f"  {len(status['pods'])} pod(s):")
    for pod in status["pods"]:
        print(f"    {pod['namespace']}/{pod['name']:<40} {pod['node']:<7} {pod['ip']:<13} netns {pod['netns']}")
    print("next: wisp get pods -A | wisp exec -n NS POD -- curl http://SERVICE.NS:PORT/ | wisp down")


def down(paths: RuntimePaths, args) -> int:
    pid = daemon_pid(paths)
    if pid:
        _stop(paths, pid)
    gone = clean(paths.prefix)
    if pid or gone:
        print(f"mesh {paths.prefix!r} stopped" + (f"; removed {', '.join(gone)}" if gone else ""))
    else:
        print(f"no mesh {paths.prefix!r} was running")
    return 0


def _stop(paths: RuntimePaths, pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


# -- apply / delete ----------------------------------------------------------------------------------
def _require_up(paths: RuntimePaths) -> None:
    if not daemon_pid(paths):
        raise CliError(f"no mesh {paths.prefix!r} is running; start one with `wisp up DIR`")


def apply(paths: RuntimePaths, args) -> int:
    _require_up(paths)
    sources = _read_manifest_tree(args.filename) if args.filename.is_dir() else {
        Path(args.filename.name): _parse_file(args.filename)}
    taken = taken_cluster_ips(load_directory(paths.manifests))
    for rel, objects in sources.items():
        objects = allocate_cluster_ips(objects, taken)
        taken |= taken_cluster_ips(objects)
        target = paths.manifests / "applied" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump_all(objects, sort_keys=False))
        os.replace(tmp, target)
        for obj in objects:
            print(f"{obj['kind'].lower()}/{obj['metadata']['name']} configured")
    return 0


def _parse_file(path: Path) -> list[dict[str, Any]]:
    try:
        return parse_documents(path.read_text(), str(path))
    except ManifestProblem as exc:
        raise CliError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None


def delete(paths: RuntimePaths, args) -> int:
    _require_up(paths)
    doomed = {_key(o) for o in _parse_file(args.filename)}
    removed = set()
    for path in sorted(p for p in paths.manifests.rglob("*") if p.suffix in MANIFEST_SUFFIXES):
        try:
            objects = parse_documents(path.read_text(), str(path))
        except ManifestProblem:
            continue
        keep = [o for o in objects if _key(o) not in doomed]
        if len(keep) == len(objects):
            continue
        removed |= {_key(o) for o in objects} - {_key(o) for o in keep}
        if keep:
            path.write_text(yaml.safe_dump_all(keep, sort_keys=False))
        else:
            path.unlink()
    for kind, namespace, name in sorted(removed):
        print(f"{kind.lower()}/{name} deleted")
    for kind, namespace, name in sorted(doomed - removed):
        print(f"{kind.lower()}/{name} not found", file=sys.stderr)
    return 0 if removed else 1


def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    kind = obj["kind"]
    return kind, "" if kind in CLUSTER_SCOPED else namespace_of(obj), obj["metadata"]["name"]


# -- get / label ----------------------------------------------------------------------------------------
def _operator_call(paths: RuntimePaths, fn):
    async def call():
        client = OperatorClient(paths)
        try:
            return await fn(client)
        finally:
            await client.aclose()

    try:
        return trio.run(call)
    except OperatorError as exc:
        raise CliError(str(exc)) from None
    except FileNotFoundError:
        raise CliError(f"no credentials in {paths.state}; is the mesh up?") from None


def get(paths: RuntimePaths, args) -> int:
    _require_up(paths)
    kind = KIND_ALIASES.get(args.kind.lower(), args.kind)
    listing = _operator_call(paths, lambda c: c.objects())
    status = {(p["namespace"], p["name"]): p for p in read_status(paths).get("pods", [])}
    rows = [o for o in listing["objects"] if o.get("kind") == kind]
    if kind not in CLUSTER_SCOPED and not args.all_namespaces:
        rows = [o for o in rows if namespace_of(o) == (args.namespace or "default")]
    if args.output == "json":
        print(json.dumps({"items": rows, "conditions": listing["conditions"]}, indent=1))
        return 0
    if kind == "Pod":
        table = [["NAMESPACE", "NAME", "READY", "STATUS", "NODE", "IP", "REDIRECTION"]]
        for o in rows:
            meta, st = o["metadata"], o.get("status") or {}
            run = status.get((namespace_of(o), meta["name"]), {})
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
            table.append([namespace_of(o), meta["name"], "1/1" if ready else "0/1", st.get("phase", "Pending"),
                          (o.get("spec") or {}).get("nodeName", "") or run.get("node", ""), st.get("podIP", ""),
                          (meta.get("annotations") or {}).get("ambient.istio.io/redirection", "-")])
    elif kind == "Service":
        table = [["NAMESPACE", "NAME", "CLUSTER-IP", "PORTS", "WAYPOINT"]]
        for o in rows:
            spec = o.get("spec") or {}
            ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or [])
            table.append([namespace_of(o), o["metadata"]["name"], spec.get("clusterIP", ""), ports,
                          (o["metadata"].get("labels") or {}).get("istio.io/use-waypoint", "-")])
    elif kind == "Namespace":
        table = [["NAME", "DATAPLANE-MODE", "LABELS"]]
        for o in rows:
            labels = o["metadata"].get("labels") or {}
            table.append([o["metadata"]["name"], labels.get("istio.io/dataplane-mode", "-"),
                          ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"])
    else:
        table = [["NAMESPACE", "NAME", "CONDITIONS"]]
        for o in rows:
            key = f"{kind}/{namespace_of(o) if kind not in CLUSTER_SCOPED else ''}/{o['metadata']['name']}"
            conditions = listing["conditions"].get(key, [])
            table.append([namespace_of(o), o["metadata"]["name"],
                          ",".join(f"{c.get('type')}={c.get('status')}({c.get('reason')})" for c in conditions) or "-"])
    _print_table(table)
    return 0


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def label(paths: RuntimePaths, args) -> int:
    _require_up(paths)
    kind = KIND_ALIASES.get(args.kind.lower())
    if kind is None:
        raise CliError(f"cannot label {args.kind!r}; use namespace, pod or service")
    changes: dict[str, str | None] = {}
    for item in args.labels:
        if item.endswith("-") and "=" not in item:
            changes[item[:-1]] = None
        elif "=" in item:
            key, _, value = item.partition("=")
            changes[key] = value
        else:
            raise CliError(f"{item!r} is neither key=value nor key-")
    namespace = "" if kind in CLUSTER_SCOPED else args.namespace
    _operator_call(paths, lambda c: c.set_labels(kind, namespace, args.name, changes))
    print(f"{kind.lower()}/{args.name} labeled")
    return 0


# -- exec ----------------------------------------------------------------------------------------------
def execute(paths: RuntimePaths, args) -> int:
    _require_up(paths)
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        raise CliError("give a command after --, e.g. wisp exec -n shop client -- curl http://web")
    pod = find_pod(paths, args.namespace, args.pod)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               HOSTNAME=pod["name"])
    if not shutil.which(command[0], path=env["PATH"]):
        raise CliError(f"command not found: {command[0]}")
    return subprocess.call(["ip", "netns", "exec", pod["netns"], *command], env=env)


def find_pod(paths: RuntimePaths, namespace: str, name: str) -> dict[str, Any]:
    pods = [p for p in read_status(paths).get("pods", []) if p["namespace"] == namespace and p.get("netns")]
    exact = [p for p in pods if p["name"] == name]
    if exact:
        return exact[0]
    owned = sorted((p for p in pods if p["name"].startswith(f"{name}-")), key=lambda p: (not p["ready"], p["name"]))
    if owned:
        return owned[0]
    known = ", ".join(p["name"] for p in pods) or "none"
    raise CliError(f"no pod {name!r} in namespace {namespace!r} (pods there: {known})")
