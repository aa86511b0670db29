"""ztunnel end to end in real network namespaces.

The lab: a bridge namespace joining three "pods" — `a` (10.77.0.2, ns front, enrolled),
`b` (10.77.0.3, ns shop, enrolled, runs an echo app on 8080) and `c` (10.77.0.4, not enrolled).
Enrolled pods get reference §5's in-pod rules. One in-process ztunnel serves a and b, fed by a
fake node agent over ZDS (with each pod's netns fd) and by the real control plane (config
stream + CA) on loopback. The echo app first writes the peer address it sees, then echoes.
"""

from __future__ import annotations

import errno
import functools
import os
import secrets
import socket
import subprocess
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import httpx
import pytest
import trio

from tests.support.wait import wait_until, wait_until_async
from wisp import netns, sockets
from wisp.model import (
    Authorization,
    Clause,
    Match,
    ModelSnapshot,
    PortMapping,
    Rule,
    Service,
    StringMatch,
    Workload,
)
from wisp.zds import protocol, transport
from wisp.zds.protocol import Add, Del, SnapshotSent, WorkloadInfo
from wisp_operator.cluster import ClusterState
from ztunnel.app import Ztunnel
from ztunnel.config import Config

from tests.controlplane.test_service import control_plane

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

NODE = "node-1"
A_IP, B_IP, C_IP = "10.77.0.2", "10.77.0.3", "10.77.0.4"
VIP = "10.96.0.10"
APP_PORT = 8080

IN_POD_RULES = """\
*mangle
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
COMMIT
*nat
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A OUTPUT -j ISTIO_OUTPUT
-A PREROUTING -j ISTIO_PRERT
-A ISTIO_PRERT -s 169.254.7.127 -p tcp -m tcp -j ACCEPT
-A ISTIO_OUTPUT -d 169.254.7.127 -p tcp -m tcp -j ACCEPT
-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
COMMIT
"""


def sh(*args: str, stdin: str | None = None) -> None:
    subprocess.run(args, input=stdin, text=True, check=True, capture_output=True)


@dataclass
class Lab:
    prefix: str

    def ns(self, pod: str) -> str:
        return f"{self.prefix}-{pod}"


@pytest.fixture(scope="module")
def lab():
    prefix = f"wisp-tzt{secrets.token_hex(3)}"
    lab = Lab(prefix)
    made: list[str] = []
    try:
        for name in ("br", "a", "b", "c"):
            sh("ip", "netns", "add", lab.ns(name))
            made.append(lab.ns(name))
        br = lab.ns("br")
        sh("ip", "-n", br, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", br, "link", "set", "br0", "up")
        for pod, ip in (("a", A_IP), ("b", B_IP), ("c", C_IP)):
            ns = lab.ns(pod)
            sh("ip", "-n", br, "link", "add", f"v{pod}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", br, "link", "set", f"v{pod}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "route", "add", "default", "dev", "eth0")
        for pod in ("a", "b"):
            ns = lab.ns(pod)
            sh("ip", "netns", "exec", ns, "iptables-restore", "--noflush", stdin=IN_POD_RULES)
            sh("ip", "-n", ns, "rule", "add", "fwmark", "0x111/0xfff", "pref", "32764", "lookup", "100")
            sh("ip", "-n", ns, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
        yield lab
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


# -- the model the control plane serves -------------------------------------------------------
def workload(name: str, ns: str, ip: str, sa: str, services=None) -> Workload:
    return Workload(uid=f"Kubernetes//Pod/{ns}/{name}", name=name, namespace=ns, addresses=(ip,),
                    tunnel_protocol="HBONE", service_account=sa, node=NODE, workload_name=name.rsplit("-", 1)[0],
                    canonical_name=name.rsplit("-", 1)[0], services=services or {})


WEB_SVC = Service(name="web", namespace="shop", hostname="web.shop.svc.cluster.local", addresses=(VIP,),
                  ports=(PortMapping(80, APP_PORT),))
CLIENT = workload("client-1", "front", A_IP, "client")
WEB = workload("web-1", "shop", B_IP, "web", services={"shop/web.shop.svc.cluster.local": ()})
BASE = [CLIENT, WEB, WEB_SVC]


def pod(ns: str, name: str, sa: str, ip: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
        "spec": {"nodeName": NODE, "serviceAccountName": sa, "containers": [{"name": "app"}]},
        "status": {"phase": "Running", "podIP": ip},
    }


CLUSTER = ClusterState.of([pod("front", "client-1", "client", A_IP), pod("shop", "web-1", "web", B_IP)])


def deny(ns: str, name: str, match: Match) -> Authorization:
    return Authorization(name=name, namespace=ns, scope="NAMESPACE", action="DENY",
                         rules=(Rule((Clause((match,)),)),))


def allow(ns: str, name: str, match: Match) -> Authorization:
    return replace(deny(ns, name, match), action="ALLOW")


# -- the fake node agent --------------------------------------------------------------------------
class Agent:
    def __init__(self, path: str) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.server.bind(path)
        self.server.listen(1)
        self.server.setblocking(False)
        self.conn: socket.socket | None = None

    async def accept(self) -> None:
        with trio.fail_after(10):
            while True:
                try:
                    self.conn, _ = self.server.accept()
                    break
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(self.server)
        self.conn.setblocking(False)
        assert protocol.decode_hello(await self._recv()).version == 1

    async def _recv(self) -> bytes:
        with trio.fail_after(10):
            while True:
                try:
                    data, _ = transport.recv_datagram(self.conn)
                    return data
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(self.conn)

    async def request(self, message, fd: int | None = None) -> protocol.Ack:
        transport.send_datagram(self.conn, protocol.encode(message), fd)
        return protocol.decode_response(await self._recv())

    async def add(self, lab: Lab, pod: str, w: Workload) -> protocol.Ack:
        fd = netns.open_netns(netns.path_of(lab.ns(pod)))
        try:
            return await self.request(Add(w.uid, WorkloadInfo(w.name, w.namespace, w.service_account)), fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.server.close()


# -- the mesh -------------------------------------------------------------------------------------
@dataclass
class Mesh:
    lab: Lab
    plane: object
    ztunnel: Ztunnel
    agent: Agent
    app_peers: list

    async def publish(self, *resources) -> None:
        version = await trio.to_thread.run_sync(self.plane.publish, ModelSnapshot.of(resources))
        with trio.fail_after(10):
            while self.ztunnel.config_version != version:
                await self.ztunnel.state_changed.wait()

    def metric(self, name: str, **labels) -> float:
        return self.ztunnel.metrics.value(name, **labels)

    async def http(self, which: str, path: str, method: str = "GET") -> httpx.Response:
        host, port = self.ztunnel.bound[which]
        async with httpx.AsyncClient() as client:
            return await client.request(method, f"http://{host}:{port}{path}")


async def connect_from(lab: Lab, pod: str, address: tuple[str, int]) -> trio.SocketStream:
    fd = netns.open_netns(netns.path_of(lab.ns(pod)))
    try:
        sock = await netns.run_in_netns(fd, sockets.new_tcp_socket, address[0])
    finally:
        os.close(fd)
    try:
        with trio.fail_after(10):
            await sockets.connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


async def read_line(stream: trio.SocketStream) -> str:
    data = b""
    with trio.fail_after(10):
        while not data.endswith(b"\n"):
            chunk = await stream.receive_some(1024)
            if not chunk:
                raise EOFError(f"connection closed after {data!r}")
            data += chunk
    return data.decode().strip()


async def receive_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = bytearray()
    with trio.fail_after(10):
        while len(data) < size:
            chunk = await stream.receive_some(size - len(data))
            if not chunk:
                raise EOFError(f"EOF after {len(data)} of {size} bytes")
            data += chunk
    return bytes(data)


async def refused(lab: Lab, pod: str, address: tuple[str, int]) -> bool:
    """True when a connection from `pod` is refused: reset during the handshake (ztunnel answers
    that fast) or closed by the peer right after it."""
    try:
        stream = await connect_from(lab, pod, address)
    except (ConnectionResetError, ConnectionRefusedError):
        return True
    return await closed_by_peer(stream)


async def closed_by_peer(stream: trio.SocketStream) -> bool:
    """True when the connection ends (EOF or reset) within a few seconds."""
    with trio.move_on_after(5):
        try:
            while await stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, OSError):
            pass
        return True
    return False


async def echo_app(lab: Lab, peers: list, pod: str = "b", port: int = APP_PORT, *,
                   task_status=trio.TASK_STATUS_IGNORED) -> None:
    fd = netns.open_netns(netns.path_of(lab.ns(pod)))
    try:
        listener = await netns.run_in_netns(fd, functools.partial(sockets.listener, ("0.0.0.0", port)))
    finally:
        os.close(fd)

    async def serve(conn: socket.socket, peer) -> None:
        peers.append(peer[0])
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
        try:
            await stream.send_all(f"{peer[0]}\n".encode())
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        task_status.started()
        try:
            while True:
                conn, peer = await sockets.accept(listener)
                nursery.start_soon(serve, conn, peer)
        finally:
            sockets.close(listener)


async def _none_pending(ztunnel: Ztunnel) -> bool:
    return not await ztunnel.pending_all()


@asynccontextmanager
async def running_mesh(lab: Lab, ca, tmp_path, resources=BASE, *, snapshot: bool = True, workers: int = 1):
    async with control_plane(ca, CLUSTER) as plane:
        plane.publish(ModelSnapshot.of(resources))
        (tmp_path / "tokens").mkdir()
        (tmp_path / "tokens" / f"ztunnel-{NODE}").write_text(plane.credentials.issue_ztunnel(NODE))
        (tmp_path / "root-cert.pem").write_bytes(plane.roots)
        zds_path = str(tmp_path / "ztunnel.sock")
        agent = Agent(zds_path)
        config = Config(
            node=NODE, zds_socket=zds_path, control_plane=plane.address, state_dir=str(tmp_path),
            admin_address=("127.0.0.1", 0), metrics_address=("127.0.0.1", 0),
            readiness_address=("127.0.0.1", 0), drain_seconds=1.0, workers=workers,
        )
        ztunnel = Ztunnel(config)
        peers: list = []
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(echo_app, lab, peers)
                await nursery.start(functools.partial(ztunnel.run, handle_signals=False))
                await agent.accept()
                mesh = Mesh(lab, plane, ztunnel, agent, peers)
                if snapshot:
                    assert (await agent.add(lab, "a", CLIENT)).ok
                    assert (await agent.add(lab, "b", WEB)).ok
                    assert (await agent.request(SnapshotSent())).ok
                    await wait_until_async(lambda: _none_pending(ztunnel), timeout=30, what="nothing pending")
                yield mesh
                nursery.cancel_scope.cancel()
        finally:
            agent.close()


@pytest.fixture
async def mesh(lab, ca, tmp_path):
    async with running_mesh(lab, ca, tmp_path) as running:
        yield running


# -- the data path --------------------------------------------------------------------------------
async def test_pod_to_pod_goes_through_hbone_and_the_app_sees_the_client_pod_ip(mesh):
    stream = await connect_from(mesh.lab, "a", (B_IP, APP_PORT))
    assert await read_line(stream) == A_IP
    await stream.send_all(b"hello over hbone")
    assert await receive_exactly(stream, 16) == b"hello over hbone"
    await stream.aclose()
    await wait_until(lambda: mesh.metric("istio_tcp_connections_closed_total") >= 2, what="both sides' close counted")
    assert mesh.metric("istio_tcp_connections_opened_total", reporter="source",
                       connection_security_policy="mutual_tls", source_workload="client",
                       destination_workload="web",
                       destination_principal="spiffe://cluster.local/ns/shop/sa/web") == 1
    assert mesh.metric("istio_tcp_connections_closed_total", reporter="destination",
                       connection_security_policy="mutual_tls",
                       source_principal="spiffe://cluster.local/ns/front/sa/client") == 1
    assert mesh.metric("istio_tcp_received_bytes_total", reporter="destination") == 16
    assert mesh.metric("istio_tcp_sent_bytes_total", reporter="source") == 16 + len(A_IP) + 1


async def test_half_close_reaches_the_app_and_its_reply_still_arrives(mesh):
    stream = await connect_from(mesh.lab, "a", (B_IP, APP_PORT))
    assert await read_line(stream) == A_IP
    payload = os.urandom(3 * 1024 * 1024)
    async with trio.open_nursery() as nursery:
        async def send():
            await stream.send_all(payload)
            await stream.send_eof()
        nursery.start_soon(send)
        echoed = await receive_exactly(stream, len(payload))
    assert echoed == payload
    with trio.fail_after(5):
        assert await stream.receive_some(10) == b""  # the app's EOF came back through the tunnel
    await stream.aclose()


async def test_service_vip_reaches_an_endpoint_on_its_target_port(mesh):
    stream = await connect_from(mesh.lab, "a", (VIP, 80))
    assert await read_line(stream) == A_IP
    await stream.aclose()
    await wait_until(lambda: mesh.metric("istio_tcp_connections_closed_total", reporter="destination"),
                     what="the destination's close counted")
    assert mesh.metric("istio_tcp_connections_opened_total", reporter="source",
                       destination_service="web.shop.svc.cluster.local", destination_service_name="web") == 1
    # The receiving ztunnel learns the service from the CONNECT's forwarded host.
    assert mesh.metric("istio_tcp_connections_opened_total", reporter="destination",
                       destination_service="web.shop.svc.cluster.local") == 1


async def test_plaintext_from_outside_the_mesh_arrives_through_15006_from_the_client_ip(mesh):
    stream = await connect_from(mesh.lab, "c", (B_IP, APP_PORT))
    assert await read_line(stream) == C_IP
    await stream.send_all(b"plain")
    assert await receive_exactly(stream, 5) == b"plain"
    await stream.aclose()
    assert mesh.metric("istio_tcp_connections_opened_total", reporter="destination",
                       connection_security_policy="unknown", source_principal="unknown") == 1


async def test_destination_without_hbone_gets_plain_tcp_which_its_ztunnel_captures_on_15006(mesh):
    await mesh.publish(CLIENT, replace(WEB, tunnel_protocol="NONE"), WEB_SVC)
    stream = await connect_from(mesh.lab, "a", (VIP, 80))
    assert await read_line(stream) == A_IP
    await stream.aclose()
    assert mesh.metric("istio_tcp_connections_opened_total", reporter="source",
                       connection_security_policy="unknown", destination_workload="web") == 1
    assert mesh.metric("istio_tcp_connections_opened_total", reporter="destination",
                       connection_security_policy="unknown") == 1


async def test_unknown_destination_is_passed_through_from_the_pod(mesh, nursery):
    peers: list = []
    await nursery.start(echo_app, mesh.lab, peers, "c", 9090)
    stream = await connect_from(mesh.lab, "a", (C_IP, 9090))
    assert await read_line(stream) == A_IP
    await stream.send_all(b"out")
    assert await receive_exactly(stream, 3) == b"out"
    await stream.aclose()
    assert mesh.metric("istio_tcp_connections_opened_total", reporter="source",
                       destination_workload="unknown", connection_security_policy="unknown") == 1


async def test_known_service_without_healthy_endpoint_closes_the_connection(mesh):
    await mesh.publish(CLIENT, replace(WEB, status="UNHEALTHY"), WEB_SVC)
    assert await refused(mesh.lab, "a", (VIP, 80))
    assert mesh.app_peers == []


# -- policy ---------------------------------------------------------------------------------------
async def test_deny_policy_refuses_the_client_and_counts_deny(mesh):
    await mesh.publish(*BASE, deny("shop", "no-front", Match(namespaces=(StringMatch("exact", "front"),))))
    assert await refused(mesh.lab, "a", (B_IP, APP_PORT))
    assert mesh.app_peers == []
    assert mesh.metric("istio_tcp_connections_closed_total", reporter="destination", response_flags="DENY") == 1


async def test_allow_policy_admits_only_listed_principals(mesh):
    only_other = allow("shop", "only-other", Match(principals=(StringMatch("exact", "cluster.local/ns/x/sa/y"),)))
    await mesh.publish(*BASE, only_other)
    assert await refused(mesh.lab, "a", (B_IP, APP_PORT))
    client = allow("shop", "client", Match(principals=(StringMatch("exact", "cluster.local/ns/front/sa/client"),)))
    await mesh.publish(*BASE, only_other, client)
    stream = await connect_from(mesh.lab, "a", (B_IP, APP_PORT))
    assert await read_line(stream) == A_IP
    await stream.aclose()


async def test_policy_change_closes_a_live_connection_that_became_denied(mesh):
    stream = await connect_from(mesh.lab, "a", (B_IP, APP_PORT))
    assert await read_line(stream) == A_IP
    await stream.send_all(b"ping")
    assert await receive_exactly(stream, 4) == b"ping"
    await mesh.publish(*BASE, deny("shop", "no-client", Match(principals=(StringMatch("suffix", "/sa/client"),))))
    assert await closed_by_peer(stream)
    assert mesh.metric("istio_tcp_connections_closed_total", reporter="destination", response_flags="DENY") == 1


async def test_strict_mtls_denies_plaintext_but_not_hbone(mesh):
    strict = deny("shop", "strict", Match(not_principals=(StringMatch("presence"),)))
    await mesh.publish(*BASE, strict)
    assert await refused(mesh.lab, "c", (B_IP, APP_PORT))
    meshed = await connect_from(mesh.lab, "a", (B_IP, APP_PORT))
    assert await read_line(meshed) == A_IP
    await meshed.aclose()
    assert mesh.app_peers == [A_IP]


# -- control: readiness, admin, ZDS lifecycle, drain ------------------------------------------------
async def test_ready_only_after_the_pod_snapshot(lab, ca, tmp_path):
    async with running_mesh(lab, ca, tmp_path, snapshot=False) as mesh:
        await wait_until(lambda: mesh.ztunnel.config_synced, timeout=10, what="config synced")
        response = await mesh.http("readiness", "/healthz/ready")
        assert response.status_code == 500
        assert response.text.startswith("not ready, pending: ") and "pod snapshot" in response.text
        assert (await mesh.agent.add(lab, "b", WEB)).ok
        assert (await mesh.agent.request(SnapshotSent())).ok
        response = await mesh.http("readiness", "/healthz/ready")
        assert (response.status_code, response.text) == (200, "ready\n")


async def test_config_dump_and_metrics_endpoints(mesh):
    stream = await connect_from(mesh.lab, "a", (B_IP, APP_PORT))
    assert await read_line(stream) == A_IP
    await stream.aclose()
    dump = (await mesh.http("admin", "/config_dump")).json()
    assert {p["name"] for p in dump["pods"]} == {"client-1", "web-1"}
    assert {w["name"] for w in dump["workloads"]} == {"client-1", "web-1"}
    assert {c["identity"] for c in dump["certificates"]} == {
        "spiffe://cluster.local/ns/front/sa/client", "spiffe://cluster.local/ns/shop/sa/web"}
    assert all(c["state"] == "available" and c["rotation"] for c in dump["certificates"])
    for path in ("/metrics", "/stats/prometheus"):
        text = (await mesh.http("metrics", path)).text
        assert 'istio_tcp_connections_opened_total{' in text and 'reporter="source"' in text


async def test_add_again_with_the_same_netns_keeps_the_proxy_and_del_removes_it(mesh):
    proxy = mesh.ztunnel.pods.proxies[CLIENT.uid]
    assert (await mesh.agent.add(mesh.lab, "a", CLIENT)).ok
    assert mesh.ztunnel.pods.proxies[CLIENT.uid] is proxy
    assert (await mesh.agent.request(Del(CLIENT.uid))).ok
    assert CLIENT.uid not in mesh.ztunnel.pods.proxies and proxy.stopped.is_set()
    # Nothing listens on 15001 in the pod any more: its captured connections are refused.
    with pytest.raises(OSError) as info:
        await connect_from(mesh.lab, "a", (B_IP, APP_PORT))
    assert info.value.errno == errno.ECONNREFUSED or "ECONNREFUSED" in str(info.value)


async def test_add_with_another_netns_replaces_the_proxy(mesh):
    old = mesh.ztunnel.pods.proxies[CLIENT.uid]
    assert (await mesh.agent.add(mesh.lab, "c", CLIENT)).ok  # the pod was recreated: new netns
    new = mesh.ztunnel.pods.proxies[CLIENT.uid]
    assert new is not old and old.stopped.is_set()
    fd = netns.open_netns(netns.path_of(mesh.lab.ns("c")))
    try:
        assert new.pod.netns == netns.identity(fd)
    finally:
        os.close(fd)
    assert (await mesh.agent.request(Del(CLIENT.uid))).ok


async def test_add_for_a_vanished_netns_is_nacked(mesh):
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        ack = await mesh.agent.request(Add("Kubernetes//Pod/x/y", WorkloadInfo("y", "x", "default")), fd)
    finally:
        os.close(fd)
    assert "cannot open listeners" in ack.error or "unusable" in ack.error


async def test_drain_closes_listeners_and_lets_live_connections_finish(mesh):
    stream = await connect_from(mesh.lab, "a", (B_IP, APP_PORT))
    assert await read_line(stream) == A_IP
    mesh.ztunnel.request_shutdown()
    # The pods' listeners close once ZDS is gone (ztunnel/app.py drain); a pod proxy marked
    # draining has closed its acceptors.
    proxies = list(mesh.ztunnel.pods.proxies.values())
    assert proxies  # one process (workers=1): every pod's proxy is here
    await wait_until(lambda: mesh.ztunnel.draining and all(p.draining for p in proxies), what="every pod proxy draining")
    await stream.send_all(b"still here")
    assert await receive_exactly(stream, 10) == b"still here"
    with pytest.raises(OSError):
        await connect_from(mesh.lab, "a", (B_IP, APP_PORT))
    response = await mesh.http("readiness", "/healthz/ready")
    assert response.status_code == 500 and "draining" in response.text
    # Past the 1 s deadline ztunnel closes what is left.
    assert await closed_by_peer(stream)
