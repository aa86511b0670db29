"""Zero-drop ztunnel restart: `wisp rollout restart ztunnel` under 100 long-lived connections.

A mesh of its own (two nodes, two ztunnel worker processes each, a 60 s drain deadline): a
client pod on node1 holds 100 connections to an echo server on node2 through both nodes'
ztunnels — 10 streaming bulk data, 90 idle with a ping every 0.5 s, every byte checked — while it
opens new connections one after another. Both ztunnels are replaced, node1's then node2's.
Then: no long-lived connection saw a reset or any error, no new connection failed, and each old
ztunnel stayed up while its connections lived and exited once they were closed, long before its
drain deadline (docs/architecture.md, "Zero-drop ztunnel restart"; docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import BIN, Mesh, leftovers, run

ROOT = Path(__file__).resolve().parents[2]
DRAIN_SECONDS = float(os.environ.get("WISP_TEST_ROLLOUT_DRAIN", "60"))
MANIFEST = """
apiVersion: v1
kind: Namespace
metadata: {name: ambient, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: ambient, labels: {app: client}}
spec:
  serviceAccountName: client
  nodeName: node1
  containers: [{name: sleep, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: ambient, labels: {app: server}}
spec:
  serviceAccountName: server
  nodeName: node2
  containers:
    - name: echo
      command: [wisp-echo, --http, "8080", --tcp, "9000"]
      readinessProbe: {tcpSocket: {port: 8080}}
"""


@pytest.fixture(scope="module")
def rollout_mesh():
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests build network namespaces and need root (CI runs them as root)")
    prefix = f"wisp-t{secrets.token_hex(2)}"
    directory = Path(tempfile.mkdtemp(prefix="wisp-e2e-rollout-"))
    (directory / "mesh.yaml").write_text(MANIFEST)
    up = run([str(BIN / "wisp"), "up", "--prefix", prefix, "--nodes", "2", "--ztunnel-workers", "2",
              "--ztunnel-drain-seconds", f"{DRAIN_SECONDS:g}", str(directory)], timeout=240)
    try:
        assert up.returncode == 0, f"wisp up failed:\n{up.stdout}\n{up.stderr}"
        yield Mesh(prefix)
    finally:
        down = run([str(BIN / "wisp"), "down", "--prefix", prefix], timeout=120)
        assert down.returncode == 0, down.stderr
        assert leftovers(prefix) == [], f"wisp down left behind: {leftovers(prefix)}"
        for path in directory.iterdir():
            path.unlink()
        directory.rmdir()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def ztunnel_pids(mesh: Mesh, node: str) -> list[int]:
    """The node's ztunnel: its main process and its workers (the main process's children)."""
    main = mesh.component(f"ztunnel-{node}")["pid"]
    # Workers are started from trio's worker threads: each thread lists its own children.
    children = {int(pid) for task in Path(f"/proc/{main}/task").iterdir()
                for pid in (task / "children").read_text().split()}
    return [main, *sorted(children)]


def connections_by_pid(mesh: Mesh, node: str) -> dict[int, int]:
    """Connections each process of the node's ztunnel (main process and workers) holds, from its /config_dump."""
    result = mesh.in_node(node, "curl", "-s", "-m", "5", "http://127.0.0.1:15000/config_dump")
    dump = json.loads(result.stdout)
    held = {dump["pid"]: dump["connections"]}
    for worker in dump.get("workers", []):
        status = worker["status"] or {}
        if "pid" in status:
            held[status["pid"]] = status.get("connections", 0)
    return held


def live_connections(mesh: Mesh, node: str) -> int:
    return sum(connections_by_pid(mesh, node).values())


def test_rollout_restart_of_every_ztunnel_drops_no_connection(rollout_mesh):
    mesh = rollout_mesh
    server_ip = mesh.pod("ambient", "server")["ip"]
    load = subprocess.Popen(
        ["ip", "netns", "exec", mesh.pod("ambient", "client")["netns"],
         sys.executable, "-m", "tests.support.long_lived", server_ip, "9000", "--bulk", "10", "--idle", "90"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert load.stdout.readline().strip() == "ready", load.stderr.read()
        # Through the mesh: both ztunnels carry the 100 (and the new ones passing by).
        # "ready" means 100 TCP handshakes, which the kernel answers before ztunnel takes them.
        for node in ("node1", "node2"):
            mesh.wait_for(lambda node=node: live_connections(mesh, node) >= 100, timeout=30,
                          what=f"{node}'s ztunnel carrying the 100 connections")
        old = {node: ztunnel_pids(mesh, node) for node in ("node1", "node2")}
        assert all(len(pids) == 2 for pids in old.values()), old  # main process and one worker
        time.sleep(2)
        # Which old processes carry the connections: node1's split the client's 100 between them
        # (SO_REUSEPORT), but node2's receive them as streams of a few pooled HBONE connections,
        # which may all have landed on one process. One with nothing to drain exits at once.
        held = {pid: count for node in old for pid, count in connections_by_pid(mesh, node).items()}
        assert set(held) == {pid for pids in old.values() for pid in pids}, (held, old)

        rollout = mesh.wisp("rollout", "restart", "ztunnel", timeout=240)
        assert rollout.returncode == 0, rollout.stdout + rollout.stderr
        status = mesh.status()
        (record,) = status["rollouts"].values()
        assert [step["node"] for step in record["nodes"]] == ["node1", "node2"]
        for step in record["nodes"]:
            node = step["node"]
            assert step["old_pid"] == old[node][0] and step["new_pid"] == mesh.component(f"ztunnel-{node}")["pid"]
            assert set(ztunnel_pids(mesh, node)).isdisjoint(old[node])
        # The old ztunnels drain: still up, serving the 100, while new connections go to the new ones.
        time.sleep(3)
        exited_early = {pid: held[pid] for pids in old.values() for pid in pids if not alive(pid)}

        load.stdin.write("stop\n")
        load.stdin.flush()
        out, err = load.communicate(timeout=60)
        closed_at = time.monotonic()
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    results = json.loads(out.strip().splitlines()[-1])
    connections = results["connections"]
    failed = [c for c in connections if c["error"]]
    assert len(connections) == 100
    resets = sum(c["error"] == "reset" for c in connections)
    assert failed == [], f"{len(failed)} long-lived connections failed, {resets} by a reset: {failed[:5]}"
    assert all(c["sent"] == c["received"] > 0 for c in connections)
    new = results["new"]
    assert new["failed"] == 0, f"{new['failed']} new connections failed: {new['errors']}"
    assert new["ok"] > 100
    # An old process that held connections stays until they close (an idle one may go at once).
    assert all(count == 0 for count in exited_early.values()), \
        f"old ztunnel processes exited with live connections (pid: connections held): {exited_early}"
    print("old ztunnel processes with nothing to drain, gone within 3 s:", exited_early)

    # Their connections closed, the old ztunnels exit: well before the drain deadline.
    deadline = closed_at + min(15.0, DRAIN_SECONDS / 2)
    while any(alive(pid) for pids in old.values() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pids in old.values() for pid in pids), "old ztunnels still running"
    finished = mesh.wait_for(lambda: all(s["state"] == "done" for s in next(iter(mesh.status()["rollouts"].values()))["nodes"])
                             and next(iter(mesh.status()["rollouts"].values())), timeout=10, what="old ztunnels reported gone")
    for step in finished["nodes"]:
        assert step["old_exit"] == 0 and step["drain_seconds"] < DRAIN_SECONDS, step
    print(json.dumps({"long_lived": len(connections), "resets": resets,
                      "errors": len(failed), "bytes": sum(c["received"] for c in connections),
                      "new_ok": new["ok"], "new_failed": new["failed"], "new_slowest_s": round(new["slowest"], 3),
                      "steps": finished["nodes"]}))
