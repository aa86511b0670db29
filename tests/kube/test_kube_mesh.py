"""The Kubernetes-backed mesh's node side against the real test bed: the API server forwarder,
kube-proxy's DNAT from Services and EndpointSlices, and Node registration with Lease renewal;
then `wisp up --kubernetes` end to end (its own control plane): two Ready nodes, a pod applied
with kubectl running and reachable with `wisp exec`, and `wisp down` leaving nothing behind
(no netns, run directory, cgroup, control-plane directory or process).

Each test builds its own switch and node namespaces with a unique prefix (`wisp-k<hex>`) and
removes them, and any Node it registered, even when it fails. Node indices start at 101 so the
session's simulated nodes (node1..node3, tests/kube/conftest.py) are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest
import structlog.testing
import trio

from runtime import cgroups
from runtime.kube.api import KubeApi
from runtime.kube.apiforward import API_FORWARD_PORT, ApiForwarder
from runtime.kube.nodes import NodeRegistry
from runtime.kube.proxy import KubeProxy
from runtime.testbed.cluster import SERVICE_IP, Cluster
from runtime.testbed.nodes import LEASE_NAMESPACE
from runtime.topology import CONTROL_PLANE_IP, Node, Topology, list_netns
from tests.support.procs import processes_in
from tests.support.wait import wait_until
from wisp.runpaths import RuntimePaths

pytestmark = pytest.mark.root


@contextlib.contextmanager
def network(node_indices: tuple[int, ...]) -> Iterator[tuple[Topology, list[Node]]]:
    """The switch and nodes of a fresh topology (only the given node indices), destroyed after."""
    topology = Topology(f"wisp-k{secrets.token_hex(3)}")
    try:
        created = topology.create(max(node_indices))
        yield topology, [n for n in created if n.index in node_indices]
    finally:
        topology.destroy()


def iptables_nat(node: Node) -> str:
    return subprocess.run(["ip", "netns", "exec", node.netns, "iptables-save", "-t", "nat"],
                          capture_output=True, text=True, check=True).stdout


async def curl_version(cluster: Cluster, netns: str, host: str, port: int) -> str:
    """GET /version through `host:port` from inside `netns`, verifying the API server's certificate
    for kubernetes.default.svc (one of its SANs) whatever address carries it."""
    done = await trio.run_process(
        ["ip", "netns", "exec", netns, "curl", "-sS", "-m", "5", "--cacert", str(cluster.pki.ca_cert),
         "--cert", str(cluster.pki.client_cert("admin")), "--key", str(cluster.pki.client_key("admin")),
         "--resolve", f"kubernetes.default.svc:{port}:{host}", f"https://kubernetes.default.svc:{port}/version"],
        capture_stdout=True, capture_stderr=True, check=False)
    return done.stdout.decode() + done.stderr.decode()


async def test_the_forwarder_carries_tls_from_a_node_to_the_api_server(cluster: Cluster) -> None:
    with network((1,)) as (topology, nodes):
        forwarder = ApiForwarder(topology.switch, (CONTROL_PLANE_IP, API_FORWARD_PORT),
                                 ("127.0.0.1", cluster.ports.apiserver))
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(forwarder.run)
            assert bound == (CONTROL_PLANE_IP, API_FORWARD_PORT)
            answer = await curl_version(cluster, nodes[0].netns, CONTROL_PLANE_IP, API_FORWARD_PORT)
            assert '"gitVersion": "v1.37.2"' in answer
            assert forwarder.connections == 1
            await wait_until(lambda: forwarder.active == 0, what="the relayed connection to end")
            nursery.cancel_scope.cancel()


async def test_the_forwarder_half_closes_and_keeps_serving_when_the_api_server_is_unreachable() -> None:
    with network((1,)) as (topology, nodes):
        # An upstream that answers only after the client has half-closed: the EOF must travel.
        upstream = trio.socket.socket()
        await upstream.bind(("127.0.0.1", 0))
        upstream.listen()
        port = upstream.getsockname()[1]

        async def echo_after_eof() -> None:
            conn, _ = await upstream.accept()
            with conn:
                received = b""
                while chunk := await conn.recv(65536):
                    received += chunk
                await conn.send(b"got " + str(len(received)).encode())

        forwarder = ApiForwarder(topology.switch, (CONTROL_PLANE_IP, API_FORWARD_PORT), ("127.0.0.1", port))
        async with trio.open_nursery() as nursery:
            await nursery.start(forwarder.run)
            nursery.start_soon(echo_after_eof)
            script = ("import socket;s=socket.create_connection(('%s',%d));s.sendall(b'x'*300000);"
                      "s.shutdown(socket.SHUT_WR);print(s.recv(100).decode())" % (CONTROL_PLANE_IP, API_FORWARD_PORT))
            done = await trio.run_process(["ip", "netns", "exec", nodes[0].netns, "python3", "-c", script],
                                          capture_stdout=True, check=False)
            assert done.stdout.decode().strip() == "got 300000"
            upstream.close()
            # Nothing listens upstream now: the client's connection is closed, the listener lives on.
            refused = await trio.run_process(
                ["ip", "netns", "exec", nodes[0].netns, "python3", "-c",
                 "import socket;s=socket.create_connection(('%s',%d));print(repr(s.recv(10)))"
                 % (CONTROL_PLANE_IP, API_FORWARD_PORT)], capture_stdout=True, check=False)
            assert refused.stdout.decode().strip() == "b''"
            assert forwarder.connections == 2
            nursery.cancel_scope.cancel()


async def test_the_forwarder_closes_a_reset_connection_and_says_why_once() -> None:
    with network((1,)) as (topology, nodes):
        upstream = trio.socket.socket()
        await upstream.bind(("127.0.0.1", 0))
        upstream.listen()
        held: list[trio.socket.SocketType] = []

        async def accept_and_hold() -> None:
            conn, _ = await upstream.accept()
            held.append(conn)  # never reads, never closes: only the client's reset can end the relay

        forwarder = ApiForwarder(topology.switch, (CONTROL_PLANE_IP, API_FORWARD_PORT),
                                 ("127.0.0.1", upstream.getsockname()[1]))
        with structlog.testing.capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                await nursery.start(forwarder.run)
                nursery.start_soon(accept_and_hold)
                script = ("import socket,struct,time;s=socket.create_connection(('%s',%d));s.sendall(b'x');"
                          "time.sleep(0.3);s.setsockopt(socket.SOL_SOCKET,socket.SO_LINGER,struct.pack('ii',1,0));"
                          "s.close()" % (CONTROL_PLANE_IP, API_FORWARD_PORT))
                await trio.run_process(["ip", "netns", "exec", nodes[0].netns, "python3", "-c", script])
                await wait_until(lambda: forwarder.active == 0, 10, what="the reset connection to be closed")
                nursery.cancel_scope.cancel()
        for conn in held:
            conn.close()
        upstream.close()
        failed = [e for e in logs if e["event"] == "api forwarder connection failed"]
        assert len(failed) == 1, logs
        assert "reset" in failed[0]["error"].lower() or "Broken" in failed[0]["error"], failed


SERVICE = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "web"},
           "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def endpoint_slice(ready: bool | None) -> dict:
    conditions = {} if ready is None else {"ready": ready}
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-manual", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.1.77"], "conditions": conditions},
                          {"addresses": ["10.244.1.78"], "conditions": {"ready": False}}]}


async def test_kube_proxy_programs_a_services_ready_endpoints_and_forgets_a_deleted_service(
        cluster: Cluster, namespace: str) -> None:
    api = KubeApi.for_cluster(cluster)
    with network((1, 2)) as (topology, nodes):
        try:
            # Selector-less, so the EndpointSlice controller leaves the manual slice alone.
            service = await api.create(f"/api/v1/namespaces/{namespace}/services", SERVICE)
            vip = service["spec"]["clusterIP"]
            await api.create(f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices", endpoint_slice(True))
            proxy = KubeProxy(api, topology, nodes, (CONTROL_PLANE_IP, API_FORWARD_PORT))
            async with trio.open_nursery() as nursery:
                await nursery.start(proxy.run)
                rule = f"-d {vip}/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.1.77:8080"
                for node in nodes:
                    nat = iptables_nat(node)
                    assert rule in nat
                    assert "10.244.1.78" not in nat  # not ready
                    assert (f"-d {SERVICE_IP}/32 -p tcp -m tcp --dport 443 -j DNAT --to-destination "
                            f"{CONTROL_PLANE_IP}:{API_FORWARD_PORT}") in nat
                assert (vip, [f"web.{namespace}.svc.cluster.local", f"web.{namespace}.svc", f"web.{namespace}", "web"]) \
                    in proxy.hosts(namespace)
                assert (vip, [f"web.{namespace}.svc.cluster.local", f"web.{namespace}.svc", f"web.{namespace}"]) \
                    in proxy.hosts("elsewhere")

                await api.delete(f"/api/v1/namespaces/{namespace}/services/web")
                await wait_until(lambda: vip not in (proxy.rules or ""), 10, what="the deleted service's rule to go")
                for node in nodes:
                    assert vip not in iptables_nat(node)
                assert all(entry[0] != vip for entry in proxy.hosts(namespace))
                nursery.cancel_scope.cancel()
        finally:
            await api.delete(f"/api/v1/namespaces/{namespace}/services/web")
            await api.aclose()


async def test_kube_proxy_follows_an_endpoint_that_stops_being_ready(cluster: Cluster, namespace: str) -> None:
    api = KubeApi.for_cluster(cluster)
    with network((1,)) as (topology, nodes):
        try:
            service = await api.create(f"/api/v1/namespaces/{namespace}/services", SERVICE)
            vip = service["spec"]["clusterIP"]
            slices = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
            await api.create(slices, endpoint_slice(None))  # ready unset counts as ready
            proxy = KubeProxy(api, topology, nodes, (CONTROL_PLANE_IP, API_FORWARD_PORT))
            async with trio.open_nursery() as nursery:
                await nursery.start(proxy.run)
                assert f"-d {vip}/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.1.77:8080" \
                    in iptables_nat(nodes[0])
                await api.patch(f"{slices}/web-manual", {"endpoints": [
                    {"addresses": ["10.244.1.77"], "conditions": {"ready": False}}]})
                await wait_until(lambda: "10.244.1.77" not in (proxy.rules or "x"), 10,
                                 what="the unready endpoint's rule to go")
                assert "10.244.1.77" not in iptables_nat(nodes[0])
                rejected = subprocess.run(["ip", "netns", "exec", nodes[0].netns, "iptables-save", "-t", "filter"],
                                          capture_output=True, text=True, check=True).stdout
                assert f"-A WISP-SERVICES-REJECT -d {vip}/32 -p tcp -m tcp --dport 80 -j REJECT" in rejected
                nursery.cancel_scope.cancel()
        finally:
            await api.delete(f"/api/v1/namespaces/{namespace}/services/web")
            await api.aclose()


async def test_pods_on_a_node_reach_the_api_server_as_the_kubernetes_service(cluster: Cluster) -> None:
    api = KubeApi.for_cluster(cluster)
    with network((1,)) as (topology, nodes):
        try:
            forwarder = ApiForwarder(topology.switch, (CONTROL_PLANE_IP, API_FORWARD_PORT),
                                     ("127.0.0.1", cluster.ports.apiserver))
            proxy = KubeProxy(api, topology, nodes, (CONTROL_PLANE_IP, API_FORWARD_PORT))
            async with trio.open_nursery() as nursery:
                await nursery.start(forwarder.run)
                await nursery.start(proxy.run)
                answer = await curl_version(cluster, nodes[0].netns, SERVICE_IP, 443)
                assert '"gitVersion": "v1.37.2"' in answer
                nursery.cancel_scope.cancel()
        finally:
            await api.aclose()


async def test_nodes_register_ready_with_leases_that_are_renewed(cluster: Cluster) -> None:
    api = KubeApi.for_cluster(cluster)
    topology = Topology("wisp-kunused")
    nodes = [topology.node(101), topology.node(102)]
    try:
        registry = NodeRegistry(api, nodes, lease_interval=0.5, status_interval=0.5)
        async with trio.open_nursery() as nursery:
            await nursery.start(registry.run)
            node = await api.get("/api/v1/nodes/node101")
            assert node["spec"]["podCIDR"] == "10.244.101.0/24"
            assert {"type": "InternalIP", "address": "10.250.0.111"} in node["status"]["addresses"]
            assert node["status"]["nodeInfo"]["osImage"].startswith("wisp runtime")
            ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
            assert ready["status"] == "True"
            await registry.wait_schedulable(timeout=60)
            await wait_until(lambda: min(registry.renewals.values()) >= 2, 10, what="two lease renewals each")
            lease = await api.get(f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/node102")
            assert lease["spec"]["holderIdentity"] == "node102"
            beat = ready
            with trio.move_on_after(10):
                while beat["lastHeartbeatTime"] == ready["lastHeartbeatTime"]:
                    await trio.sleep(0.3)
                    beat = next(c for c in (await api.get("/api/v1/nodes/node101"))["status"]["conditions"]
                                if c["type"] == "Ready")
            assert beat["lastHeartbeatTime"] > ready["lastHeartbeatTime"], "no status heartbeat within 10 s"
            assert beat["lastTransitionTime"] == ready["lastTransitionTime"]
            nursery.cancel_scope.cancel()
    finally:
        for name in ("node101", "node102"):
            await api.delete(f"/api/v1/nodes/{name}")
            await api.delete(f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{name}")
        await api.aclose()


# --- wisp up --kubernetes, end to end ---------------------------------------------------------------
POD = """
apiVersion: v1
kind: Pod
metadata: {name: sleeper, namespace: default}
spec:
  containers:
  - name: sleep
    image: wisp:0.1.0
    command: [sleep, infinity]
"""


def wisp(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wisp.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.e2e
def test_wisp_up_kubernetes_runs_two_ready_nodes_and_a_pod_and_down_leaves_nothing() -> None:
    prefix = f"wisp-k{secrets.token_hex(3)}"
    try:
        up = wisp("up", "--kubernetes", "--nodes", "2", "--prefix", prefix)
        assert up.returncode == 0, up.stdout + up.stderr
        kubeconfig = wisp("kubeconfig", "--prefix", prefix).stdout.strip()
        assert f"export KUBECONFIG={kubeconfig}" in up.stdout
        status = json.loads(RuntimePaths(prefix).status.read_text())
        testbed_dir = status["testbed_dir"]
        assert processes_in(testbed_dir), "the control plane runs in its directory"

        kubectl = [status["kubectl"], "--kubeconfig", kubeconfig]
        nodes = subprocess.run([*kubectl, "get", "nodes", "--no-headers"], capture_output=True, text=True, check=True)
        lines = [line.split() for line in nodes.stdout.splitlines()]
        assert [(line[0], line[1]) for line in lines] == [("node1", "Ready"), ("node2", "Ready")]

        subprocess.run([*kubectl, "apply", "-f", "-"], input=POD, capture_output=True, text=True, check=True)
        waited = subprocess.run([*kubectl, "wait", "--for=condition=Ready", "pod/sleeper", "--timeout=90s"],
                                capture_output=True, text=True)
        assert waited.returncode == 0, waited.stderr + wisp("get", "pods", "-A", "--prefix", prefix).stdout
        listed = wisp("get", "pods", "--prefix", prefix)
        row = next(line.split() for line in listed.stdout.splitlines() if line.startswith("sleeper"))
        assert row[1:3] == ["1/1", "Running"] and row[4] in ("node1", "node2") and row[5].startswith("10.244.")
        inside = wisp("exec", "--prefix", prefix, "sleeper", "--", "cat", "/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        assert inside.returncode == 0 and inside.stdout.strip() == "default", inside.stdout + inside.stderr

        down = wisp("down", "--prefix", prefix)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not list_netns(prefix)
        assert not RuntimePaths(prefix).root.exists()
        assert not [h for h in cgroups.hierarchies() if (h / prefix).exists()]
        assert not os.path.exists(testbed_dir)
        assert not processes_in(testbed_dir)
    finally:
        wisp("down", "--prefix", prefix)
