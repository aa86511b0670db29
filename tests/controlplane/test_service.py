"""The control plane on 15012: CA authorization and the config stream, over real HTTPS/HTTP2.

The control plane runs on asyncio in a thread, as the operator does; clients are the trio ones
ztunnel uses.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import ssl
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import trio

from tests.support.wait import wait_until
from wisp import sockets
from wisp.controlplane.client import (
    ConfigSubscriber,
    ControlPlaneError,
    Endpoint,
    connect,
    fetch_certificate,
    open_config_stream,
)
from wisp.controlplane.http import make_client
from wisp.controlplane.protocol import ConfigView, decode
from wisp.identity import certificates_of, generate_key, make_csr, verify_chain
from wisp.model import Authorization, ModelSnapshot, Workload
from wisp_operator.auth import LocalCredentials
from wisp_operator.ca_service import CaService
from wisp_operator.cluster import ClusterState
from wisp_operator.controller import Controller
from wisp_operator.distributor import Distributor
from wisp_operator.local_api import LocalApi
from wisp_operator.server import DEFAULT_WINDOW, DEFAULT_WINDOW_BYTES, ControlPlaneApp, serve

from tests.conftest import spiffe


def pod(ns: str, name: str, node: str, sa: str = "default", phase: str = "Running") -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
        "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "app"}]},
        "status": {"phase": phase, "podIP": "10.244.0.9"},
    }


def workload(ns: str, name: str, node: str, ip: str = "10.244.0.9") -> Workload:
    return Workload(uid=f"Kubernetes//Pod/{ns}/{name}", name=name, namespace=ns, addresses=(ip,), node=node)


def authorization(ns: str, name: str, scope: str = "NAMESPACE") -> Authorization:
    return Authorization(name=name, namespace=ns, scope=scope, action="DENY")


@dataclass
class Plane:
    address: str
    roots: bytes
    credentials: LocalCredentials
    distributor: Distributor
    loop: asyncio.AbstractEventLoop
    app: ControlPlaneApp

    def call(self, fn, *args, **kwargs):
        """Run `fn(...)` on the control plane's event loop (where its store lives)."""
        return asyncio.run_coroutine_threadsafe(_call(fn, *args, **kwargs), self.loop).result(5)

    def publish(self, snapshot: ModelSnapshot) -> str:
        future = asyncio.run_coroutine_threadsafe(_call(self.distributor.publish, snapshot), self.loop)
        return future.result(5)

    def subscriber(self, subscriber_id: str, node: str | None = None):
        """The one subscriber of that id (and node, if given): ids are per caller."""
        found = [s for s in self.distributor.subscribers.values()
                 if s.id == subscriber_id and (node is None or s.view.node == node)]
        assert len(found) == 1, f"{len(found)} subscribers named {subscriber_id!r}"
        return found[0]

    def client(self, token: str) -> httpx.AsyncClient:
        return make_client(self.address, self.roots, token)

    def endpoint(self, token: str) -> Endpoint:
        return Endpoint(self.address, self.roots, token)


async def _call(fn, *args, **kwargs):
    return fn(*args, **kwargs)


@asynccontextmanager
async def control_plane(ca, state: ClusterState, *, ping_interval: float = 10.0, history: int = 64,
                  port: int = 0, credentials: LocalCredentials | None = None, ack_timeout: float = 30.0,
                  store=None, window: int = DEFAULT_WINDOW):
    """A control plane on 127.0.0.1 in its own thread; with `store`, the real controller and
    local API run too (state then comes from the store, as in the operator)."""
    credentials = credentials or LocalCredentials()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    port = listener.getsockname()[1]
    bundle = ca.issue_serving(spiffe("istio-system", "wisp-operator"), ip_addresses=("127.0.0.1",))
    started = threading.Event()
    box: dict = {}

    def run():
        async def main():
            box["loop"] = asyncio.get_running_loop()
            box["shutdown"] = asyncio.Event()
            box["distributor"] = Distributor(history=history)
            local_api, state_of = None, (lambda: state)
            if store is not None:
                controller = box["controller"] = Controller(store, box["distributor"])
                local_api = LocalApi(store, controller, ping_interval=ping_interval)
                state_of = lambda: controller.state  # noqa: E731
            box["app"] = ControlPlaneApp(CaService(ca), credentials, box["distributor"], state_of,
                                         ping_interval=ping_interval, ack_timeout=ack_timeout,
                                         window=window, local_api=local_api)
            started.set()
            async with asyncio.TaskGroup() as tasks:
                reconciler = tasks.create_task(box["controller"].run()) if store is not None else None
                await serve(box["app"], listener, bundle, box["shutdown"])
                if reconciler is not None:
                    reconciler.cancel()

        asyncio.run(main())

    thread = threading.Thread(target=run, name="wisp-test-control-plane", daemon=True)
    thread.start()
    assert await trio.to_thread.run_sync(started.wait, 10)
    try:
        yield Plane(f"127.0.0.1:{port}", ca.roots_pem(), credentials, box["distributor"], box["loop"], box["app"])
    finally:
        box["loop"].call_soon_threadsafe(box["shutdown"].set)
        await trio.to_thread.run_sync(thread.join, 10)
        listener.close()
        assert not thread.is_alive()


STATE = ClusterState.of([
    pod("shop", "web-1", "node-a", sa="web"),
    pod("shop", "db-1", "node-b", sa="db"),
    pod("shop", "old-1", "node-a", sa="batch", phase="Succeeded"),
])


@pytest.fixture
async def plane(ca):
    async with control_plane(ca, STATE) as running:
        yield running


# -- CA ------------------------------------------------------------------------------------------


async def test_ztunnel_obtains_the_identity_of_a_pod_on_its_node(plane, ca):
    bundle = await fetch_certificate(plane.endpoint(plane.credentials.issue_ztunnel("node-a")), spiffe("shop", "web"))
    assert bundle.identity == spiffe("shop", "web")
    assert verify_chain(*certificates_of(bundle), "cluster.local") == spiffe("shop", "web")
    assert certificates_of(bundle)[2] == list(ca.roots)
    assert bundle.not_after - bundle.not_before > dt.timedelta(hours=1)


async def test_a_two_minute_certificate_is_the_shortest_signed_and_rotates_30_s_after_issue(plane):
    endpoint = plane.endpoint(plane.credentials.issue_ztunnel("node-a"))
    before = dt.datetime.now(dt.timezone.utc)
    bundle = await fetch_certificate(endpoint, spiffe("shop", "web"), 120)
    # Back-dated a minute for skew: valid 3 minutes, renewed half-way, 30 s from now.
    assert bundle.not_after - bundle.not_before == dt.timedelta(minutes=3)
    assert dt.timedelta(seconds=28) < bundle.rotation_time - before < dt.timedelta(seconds=32)


@pytest.mark.parametrize("node,sa,fragment", [
    ("node-a", "db", "no running pod with service account 'db'"),       # db runs on node-b
    ("node-a", "batch", "no running pod with service account 'batch'"),  # its only pod finished
    ("node-c", "web", "is on node 'node-c'"),
])
async def test_ztunnel_is_refused_identities_not_running_on_its_node(plane, node, sa, fragment):
    with pytest.raises(ControlPlaneError, match=fragment) as info:
        await fetch_certificate(plane.endpoint(plane.credentials.issue_ztunnel(node)), spiffe("shop", sa))
    assert info.value.status == 403


async def test_waypoint_obtains_only_its_own_identity(plane):
    own = spiffe("shop", "waypoint")
    endpoint = plane.endpoint(plane.credentials.issue_waypoint(own))
    assert (await fetch_certificate(endpoint, own)).identity == own
    with pytest.raises(ControlPlaneError, match="may only obtain its own identity") as info:
        await fetch_certificate(endpoint, spiffe("shop", "web"))
    assert info.value.status == 403


def _post(client, body):
    return client.post("/v1/certificates", content=body if isinstance(body, bytes) else json.dumps(body).encode())


@pytest.mark.parametrize("body,fragment", [
    (b"{not json", "not JSON"),
    ([1, 2], "JSON object"),
    ({"identity": "spiffe://cluster.local/ns/shop/sa/web"}, "'csr' must be"),
    ({"csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
      "identity": "spiffe://cluster.local/ns/shop/sa/web"}, "CSR is not a PEM"),
    ({"csr": "x", "identity": "spiffe://cluster.local/shop/web"}, "expected /ns/"),
    ({"csr": "x", "identity": "spiffe://cluster.local/ns/shop/sa/web", "ttl_seconds": 10 ** 9}, "ttl_seconds"),
    # Python's JSON accepts NaN and Infinity; these and 1e308 were 500s (a timedelta error).
    *[(b'{"csr": "x", "identity": "spiffe://cluster.local/ns/shop/sa/web", "ttl_seconds": %s}' % number,
       "'ttl_seconds' must be a finite number between 120 and 86400")
      for number in (b"NaN", b"Infinity", b"-Infinity", b"1e308", b"-1e308", b"1e20", b"9" * 400)],
    ({"csr": "x", "identity": "spiffe://cluster.local/ns/shop/sa/web", "ttl_seconds": 119}, "ttl_seconds"),
    ({"csr": "x", "identity": "spiffe://other.td/ns/shop/sa/web"}, "trust domain"),
])
async def test_malformed_certificate_requests_get_400_naming_the_problem(plane, body, fragment):
    async with plane.client(plane.credentials.issue_ztunnel("node-a")) as client:
        response = await _post(client, body)
    assert response.status_code in (400, 403)
    assert fragment in response.json()["error"]
    if "trust domain" not in fragment:
        assert response.status_code == 400


async def test_csr_whose_san_differs_from_the_requested_identity_gets_400(plane):
    key = generate_key()
    csr = make_csr(key, spiffe("shop", "db")).decode()
    async with plane.client(plane.credentials.issue_ztunnel("node-a")) as client:
        response = await _post(client, {"csr": csr, "identity": str(spiffe("shop", "web"))})
    assert response.status_code == 400
    assert "CSR asks for spiffe://cluster.local/ns/shop/sa/db" in response.json()["error"]


@pytest.mark.parametrize("header", [None, "Bearer not-a-token", "Basic abc"])
async def test_unknown_callers_get_401(plane, header):
    async with httpx.AsyncClient(http2=True, verify=ssl.create_default_context(cadata=plane.roots.decode())) as client:
        headers = {"authorization": header} if header else {}
        response = await client.post(f"https://{plane.address}/v1/certificates", headers=headers, json={})
    assert response.status_code == 401
    assert "bearer credential" in response.json()["error"]


async def test_control_plane_speaks_http2(plane):
    async with plane.client(plane.credentials.issue_ztunnel("node-a")) as client:
        response = await client.get("/healthz/ready")
    assert response.status_code == 200
    assert response.http_version == "HTTP/2"


# -- config stream -------------------------------------------------------------------------------


def _keys(snapshot: ModelSnapshot) -> set[str]:
    return {*snapshot.workloads, *snapshot.services, *snapshot.authorizations}


async def test_subscriber_gets_a_snapshot_then_deltas_and_acks_them(ca):
    async with control_plane(ca, STATE) as plane:
        first = ModelSnapshot.of([workload("shop", "web-1", "node-a")])
        plane.publish(first)
        updates = []
        subscriber = ConfigSubscriber(plane.endpoint(plane.credentials.issue_ztunnel("node-a")), "zt-a", updates.append)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscriber.run)
            await wait_until(lambda: len(updates) == 1)
            assert _keys(updates[0]) == {"Kubernetes//Pod/shop/web-1"}
            second = ModelSnapshot.of([workload("shop", "web-1", "node-a"), workload("shop", "web-2", "node-b")])
            version = plane.publish(second)
            await wait_until(lambda: len(updates) == 2)
            assert updates[1] == second
            await wait_until(lambda: plane.subscriber("zt-a").acked_version == version)
            nursery.cancel_scope.cancel()


async def test_reconnecting_subscriber_resumes_with_a_delta_from_its_version(ca):
    async with control_plane(ca, STATE) as plane:
        plane.publish(ModelSnapshot.of([workload("shop", "a", "node-a")]))
        token = plane.credentials.issue_ztunnel("node-a")
        view = ConfigView()
        async with plane.client(token) as client:
            async with client.stream("GET", "/v1/config", params={"subscriber": "zt"}) as response:
                async for line in response.aiter_lines():
                    assert view.apply(decode(line))
                    break
            plane.publish(ModelSnapshot.of([workload("shop", "a", "node-a"), workload("shop", "b", "node-a")]))
            plane.publish(ModelSnapshot.of([workload("shop", "b", "node-a")]))
            async with client.stream("GET", "/v1/config", params={"subscriber": "zt", "version": view.version}) as response:
                async for line in response.aiter_lines():
                    message = decode(line)
                    break
        assert message.type == "delta"
        view.apply(message)
        assert _keys(view.snapshot) == {"Kubernetes//Pod/shop/b"}


async def test_subscriber_too_far_behind_or_from_another_epoch_gets_a_snapshot(ca):
    async with control_plane(ca, STATE, history=2) as plane:
        old = plane.publish(ModelSnapshot.of([workload("shop", "a", "node-a")]))
        for name in "bcd":
            plane.publish(ModelSnapshot.of([workload("shop", name, "node-a")]))
        async with plane.client(plane.credentials.issue_ztunnel("node-a")) as client:
            for version in (old, "deadbeef-1"):
                async with client.stream("GET", "/v1/config", params={"version": version}) as response:
                    async for line in response.aiter_lines():
                        assert decode(line).type == "snapshot"
                        break


async def test_ztunnel_gets_only_authorizations_for_namespaces_on_its_node(ca):
    async with control_plane(ca, STATE) as plane:
        snapshot = ModelSnapshot.of([
            workload("shop", "web-1", "node-a"), workload("bank", "ledger-1", "node-b", ip="10.244.1.9"),
            authorization("shop", "shop-deny"), authorization("bank", "bank-deny"),
            authorization("istio-system", "mesh-deny", scope="GLOBAL"),
        ])
        plane.publish(snapshot)
        views = {}
        for node in ("node-a", "node-b"):
            async with plane.client(plane.credentials.issue_ztunnel(node)) as client:
                async with client.stream("GET", "/v1/config") as response:
                    async for line in response.aiter_lines():
                        views[node] = decode(line).snapshot
                        break
        assert set(views["node-a"].authorizations) == {"shop/shop-deny", "istio-system/mesh-deny"}
        assert set(views["node-b"].authorizations) == {"bank/bank-deny", "istio-system/mesh-deny"}
        # Every ztunnel still sees every workload: any of them can be a destination.
        assert len(views["node-a"].workloads) == len(views["node-b"].workloads) == 2


async def test_ztunnel_gets_selector_policies_its_workloads_list_from_any_namespace(ca):
    """Mesh-wide STRICT is a selector policy in the root namespace, listed by each workload."""
    strict = Authorization(name="istio_converted_static_strict", namespace="istio-system",
                           scope="WORKLOAD_SELECTOR", action="DENY")
    listing = Workload(uid="Kubernetes//Pod/shop/web-1", name="web-1", namespace="shop", addresses=("10.244.0.9",),
                       node="node-a", authorization_policies=("istio-system/istio_converted_static_strict",))
    async with control_plane(ca, STATE) as plane:
        plane.publish(ModelSnapshot.of([workload("shop", "web-1", "node-a"), strict]))
        updates = []
        subscriber = ConfigSubscriber(plane.endpoint(plane.credentials.issue_ztunnel("node-a")), "zt-a", updates.append)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscriber.run)
            await wait_until(lambda: len(updates) == 1)
            assert not updates[-1].authorizations
            plane.publish(ModelSnapshot.of([listing, strict]))
            await wait_until(lambda: len(updates) == 2)
            assert set(updates[-1].authorizations) == {"istio-system/istio_converted_static_strict"}
            nursery.cancel_scope.cancel()
        async with plane.client(plane.credentials.issue_ztunnel("node-b")) as client:
            async with client.stream("GET", "/v1/config") as response:
                async for line in response.aiter_lines():
                    assert not decode(line).snapshot.authorizations
                    break


async def test_workload_moving_onto_a_node_brings_its_namespace_policies_in_the_delta(ca):
    async with control_plane(ca, STATE) as plane:
        base = [workload("shop", "web-1", "node-a"), authorization("bank", "bank-deny")]
        plane.publish(ModelSnapshot.of(base))
        updates = []
        subscriber = ConfigSubscriber(plane.endpoint(plane.credentials.issue_ztunnel("node-a")), "zt-a", updates.append)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscriber.run)
            await wait_until(lambda: len(updates) == 1)
            assert not updates[-1].authorizations
            plane.publish(ModelSnapshot.of([*base, workload("bank", "ledger-1", "node-a", ip="10.244.0.10")]))
            await wait_until(lambda: len(updates) == 2)
            assert set(updates[-1].authorizations) == {"bank/bank-deny"}
            plane.publish(ModelSnapshot.of(base))
            await wait_until(lambda: len(updates) == 3)
            assert not updates[-1].authorizations
            nursery.cancel_scope.cancel()


async def test_slow_subscriber_never_blocks_the_others(ca):
    """A subscriber that stops reading gets no backlog; others keep getting every version."""
    async with control_plane(ca, STATE, ack_timeout=2.0) as plane:
        big = [workload("shop", f"w-{i}", "node-a", ip=f"10.244.{i // 250}.{i % 250}") for i in range(2000)]
        plane.publish(ModelSnapshot.of(big))
        token = plane.credentials.issue_ztunnel("node-a")
        stalled = await _stalled_subscriber(plane.address, plane.roots, token)
        try:
            updates = []
            subscriber = ConfigSubscriber(plane.endpoint(token), "fast", updates.append)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(subscriber.run)
                await wait_until(lambda: len(updates) == 1, timeout=10)
                for round_ in range(20):
                    # Every round rewrites every workload: ~360 KB per delta for the stalled one.
                    changed = [workload("shop", f"w-{i}", "node-a", ip=f"10.245.{round_}.{i % 250}")
                               for i in range(2000)]
                    version = plane.publish(ModelSnapshot.of(changed))
                    await wait_until(lambda: subscriber.view.version == version, timeout=5)
                nursery.cancel_scope.cancel()
            stalled_status = plane.subscriber("stalled")
            # It was sent messages until they filled its window of bytes, and nothing after.
            sizes = [size for _, size, _ in stalled_status.in_flight]
            assert sum(sizes[:-1]) < DEFAULT_WINDOW_BYTES <= sum(sizes)
            assert stalled_status.sent_version.endswith(f"-{len(sizes)}")
            assert stalled_status.acked_version is None
            # And, silent past the ack deadline, its stream is closed (it would resume from there).
            await wait_until(lambda: not stalled_status.connected, timeout=5)
        finally:
            stalled.close()


async def test_subscriber_that_stops_acking_gets_its_window_of_small_deltas_then_nothing(ca):
    async with control_plane(ca, STATE, ack_timeout=2.0, window=4) as plane:
        plane.publish(ModelSnapshot.of([workload("shop", "w-0", "node-a")]))
        token = plane.credentials.issue_ztunnel("node-a")
        stalled = await _stalled_subscriber(plane.address, plane.roots, token)
        try:
            for i in range(1, 10):
                plane.publish(ModelSnapshot.of([workload("shop", f"w-{i}", "node-a")]))
                await trio.sleep(0.02)
            status = plane.subscriber("stalled")
            await wait_until(lambda: len(status.in_flight) == 4)
            await trio.sleep(0.2)
            assert len(status.in_flight) == 4 and status.sent_version.endswith("-4")
            await wait_until(lambda: not status.connected, timeout=5)
        finally:
            stalled.close()


async def test_one_ack_covers_every_version_before_it(ca):
    async with control_plane(ca, STATE) as plane:
        plane.publish(ModelSnapshot.of([workload("shop", "w-0", "node-a")]))
        updates = []
        # A long ack delay: the burst below is acknowledged by one ack line, after it.
        subscriber = ConfigSubscriber(plane.endpoint(plane.credentials.issue_ztunnel("node-a")), "zt-a",
                                      updates.append, ack_delay=0.5)
        acks = []
        real_acked = plane.distributor.acked

        def counting_acked(subscriber_id, view, version, error, owner=None):
            acks.append(version)
            return real_acked(subscriber_id, view, version, error, owner)
        plane.distributor.acked = counting_acked
        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscriber.run)
            await wait_until(lambda: len(updates) == 1)
            for i in range(1, 6):
                version = plane.publish(ModelSnapshot.of([workload("shop", f"w-{i}", "node-a")]))
                await wait_until(lambda: subscriber.view.version == version)
            status = plane.subscriber("zt-a")
            await wait_until(lambda: status.acked_version == version)
            assert not status.in_flight
            assert acks[-1] == version and len(acks) <= 2
            nursery.cancel_scope.cancel()


async def _stalled_subscriber(address: str, roots: bytes, token: str) -> socket.socket:
    """Open a config stream with a raw HTTP/2 client that never reads again (nor widens windows)."""
    host, port = address.rsplit(":", 1)
    ctx = ssl.create_default_context(cadata=roots.decode())
    ctx.set_alpn_protocols(["h2"])
    raw = await sockets.open_tcp((host, int(port)))
    raw.setblocking(True)
    tls = ctx.wrap_socket(raw, server_hostname=host)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", address),
                          (":path", "/v1/config?subscriber=stalled"), ("authorization", f"Bearer {token}")],
                      end_stream=True)
    tls.sendall(conn.data_to_send())
    # Read just enough to see the response start, then stop reading forever.
    while True:
        events = conn.receive_data(tls.recv(65536))
        tls.sendall(conn.data_to_send())
        if any(isinstance(e, h2.events.ResponseReceived) for e in events):
            return tls


async def test_subscriber_keeps_its_config_while_the_control_plane_is_away(ca):
    credentials = LocalCredentials()
    token = credentials.issue_ztunnel("node-a")
    port = _free_port()
    first = ModelSnapshot.of([workload("shop", "web-1", "node-a")])
    second = ModelSnapshot.of([workload("shop", "web-2", "node-a")])
    async with trio.open_nursery() as nursery:
        async with control_plane(ca, STATE, port=port, credentials=credentials) as plane:
            plane.publish(first)
            subscriber = ConfigSubscriber(plane.endpoint(token), "zt-a", lambda _: None, backoff_min=0.05,
                                          backoff_max=0.2)
            nursery.start_soon(subscriber.run)
            await wait_until(lambda: subscriber.snapshot == first)
        # The control plane is gone: the subscriber retries and keeps serving what it had.
        reconnects = subscriber.reconnects
        await wait_until(lambda: subscriber.reconnects >= reconnects + 2)
        assert subscriber.snapshot == first
        async with control_plane(ca, STATE, port=port, credentials=credentials) as plane:
            plane.publish(second)
            await wait_until(lambda: subscriber.snapshot == second, timeout=10)
        nursery.cancel_scope.cancel()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- the duplex stream: acks and refusals ----------------------------------------------------


class DuplexStream:
    """A raw duplex config stream (`POST /v1/config`), read line by line."""

    def __init__(self, stream):
        self.stream = stream
        self.pending = b""

    async def line(self) -> dict | None:
        while b"\n" not in self.pending:
            chunk = await self.stream.receive_some()
            if not chunk:
                return None
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return json.loads(line)


@asynccontextmanager
async def duplex_stream(plane, token: str, subscriber: str):
    async with trio.open_nursery() as nursery:
        endpoint = plane.endpoint(token)
        conn = await connect(nursery, endpoint)
        try:
            yield DuplexStream(await open_config_stream(conn, endpoint, {"subscriber": subscriber}))
        finally:
            conn.close()


@pytest.mark.parametrize("line,fragment", [
    (b"not json", "ack must be {version, error}"),
    (b"[1]", "got list"),
    (b'{"error": null}', "missing 'version'"),
    (b'{"version": 7}', "version must be a string"),
    (b'{"version": "v", "error": 3}', "error must be a string or null"),
])
async def test_a_bad_ack_on_the_stream_closes_that_stream_only_and_says_why(ca, line, fragment):
    async with control_plane(ca, STATE) as plane:
        plane.publish(ModelSnapshot.of([workload("shop", "w-0", "node-a")]))
        token = plane.credentials.issue_ztunnel("node-a")
        updates = []
        good = ConfigSubscriber(plane.endpoint(token), "good", updates.append)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(good.run)
            await wait_until(lambda: len(updates) == 1)
            async with duplex_stream(plane, token, "bad") as bad:
                with trio.fail_after(5):
                    assert (await bad.line())["type"] == "snapshot"
                    await bad.stream.send_all(line + b"\n")
                    close = await bad.line()
                    assert close["type"] == "close" and fragment in close["reason"]
                    # Once we end our side, the control plane ends the response.
                    await bad.stream.send_eof()
                    assert await bad.line() is None
            await wait_until(lambda: not plane.subscriber("bad").connected)
            # The other stream goes on.
            version = plane.publish(ModelSnapshot.of([workload("shop", "w-1", "node-a")]))
            await wait_until(lambda: good.view.version == version)
            nursery.cancel_scope.cancel()


async def test_a_duplex_stream_without_acks_is_closed_with_the_reason(ca):
    async with control_plane(ca, STATE, ack_timeout=0.5) as plane:
        plane.publish(ModelSnapshot.of([workload("shop", "w-0", "node-a")]))
        async with duplex_stream(plane, plane.credentials.issue_ztunnel("node-a"), "silent") as silent:
            with trio.fail_after(5):
                assert (await silent.line())["type"] == "snapshot"
                assert await silent.line() == {"type": "close", "reason": "no ack within 0.5 s"}
                await silent.stream.send_eof()
                assert await silent.line() is None


async def test_acks_on_the_stream_keep_it_open_and_are_recorded(ca):
    async with control_plane(ca, STATE, ack_timeout=0.5) as plane:
        first = plane.publish(ModelSnapshot.of([workload("shop", "w-0", "node-a")]))
        async with duplex_stream(plane, plane.credentials.issue_ztunnel("node-a"), "acking") as acking:
            with trio.fail_after(5):
                assert (await acking.line())["version"] == first
                await acking.stream.send_all(b'{"version": "%s"}\n' % first.encode())
                status = plane.subscriber("acking")
                await wait_until(lambda: status.acked_version == first)
            await trio.sleep(1.0)  # twice the ack deadline: nothing is overdue
            assert status.connected and not status.in_flight


@pytest.mark.parametrize("body,fragment", [
    (b"{", "ack must be {subscriber, version, error}"),
    (b'{"version": "v"}', "missing 'subscriber'"),
    (b'{"subscriber": "zt", "version": "v", "error": []}', "error must be a string or null"),
])
async def test_a_bad_ack_request_gets_400_naming_the_problem(plane, body, fragment):
    async with plane.client(plane.credentials.issue_ztunnel("node-a")) as client:
        response = await client.post("/v1/config/ack", content=body)
    assert response.status_code == 400
    assert fragment in response.json()["error"]


async def test_only_proxies_may_subscribe_and_the_refusal_says_why(plane):
    subscriber = ConfigSubscriber(plane.endpoint(plane.credentials.issue_node_agent("node-a")), "agent",
                                  lambda _: None)
    with pytest.raises(ControlPlaneError, match="does not subscribe to config") as info:
        await subscriber._follow(resume=True)
    assert info.value.status == 403
    assert subscriber.view.version is None


def test_control_plane_endpoint_must_be_host_and_port():
    for bad in ("10.0.0.1", ":15012", "host:port", "host:0", "host:70000"):
        with pytest.raises(ValueError, match="is not host:port"):
            Endpoint(bad, b"", "t")
    assert Endpoint("[fd00::1]:15012", b"", "t").host == "fd00::1"


async def test_subscriber_nacks_what_it_cannot_apply_and_resyncs_from_a_snapshot(ca):
    """Against a stand-in control plane that first sends a delta for a version the subscriber
    does not hold: the NACK arrives on the stream, and the next request asks for a snapshot."""
    requests, nacks = [], []
    snapshot = (b'{"type":"snapshot","version":"e-2","resources":[{"kind":"workload","key":"k",'
                b'"value":{"uid":"k","name":"w","namespace":"shop"}}]}\n')

    async def handler(stream, headers):
        requests.append(headers[":path"])
        stream.conn.send_headers(stream, [(b":status", b"200")])
        if len(requests) == 1:
            await stream.send_all(b'{"type":"delta","version":"e-8","since":"e-7","upserts":[],"removals":[]}\n')
            body = b""
            while chunk := await stream.receive_some():
                body += chunk
            nacks.extend(json.loads(line) for line in body.splitlines())
            await stream.send_eof()
        else:
            await stream.send_all(snapshot)
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        address = await nursery.start(_stand_in_control_plane, ca, handler)
        updates = []
        subscriber = ConfigSubscriber(Endpoint(address, ca.roots_pem(), "t"), "zt-a", updates.append,
                                      backoff_min=0.01)
        nursery.start_soon(subscriber.run)
        await wait_until(lambda: len(updates) == 1)
        nursery.cancel_scope.cancel()
    assert nacks == [{"version": "", "error": "delta e-8 applies on e-7, but we hold None"}]
    assert "version=" not in requests[1] and "subscriber=zt-a" in requests[1]
    assert set(updates[0].workloads) == {"k"} and subscriber.view.version == "e-2"


async def _stand_in_control_plane(ca, handler, *, task_status=trio.TASK_STATUS_IGNORED):
    """HTTPS/HTTP2 on 127.0.0.1 whose every request goes to `handler(stream, headers)`."""
    from wisp.h2.trio import H2Connection, H2Settings
    from wisp.hbone.tls import TlsStream

    bundle = ca.issue_serving(spiffe("istio-system", "wisp-operator"), ip_addresses=("127.0.0.1",))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with bundle.pem_file() as path:
        ctx.load_cert_chain(path)
    ctx.set_alpn_protocols(["h2"])
    listener = sockets.listener(("127.0.0.1", 0), reuse_port=False)
    task_status.started(f"127.0.0.1:{listener.getsockname()[1]}")
    async with trio.open_nursery() as nursery:
        while True:
            sock, _ = await sockets.accept(listener)
            tls = await TlsStream.handshake(sock, ctx, server_side=True)
            conn = H2Connection(tls, client_side=False, settings=H2Settings(max_concurrent_streams=200),
                                on_request=handler)
            nursery.start_soon(conn.run)


async def test_a_duplex_stream_with_an_unknown_credential_is_refused_at_once(plane):
    subscriber = ConfigSubscriber(plane.endpoint("not-a-token"), "who", lambda _: None, connect_timeout=5)
    with pytest.raises(ControlPlaneError, match="bearer credential") as info:
        await subscriber._follow(resume=True)
    assert info.value.status == 401
