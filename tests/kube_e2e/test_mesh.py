"""The whole mesh on a real Kubernetes API, driven as a user drives it: `wisp up --kubernetes`, kubectl.

One mesh for the module (issue 14, "Must show"): the test bed's control plane with two
network-namespace nodes whose kubelets are wisp's runtime; the mesh installed with `kubectl apply
-k deploy/` (the operator Deployment, the ztunnel and node-agent DaemonSets, placed by the real
controllers and scheduler), `kubectl apply -f examples/shop`, `kubectl label namespace shop
istio.io/dataplane-mode=ambient`; then a request from the client pod on node1 to a frontend pod
on node2 crosses both ztunnels over HBONE. The tests after it restart ztunnel and the node agent
the Kubernetes way, take a node's ztunnel away and bring it back, put a waypoint in front of
checkout with `wisp waypoint apply` through the API, and delete a pod with kubectl. `wisp down`
at the end must leave no namespace, run directory, cgroup, control-plane directory or process.

Timings (start to first meshed request, each step) are printed with `-s`, and the module's
duration is in pytest's `--durations` report (docs/kubernetes.md quotes them).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runtime import cgroups
from runtime.topology import list_netns
from tests.support.procs import processes_in, processes_in_netns
from tests.support.capture import capture
from tests.support.wait import wait_for
from wisp.runpaths import RuntimePaths, pod_netns_name

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = "180s"


def run(args: list[str], *, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input)


@dataclass
class KubeMesh:
    prefix: str
    kubeconfig: str = ""
    kubectl_path: str = ""
    testbed_dir: str = ""
    steps: dict[str, float] = field(default_factory=dict)

    def wisp(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run([sys.executable, "-m", "wisp.cli", *args[:1], "--prefix", self.prefix, *args[1:]], timeout=timeout)

    def kubectl(self, *args: str, timeout: float = 240, input: str | None = None, check: bool = True) -> str:
        """kubectl as the user types it; also printed, so `-s` shows the commands to repeat."""
        print("$ kubectl " + " ".join(args))
        done = run([self.kubectl_path, "--kubeconfig", self.kubeconfig, *args], timeout=timeout, input=input)
        if check:
            assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stdout}{done.stderr}\n{self.pods_table()}"
        return done.stdout

    def pods_table(self) -> str:
        return self.wisp("get", "pods", "-A").stdout

    def pods(self, namespace: str, selector: str = "") -> list[dict]:
        args = ["get", "pods", "-n", namespace, "-o", "json"] + (["-l", selector] if selector else [])
        return json.loads(self.kubectl(*args))["items"]

    def pod_on(self, namespace: str, selector: str, node: str) -> dict:
        return wait_for(lambda: next((p for p in self.pods(namespace, selector)
                                      if p["spec"].get("nodeName") == node and p["status"].get("podIP")
                                      and _ready(p) and not p["metadata"].get("deletionTimestamp")), None),
                        timeout=120, what=f"a ready {selector} pod of {namespace} on {node}")

    def exec(self, namespace: str, pod: str, *command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.wisp("exec", "-n", namespace, pod, "--", *command, timeout=timeout)

    def curl(self, namespace: str, pod: str, url: str, *headers: str) -> subprocess.CompletedProcess[str]:
        args = ["curl", "-sS", "-m", "5", "-D", "-"]
        for header in headers:
            args += ["-H", header]
        return self.exec(namespace, pod, *args, url)

    def logs(self, pattern: str) -> str:
        text = ""
        for path in sorted(RuntimePaths(self.prefix).logs.glob(pattern)):
            text += path.read_text(errors="replace")
        return text


def _ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in pod["status"].get("conditions") or [])


def leftovers(mesh: KubeMesh) -> list[str]:
    found = list_netns(mesh.prefix)
    if RuntimePaths(mesh.prefix).root.exists():
        found.append(str(RuntimePaths(mesh.prefix).root))
    found += [str(h / mesh.prefix) for h in cgroups.hierarchies() if (h / mesh.prefix).exists()]
    if mesh.testbed_dir and os.path.exists(mesh.testbed_dir):
        found.append(mesh.testbed_dir)
    if mesh.testbed_dir:
        found += [f"pid {pid}" for pid in processes_in(mesh.testbed_dir)]
    found += [name for name in os.listdir("/etc/netns") if name.startswith(mesh.prefix + "-")] \
        if os.path.isdir("/etc/netns") else []
    return found


def packets_between(summary: str, a: str, b: str) -> list[str]:
    """tcpdump summary lines of packets between addresses a and b (either direction)."""
    out = []
    for line in summary.splitlines():
        if f" {a}." in line and f" {b}." in line:
            out.append(line)
    return out


def ports_of(line: str) -> tuple[int, int]:
    # "12:00:00.000000 IP 10.244.1.14.40226 > 10.244.2.13.15008: Flags [S], ..."
    src, dst = line.split(" IP ", 1)[1].split(": ", 1)[0].split(" > ")
    return int(src.rsplit(".", 1)[1]), int(dst.rsplit(".", 1)[1])


@pytest.fixture(scope="module")
def kmesh() -> Iterator[KubeMesh]:
    if os.geteuid() != 0:
        pytest.fail("the Kubernetes end-to-end tests build network namespaces and need root (CI runs them as root)")
    mesh = KubeMesh(f"wisp-q{secrets.token_hex(2)}")
    started = time.monotonic()
    try:
        up = mesh.wisp("up", "--kubernetes", "--nodes", "2")
        assert up.returncode == 0, up.stdout + up.stderr
        status = json.loads(RuntimePaths(mesh.prefix).status.read_text())
        mesh.kubeconfig, mesh.kubectl_path = status["kubeconfig"], status["kubectl"]
        mesh.testbed_dir = status["testbed_dir"]
        mesh.steps["wisp up --kubernetes"] = time.monotonic() - started

        mesh.kubectl("apply", "-k", str(ROOT / "deploy"))
        for workload in ("daemonset/ztunnel", "daemonset/wisp-node-agent", "deployment/wisp-operator"):
            mesh.kubectl("rollout", "status", "-n", "istio-system", workload, f"--timeout={TIMEOUT}")
        for daemonset in ("ztunnel", "wisp-node-agent"):
            ds = json.loads(mesh.kubectl("get", "daemonset", daemonset, "-n", "istio-system", "-o", "json"))
            assert ds["status"]["numberReady"] == ds["status"]["desiredNumberScheduled"] == 2, ds["status"]
        mesh.steps["mesh installed (kubectl apply -k deploy/, DaemonSets Ready on both nodes)"] = time.monotonic() - started

        mesh.kubectl("apply", "-f", str(ROOT / "examples" / "shop"))
        mesh.kubectl("wait", "--for=condition=Available", "deployment", "--all", "-n", "shop", f"--timeout={TIMEOUT}")
        mesh.kubectl("wait", "--for=condition=Ready", "pod", "--all", "-n", "shop", f"--timeout={TIMEOUT}")
        mesh.kubectl("label", "namespace", "shop", "istio.io/dataplane-mode=ambient", "--overwrite")
        mesh.steps["shop applied and labelled"] = time.monotonic() - started
        mesh.steps["started"] = started
        yield mesh
    finally:
        down = mesh.wisp("down", timeout=180)
        left = leftovers(mesh)
        if left:  # leave the machine clean for the rest of the suite, then fail
            run([sys.executable, "-m", "wisp.cli", "down", "--prefix", mesh.prefix], timeout=180)
        assert down.returncode == 0, down.stdout + down.stderr
        assert left == [], f"wisp down left behind: {left}"


def test_from_nothing_to_a_meshed_request_across_two_ztunnels(kmesh: KubeMesh) -> None:
    # Every shop pod is enrolled in place: the node agent annotates it, as Istio's does.
    def annotated() -> bool:
        return all((p["metadata"].get("annotations") or {}).get("ambient.istio.io/redirection") == "enabled"
                   for p in kmesh.pods("shop"))
    wait_for(annotated, timeout=60, what="ambient.istio.io/redirection: enabled on every shop pod")
    shown = kmesh.kubectl("get", "pod", "client", "-n", "shop", "-o", "yaml")
    assert "ambient.istio.io/redirection: enabled" in shown

    client = kmesh.pod_on("shop", "app=client", "node1")
    server = kmesh.pod_on("shop", "app=frontend", "node2")
    client_ip, server_ip = client["status"]["podIP"], server["status"]["podIP"]
    switch = f"{kmesh.prefix}-net"
    with capture(switch, "br0", f"tcp and host {client_ip} and host {server_ip}") as seen:
        reply = wait_for(lambda: (r := kmesh.curl("shop", "client", f"http://{server_ip}:8080/")).returncode == 0 and r,
                         timeout=30, what="a request from shop/client to the frontend on node2")
    first_request = time.monotonic() - kmesh.steps["started"]
    assert f"hostname={server['metadata']['name']}" in reply.stdout, reply.stdout

    # Only HBONE between the nodes: every packet of the pair has port 15008 on one side.
    packets = packets_between(seen["summary"], client_ip, server_ip)
    assert packets, f"nothing captured between {client_ip} and {server_ip}:\n{seen['summary'][:2000]}"
    assert all(15008 in ports_of(line) for line in packets), "\n".join(p for p in packets if 15008 not in ports_of(p))
    assert not any(8080 in ports_of(line) for line in packets)
    # Both ztunnels saw the SPIFFE identities of both ends.
    logs = kmesh.logs("istio-system_ztunnel-*")
    inbound = [json.loads(line) for line in logs.splitlines()
               if line.startswith("{") and '"connection complete"' in line and f'"{server_ip}:8080"' in line]
    assert any(e.get("direction") == "inbound" and e.get("src.identity") == "spiffe://cluster.local/ns/shop/sa/client"
               and e.get("dst.identity") == "spiffe://cluster.local/ns/shop/sa/frontend" for e in inbound), inbound[-3:]
    steps = {k: round(v, 1) for k, v in kmesh.steps.items() if k != "started"}
    print(json.dumps({"seconds_from_nothing_to_first_meshed_request": round(first_request, 1), "steps": steps,
                      "packets_between_the_pods": len(packets)}))


LATE = """
apiVersion: v1
kind: Namespace
metadata: {name: late}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: late, labels: {app: late-server}}
spec:
  nodeName: node2
  containers:
    - name: echo
      image: wisp:0.1.0
      command: [wisp-echo, --http, "8080"]
      readinessProbe: {httpGet: {path: /healthz, port: 8080}}
"""


def test_labelling_a_namespace_enrols_its_running_pods_without_a_restart(kmesh: KubeMesh) -> None:
    kmesh.kubectl("apply", "-f", "-", input=LATE)
    kmesh.kubectl("wait", "--for=condition=Ready", "pod/server", "-n", "late", f"--timeout={TIMEOUT}")
    before = kmesh.pods("late")[0]
    assert (before["metadata"].get("annotations") or {}).get("ambient.istio.io/redirection") is None
    kmesh.kubectl("label", "namespace", "late", "istio.io/dataplane-mode=ambient")
    after = wait_for(lambda: next((p for p in kmesh.pods("late")
                                   if (p["metadata"].get("annotations") or {}).get("ambient.istio.io/redirection") == "enabled"), None),
                     timeout=60, what="the running pod of `late` enrolled")
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0
    ip = after["status"]["podIP"]
    reply = wait_for(lambda: (r := kmesh.curl("shop", "client", f"http://{ip}:8080/")).returncode == 0 and r,
                     timeout=30, what="a request to the newly enrolled pod")
    assert "hostname=server" in reply.stdout
    wait_for(lambda: any('"connection complete"' in line and '"dst.workload": "server"' in line
                         and '"direction": "inbound"' in line for line in kmesh.logs("istio-system_ztunnel-*").splitlines()),
             timeout=10, what="node2's ztunnel logging the inbound HBONE connection to late/server")
    kmesh.kubectl("delete", "namespace", "late", "--wait=true", f"--timeout={TIMEOUT}")


def _redirected(kmesh: KubeMesh, namespace: str, pod: str) -> bool:
    """The pod's netns still has the in-pod redirection (ISTIO_* chains) the node agent installed."""
    rules = run(["ip", "netns", "exec", pod_netns_name(kmesh.prefix, namespace, pod), "iptables-save", "-t", "nat"]).stdout
    return "ISTIO_OUTPUT" in rules and "15001" in rules


def test_restarting_ztunnel_and_the_node_agent_keeps_pods_enrolled(kmesh: KubeMesh) -> None:
    server = kmesh.pod_on("shop", "app=frontend", "node2")
    url = f"http://{server['status']['podIP']}:8080/"
    old = {p["metadata"]["name"] for p in kmesh.pods("istio-system", "app=ztunnel")}
    kmesh.kubectl("rollout", "restart", "daemonset/ztunnel", "-n", "istio-system")
    kmesh.kubectl("rollout", "status", "daemonset/ztunnel", "-n", "istio-system", f"--timeout={TIMEOUT}")
    wait_for(lambda: not old & {p["metadata"]["name"] for p in kmesh.pods("istio-system", "app=ztunnel")},
             timeout=90, what="the old ztunnel pods gone")
    assert _redirected(kmesh, "shop", "client")
    assert kmesh.curl("shop", "client", url).returncode == 0

    old = {p["metadata"]["name"] for p in kmesh.pods("istio-system", "app=wisp-node-agent")}
    kmesh.kubectl("rollout", "restart", "daemonset/wisp-node-agent", "-n", "istio-system")
    kmesh.kubectl("rollout", "status", "daemonset/wisp-node-agent", "-n", "istio-system", f"--timeout={TIMEOUT}")
    wait_for(lambda: not old & {p["metadata"]["name"] for p in kmesh.pods("istio-system", "app=wisp-node-agent")},
             timeout=90, what="the old node-agent pods gone")
    for pod in kmesh.pods("shop"):
        assert (pod["metadata"].get("annotations") or {}).get("ambient.istio.io/redirection") == "enabled"
    assert _redirected(kmesh, "shop", "client")
    reply = wait_for(lambda: (r := kmesh.curl("shop", "client", url)).returncode == 0 and r, timeout=30,
                     what="traffic after the node agent's restart")
    assert "hostname=" in reply.stdout


def test_traffic_fails_closed_while_a_nodes_ztunnel_is_down_and_recovers(kmesh: KubeMesh) -> None:
    server = kmesh.pod_on("shop", "app=frontend", "node2")
    client = kmesh.pod_on("shop", "app=client", "node1")
    url = f"http://{server['status']['podIP']}:8080/"
    # Keep ztunnel off node2: the DaemonSet controller deletes its pod there.
    pin = json.dumps({"spec": {"template": {"spec": {"nodeSelector": {"kubernetes.io/hostname": "node1"}}}}})
    kmesh.kubectl("patch", "daemonset/ztunnel", "-n", "istio-system", "--type=merge", "-p", pin)
    try:
        wait_for(lambda: not kmesh.pods("istio-system", "app=ztunnel") or
                 all(p["spec"]["nodeName"] == "node1" for p in kmesh.pods("istio-system", "app=ztunnel")),
                 timeout=90, what="node2's ztunnel gone")
        switch = f"{kmesh.prefix}-net"
        with capture(switch, "br0", f"tcp and host {client['status']['podIP']} and host {server['status']['podIP']}") as seen:
            failures = [kmesh.curl("shop", "client", url) for _ in range(3)]
        assert all(f.returncode != 0 for f in failures), [f.stdout for f in failures]
        assert not any("hostname=" in f.stdout for f in failures)
        # No plaintext fallback: nothing to the app port crossed between the nodes.
        assert not any(8080 in ports_of(line) for line in packets_between(seen["summary"], client["status"]["podIP"],
                                                                            server["status"]["podIP"]))
        assert _redirected(kmesh, "shop", server["metadata"]["name"])
    finally:
        unpin = json.dumps([{"op": "remove", "path": "/spec/template/spec/nodeSelector/kubernetes.io~1hostname"}])
        kmesh.kubectl("patch", "daemonset/ztunnel", "-n", "istio-system", "--type=json", "-p", unpin)
    back = time.monotonic()
    kmesh.kubectl("rollout", "status", "daemonset/ztunnel", "-n", "istio-system", f"--timeout={TIMEOUT}")
    reply = wait_for(lambda: (r := kmesh.curl("shop", "client", url)).returncode == 0 and r, timeout=60,
                     what="traffic once node2's ztunnel is back")
    assert f"hostname={server['metadata']['name']}" in reply.stdout
    print(json.dumps({"seconds_from_ztunnel_back_to_first_request": round(time.monotonic() - back, 1)}))


def test_a_waypoint_applied_through_the_api_serves_an_httproute(kmesh: KubeMesh) -> None:
    env = {**os.environ, "KUBECONFIG": kmesh.kubeconfig}
    print("$ wisp waypoint apply -n shop --enroll-namespace --wait")
    done = subprocess.run([sys.executable, "-m", "wisp.cli", "waypoint", "apply", "-n", "shop", "--enroll-namespace",
                           "--wait", "--kubeconfig", kmesh.kubeconfig], capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout + done.stderr + kmesh.pods_table()
    deployment = json.loads(kmesh.kubectl("get", "deployment", "waypoint", "-n", "shop", "-o", "json"))
    assert deployment["status"].get("readyReplicas", 0) >= 1
    # examples/shop/canary.yaml: `x-canary: true` goes to checkout v2, with a response header the
    # waypoint sets; ztunnel alone could do neither.
    def canary():
        r = kmesh.curl("shop", "client", "http://checkout.shop/", "x-canary: true")
        return r.returncode == 0 and "x-route: canary-header" in r.stdout.lower() and r
    reply = wait_for(canary, timeout=60, what="the canary route applied by the waypoint")
    assert "hostname=checkout-v2" in reply.stdout
    logs = kmesh.logs("shop_waypoint-*")
    assert "checkout" in logs


def _link_indices(netns: str) -> set[str]:
    return {line.split(":", 1)[0] for line in run(["ip", "-n", netns, "-o", "link"]).stdout.splitlines()}


def test_a_pod_deleted_with_kubectl_leaves_nothing_behind(kmesh: KubeMesh) -> None:
    pod = kmesh.pod_on("shop", "app=frontend", "node2")
    name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
    netns = pod_netns_name(kmesh.prefix, "shop", name)
    assert netns in list_netns(kmesh.prefix)
    # The node's end of the pod's veth: eth0@if<N> inside the pod names it by index.
    eth0 = run(["ip", "-n", netns, "-o", "link", "show", "eth0"]).stdout
    host_index = eth0.split("@if", 1)[1].split(":", 1)[0]
    node = f"{kmesh.prefix}-node2"
    assert host_index in _link_indices(node)
    inode = os.stat(f"/run/netns/{netns}").st_ino
    assert processes_in_netns(inode), "the pod's processes run in its netns"
    kmesh.kubectl("delete", "pod", name, "-n", "shop", "--wait=true", f"--timeout={TIMEOUT}")
    assert netns not in list_netns(kmesh.prefix)
    assert not os.path.exists(f"/etc/netns/{netns}")
    assert host_index not in _link_indices(node)
    assert not any(p.exists() for p in cgroups.pod_dirs(kmesh.prefix, uid))
    assert processes_in_netns(inode) == []
    ip = pod["status"]["podIP"]
    wait_for(lambda: f"{ip}:" not in run(["ip", "netns", "exec", node, "iptables-save", "-t", "nat"]).stdout,
             timeout=30, what="kube-proxy's DNAT to the deleted pod removed")
    # Its ReplicaSet replaces it, and the replacement is enrolled like the rest.
    wait_for(lambda: len([p for p in kmesh.pods("shop", "app=frontend") if _ready(p)]) == 2, timeout=120,
             what="the frontend Deployment back to two ready pods")
