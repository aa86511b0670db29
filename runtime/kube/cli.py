"""The `wisp` verbs on a Kubernetes-backed mesh (`wisp up --kubernetes`): up, kubeconfig, get,
label, apply/delete, the parts of down that differ from the local mesh's.

runtime/cli.py dispatches here when the mesh's `status.json` says `"kubernetes": true` (or `up`
is given `--kubernetes`). The cluster is the API: `get pods` lists them from the API server with
their node, IP, readiness and `ambient.istio.io/redirection` annotation; `label` patches the
object's labels through the API; other kinds of `get`, and `apply`/`delete`, run the test bed's
kubectl (the user's own interface) with the mesh's kubeconfig, so their output is kubectl's.
`exec` needs nothing here: it reads the pods' netns and sandbox from `status.json`, whichever
daemon wrote it.

Errors are `CliError` (runtime/cli.py, which imports this module only inside its handlers): one
line, exit status 1.
"""

from __future__ import annotations

import os
import shlex
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio
import yaml

from runtime.cli import CliError, label_changes, pick_named
from wisp.runpaths import RuntimePaths

from .api import ApiError, KubeApi

# Where `wisp label` patches, by the names kubectl accepts for the kinds people label.
LABELLED_KINDS: dict[str, tuple[str, str, bool]] = {}
for _names, _base, _plural, _namespaced in (
    (("ns", "namespace", "namespaces"), "/api/v1", "namespaces", False),
    (("po", "pod", "pods"), "/api/v1", "pods", True),
    (("svc", "service", "services"), "/api/v1", "services", True),
    (("sa", "serviceaccount", "serviceaccounts"), "/api/v1", "serviceaccounts", True),
    (("deploy", "deployment", "deployments"), "/apis/apps/v1", "deployments", True),
    (("ds", "daemonset", "daemonsets"), "/apis/apps/v1", "daemonsets", True),
):
    for _name in _names:
        LABELLED_KINDS[_name] = (_base, _plural, _namespaced)

REDIRECTION = "ambient.istio.io/redirection"


def api_from_kubeconfig(path: Path) -> KubeApi:
    """A KubeApi for the current context of a kubeconfig with file references (as the test bed writes)."""
    try:
        config = yaml.safe_load(path.read_text()) or {}
        context_name = config["current-context"]
        context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        tls = ssl.create_default_context(cafile=cluster["certificate-authority"])
        tls.load_cert_chain(user["client-certificate"], user["client-key"])
    except (OSError, ValueError, KeyError, StopIteration, TypeError, ssl.SSLError, yaml.YAMLError) as exc:
        raise CliError(f"cannot use the kubeconfig {path}: {exc}") from None
    return KubeApi(cluster["server"], tls)


def _call(status: dict[str, Any], fn):
    async def call():
        api = api_from_kubeconfig(Path(status["kubeconfig"]))
        try:
            return await fn(api)
        finally:
            await api.aclose()

    return trio.run(call)


def kubectl(status: dict[str, Any], *args: str) -> int:
    """Run the test bed's kubectl against the mesh's cluster, its output straight to the user's terminal."""
    try:
        return subprocess.call([status["kubectl"], "--kubeconfig", status["kubeconfig"], *args])
    except OSError as exc:  # the test bed's cache was removed under a running mesh
        raise CliError(f"cannot run the test bed's kubectl {status['kubectl']}: {exc.strerror}; "
                       "rebuild it with `./run testbed build`") from None


def exports(status: dict[str, Any]) -> list[str]:
    return [f"export KUBECONFIG={shlex.quote(status['kubeconfig'])}",
            f"export PATH={shlex.quote(str(Path(status['kubectl']).parent))}:\"$PATH\""]


def print_ready(status: dict[str, Any]) -> None:
    print(f"mesh {status['prefix']!r} is ready: a Kubernetes control plane ({status['server']}) "
          f"with {len(status['nodes'])} node(s)")
    for node in status["nodes"]:
        print(f"  node {node['name']:<8} netns {node['netns']:<20} {node['ip']:<14} pods {node['pod_network']}")
    print("use the cluster with its kubectl (the test bed's build):")
    for line in exports(status):
        print(f"  {line}")
    print("next: kubectl get nodes | kubectl apply -k deploy/ | wisp get pods -A | wisp down"
          + (f" --prefix {status['prefix']}" if status["prefix"] != "wisp" else ""))


def wait_ready(paths: RuntimePaths, process: subprocess.Popen, timeout: float, read_status, stop) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = read_status(paths)
        phase = status.get("phase")
        if phase == "ready":
            return status
        if phase == "failed" or process.poll() is not None:
            detail = status.get("error") or f"the daemon exited with {process.poll()}"
            stop(paths, process.pid)
            raise CliError(f"the mesh did not start: {detail}\n  logs: {paths.logs}")
        if time.monotonic() > deadline:
            stop(paths, process.pid)
            raise CliError(f"the mesh was not ready after {timeout:g} s\n  logs: {paths.logs}")
        time.sleep(0.25)


def spawn_daemon(paths: RuntimePaths, nodes: int, restart_delay: float) -> subprocess.Popen:
    paths.logs.mkdir(parents=True, exist_ok=True)
    with open(paths.logs / "daemon.log", "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "runtime.kube.daemon", "--prefix", paths.prefix, "--nodes", str(nodes),
             "--restart-delay", str(restart_delay)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    paths.pidfile.write_text(str(process.pid))
    return process


# -- get ----------------------------------------------------------------------------------------------------
def pod_status_text(pod: dict[str, Any]) -> str:
    """The STATUS column as kubectl words it: Terminating, a container's waiting reason, else the phase."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating"
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            return str(waiting["reason"])
    return str(status.get("phase") or "Pending")


def pod_rows(pods: list[dict[str, Any]]) -> list[list[str]]:
    table = [["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "NODE", "IP", "REDIRECTION"]]
    for pod in sorted(pods, key=lambda p: (p["metadata"].get("namespace", ""), p["metadata"]["name"])):
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        containers = status.get("containerStatuses") or []
        ready = sum(1 for c in containers if c.get("ready"))
        restarts = sum(int(c.get("restartCount") or 0) for c in containers)
        table.append([meta.get("namespace", ""), meta["name"], f"{ready}/{len(spec.get('containers') or [])}",
                      pod_status_text(pod), str(restarts), spec.get("nodeName") or "<none>",
                      status.get("podIP") or "<none>", (meta.get("annotations") or {}).get(REDIRECTION, "-")])
    return table


def get(status: dict[str, Any], args, print_table) -> int:
    if args.kind not in ("po", "pod", "pods") or args.output not in ("table", "wide"):
        where = ["-A"] if args.all_namespaces else ["-n", args.namespace or "default"]
        output = [] if args.output == "table" else ["-o", args.output]
        return kubectl(status, "get", args.kind, *args.names, *where, *output)
    namespace = None if args.all_namespaces else (args.namespace or "default")
    path = "/api/v1/pods" if namespace is None else f"/api/v1/namespaces/{namespace}/pods"
    try:
        pods, _ = _call(status, lambda api: api.list(path))
    except ApiError as exc:
        raise CliError(str(exc)) from None
    pods, code = pick_named(pods, args.names, "pods")
    if not pods:
        if not args.names:
            print(f"No resources found{f' in {namespace} namespace' if namespace else ''}.", file=sys.stderr)
        return code
    rows = pod_rows(pods)
    if namespace is not None:
        rows = [row[1:] for row in rows]
    print_table(rows)
    return code


# -- label --------------------------------------------------------------------------------------------------
def label(status: dict[str, Any], args) -> int:
    target = LABELLED_KINDS.get(args.kind.lower())
    if target is None:
        return kubectl(status, "label", "--overwrite", args.kind, args.name, *args.labels, "-n", args.namespace)
    base, plural, namespaced = target
    changes = label_changes(args.labels)
    path = f"{base}/namespaces/{args.namespace}/{plural}/{args.name}" if namespaced else f"{base}/{plural}/{args.name}"
    try:
        _call(status, lambda api: api.patch(path, {"metadata": {"labels": changes}}))
    except ApiError as exc:
        if exc.status == 404:
            raise CliError(f'{plural} "{args.name}" not found') from None
        raise CliError(str(exc)) from None
    singular = plural[:-1] if plural.endswith("s") else plural
    print(f"{singular}/{args.name} labeled")
    return 0


def apply_or_delete(status: dict[str, Any], args) -> int:
    return kubectl(status, args.command, "-f", str(args.filename))


def kubeconfig_of(status: dict[str, Any], prefix: str) -> str:
    if not status.get("kubernetes") or not status.get("kubeconfig"):
        raise CliError(f"mesh {prefix!r} is not a Kubernetes-backed mesh; start one with `wisp up --kubernetes`")
    if not os.path.exists(status["kubeconfig"]):
        raise CliError(f"the kubeconfig {status['kubeconfig']} is gone; is mesh {prefix!r} still up?")
    return str(status["kubeconfig"])
