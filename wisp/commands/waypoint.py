"""`wisp waypoint generate|apply|list|delete|status`: waypoints managed as `istioctl waypoint` does.

A waypoint is a Gateway of class `istio-waypoint` with one listener `mesh` (port 15008, HBONE);
the control plane deploys its proxy and reports `Programmed` on the Gateway. These commands write
and read that Gateway, and the `istio.io/use-waypoint` label of its namespace, on one of two
targets:
- the local mesh (`wisp up`), through its control plane's API; `--prefix` names the mesh
  (default `$WISP_PREFIX` or `wisp`), as for `wisp apply/get/label`;
- a Kubernetes cluster, when `--kubeconfig` or `--context` is given (the kubeconfig found as
  kubectl finds it, through `wisp.commands.kubeapi`): the Gateway is server-side applied with
  field manager `wisp`, as istioctl applies it with `istioctl`.

Output follows istioctl (istio/istio `istioctl/pkg/waypoint/waypoint.go`): its messages
(`✅ waypoint shop/waypoint applied`), its columns laid out as Go's tabwriter lays them (padding
5), its checks (an enrolled namespace is not re-enrolled without `--overwrite`, `none` is not a
name). Where wisp differs, on purpose:
- `list` shows the traffic type a Gateway without `istio.io/waypoint-for` gets (`service`), not
  istioctl's `none`;
- `status` prints once, or with `--wait` once every waypoint is programmed (or the timeout);
- `delete` also removes the namespace's `istio.io/use-waypoint` label when it names the deleted
  waypoint, and warns about Services and Pods that still name it: wisp refuses traffic bound to a
  missing waypoint (it never bypasses L7 policy), so a label left behind would cut traffic off.
Bad arguments are usage errors (exit 2); failures print one line `wisp waypoint <verb>: ...`
(exit 1).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

GATEWAY_API = "gateway.networking.k8s.io/v1"
WAYPOINT_CLASS = "istio-waypoint"
DEFAULT_NAME = "waypoint"
USE_WAYPOINT = "istio.io/use-waypoint"
WAYPOINT_FOR = "istio.io/waypoint-for"
REVISION_LABEL = "istio.io/rev"
DATAPLANE_MODE = "istio.io/dataplane-mode"
TRAFFIC_TYPES = ("all", "none", "service", "workload")
WAIT_TIMEOUT = 90.0
POLL_INTERVAL = 1.0
FIELD_MANAGER = "wisp"  # as wisp.commands.kubeapi's, the field manager of every wisp write
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class WaypointError(Exception):
    """A failure to report as one line; the command exits 1."""


# -- what a target must offer ---------------------------------------------------------------------
class Target(Protocol):
    """Where the Gateways and Namespaces live: the local mesh or a Kubernetes cluster."""

    default_namespace: str

    def namespace(self, name: str) -> dict[str, Any] | None: ...
    def label_namespace(self, name: str, key: str, value: str | None) -> None: ...
    def apply_gateway(self, gateway: dict[str, Any]) -> None: ...
    def gateway(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def gateways(self, namespace: str | None) -> list[dict[str, Any]]: ...
    def delete_gateway(self, namespace: str, name: str) -> bool: ...
    def users(self, namespace: str, waypoint: str) -> list[str]: ...
    def close(self) -> None: ...


# -- the Gateway and the tables (pure) ------------------------------------------------------------
def make_gateway(name: str, namespace: str | None, traffic_type: str | None, revision: str | None) -> dict[str, Any]:
    """The waypoint Gateway istioctl writes; `namespace` None leaves it out (generate without -n)."""
    metadata: dict[str, Any] = {}
    labels = {}
    if traffic_type:
        labels[WAYPOINT_FOR] = traffic_type
    if revision:
        labels[REVISION_LABEL] = revision
    if labels:
        metadata["labels"] = labels
    metadata["name"] = name
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": GATEWAY_API,
        "kind": "Gateway",
        "metadata": metadata,
        "spec": {"gatewayClassName": WAYPOINT_CLASS,
                 "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
    }


def gateway_yaml(gateway: dict[str, Any]) -> str:
    """YAML as istioctl prints it (sigs.k8s.io/yaml: keys sorted, lists not indented)."""
    import yaml

    return yaml.safe_dump(gateway, sort_keys=True, default_flow_style=False, allow_unicode=True)


def tabulate(rows: Sequence[Sequence[str]], padding: int = 5) -> str:
    """Rows as Go's `tabwriter.NewWriter(w, 0, 8, 5, ' ', 0)` writes tab-separated cells: every
    cell but a line's last is padded to its column's widest cell plus `padding`."""
    if not rows:
        return ""
    columns = max(len(r) for r in rows)
    widths = [max((len(r[i]) for r in rows if i < len(r) - 1), default=0) + padding for i in range(columns)]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("".join(cells) + row[-1])
    return "\n".join(lines) + "\n"


def is_waypoint(gateway: dict[str, Any]) -> bool:
    return (gateway.get("spec") or {}).get("gatewayClassName") == WAYPOINT_CLASS


def conditions(gateway: dict[str, Any]) -> list[dict[str, Any]]:
    found = (gateway.get("status") or {}).get("conditions")
    return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []


def condition(gateway: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in conditions(gateway) if c.get("type") == kind), None)


def is_programmed(gateway: dict[str, Any]) -> bool:
    found = condition(gateway, "Programmed")
    return found is not None and found.get("status") == "True"


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    found = (obj.get("metadata") or {}).get("labels")
    return found if isinstance(found, dict) else {}


def _meta(obj: dict[str, Any], field: str) -> str:
    return str((obj.get("metadata") or {}).get(field) or "")


def list_table(gateways: list[dict[str, Any]], all_namespaces: bool) -> list[list[str]]:
    header = ["NAME", "REVISION", "TRAFFIC TYPE", "PROGRAMMED"]
    rows = [(["NAMESPACE"] if all_namespaces else []) + header]
    for gw in _sorted(gateways):
        labels = _labels(gw)
        programmed = condition(gw, "Programmed")
        row = [_meta(gw, "name"), labels.get(REVISION_LABEL) or "default",
               labels.get(WAYPOINT_FOR) or "service", str(programmed.get("status")) if programmed else "False"]
        rows.append(([_meta(gw, "namespace")] if all_namespaces else []) + row)
    return rows


def status_table(gateways: list[dict[str, Any]], all_namespaces: bool) -> list[list[str]]:
    rows = [(["NAMESPACE"] if all_namespaces else []) + ["NAME", "STATUS", "TYPE", "REASON", "MESSAGE"]]
    for gw in _sorted(gateways):
        shown = condition(gw, "Programmed") or (conditions(gw)[-1] if conditions(gw) else {})
        row = [_meta(gw, "name")] + [str(shown.get(k) or "") for k in ("status", "type", "reason", "message")]
        rows.append(([_meta(gw, "namespace")] if all_namespaces else []) + row)
    return rows


def _sorted(gateways: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(gateways, key=lambda g: (_meta(g, "namespace"), _meta(g, "name")))


def parse_duration(text: str) -> float:
    """Seconds from a Go duration as istioctl's flags take it (`90s`, `2m`, `1m30s`, `500ms`) or a
    plain number of seconds."""
    try:
        value = float(text)
    except ValueError:
        parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 90s, 2m, 1m30s)") from None
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
        value = sum(float(n) * scale[u] for n, u in parts)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"the timeout must be positive, got {text!r}")
    return value


# -- the commands ------------------------------------------------------------------------------
@dataclass(slots=True)
class Output:
    out: Callable[[str], None]

    def line(self, text: str) -> None:
        self.out(text + "\n")


def _namespace(args, target: Target) -> str:
    return args.namespace or target.default_namespace


def _checked_name(name: str) -> str:
    if not name:
        return DEFAULT_NAME
    if name == "none":
        raise WaypointError("invalid name provided for waypoint, 'none' is a reserved value")
    if len(name) > 63 or not _DNS_LABEL.match(name):
        raise WaypointError(f"invalid waypoint name {name!r}: a lowercase RFC 1123 label (letters, digits, '-', "
                            "at most 63 characters) is needed, as it names the waypoint's Service")
    return name


def _require_namespace(target: Target, namespace: str) -> dict[str, Any]:
    found = target.namespace(namespace)
    if found is None:
        raise WaypointError(f"namespace: {namespace} not found")
    return found


def generate(args, out: Output) -> int:
    gateway = make_gateway(_checked_name(args.name), args.namespace, args.traffic_type, args.revision)
    out.out(gateway_yaml(gateway))
    return 0


def apply(args, target: Target, out: Output) -> int:
    namespace = _namespace(args, target)
    name = _checked_name(args.name)
    ns = _require_namespace(target, namespace)
    if args.enroll_namespace:
        if not args.overwrite and _labels(ns).get(USE_WAYPOINT):
            out.line(f"⚠️ Warning: namespace ({namespace}) already has an enrolled Waypoint. Consider adding the "
                     "`--overwrite` flag to your apply command.")
            return 0
        if _labels(ns).get(DATAPLANE_MODE) != "ambient":
            out.line("⚠️ Warning: namespace is not enrolled in ambient. Consider running\t"
                     f"`kubectl label namespace {namespace} istio.io/dataplane-mode=ambient`")
    target.apply_gateway(make_gateway(name, namespace, args.traffic_type, args.revision))
    out.line(f"✅ waypoint {namespace}/{name} applied")
    if args.wait:
        deadline = time.monotonic() + args.waypoint_timeout
        while True:
            found = target.gateway(namespace, name)
            if found is not None and is_programmed(found):
                break
            if time.monotonic() > deadline:
                why = _not_programmed_reason(found)
                raise WaypointError(f"timed out while waiting for waypoint\t{namespace}/{name}" + (f": {why}" if why else ""))
            time.sleep(POLL_INTERVAL)
        out.line(f"✅ waypoint {namespace}/{name} is ready!")
    if args.enroll_namespace:
        target.label_namespace(namespace, USE_WAYPOINT, name)
        out.line(f'✅ namespace {namespace} labeled with "{USE_WAYPOINT}: {name}"')
    return 0


def _not_programmed_reason(gateway: dict[str, Any] | None) -> str:
    if gateway is None:
        return "the Gateway is gone"
    found = condition(gateway, "Programmed")
    if found is None:
        return "no Programmed condition yet (is the control plane running?)"
    return ": ".join(str(found.get(k)) for k in ("reason", "message") if found.get(k))


def list_waypoints(args, target: Target, out: Output) -> int:
    gateways = [g for g in target.gateways(None if args.all_namespaces else _namespace(args, target)) if is_waypoint(g)]
    if not gateways:
        out.line("No waypoints found.")
        return 0
    out.out(tabulate(list_table(gateways, args.all_namespaces)))
    return 0


def status(args, target: Target, out: Output) -> int:
    namespace = None if args.all_namespaces else _namespace(args, target)
    gateways = [g for g in target.gateways(namespace) if is_waypoint(g)]
    if not gateways:
        out.line("No waypoints found.")
        return 0
    if args.wait:
        deadline = time.monotonic() + args.waypoint_timeout
        while not all(is_programmed(g) for g in gateways):
            if time.monotonic() > deadline:
                out.out(tabulate(status_table(gateways, args.all_namespaces)))
                late = next(g for g in _sorted(gateways) if not is_programmed(g))
                raise WaypointError("failed to print waypoint status: timed out while retrieving status for waypoint\t"
                                    f"{_meta(late, 'namespace')}/{_meta(late, 'name')}")
            time.sleep(POLL_INTERVAL)
            gateways = [g for g in target.gateways(namespace) if is_waypoint(g)]
    out.out(tabulate(status_table(gateways, args.all_namespaces)))
    return 0


def delete(args, target: Target, out: Output) -> int:
    if args.all and args.names:
        raise WaypointError("cannot specify waypoint names when deleting all waypoints")
    if not args.all and not args.names:
        raise WaypointError("must specify a waypoint name or delete all using --all")
    namespace = _namespace(args, target)
    waypoints = {_meta(g, "name") for g in target.gateways(namespace) if is_waypoint(g)}
    names = sorted(waypoints) if args.all else []
    for name in args.names:
        if name in waypoints:
            names.append(name)
        else:
            out.line(f"waypoint {namespace}/{name} not found")
    deleted = []
    for name in names:
        if target.delete_gateway(namespace, name):
            out.line(f"waypoint {namespace}/{name} deleted")
            deleted.append(name)
        else:
            out.line(f"waypoint {namespace}/{name} not found")
    ns = target.namespace(namespace)
    enrolled = _labels(ns).get(USE_WAYPOINT) if ns is not None else None
    if enrolled in deleted:
        target.label_namespace(namespace, USE_WAYPOINT, None)
        out.line(f'✅ namespace {namespace} no longer labeled with "{USE_WAYPOINT}: {enrolled}"')
    for name in deleted:
        for user in target.users(namespace, name):
            out.line(f'⚠️ Warning: {user} is still labeled "{USE_WAYPOINT}: {name}"; its traffic is refused until the '
                     "label is removed or the waypoint exists again")
    return 0


# -- targets --------------------------------------------------------------------------------------
class LocalMesh:
    """The local mesh's control plane API (runtime), called as `wisp apply/get/label` call it."""

    default_namespace = "default"

    def __init__(self, prefix: str) -> None:
        from runtime import cli as runtime_cli
        from wisp.runpaths import RuntimePaths

        if os.geteuid() != 0:
            raise WaypointError("the local mesh needs root (network namespaces and iptables)")
        self.paths = RuntimePaths(prefix)
        if not runtime_cli.daemon_pid(self.paths):
            raise WaypointError(f"no mesh {prefix!r} is running; start one with `wisp up DIR` "
                                "(or give --kubeconfig for a cluster)")

    def _call(self, fn):
        from runtime.operator_client import OperatorError, call

        try:
            return call(self.paths, fn)
        except OperatorError as exc:
            raise WaypointError(str(exc)) from None
        except FileNotFoundError:
            raise WaypointError(f"no credentials in {self.paths.state}; is the mesh up?") from None

    def _objects(self, kind: str) -> list[dict[str, Any]]:
        listing = self._call(lambda c: c.objects())
        found = []
        for obj in listing["objects"]:
            if obj.get("kind") != kind:
                continue
            ours = listing["conditions"].get(f"{kind}/{_meta(obj, 'namespace')}/{_meta(obj, 'name')}", [])
            if ours:
                mine = {c.get("type") for c in ours}
                kept = [c for c in conditions(obj) if c.get("type") not in mine]
                obj = dict(obj, status=dict(obj.get("status") or {}, conditions=kept + ours))
            found.append(obj)
        return found

    def namespace(self, name: str) -> dict[str, Any] | None:
        return next((n for n in self._objects("Namespace") if _meta(n, "name") == name), None)

    def label_namespace(self, name: str, key: str, value: str | None) -> None:
        self._call(lambda c: c.set_labels("Namespace", "", name, {key: value}))

    def apply_gateway(self, gateway: dict[str, Any]) -> None:
        from runtime.operator_client import OperatorError

        namespace, name = gateway["metadata"]["namespace"], gateway["metadata"]["name"]

        async def call(client):
            try:
                return await client.apply(f"applied/waypoints/{namespace}.{name}.yaml", "wisp waypoint apply", [gateway])
            except OperatorError as exc:
                if exc.status == 422:
                    # The control plane's kubectl-worded refusal, e.g. a namespace it does not know.
                    raise WaypointError(str(exc).replace("\n", "; ")) from None
                raise

        self._call(call)

    def gateway(self, namespace: str, name: str) -> dict[str, Any] | None:
        return next((g for g in self._objects("Gateway")
                     if _meta(g, "namespace") == namespace and _meta(g, "name") == name), None)

    def gateways(self, namespace: str | None) -> list[dict[str, Any]]:
        return [g for g in self._objects("Gateway") if namespace is None or _meta(g, "namespace") == namespace]

    def delete_gateway(self, namespace: str, name: str) -> bool:
        answer = self._call(lambda c: c.delete([{"kind": "Gateway", "namespace": namespace, "name": name}]))
        return bool(answer["results"] and answer["results"][0]["deleted"])

    def users(self, namespace: str, waypoint: str) -> list[str]:
        listing = self._call(lambda c: c.objects())
        return sorted(f"{o['kind'].lower()} {namespace}/{_meta(o, 'name')}" for o in listing["objects"]
                      if o.get("kind") in ("Service", "Pod") and _meta(o, "namespace") == namespace
                      and _labels(o).get(USE_WAYPOINT) == waypoint)

    def close(self) -> None:
        pass


class Cluster:
    """A Kubernetes API server through the commands' shared connection (`wisp.commands.kubeapi`:
    the kubeconfig found as kubectl finds it), on an event loop of its own so the verbs above
    stay plain calls."""

    GATEWAYS = "/apis/gateway.networking.k8s.io/v1"

    def __init__(self, args: argparse.Namespace) -> None:
        import asyncio

        from kubernetes_asyncio import config as k8s_config

        from . import kubeapi

        self._loop = asyncio.new_event_loop()
        try:
            self._kube = self._loop.run_until_complete(kubeapi.connect(args))
        except kubeapi.KubeCommandError as exc:
            self._loop.close()
            raise WaypointError(str(exc)) from None
        self.host = self._kube.host
        self.default_namespace = "default"
        path = kubeapi.kubeconfig_path(args)
        if path is not None:
            try:
                contexts, active = k8s_config.list_kube_config_contexts(str(path))
            except (k8s_config.ConfigException, OSError, ValueError):
                contexts, active = [], None
            chosen = next((c for c in contexts if c.get("name") == args.context), None) if args.context else active
            self.default_namespace = ((chosen or {}).get("context") or {}).get("namespace") or "default"
        else:
            token_namespace = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            if token_namespace.is_file():
                self.default_namespace = token_namespace.read_text().strip() or "default"

    def _request(self, method: str, path: str, **kwargs: Any):
        from .kubeapi import KubeCommandError

        try:
            return self._loop.run_until_complete(self._kube.request(method, path, **kwargs))
        except KubeCommandError as exc:
            raise WaypointError(str(exc)) from None

    def _ok(self, response, what: str) -> dict[str, Any]:
        if not response.ok:
            raise WaypointError(f"{what}: {response.message()}")
        return response.body

    def namespace(self, name: str) -> dict[str, Any] | None:
        response = self._request("GET", f"/api/v1/namespaces/{name}")
        if response.status == 404:
            return None
        return self._ok(response, f"failed to get namespace {name}")

    def label_namespace(self, name: str, key: str, value: str | None) -> None:
        response = self._request("PATCH", f"/api/v1/namespaces/{name}", body={"metadata": {"labels": {key: value}}},
                                 content_type="application/merge-patch+json")
        self._ok(response, f"failed to update namespace {name}")

    def apply_gateway(self, gateway: dict[str, Any]) -> None:
        from .kubeapi import APPLY_PATCH

        namespace, name = gateway["metadata"]["namespace"], gateway["metadata"]["name"]
        response = self._request("PATCH", f"{self.GATEWAYS}/namespaces/{namespace}/gateways/{name}",
                                 query={"fieldManager": FIELD_MANAGER}, body=gateway, content_type=APPLY_PATCH)
        if response.status == 404 and not self._serves_gateways():
            raise WaypointError("missing Kubernetes Gateway CRDs need to be installed before applying a waypoint: "
                                + response.message())
        self._ok(response, f"failed to apply waypoint {namespace}/{name}")

    def _serves_gateways(self) -> bool:
        return self._loop.run_until_complete(self._kube.resource("gateway.networking.k8s.io/v1", "Gateway")) is not None

    def gateway(self, namespace: str, name: str) -> dict[str, Any] | None:
        response = self._request("GET", f"{self.GATEWAYS}/namespaces/{namespace}/gateways/{name}")
        if response.status == 404:
            return None
        return self._ok(response, f"failed to get waypoint {namespace}/{name}")

    def gateways(self, namespace: str | None) -> list[dict[str, Any]]:
        path = f"{self.GATEWAYS}/namespaces/{namespace}/gateways" if namespace else f"{self.GATEWAYS}/gateways"
        response = self._request("GET", path)
        if response.status == 404 and not self._serves_gateways():
            raise WaypointError("the cluster does not serve Gateways (gateway.networking.k8s.io/v1): "
                                "install the Gateway API CRDs first")
        return list(self._ok(response, "failed to list waypoints").get("items") or [])

    def delete_gateway(self, namespace: str, name: str) -> bool:
        response = self._request("DELETE", f"{self.GATEWAYS}/namespaces/{namespace}/gateways/{name}")
        if response.status == 404:
            return False
        self._ok(response, f"failed to delete waypoint {namespace}/{name}")
        return True

    def users(self, namespace: str, waypoint: str) -> list[str]:
        found = []
        for kind, plural in (("service", "services"), ("pod", "pods")):
            response = self._request("GET", f"/api/v1/namespaces/{namespace}/{plural}",
                                     query={"labelSelector": f"{USE_WAYPOINT}={waypoint}"})
            found += [f"{kind} {namespace}/{_meta(o, 'name')}" for o in self._ok(response, f"failed to list {plural}")["items"]]
        return sorted(found)

    def close(self) -> None:
        try:
            self._loop.run_until_complete(self._kube.__aexit__(None, None, None))
        finally:
            self._loop.close()


# -- the command line -------------------------------------------------------------------------------
def _traffic_type(text: str) -> str:
    if text not in TRAFFIC_TYPES:
        raise argparse.ArgumentTypeError(f"invalid traffic type: {text}. Valid options are: [{' '.join(TRAFFIC_TYPES)}]")
    return text


def _namespace_name(text: str) -> str:
    if len(text) > 63 or not _DNS_LABEL.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a namespace name (a lowercase RFC 1123 label)")
    return text


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    # The same options on `waypoint` and on each verb, so they may come before or after the verb;
    # a verb's own default must not overwrite what was given before it, hence SUPPRESS there.
    def default(value):
        return value if top else argparse.SUPPRESS

    parser.add_argument("-n", "--namespace", type=_namespace_name, default=default(None),
                        help="namespace of the waypoint (default: the kubeconfig context's, or default)")
    parser.add_argument("--name", default=default(DEFAULT_NAME), help="name of the waypoint (default waypoint)")
    parser.add_argument("--prefix", default=default(None),
                        help="the local mesh to use (default $WISP_PREFIX or wisp)")
    parser.add_argument("--kubeconfig", type=Path, default=default(None), help="use this cluster instead of the local mesh")
    parser.add_argument("--context", default=default(None), help="the kubeconfig context to use")


def add_commands(sub) -> None:
    waypoint = sub.add_parser("waypoint", help="manage waypoints (per-namespace L7 proxies), as istioctl waypoint",
                              description="Manage waypoint configuration on the local mesh or, with --kubeconfig, "
                                          "a Kubernetes cluster.")
    _common(waypoint, top=True)
    verbs = waypoint.add_subparsers(dest="waypoint_command", required=True, metavar="{generate,apply,list,delete,status}")

    def verb(name: str, help: str, handler) -> argparse.ArgumentParser:
        parser = verbs.add_parser(name, help=help)
        _common(parser, top=False)
        parser.set_defaults(handler=handler)
        return parser

    def timeout(parser: argparse.ArgumentParser, help: str) -> None:
        parser.add_argument("-w", "--wait", action="store_true", help=help)
        parser.add_argument("--waypoint-timeout", type=parse_duration, default=WAIT_TIMEOUT, metavar="DURATION",
                            help="how long --wait waits (default 90s)")

    generate_parser = verb("generate", "print a waypoint Gateway as YAML", _run(generate_command))
    apply_parser = verb("apply", "apply a waypoint (and optionally enroll its namespace)", _run(apply))
    for parser in (generate_parser, apply_parser):
        parser.add_argument("--for", dest="traffic_type", type=_traffic_type, default=None, metavar="TYPE",
                            help="traffic type the waypoint serves: all, none, service, workload (unset: service)")
        parser.add_argument("-r", "--revision", default=None, help="the revision to label the waypoint with")
    apply_parser.add_argument("--enroll-namespace", action="store_true",
                              help=f"label the namespace {USE_WAYPOINT}=NAME once the waypoint is applied")
    apply_parser.add_argument("--overwrite", action="store_true", help="replace the waypoint the namespace already uses")
    timeout(apply_parser, "wait until the waypoint is programmed")
    list_parser = verb("list", "list waypoints", _run(list_waypoints))
    status_parser = verb("status", "show whether waypoints are programmed", _run(status))
    for parser in (list_parser, status_parser):
        parser.add_argument("-A", "--all-namespaces", action="store_true", help="in every namespace")
    timeout(status_parser, "wait until every waypoint is programmed")
    delete_parser = verb("delete", "delete waypoints by name, or --all", _run(delete))
    delete_parser.add_argument("names", nargs="*", metavar="NAME")
    delete_parser.add_argument("--all", action="store_true", help="delete every waypoint in the namespace")


def generate_command(args, target: Target | None, out: Output) -> int:
    return generate(args, out)


def _run(command) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        out = Output(lambda text: (sys.stdout.write(text), sys.stdout.flush()))
        verb = args.waypoint_command
        target: Target | None = None
        try:
            if args.kubeconfig is not None and args.prefix is not None:
                raise WaypointError("give --kubeconfig (a cluster) or --prefix (a local mesh), not both")
            if command is not generate_command:
                if args.kubeconfig is not None or args.context is not None:
                    target = Cluster(args)
                else:
                    target = LocalMesh(args.prefix or os.environ.get("WISP_PREFIX", "wisp"))
            return command(args, target, out)
        except WaypointError as exc:
            print(f"wisp waypoint {verb}: {exc}", file=sys.stderr)
            return 1
        finally:
            if target is not None:
                target.close()

    return handler
