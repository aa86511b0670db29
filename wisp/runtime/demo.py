"""`wisp demo`: the example shop on a two-node local mesh, with traffic shown crossing it.

Brings the mesh up with `examples/shop`, sends requests from a pod in the mesh and from one
outside it, shows what the servers saw, what the ztunnels logged (the SPIFFE identities on both
ends), and what travelled between the nodes; then takes the mesh down unless told to keep it.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import cli
from .paths import RuntimePaths

MARKER = "the-demo-request-text"


def run_demo(directory: Path, prefix: str, keep: bool) -> int:
    paths = RuntimePaths(prefix)
    args = argparse.Namespace(directory=directory, nodes=2, timeout=180.0, restart_delay=1.0, ztunnel_workers=1)
    print(f"$ wisp up {directory} --nodes 2\n")
    try:
        cli.up(paths, args)
    except cli.CliError as exc:
        print(f"wisp demo: {exc}", file=sys.stderr)
        cli.down(paths, argparse.Namespace())
        return 1
    try:
        return _show(paths)
    finally:
        if keep:
            print(f"\nthe mesh is still up: try `wisp exec --prefix {prefix} -n shop client -- curl http://frontend.shop/`"
                  f"\nand `wisp down --prefix {prefix}` when done")
        else:
            print("\n$ wisp down")
            cli.down(paths, argparse.Namespace())


def _show(paths: RuntimePaths) -> int:
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
    for entry in _access_log(paths, client["ip"])[-3:]:
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

    print("\n4. Telemetry: ztunnel's istio_tcp_* metrics on node1 (reporter=source):")
    node1 = next(n for n in status["nodes"] if n["name"] == "node1")
    metrics = subprocess.run(["ip", "netns", "exec", node1["netns"], "curl", "-s", "-m", "5",
                              f"http://{node1['ip']}:15020/metrics"], capture_output=True, text=True).stdout
    for line in metrics.splitlines():
        if line.startswith("istio_tcp_connections_opened_total{") and 'reporter="source"' in line:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            print(f"   opened={line.rsplit(' ', 1)[1]:<5} {labels.get('source_workload')} → "
                  f"{labels.get('destination_workload')} ({labels.get('connection_security_policy')})")
    print("\nall checks passed" if ok else "\nSOME CHECKS FAILED")
    return 0 if ok else 1


def _curl(netns: str, url: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "curl", "-s", "-m", "5", url],
                          capture_output=True, text=True).stdout


def _access_log(paths: RuntimePaths, client_ip: str) -> list[dict]:
    entries = []
    for log in sorted(paths.logs.glob("ztunnel-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if '"connection complete"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("src.addr", "").startswith(client_ip + ":"):
                entries.append(entry)
    return sorted(entries, key=lambda e: e.get("timestamp", ""))


def _capture(paths: RuntimePaths, bpf: str, action) -> dict[str, str]:
    with tempfile.TemporaryDirectory(prefix="wisp-demo-") as directory:
        pcap = Path(directory) / "c.pcap"
        process = subprocess.Popen(["ip", "netns", "exec", f"{paths.prefix}-net", "tcpdump", "-Z", "root",
                                    "--immediate-mode", "-i", "br0", "-U", "-w", str(pcap), bpf],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.8)
        action()
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        process.wait(5)
        read = lambda *flags: subprocess.run(["tcpdump", "-nn", *flags, "-r", str(pcap)],  # noqa: E731
                                             capture_output=True, text=True).stdout
        return {"summary": read(), "text": read("-A")}
