"""`wisp demo`: the example shop on a two-node local mesh, with traffic shown crossing it.

Brings the mesh up with `examples/shop`, sends requests from a pod in the mesh and from one
outside it, shows what the servers saw, what the ztunnels logged (the SPIFFE identities on both
ends), and what travelled between the nodes. Then it gives `shop` a waypoint with `wisp waypoint
apply -n shop --enroll-namespace --wait` and shows a request crossing client ztunnel → waypoint →
server ztunnel: the canary HTTPRoute of `examples/shop/canary.yaml` choosing the version, the
identities each hop logged, the packets at the waypoint and its `reporter="waypoint"` metrics;
`wisp waypoint delete` then sends traffic direct again. Each step is checked; the mesh is taken
down unless told to keep it.

`wisp demo --kubernetes` (`run_kubernetes_demo`) runs the same shop on the test bed's real
control plane (`wisp up --kubernetes`): it installs the mesh and the shop with kubectl, printing
each command so a user can repeat it (`kubectl apply -k deploy/`, the DaemonSets' rollout on every
node, `kubectl apply -f examples/shop`, `kubectl label namespace shop
istio.io/dataplane-mode=ambient`), shows `ambient.istio.io/redirection` on the pods, then makes
the same checks; the waypoint is applied with `wisp waypoint apply --kubeconfig ...` through the
API. What differs between the two meshes (where ztunnel logs and serves metrics, how `wisp`
commands find the mesh) is a `Mesh`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import cli
from wisp.runpaths import RuntimePaths

MARKER = "the-demo-request-text"
MESH_NAMESPACE = "istio-system"
# Longer than the install steps' own --timeout=240s, so kubectl reports a slow rollout itself.
STEP_SECONDS = 300.0


@dataclass(slots=True, frozen=True)
class Mesh:
    """What the checks need to know of the mesh they run on."""

    paths: RuntimePaths
    wisp_target: tuple[str, ...]  # how a `wisp` command names this mesh
    ztunnel_logs: str  # glob under the logs directory
    kubernetes: bool = False

    def ztunnel_address(self, status: dict, node_name: str) -> str:
        """Where node `node_name`'s ztunnel serves metrics: the node's address (local: it runs in the
        node netns), or its pod's (Kubernetes: the DaemonSet's pod on that node)."""
        if not self.kubernetes:
            return next(n["ip"] for n in status["nodes"] if n["name"] == node_name)
        return next((p["ip"] for p in status["pods"] if p["namespace"] == MESH_NAMESPACE
                     and p["name"].startswith("ztunnel-") and p["node"] == node_name), "")


def local_mesh(paths: RuntimePaths) -> Mesh:
    return Mesh(paths, ("--prefix", paths.prefix), "ztunnel-*.log")


def run_demo(directory: Path, prefix: str, keep: bool) -> int:
    args = argparse.Namespace(directory=directory, nodes=2, timeout=180.0, restart_delay=1.0, ztunnel_workers=1,
                              ztunnel_drain_seconds=30.0)
    return _with_mesh(prefix, keep, args, f"wisp up {directory} --nodes 2",
                      lambda paths: _show(local_mesh(paths)),
                      f"try `wisp exec --prefix {prefix} -n shop client -- curl http://frontend.shop/`")


def run_kubernetes_demo(directory: Path, prefix: str, keep: bool) -> int:
    def demo(paths: RuntimePaths) -> int:
        status = cli.read_status(paths)
        mesh = Mesh(paths, ("--kubeconfig", status["kubeconfig"]), f"{MESH_NAMESPACE}_ztunnel-*.log", kubernetes=True)
        if not _install(directory, status):
            print("\nSOME CHECKS FAILED")
            return 1
        return _show(mesh)

    args = argparse.Namespace(directory=None, kubernetes=True, nodes=2, timeout=240.0, restart_delay=1.0)
    return _with_mesh(prefix, keep, args, "wisp up --kubernetes --nodes 2", demo,
                      f"use kubectl as above, `wisp exec --prefix {prefix} -n shop client -- curl http://frontend.shop/`")


def _with_mesh(prefix: str, keep: bool, args: argparse.Namespace, shown: str, demo, hint: str) -> int:
    """`wisp up` as `args` say (shown as `$ shown`), `demo(paths)`, then `wisp down` unless `keep`."""
    paths = RuntimePaths(prefix)
    print(f"$ {shown}\n")
    try:
        cli.up(paths, args)
    except cli.CliError as exc:
        print(f"wisp demo: {exc}", file=sys.stderr)
        cli.down(paths, argparse.Namespace())
        return 1
    try:
        return demo(paths)
    finally:
        if keep:
            print(f"\nthe mesh is still up: {hint}\nand `wisp down --prefix {prefix}` when done")
        else:
            print("\n$ wisp down")
            cli.down(paths, argparse.Namespace())


def install_steps(directory: Path) -> list[list[str]]:
    """The kubectl commands that install the mesh and the shop, in order, as a user types them."""
    rollout = ["--timeout=240s"]
    return [
        ["kubectl", "apply", "-k", "deploy/"],
        ["kubectl", "-n", MESH_NAMESPACE, "rollout", "status", "daemonset/ztunnel", *rollout],
        ["kubectl", "-n", MESH_NAMESPACE, "rollout", "status", "daemonset/wisp-node-agent", *rollout],
        ["kubectl", "-n", MESH_NAMESPACE, "rollout", "status", "deployment/wisp-operator", *rollout],
        ["kubectl", "apply", "-f", str(directory)],
        ["kubectl", "label", "namespace", "shop", "istio.io/dataplane-mode=ambient", "--overwrite"],
        ["kubectl", "-n", "shop", "wait", "--for=condition=Available", "deployment", "--all", "--timeout=240s"],
        ["kubectl", "-n", "shop", "wait", "--for=condition=Ready", "pod", "--all", "--timeout=240s"],
        ["kubectl", "-n", "legacy", "wait", "--for=condition=Ready", "pod", "--all", "--timeout=240s"],
        ["kubectl", "-n", "shop", "get", "pods", "-o", "custom-columns=NAME:.metadata.name,NODE:.spec.nodeName,"
         "IP:.status.podIP,REDIRECTION:.metadata.annotations.ambient\\.istio\\.io/redirection"],
    ]


def _install(directory: Path, status: dict) -> bool:
    """Run each install step with the mesh's kubeconfig and kubectl, showing it; False at the first failure.
    The shop's pods must all show `ambient.istio.io/redirection: enabled` at the end."""
    env = dict(os.environ, KUBECONFIG=status["kubeconfig"],
               PATH=f"{Path(status['kubectl']).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    print("\nInstall the mesh and the shop the way a cluster's user does (KUBECONFIG and PATH as printed above):")
    output = ""
    for step in install_steps(directory):
        print(f"\n$ {' '.join(step)}")
        try:
            done = subprocess.run(step, env=env, capture_output=True, text=True, timeout=STEP_SECONDS)
        except subprocess.TimeoutExpired:
            # kubectl's own --timeout should end it first; a kubectl that hangs anyway fails the demo, not wisp.
            print(f"  (no answer after {STEP_SECONDS:g} s)")
            return False
        output = done.stdout + done.stderr
        for line in output.splitlines():
            print(f"  {line}")
        if done.returncode != 0:
            print(f"  (exit {done.returncode})")
            return False
    rows = [line.split() for line in output.splitlines()[1:] if line.strip()]
    enrolled = bool(rows) and all(row[-1] == "enabled" for row in rows)
    print(f"\n   every shop pod enrolled (ambient.istio.io/redirection: enabled): {'yes' if enrolled else 'NO'}")
    return enrolled


def _show(mesh: Mesh) -> int:
    paths = mesh.paths
    status = cli.read_status(paths)
    pods = {(p["namespace"], p["name"]): p for p in status["pods"]}
    client = pods[("shop", "client")]
    outsider = pods[("legacy", "client")]
    ok = True

    print("\n1. A pod in the mesh calls a service; ztunnels carry it over HBONE (mTLS, port 15008).")
    print(f"   shop/client ({client['ip']}, node {client['node']}) → http://frontend.shop/ three times:")
    seen_nodes = set()
    for _ in range(3):
        body = _curl(client["netns"], "http://frontend.shop/")
        fields = dict(re.findall(r"^(hostname|peer)=(\S+)", body, re.M))
        server = next((p for p in status["pods"] if p["name"] == fields.get("hostname")), None)
        if server:
            seen_nodes.add(server["node"])
        print(f"   → answered by {fields.get('hostname', '?')} on {server['node'] if server else '?'}, "
              f"which saw the caller as {fields.get('peer', '?')}")
        ok &= fields.get("peer", "").startswith(client["ip"] + ":")
    time.sleep(0.5)
    print("\n   What the ztunnels logged for those connections:")
    for entry in _access_log(mesh, client["ip"])[-3:]:
        print(f"   {entry['direction']:<8} {entry.get('src.identity', '-')} → {entry.get('dst.identity', '-')}"
              f"  ({entry.get('dst.workload')}, {entry.get('bytes_sent')}B sent, {entry.get('bytes_recv')}B received)")

    print("\n2. Between the nodes there is only TLS to port 15008; the request text never appears.")
    far = next(p for p in status["pods"] if p["namespace"] == "shop" and p["name"].startswith("checkout")
               and p["node"] != client["node"])
    capture = _capture(paths, f"tcp and host {client['ip']}",
                       lambda: _curl(client["netns"], f"http://{far['ip']}:8080/{MARKER}"))
    peers = re.findall(r"IP (\S+) > (\S+?):", capture["summary"])
    hbone_only = bool(peers) and all(a.endswith(".15008") or b.endswith(".15008") for a, b in peers)
    print(f"   captured {len(peers)} packets on the node-to-node link for shop/client → {far['name']}: "
          f"{'all to or from port 15008' if hbone_only else 'NOT all HBONE'}; "
          f"request text {'absent' if MARKER not in capture['text'] else 'VISIBLE'}")
    ok &= hbone_only and MARKER not in capture["text"]

    print("\n3. A pod outside the mesh still reaches a mesh pod (plaintext, no identity).")
    body = _curl(outsider["netns"], "http://checkout.shop/")
    fields = dict(re.findall(r"^(hostname|peer)=(\S+)", body, re.M))
    print(f"   legacy/client ({outsider['ip']}) → http://checkout.shop/ → {fields.get('hostname', '?')} "
          f"saw {fields.get('peer', '?')}")
    ok &= fields.get("peer", "").startswith(outsider["ip"] + ":")

    print(f"\n4. Telemetry: ztunnel's istio_tcp_* metrics on {client['node']} (reporter=source):")
    metrics = _node_metrics(mesh, status, client["node"])
    for line in metrics.splitlines():
        if line.startswith("istio_tcp_connections_opened_total{") and 'reporter="source"' in line:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            print(f"   opened={line.rsplit(' ', 1)[1]:<5} {labels.get('source_workload')} → "
                  f"{labels.get('destination_workload')} ({labels.get('connection_security_policy')})")
    ok &= _show_waypoint(mesh)
    print("\nall checks passed" if ok else "\nSOME CHECKS FAILED")
    return 0 if ok else 1


def _wisp(mesh: Mesh, *args: str) -> bool:
    """Run a `wisp` command as a user would, showing it and its output; True if it succeeded."""
    shown = args if not mesh.kubernetes else (args[0], *mesh.wisp_target, *args[1:])
    print(f"\n   $ wisp {' '.join(shown)}")
    command = [sys.executable, "-m", "wisp.cli", args[0], *mesh.wisp_target, *args[1:]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=150)
    for line in (done.stdout + done.stderr).splitlines():
        print(f"   {line}")
    return done.returncode == 0


def _show_waypoint(mesh: Mesh) -> bool:
    paths = mesh.paths
    print("\n5. An L7 waypoint for shop: one command deploys it and enrols the namespace.")
    ok = _wisp(mesh, "waypoint", "apply", "-n", "shop", "--enroll-namespace", "--wait", "--waypoint-timeout", "90s")
    if not ok:
        return False
    status = cli.read_status(paths)
    client = next(p for p in status["pods"] if (p["namespace"], p["name"]) == ("shop", "client"))
    waypoint = next((p for p in status["pods"] if p["namespace"] == "shop" and p["name"].startswith("waypoint-")), None)
    if waypoint is None:
        print("   no waypoint pod is running in shop")
        return False
    print(f"   the waypoint runs as pod {waypoint['name']} ({waypoint['ip']}, node {waypoint['node']})")

    print("\n6. shop/client → http://checkout.shop/ now crosses client ztunnel → waypoint → server ztunnel,")
    print("   and the waypoint applies the canary HTTPRoute (examples/shop/canary.yaml):")
    checkout_ips = {p["ip"] for p in status["pods"] if p["namespace"] == "shop" and p["name"].startswith("checkout-")}
    # Pod to pod only: the waypoint's own stream to the control plane (15012) goes to the node
    # network, and the runtime probes it on 15021.
    capture = _capture_in(waypoint["netns"], "eth0", "tcp and src net 10.244.0.0/16 and dst net 10.244.0.0/16 "
                          "and not port 15020 and not port 15021",
                          lambda: _curl(client["netns"], f"http://checkout.shop/{MARKER}"))
    header = _response(client["netns"], "http://checkout.shop/", "-H", "x-canary: true")
    split = [_response(client["netns"], "http://checkout.shop/") for _ in range(20)]
    versions = Counter(_version(body) for _, body in split)
    print(f"   with x-canary: true → {_hostname(header[1])} (x-route: {header[0].get('x-route', '-')})")
    print(f"   20 requests without it → v1 {versions['v1']}, v2 {versions['v2']} "
          f"(x-route: {', '.join(sorted({h.get('x-route', '-') for h, _ in split}))}; the route splits 90/10)")
    ok &= _version(header[1]) == "v2" and header[0].get("x-route") == "canary-header"
    ok &= all(h.get("x-route") == "canary-split" for h, _ in split) and versions["v1"] + versions["v2"] == 20
    fields = dict(re.findall(r"^(peer|header x-forwarded-for)=(\S+)", split[0][1], re.M))
    print(f"   the server saw the waypoint as its peer ({fields.get('peer', '?')}) "
          f"and the client in x-forwarded-for ({fields.get('header x-forwarded-for', '?')})")
    ok &= fields.get("peer", "").startswith(waypoint["ip"] + ":") and fields.get("header x-forwarded-for") == client["ip"]

    time.sleep(0.5)
    print("\n   What each hop logged for one request (the SPIFFE identities on every hop):")
    request = next((e for e in reversed(_log_entries(paths, "shop_waypoint-*.log", "request complete"))
                    if e.get("src.identity", "").endswith("/sa/client") and e.get("path", "").startswith("/")), None)
    outbound = next((e for e in reversed(_log_entries(paths, mesh.ztunnel_logs, "connection complete"))
                     if e.get("direction") == "outbound" and e.get("src.addr", "").startswith(client["ip"] + ":")), None)
    # The server's ztunnel logs a connection when it closes, and the waypoint keeps its upstream
    # connections pooled: the server side's identities come from its metrics (reporter=destination).
    upstream_ip = (request or {}).get("upstream", "").rsplit(":", 1)[0]
    server = next((p for p in status["pods"] if p["ip"] == upstream_ip), None)
    inbound = None
    if server is not None:
        for line in _node_metrics(mesh, status, server["node"]).splitlines():
            if line.startswith("istio_tcp_connections_opened_total{") and 'reporter="destination"' in line:
                labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
                if labels.get("source_workload") == "waypoint" and labels.get("destination_workload", "").startswith("checkout"):
                    inbound = labels
    if outbound:
        print(f"   client ztunnel  outbound {outbound.get('src.identity')} → {outbound.get('dst.identity')}")
    if request:
        print(f"   waypoint        {request.get('method')} {request.get('path')} {request.get('status')} "
              f"from {request.get('src.identity')} via {request.get('route', '-')} → {request.get('dst.service')} "
              f"({request.get('upstream')}, {request.get('dst.identity')})")
    if inbound:
        print(f"   server ztunnel  inbound  {inbound.get('source_principal')} → {inbound.get('destination_principal')}"
              f"  (its metrics, reporter=destination)")
    ok &= bool(outbound and outbound.get("dst.identity", "").endswith("/sa/waypoint"))
    ok &= bool(request and request.get("src.identity", "").endswith("/sa/client"))
    ok &= bool(inbound and inbound.get("source_principal", "").endswith("/sa/waypoint"))

    peers = re.findall(r"IP (\S+) > (\S+?):", capture["summary"])
    hosts = {a.rsplit(".", 1)[0] for a, _ in peers} | {b.rsplit(".", 1)[0] for _, b in peers}
    hbone_only = bool(peers) and all(a.endswith(".15008") or b.endswith(".15008") for a, b in peers)
    both_hops = client["ip"] in hosts and bool(hosts & checkout_ips)
    print(f"\n   captured {len(peers)} packets at the waypoint for one request: "
          f"{'in from the client, out to a checkout pod' if both_hops else 'NOT both hops'}, "
          f"{'all to or from port 15008' if hbone_only else 'NOT all HBONE'}; "
          f"request text {'absent' if MARKER not in capture['text'] else 'VISIBLE'}")
    for a, b in [(a, b) for a, b in peers if not (a.endswith(".15008") or b.endswith(".15008"))][:3]:
        print(f"   not HBONE: {a} > {b}")
    ok &= hbone_only and both_hops and MARKER not in capture["text"]

    metrics = _node_metrics(mesh, status, waypoint["node"], waypoint["ip"])
    print("\n   The waypoint's istio_requests_total (reporter=waypoint):")
    counted = 0.0
    for line in metrics.splitlines():
        if line.startswith("istio_requests_total{") and 'reporter="waypoint"' in line:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            value = float(line.rsplit(" ", 1)[1])
            counted += value
            print(f"   {value:>5g}  {labels.get('source_workload')} → {labels.get('destination_service_name')} "
                  f"{labels.get('response_code')} ({labels.get('connection_security_policy')})")
    ok &= counted >= 22

    print("\n7. Deleting the waypoint sends shop's traffic direct again.")
    ok &= _wisp(mesh, "waypoint", "delete", "-n", "shop", "waypoint")
    direct = False
    deadline = time.monotonic() + 20
    while not direct and time.monotonic() < deadline:
        body = _curl(client["netns"], "http://checkout.shop/")
        direct = bool(re.search(rf"^peer={re.escape(client['ip'])}:", body, re.M))
        if not direct:
            time.sleep(0.5)
    peer = re.search(r"^peer=(\S+)", body, re.M)
    print(f"   shop/client → http://checkout.shop/ → {_hostname(body)}, which saw {peer.group(1) if peer else '?'} "
          f"({'the client itself: direct' if direct else 'NOT the client'})")
    return ok and direct


def _node_metrics(mesh: Mesh, status: dict, node_name: str, ip: str | None = None) -> str:
    """The metrics on port 15020 of `ip` (default: the node's ztunnel), fetched from the node."""
    node = next(n for n in status["nodes"] if n["name"] == node_name)
    return subprocess.run(["ip", "netns", "exec", node["netns"], "curl", "-s", "-m", "5",
                           f"http://{ip or mesh.ztunnel_address(status, node_name)}:15020/metrics"],
                          capture_output=True, text=True).stdout


def _response(netns: str, url: str, *extra: str) -> tuple[dict[str, str], str]:
    """(response headers with lower-case names, body) of one request made inside `netns`."""
    out = subprocess.run(["ip", "netns", "exec", netns, "curl", "-s", "-m", "5", "-D", "-", *extra, url],
                         capture_output=True, text=True).stdout
    head, _, body = out.partition("\n\n")
    headers = {k.lower(): v.strip() for k, v in re.findall(r"^([\w-]+):\s*(.*)$", head, re.M)}
    return headers, body


def _hostname(body: str) -> str:
    found = re.search(r"^hostname=(\S+)", body, re.M)
    return found.group(1) if found else "?"


def _version(body: str) -> str:
    found = re.search(r"^hostname=checkout-(v\d)-", body, re.M)
    return found.group(1) if found else "?"


def _log_entries(paths: RuntimePaths, pattern: str, event: str) -> list[dict]:
    entries = []
    for log in sorted(paths.logs.glob(pattern)):
        for line in log.read_text(errors="replace").splitlines():
            if f'"{event}"' not in line:
                continue
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    return sorted(entries, key=lambda e: e.get("timestamp", ""))


def _curl(netns: str, url: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "curl", "-s", "-m", "5", url],
                          capture_output=True, text=True).stdout


def _access_log(mesh: Mesh, client_ip: str) -> list[dict]:
    return [e for e in _log_entries(mesh.paths, mesh.ztunnel_logs, "connection complete")
            if e.get("src.addr", "").startswith(client_ip + ":")]


def _capture(paths: RuntimePaths, bpf: str, action) -> dict[str, str]:
    return _capture_in(f"{paths.prefix}-net", "br0", bpf, action)


def _capture_in(netns: str, interface: str, bpf: str, action) -> dict[str, str]:
    with tempfile.TemporaryDirectory(prefix="wisp-demo-") as directory:
        pcap = Path(directory) / "c.pcap"
        process = subprocess.Popen(["ip", "netns", "exec", netns, "tcpdump", "-Z", "root",
                                    "--immediate-mode", "-i", interface, "-U", "-w", str(pcap), bpf],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.8)
        action()
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        process.wait(5)
        read = lambda *flags: subprocess.run(["tcpdump", "-nn", *flags, "-r", str(pcap)],  # noqa: E731
                                             capture_output=True, text=True).stdout
        return {"summary": read(), "text": read("-A")}
