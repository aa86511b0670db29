"""`wisp up/down/apply/delete/get/label/exec`: the local mesh from the command line.

Each command prints what it did or one line saying what went wrong and what to do; bad
arguments and bad manifests change nothing. `apply`, `delete` and `get` behave as kubectl's
against an API server: the control plane validates each file whole (CRD schema, istiod's checks)
and applies all of it or none, the answers are kubectl's words (`created`, `configured`,
`unchanged`, `The AuthorizationPolicy "x" is invalid: ...`), refusals exit 1, and resource names
resolve through the control plane's discovery (`ap`, `pa`, `authorizationpolicies`, ...).

`wisp up --kubernetes` runs the mesh on the test bed's real control plane instead
(runtime/kube/daemon.py); `wisp kubeconfig` prints its kubeconfig. On such a mesh (its
status.json says `"kubernetes": true`) `get`, `label`, `apply` and `delete` go to its API server
(runtime/kube/cli.py), `exec` works as here, and `down` also removes the control plane's data.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .daemon import clean
from .manifests import (
    MANIFEST_SUFFIXES,
    ManifestProblem,
    allocate_cluster_ips,
    load_directory,
    namespace_of,
    parse_documents,
    services,
    taken_cluster_ips,
)
from . import operator_client
from .operator_client import OperatorError
from wisp.runpaths import RuntimePaths
from .sandbox import Sandbox


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def run_command(args) -> int:
    try:
        if os.geteuid() != 0:
            raise CliError("the local mesh needs root (network namespaces and iptables)")
        paths = RuntimePaths(args.prefix)
        handler = {"up": up, "down": down, "apply": apply, "delete": delete, "get": get, "label": label,
                   "exec": execute, "kubeconfig": kubeconfig}[args.command]
        return handler(paths, args) or 0
    except CliError as exc:
        print(f"wisp {args.command}: {exc}", file=sys.stderr)
        return 1
    except Failed:
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
    if not 1 <= args.nodes <= 20:
        raise CliError("--nodes must be between 1 and 20")
    # Checked here: the daemon would only meet a bad value at a pod's first restart (trio.sleep refuses
    # a negative delay) or fail `up` at once, after starting everything, with a timeout of 0 s.
    if not 0 <= args.restart_delay <= 300:
        raise CliError("--restart-delay must be between 0 and 300 seconds")
    if not 0 < args.timeout <= 3600:
        raise CliError("--timeout must be more than 0 and at most 3600 seconds")
    if getattr(args, "kubernetes", False):
        return _up_kubernetes(paths, args)
    if args.directory is None:
        raise CliError("give a directory of manifests (wisp up examples/shop), or --kubernetes")
    if not args.directory.is_dir():
        raise CliError(f"{args.directory} is not a directory of manifests")
    if not 1 <= args.ztunnel_workers <= 64:
        raise CliError("--ztunnel-workers must be between 1 and 64")
    if not 0 <= args.ztunnel_drain_seconds <= 3600:
        raise CliError("--ztunnel-drain-seconds must be between 0 and 3600")
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
            [sys.executable, "-m", "runtime.daemon", "--prefix", paths.prefix, "--nodes", str(args.nodes),
             "--restart-delay", str(args.restart_delay), "--ztunnel-workers", str(args.ztunnel_workers),
             "--ztunnel-drain-seconds", str(args.ztunnel_drain_seconds)],
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


def _up_kubernetes(paths: RuntimePaths, args) -> int:
    from runtime.testbed import build
    from runtime.testbed.cluster import remove_stale

    from .kube import cli as kube

    if args.directory is not None:
        raise CliError(f"with --kubernetes the cluster starts empty: run it, then `kubectl apply -f {args.directory}`")
    try:
        build.installed()
    except build.MissingBinaries as exc:
        raise CliError(str(exc)) from None
    if daemon_pid(paths):
        raise CliError(f"a mesh with prefix {paths.prefix!r} is already up; run `wisp down` first")
    leftovers = clean(paths.prefix)
    remove_stale()
    if leftovers:
        print(f"removed leftovers of an earlier run: {', '.join(leftovers)}")
    process = kube.spawn_daemon(paths, args.nodes, args.restart_delay)
    print(f"starting mesh {paths.prefix!r}: a Kubernetes control plane (the test bed's kube-apiserver, "
          f"controller manager, scheduler, etcd) and {args.nodes} node(s)")
    status = kube.wait_ready(paths, process, args.timeout, read_status,
                             lambda p, pid: _stop(p, pid, KUBE_STOP_SECONDS))
    kube.print_ready(status)
    return 0


def kubeconfig(paths: RuntimePaths, args) -> int:
    from .kube import cli as kube

    _require_up(paths)
    print(kube.kubeconfig_of(read_status(paths), paths.prefix))
    return 0


def _kubernetes(paths: RuntimePaths) -> dict[str, Any] | None:
    """The status of a running Kubernetes-backed mesh, or None for a local one."""
    status = read_status(paths)
    return status if status.get("kubernetes") and status.get("kubeconfig") else None


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
    from runtime.testbed.cluster import remove_stale

    pid = daemon_pid(paths)
    if pid:
        _stop(paths, pid, KUBE_STOP_SECONDS if read_status(paths).get("kubernetes") else 30.0)
    gone = clean(paths.prefix)
    # A Kubernetes-backed run killed outright leaves its control plane's directory (etcd's data).
    remove_stale()
    if pid or gone:
        print(f"mesh {paths.prefix!r} stopped" + (f"; removed {', '.join(gone)}" if gone else ""))
    else:
        print(f"no mesh {paths.prefix!r} was running")
    return 0


# The Kubernetes daemon stops its pods (grace periods), then the control plane.
KUBE_STOP_SECONDS = 150.0


def _stop(paths: RuntimePaths, pid: int, timeout: float = 30.0) -> None:
    """SIGTERM the daemon and wait `timeout` s for it; a wedged one is killed. Returns once the
    process is gone: what `down` removes next (the namespaces, the control plane's directory,
    which `remove_stale` keeps while its owner lives) must not race a dying daemon."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if _gone(pid, timeout):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    _gone(pid, 10.0)


def _gone(pid: int, timeout: float) -> bool:
    """True once `pid` has exited (reaped here if it is our child, as after `wisp up` fails)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


# -- apply / delete / get / label: kubectl's verbs, answered by the control plane -----------------------
def _require_up(paths: RuntimePaths) -> None:
    if not daemon_pid(paths):
        raise CliError(f"no mesh {paths.prefix!r} is running; start one with `wisp up DIR` or `wisp up --kubernetes`")


class Failed(Exception):
    """A kubectl-style failure already printed: the command exits 1."""


def _files_to_apply(filename: Path) -> list[tuple[Path, str]]:
    """(file, its name under the manifest directory's applied/ folder) for a file or a directory."""
    if filename.is_dir():
        found = sorted(p for p in filename.rglob("*") if p.suffix in MANIFEST_SUFFIXES and p.is_file())
        if not found:
            raise CliError(f"{filename} has no .yaml or .yml files")
        return [(p, f"applied/{p.relative_to(filename)}") for p in found]
    if not filename.is_file():
        raise CliError(f'the path "{filename}" does not exist')
    return [(filename, f"applied/{filename.name}")]


def _existing_cluster_ips(paths: RuntimePaths) -> dict[tuple[str, str], str]:
    return {(s.namespace, s.name): s.cluster_ip for s in services(load_directory(paths.manifests)) if s.cluster_ip}


def apply(paths: RuntimePaths, args) -> int:
    _require_up(paths)
    if (kube_status := _kubernetes(paths)) is not None:
        from .kube import cli as kube

        return kube.apply_or_delete(kube_status, args)
    files = _files_to_apply(args.filename)
    existing = _existing_cluster_ips(paths)
    taken = set(existing.values())
    failed = False
    for path, target in files:
        try:
            objects = _parse_file(path)
        except CliError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed = True
            continue
        # Re-applying a Service without a clusterIP keeps the address it has (API-server defaulting
        # happens once, at creation).
        objects = [_keep_cluster_ip(o, existing) for o in objects]
        objects = allocate_cluster_ips(objects, taken)
        taken |= taken_cluster_ips(objects)
        try:
            answer = _operator_call(paths, lambda c: c.apply(target, str(path), objects))
        except Failed:
            failed = True
            continue
        for warning in answer.get("warnings", []):
            print(f"Warning: {warning}", file=sys.stderr)
        for result in answer["results"]:
            print(f"{result['resource']}/{result['name']} {result['action']}")
    return 1 if failed else 0


def _keep_cluster_ip(obj: dict[str, Any], existing: dict[tuple[str, str], str]) -> dict[str, Any]:
    spec = obj.get("spec")
    if obj.get("kind") != "Service" or not isinstance(spec, dict) or spec.get("clusterIP"):
        return obj
    ip = existing.get((namespace_of(obj), obj["metadata"]["name"]))
    return dict(obj, spec=dict(spec, clusterIP=ip)) if ip else obj


def _parse_file(path: Path) -> list[dict[str, Any]]:
    try:
        return parse_documents(path.read_text(), str(path))
    except ManifestProblem as exc:
        raise CliError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None


def delete(paths: RuntimePaths, args) -> int:
    _require_up(paths)
    if (kube_status := _kubernetes(paths)) is not None:
        from .kube import cli as kube

        return kube.apply_or_delete(kube_status, args)
    objects = _parse_file(args.filename)
    resources = _Resources(_operator_call(paths, lambda c: c.resources()))
    wanted, failed = [], False
    for obj in objects:
        rt = resources.kind(obj["kind"])
        if rt is None:
            print(f'error: resource mapping not found for name: "{obj["metadata"]["name"]}" namespace: '
                  f'"{namespace_of(obj)}" from "{args.filename}": no matches for kind "{obj["kind"]}" in version '
                  f'"{obj.get("apiVersion", "")}"\nensure CRDs are installed first', file=sys.stderr)
            failed = True
            continue
        wanted.append({"kind": obj["kind"], "namespace": namespace_of(obj) if rt["namespaced"] else "",
                       "name": obj["metadata"]["name"]})
    answer = _operator_call(paths, lambda c: c.delete(wanted)) if wanted else {"results": []}
    for result in answer["results"]:
        if result["deleted"]:
            print(f'{result["resource"]} "{result["name"]}" deleted')
        else:
            print(f'Error from server (NotFound): error when deleting "{args.filename}": '
                  f'{result["qualified"]} "{result["name"]}" not found', file=sys.stderr)
            failed = True
    return 1 if failed else 0


class _Resources:
    """The control plane's discovery answer, resolved as kubectl resolves resource names."""

    def __init__(self, listing: list[dict[str, Any]]) -> None:
        self.by_kind = {r["kind"]: r for r in listing}
        self.by_name: dict[str, dict[str, Any]] = {}
        for r in listing:
            group = r["group"]
            names = [r["kind"], r["plural"], r["singular"], *r["shortNames"]]
            if group:
                names += [f"{r['plural']}.{group}", f"{r['singular']}.{group}"]
            for name in names:
                self.by_name.setdefault(name.lower(), r)

    def kind(self, kind: str) -> dict[str, Any] | None:
        return self.by_kind.get(kind)

    def resolve(self, name: str) -> dict[str, Any]:
        found = self.by_name.get(name.lower())
        if found is None:
            raise CliError(f'the server doesn\'t have a resource type "{name}"')
        return found


def _operator_call(paths: RuntimePaths, fn):
    try:
        return operator_client.call(paths, fn)
    except OperatorError as exc:
        if exc.status == 422:
            # The control plane refused the request and worded why, as kubectl would.
            print(str(exc), file=sys.stderr)
            raise Failed() from None
        raise CliError(str(exc)) from None
    except FileNotFoundError:
        raise CliError(f"no credentials in {paths.state}; is the mesh up?") from None


def get(paths: RuntimePaths, args) -> int:
    _require_up(paths)
    if (kube_status := _kubernetes(paths)) is not None:
        from .kube import cli as kube

        return kube.get(kube_status, args, _print_table)
    resources = _Resources(_operator_call(paths, lambda c: c.resources()))
    try:
        rt = resources.resolve(args.kind)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    kind, namespaced = rt["kind"], rt["namespaced"]
    qualified = f"{rt['plural']}.{rt['group']}" if rt["group"] else rt["plural"]
    listing = _operator_call(paths, lambda c: c.objects())
    namespace = args.namespace or "default"
    rows = [_with_conditions(o, listing["conditions"]) for o in listing["objects"] if o.get("kind") == kind]
    if namespaced and not args.all_namespaces:
        rows = [o for o in rows if namespace_of(o) == namespace]
    rows.sort(key=lambda o: (namespace_of(o) if namespaced else "", o["metadata"]["name"]))
    rows, status = pick_named(rows, args.names, qualified)
    if args.output in ("json", "yaml"):
        document = rows[0] if len(args.names) == 1 and rows else {"apiVersion": "v1", "kind": "List", "items": rows}
        if args.names and not rows:
            return status
        if args.output == "json":
            print(json.dumps(document, indent=4))
        else:
            print(yaml.safe_dump(document, sort_keys=False), end="")
        return status
    if args.output == "name":
        for o in rows:
            print(f"{rt['singular']}.{rt['group']}/{o['metadata']['name']}" if rt["group"]
                  else f"{rt['singular']}/{o['metadata']['name']}")
        return status
    if not rows:
        if not args.names:
            where = f" in {namespace} namespace" if namespaced and not args.all_namespaces else ""
            print(f"No resources found{where}.", file=sys.stderr)
        return status
    _print_table(_table(kind, namespaced, rows, paths, wide=args.output == "wide"))
    return status


def pick_named(objects: list[dict[str, Any]], names: list[str], kind: str) -> tuple[list[dict[str, Any]], int]:
    """kubectl get's NAME arguments: the objects named, in the order given, and the exit status
    (1 once a name is missing, each missing one reported in kubectl's words). No names: all, 0."""
    if not names:
        return objects, 0
    by_name = {o["metadata"]["name"]: o for o in objects}
    missing = [name for name in names if name not in by_name]
    for name in missing:
        print(f'Error from server (NotFound): {kind} "{name}" not found', file=sys.stderr)
    return [by_name[n] for n in names if n in by_name], 1 if missing else 0


def _with_conditions(obj: dict[str, Any], conditions: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The object as `kubectl get` shows it: the control plane's conditions in status.conditions."""
    meta = obj.get("metadata") or {}
    ours = conditions.get(f"{obj.get('kind')}/{meta.get('namespace', '')}/{meta.get('name')}", [])
    if not ours:
        return obj
    status = dict(obj.get("status") or {})
    mine = {c.get("type") for c in ours}
    status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") not in mine] + ours
    return dict(obj, status=status)


def _table(kind: str, namespaced: bool, rows: list[dict[str, Any]], paths: RuntimePaths, *, wide: bool) -> list[list[str]]:
    def conditions(o: dict[str, Any]) -> str:
        shown = [f"{c.get('type')}={c.get('status')}({c.get('reason')})"
                 for c in (o.get("status") or {}).get("conditions") or [] if c.get("type") not in ("Ready", "ContainersReady")]
        return ",".join(shown) or "-"

    def messages(o: dict[str, Any]) -> str:
        return " | ".join(f"{c.get('type')}: {c.get('message')}" for c in (o.get("status") or {}).get("conditions") or []
                          if c.get("message")) or "-"

    if kind == "Pod":
        run = {(p["namespace"], p["name"]): p for p in read_status(paths).get("pods", [])}
        table = [["NAMESPACE", "NAME", "READY", "STATUS", "NODE", "IP", "REDIRECTION"]]
        for o in rows:
            meta, st = o["metadata"], o.get("status") or {}
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
            table.append([namespace_of(o), meta["name"], "1/1" if ready else "0/1", st.get("phase", "Pending"),
                          (o.get("spec") or {}).get("nodeName", "") or run.get((namespace_of(o), meta["name"]), {}).get("node", ""),
                          st.get("podIP", ""), (meta.get("annotations") or {}).get("ambient.istio.io/redirection", "-")])
        return table
    if kind == "Service":
        table = [["NAMESPACE", "NAME", "CLUSTER-IP", "PORTS", "WAYPOINT"]]
        for o in rows:
            spec = o.get("spec") or {}
            ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or [])
            table.append([namespace_of(o), o["metadata"]["name"], spec.get("clusterIP", ""), ports,
                          (o["metadata"].get("labels") or {}).get("istio.io/use-waypoint", "-")])
        return table
    if kind == "Namespace":
        table = [["NAME", "DATAPLANE-MODE", "LABELS"]]
        for o in rows:
            labels = o["metadata"].get("labels") or {}
            table.append([o["metadata"]["name"], labels.get("istio.io/dataplane-mode", "-"),
                          ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"])
        return table
    # Istio's printer columns where it has one (AuthorizationPolicy: ACTION, PeerAuthentication: MODE).
    extra = {"AuthorizationPolicy": ("ACTION", lambda o: (o.get("spec") or {}).get("action", "ALLOW")),
             "PeerAuthentication": ("MODE", lambda o: ((o.get("spec") or {}).get("mtls") or {}).get("mode", "UNSET"))}
    column = extra.get(kind)
    header = (["NAMESPACE"] if namespaced else []) + ["NAME"] + ([column[0]] if column else []) + ["CONDITIONS"]
    if wide:
        header += ["GENERATION", "MESSAGE"]
    table = [header]
    for o in rows:
        row = ([namespace_of(o)] if namespaced else []) + [o["metadata"]["name"]]
        row += [column[1](o)] if column else []
        row.append(conditions(o))
        if wide:
            row += [str(o["metadata"].get("generation", "-")), messages(o)]
        table.append(row)
    return table


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def label(paths: RuntimePaths, args) -> int:
    _require_up(paths)
    if (kube_status := _kubernetes(paths)) is not None:
        from .kube import cli as kube

        return kube.label(kube_status, args)
    resources = _Resources(_operator_call(paths, lambda c: c.resources()))
    rt = resources.resolve(args.kind)
    changes = label_changes(args.labels)
    namespace = args.namespace if rt["namespaced"] else ""
    _operator_call(paths, lambda c: c.set_labels(rt["kind"], namespace, args.name, changes))
    print(f"{rt['singular']}/{args.name} labeled")
    return 0


def label_changes(items: list[str]) -> dict[str, str | None]:
    """kubectl label's arguments: `key=value` sets, `key-` removes (None)."""
    changes: dict[str, str | None] = {}
    for item in items:
        if item.endswith("-") and "=" not in item:
            changes[item[:-1]] = None
        elif "=" in item:
            key, _, value = item.partition("=")
            changes[key] = value
        else:
            raise CliError(f"{item!r} is neither key=value nor key-")
    return changes


# -- exec ----------------------------------------------------------------------------------------------
def execute(paths: RuntimePaths, args) -> int:
    _require_up(paths)
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        raise CliError("give a command after --, e.g. wisp exec -n shop client -- curl http://web")
    pod = find_pod(paths, args.namespace, args.pod)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               HOSTNAME=pod["name"], HOME="/")
    if not shutil.which(command[0], path=env["PATH"]):
        raise CliError(f"command not found: {command[0]}")
    # The command runs as the pod's containers do: its user, no capabilities, its view of the files.
    if not pod.get("sandbox"):
        raise CliError(f"pod {pod['name']} is not started yet; try again in a moment")
    sandbox = Sandbox.from_json(pod["sandbox"])
    return subprocess.call(["ip", "netns", "exec", pod["netns"], *sandbox.wrap(command)], env=env)


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
