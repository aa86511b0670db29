"""`wisp ztunnel-config workloads|services|policies|certificates|connections|all`: what one
ztunnel holds, in the columns of `istioctl ztunnel-config`.

The source is the ztunnel's admin endpoint, `GET /config_dump` (ztunnel/admin.py; localhost only,
port 15000), reached one of three ways:
- a local mesh (`--prefix`, as `wisp get` finds it): from inside the node's network namespace,
  the ztunnel of `--node` (default: the first node);
- `--admin-address HOST:PORT`: directly, e.g. through `kubectl port-forward -n istio-system
  ds/ztunnel 15000` on a real cluster (wisp has no port-forward client of its own, and the test bed
  has no kubelet to forward to: docs/install.md, "ztunnel-config");
- `--file DUMP.json`: a saved dump (`curl localhost:15000/config_dump`).

Columns, as istioctl prints them:
- workloads: NAMESPACE, POD NAME, ADDRESS, NODE, WAYPOINT, PROTOCOL
- services: NAMESPACE, SERVICE NAME, SERVICE VIP, WAYPOINT, ENDPOINTS (healthy/all)
- policies: NAMESPACE, POLICY NAME, ACTION, SCOPE
- certificates: CERTIFICATE NAME, TYPE, STATUS, VALID CERT, SERIAL NUMBER, NOT AFTER, NOT BEFORE
- connections: WORKLOAD, DIRECTION, LOCAL, REMOTE, REMOTE TARGET, PROTOCOL
`-n NS` keeps one namespace's rows (workloads, services, policies, connections), `-A` all (the
default); `-o json|yaml` prints the rows as data with the same fields. The row builders are
pure functions of the dump.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import output

VIEWS = ("workloads", "services", "policies", "certificates", "connections", "all")
ADMIN_PORT = 15000
_MAX_DUMP = 64 << 20


class DumpError(Exception):
    """The dump could not be fetched or is not a ztunnel's; printed as one line."""


def add_commands(sub: Any) -> None:
    parser = sub.add_parser("ztunnel-config", help="what a ztunnel holds: workloads, services, policies, "
                                                   "certificates, connections (istioctl's columns)")
    parser.add_argument("view", choices=VIEWS)
    parser.add_argument("--prefix", default=os.environ.get("WISP_PREFIX", "wisp"),
                        help="the local mesh to read (default wisp)")
    parser.add_argument("--node", help="the node whose ztunnel to read (local mesh; default the first)")
    parser.add_argument("--admin-address", help="read the ztunnel admin endpoint at HOST:PORT instead")
    parser.add_argument("--file", type=Path, help="read a saved /config_dump instead")
    parser.add_argument("-n", "--namespace", help="only this namespace's rows")
    parser.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace's rows (the default)")
    output.add_output_flag(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.namespace and args.all_namespaces:
        print("wisp ztunnel-config: -n and -A exclude each other", file=sys.stderr)
        return 2
    try:
        dump = load(args)
        views = [v for v in VIEWS if v != "all"] if args.view == "all" else [args.view]
        tables = {view: ROWS[view](dump, None if args.all_namespaces else args.namespace) for view in views}
    except DumpError as exc:
        print("wisp ztunnel-config: %s" % exc, file=sys.stderr)
        return 1
    if args.output != "short":
        data: Any = tables if args.view == "all" else tables[args.view]
        output.structured(data, args.output)
        return 0
    print("\n".join(output.table(COLUMNS[view], [list(row.values()) for row in tables[view]]) for view in views),
          end="")
    return 0


# -- fetching --------------------------------------------------------------------------------------


def load(args: argparse.Namespace) -> dict[str, Any]:
    if args.file is not None:
        try:
            text = args.file.read_bytes()
        except OSError as exc:
            raise DumpError("cannot read %s: %s" % (args.file, exc.strerror or exc)) from None
        return parse(text, str(args.file))
    if args.admin_address:
        host, sep, port = args.admin_address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise DumpError("--admin-address %r is not HOST:PORT" % args.admin_address)
        return parse(_fetch(None, (host.strip("[]"), int(port))), args.admin_address)
    return _from_local_mesh(args.prefix, args.node)


def parse(body: bytes, source: str) -> dict[str, Any]:
    try:
        dump = json.loads(body)
    except ValueError:
        raise DumpError("%s did not answer a JSON config dump: %r" % (source, body[:80])) from None
    if not isinstance(dump, dict) or not isinstance(dump.get("workloads"), list):
        raise DumpError("%s is not a ztunnel config dump (no workloads list)" % source)
    return dump


def _from_local_mesh(prefix: str, node: str | None) -> dict[str, Any]:
    from wisp.runpaths import RuntimePaths

    paths = RuntimePaths(prefix)
    try:
        status = json.loads(paths.status.read_text())
    except (OSError, ValueError):
        raise DumpError("no local mesh with prefix %r is running (start one with `wisp up DIR --prefix %s`; "
                        "for a cluster use --admin-address)" % (prefix, prefix)) from None
    nodes = sorted(status.get("nodes") or [], key=lambda n: n["name"])
    chosen = [n for n in nodes if node in (None, n["name"])][:1]
    if not chosen:
        raise DumpError("no node %r in mesh %r (nodes: %s)" % (node, prefix, ", ".join(n["name"] for n in nodes)))
    if os.geteuid() != 0:
        raise DumpError("reading a local mesh's ztunnel enters its node's network namespace: run as root")
    return parse(_fetch(chosen[0]["netns"], ("127.0.0.1", ADMIN_PORT)), "ztunnel on %s" % chosen[0]["name"])


def _fetch(netns: str | None, address: tuple[str, int]) -> bytes:
    """GET /config_dump from `address`, from inside `netns` if given."""
    import socket

    import trio

    async def get() -> bytes:
        with trio.fail_after(15):
            return await read()

    async def read() -> bytes:
        if netns is not None:
            from runtime.probes import open_in_netns

            stream = await open_in_netns(netns, address, timeout=5)
        else:
            stream = await trio.open_tcp_stream(*address)
        async with stream:
            await stream.send_all(b"GET /config_dump HTTP/1.0\r\nHost: localhost\r\n\r\n")
            data = bytearray()
            while chunk := await stream.receive_some(1 << 16):
                data += chunk
                if len(data) > _MAX_DUMP:
                    raise DumpError("the dump from %s:%d is over %d MiB" % (*address, _MAX_DUMP >> 20))
        return bytes(data)

    try:
        raw = trio.run(get)
    except (OSError, socket.gaierror, trio.TooSlowError, trio.BrokenResourceError) as exc:
        raise DumpError("cannot read the ztunnel admin endpoint %s:%d%s: %s"
                        % (*address, " in %s" % netns if netns else "", exc or type(exc).__name__)) from None
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)
    if len(status) < 2 or status[1] != b"200":
        raise DumpError("the ztunnel admin endpoint %s:%d answered %r" % (*address, head[:60]))
    return body


# -- rows ------------------------------------------------------------------------------------------

COLUMNS = {
    "workloads": ("NAMESPACE", "POD NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL"),
    "services": ("NAMESPACE", "SERVICE NAME", "SERVICE VIP", "WAYPOINT", "ENDPOINTS"),
    "policies": ("NAMESPACE", "POLICY NAME", "ACTION", "SCOPE"),
    "certificates": ("CERTIFICATE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE"),
    "connections": ("WORKLOAD", "DIRECTION", "LOCAL", "REMOTE", "REMOTE TARGET", "PROTOCOL"),
}


def _waypoint(entry: dict[str, Any]) -> str:
    waypoint = entry.get("waypoint") or {}
    hostname = waypoint.get("hostname") or ""
    return hostname.split(".", 1)[0] if hostname else "None"


def _pascal(text: str) -> str:
    """ALLOW -> Allow, WORKLOAD_SELECTOR -> WorkloadSelector (istioctl prints the proto enum so)."""
    return "".join(part.capitalize() for part in str(text).replace("-", "_").split("_"))


def _wanted(namespace: str | None, entry_namespace: str) -> bool:
    return namespace is None or entry_namespace == namespace


def workloads(dump: dict[str, Any], namespace: str | None) -> list[dict[str, str]]:
    rows = []
    for w in dump.get("workloads") or []:
        if not _wanted(namespace, w.get("namespace", "")):
            continue
        rows.append({"namespace": w.get("namespace", ""), "pod_name": w.get("name", ""),
                     "address": (w.get("addresses") or [""])[0], "node": w.get("node", ""),
                     "waypoint": _waypoint(w),
                     "protocol": "HBONE" if w.get("tunnel_protocol") == "HBONE" else "TCP"})
    return sorted(rows, key=lambda r: (r["namespace"], r["pod_name"]))


def services(dump: dict[str, Any], namespace: str | None) -> list[dict[str, str]]:
    endpoints: dict[str, list[dict[str, Any]]] = {}
    for w in dump.get("workloads") or []:
        for key in w.get("services") or {}:
            endpoints.setdefault(key, []).append(w)
    rows = []
    for s in dump.get("services") or []:
        if not _wanted(namespace, s.get("namespace", "")):
            continue
        members = endpoints.get("%s/%s" % (s.get("namespace", ""), s.get("hostname", "")), [])
        healthy = sum(1 for w in members if w.get("status", "HEALTHY") == "HEALTHY")
        rows.append({"namespace": s.get("namespace", ""), "service_name": s.get("name", ""),
                     "service_vip": (s.get("addresses") or [""])[0], "waypoint": _waypoint(s),
                     "endpoints": "%d/%d" % (healthy, len(members))})
    return sorted(rows, key=lambda r: (r["namespace"], r["service_name"]))


def policies(dump: dict[str, Any], namespace: str | None) -> list[dict[str, str]]:
    rows = [{"namespace": p.get("namespace", ""), "policy_name": p.get("name", ""),
             "action": _pascal(p.get("action", "")), "scope": _pascal(p.get("scope", ""))}
            for p in dump.get("policies") or [] if _wanted(namespace, p.get("namespace", ""))]
    return sorted(rows, key=lambda r: (r["namespace"], r["policy_name"]))


def _time(text: str | None) -> str:
    if not text:
        return "NA"
    try:
        return datetime.fromisoformat(text).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return text


def _processes(dump: dict[str, Any]) -> list[dict[str, Any]]:
    """The main process's part and each worker's status (the workers hold their own pods)."""
    return [dump, *[w["status"] for w in dump.get("workers") or [] if isinstance(w.get("status"), dict)]]


def certificates(dump: dict[str, Any], namespace: str | None = None) -> list[dict[str, str]]:
    rows, seen = [], set()
    for part in _processes(dump):
        for cert in part.get("certificates") or []:
            key = (cert.get("identity"), cert.get("serial"))
            if key in seen:
                continue
            seen.add(key)
            state = cert.get("state", "pending")
            available = state == "available"
            rows.append({"certificate_name": cert.get("identity", ""), "type": "Leaf" if "serial" in cert else "NA",
                         "status": {"available": "Available", "pending": "Initializing"}.get(state, "Unavailable"),
                         "valid_cert": "true" if available else "false", "serial_number": cert.get("serial", "NA"),
                         "not_after": _time(cert.get("expiration")), "not_before": _time(cert.get("not_before"))})
    return sorted(rows, key=lambda r: (r["certificate_name"], r["serial_number"]))


def connections(dump: dict[str, Any], namespace: str | None) -> list[dict[str, str]]:
    rows = []
    for part in _processes(dump):
        for c in part.get("connection_list") or []:
            workload = c.get("workload", "")
            if namespace is not None and workload.rpartition(".")[2] != namespace:
                continue
            rows.append({"workload": workload, "direction": c.get("direction", ""), "local": c.get("local", ""),
                         "remote": c.get("remote", ""), "remote_target": c.get("remote_target", ""),
                         "protocol": c.get("protocol", "")})
    return sorted(rows, key=lambda r: tuple(r.values()))


ROWS: dict[str, Callable[[dict[str, Any], str | None], list[dict[str, str]]]] = {
    "workloads": workloads, "services": services, "policies": policies, "certificates": certificates,
    "connections": connections,
}
