"""A waypoint's HTTP/2 shell between a test client and test endpoints, driven with bytes alone.

The client and each endpoint are wisp.h2 codecs the test drives; the waypoint side is the real
`Http2Proxy` with the real `Pipeline` over a compiled config (Services `echo` and `echo-v2` in
`shop`, one HBONE workload each). Streams to endpoints are `FakeEnd`s that record what the
waypoint wrote and deliver what the test's endpoint codec answers.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

from tests.support.balancer import FunctionBalancer
from wisp.h2 import testing
from wisp.h2.connection import Connection as H2
from wisp.h2.settings import Settings
from wisp.identity import SpiffeId
from wisp.model import ConfigObject, ModelSnapshot, PortMapping, Service, Workload

from waypoint.authz import WaypointRef
from waypoint.channel import Channel
from waypoint.config import compile_config
from waypoint.http2 import Http2Proxy
from waypoint.pipeline import ClientContext, Pipeline
from waypoint.telemetry import Telemetry
from waypoint.upstream import choose_endpoint

SHOP = "shop"
ECHO_VIP, V2_VIP = "10.96.0.10", "10.96.0.11"
ECHO_POD, V2_POD = "10.244.1.5", "10.244.1.6"
CLIENT = SpiffeId("cluster.local", "shop", "frontend")
GATEWAY = WaypointRef(SHOP, "waypoint")


def service(name: str, vip: str) -> Service:
    return Service(name, SHOP, f"{name}.{SHOP}.svc.cluster.local", (vip,), (PortMapping(80, 8080),))


def workload(name: str, ip: str) -> Workload:
    return Workload(f"{name}-uid", f"{name}-0", SHOP, (ip,), tunnel_protocol="HBONE", service_account=name,
                    services={f"{SHOP}/{name}.{SHOP}.svc.cluster.local": (PortMapping(80, 8080),)})


def config_object(obj: dict) -> ConfigObject:
    meta = obj["metadata"]
    return ConfigObject(obj["kind"], meta["namespace"], meta["name"], json.dumps(obj))


def snapshot(*objects: dict) -> ModelSnapshot:
    services = [service("echo", ECHO_VIP), service("echo-v2", V2_VIP)]
    workloads = [workload("echo", ECHO_POD), workload("echo-v2", V2_POD)]
    return ModelSnapshot(workloads={w.uid: w for w in workloads},
                         services={f"{s.namespace}/{s.hostname}": s for s in services},
                         objects={f"{o['kind']}/{SHOP}/{o['metadata']['name']}": config_object(o) for o in objects})


class FakeEnd:
    """A splice end standing in for an HBONE stream to an endpoint."""

    def __init__(self) -> None:
        self.splice = None
        self.sent = bytearray()
        self.eof = False
        self.aborted: str | None = None
        self.closed = False

    def start(self) -> None:
        pass

    def write(self, data) -> bool:
        self.sent += data
        return True

    def write_eof(self) -> None:
        self.eof = True
        if self.splice is not None:
            self.splice.direction_done()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def abort(self, reason: str) -> None:
        self.aborted = reason

    def close(self) -> None:
        self.closed = True

    def deliver(self, data: bytes) -> None:
        """Bytes from the far side; nothing arrives once the end was aborted or closed."""
        if self.splice is not None and self.aborted is None:
            self.splice.peer_of(self).write(data)

    def deliver_eof(self) -> None:
        if self.splice is not None and self.aborted is None:
            self.splice.peer_of(self).write_eof()

    def take(self) -> bytes:
        data = bytes(self.sent)
        del self.sent[:]
        return data


class FakeTimer:
    """A timer the test fires by hand."""

    def __init__(self, delay: float, callback) -> None:
        self.delay = delay
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        assert not self.cancelled
        self.callback()


class ClientTransport(FakeEnd):
    """The inbound tunnel: what the waypoint writes to the client."""


@dataclass
class Endpoint:
    """One upstream stream the waypoint opened, and the test's server codec behind it."""

    address: str
    end: FakeEnd | None
    callback: object
    codec: H2 = field(default_factory=lambda: H2(client=False, local=Settings()))
    events: list = field(default_factory=list)

    def pump(self) -> list:
        """Waypoint → endpoint; returns the endpoint's new events."""
        events = self.codec.receive(self.end.take())
        self.events += events
        return events

    def answer(self) -> None:
        """Endpoint → waypoint."""
        data = testing.take(self.codec)
        if data:
            self.end.deliver(data)


class Rig:
    """Client codec ⇄ Http2Proxy ⇄ endpoint codecs."""

    def __init__(self, *objects: dict, client_settings: Settings | None = None, connect: bool = True,
                 identity: SpiffeId | None = CLIENT) -> None:
        self.config = compile_config(snapshot(*objects), GATEWAY, "1")
        self.rng = random.Random(0)
        self.endpoints: list[Endpoint] = []
        self.connect = connect
        self.pipeline = Pipeline(lambda: self.config,
                                 FunctionBalancer(lambda cfg, svc, port: choose_endpoint(cfg, svc, port, self.rng)),
                                 self._open,
                                 rng=self.rng)
        self.done: list = []
        self.telemetry = Telemetry(access_log=False)
        self.timers: list[FakeTimer] = []
        self.proxy = Http2Proxy(self.pipeline, telemetry=self.telemetry, call_later=self._call_later,
                                on_exchange_done=self.done.append)
        self.client = H2(client=True, local=client_settings or Settings())
        self.client.initiate()
        self.transport = FakeEnd()
        self.channel = Channel(self.transport)
        ctx = ClientContext(identity, "10.244.0.9", 40000, ECHO_VIP, 80)
        self.down = self.proxy.serve(self.channel, ctx, testing.take(self.client))
        self.client_events: list = []
        self.pump_client()

    def _call_later(self, delay: float, callback) -> FakeTimer:
        timer = FakeTimer(delay, callback)
        self.timers.append(timer)
        return timer

    def route_timers(self, delay: float = 2.0) -> list[FakeTimer]:
        """The timers a route's request timeout of `delay` started (not the idle sweep)."""
        return [t for t in self.timers if t.delay == delay]

    def _open(self, endpoint, on_stream) -> None:
        end = FakeEnd()
        ep = Endpoint(endpoint.address, end, on_stream)
        self.endpoints.append(ep)
        if self.connect:
            on_stream(end, None)

    # -- moving bytes --------------------------------------------------------------------------------
    def send(self) -> None:
        """Client → waypoint."""
        data = testing.take(self.client)
        if data:
            self.transport.deliver(data)

    def pump_client(self) -> list:
        """Waypoint → client; returns the client's new events."""
        events = self.client.receive(self.transport.take())
        self.client_events += events
        return events

    def settle(self, rounds: int = 6) -> None:
        """Move bytes every way until nothing moves."""
        for _ in range(rounds):
            self.send()
            for ep in self.endpoints:
                if ep.end is not None and ep.end.splice is not None:
                    ep.pump()
                    ep.answer()
            self.pump_client()

    def request(self, path: str = "/", method: str = "GET", headers: list[tuple[str, str]] = (),
                end_stream: bool = True, authority: str = "echo.shop.svc.cluster.local") -> int:
        fields = [(":method", method), (":scheme", "http"), (":authority", authority), (":path", path), *headers]
        sid = self.client.open_stream(fields, end_stream=end_stream)
        self.send()
        return sid

    def grpc(self, rpc: str, headers: list[tuple[str, str]] = (), end_stream: bool = False) -> int:
        return self.request(rpc, "POST", [("content-type", "application/grpc"), ("te", "trailers"), *headers],
                            end_stream=end_stream)
