"""The HTTP/1.1 shell finishes each attempt's lease with its outcome, and its pool applies the
DestinationRule's connection pool (waypoint/http1/downstream.py and upstream.py with a real
`Balancer`), with bytes alone as in test_http1_proxy."""

from __future__ import annotations

import random
import time

import pytest

from waypoint.authz import WaypointRef
from waypoint.balance.balancer import Balancer, attempt_status
from waypoint.channel import Channel
from waypoint.config import compile_config
from waypoint.http1.downstream import Http1Downstream, Http1Inputs
from waypoint.http1.upstream import Http1Pool
from waypoint.pipeline import ClientContext, Pipeline
from waypoint.telemetry import Telemetry
from wisp.engine.loop import Loop
from wisp.identity import SpiffeId
from wisp.model import ModelSnapshot

from .test_http1_proxy import ECHO, POD, FakeEnd

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
CTX = ClientContext(SpiffeId("cluster.local", "shop", "client"), "10.244.2.9", 40000, "10.96.0.10", 80)


def _rule(policy: dict) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "echo", "namespace": "shop"}, "spec": {"host": "echo", "trafficPolicy": policy}}


class Rig:
    def __init__(self, policy: dict, *, refuse: bool = False) -> None:
        config = compile_config(ModelSnapshot.of([POD, ECHO]), WaypointRef("shop", "waypoint"), "v1", [_rule(policy)])
        self.upstreams: list[FakeEnd] = []
        self.soon: list = []
        self.downs: list[Http1Downstream] = []

        def open_upstream(endpoint, on_stream) -> None:
            if refuse:
                on_stream(None, "connection refused")
                return
            end = FakeEnd()
            self.upstreams.append(end)
            on_stream(end, None)

        self.balancer = Balancer(random.Random(1), call_soon=self.soon.append)
        self.pipeline = Pipeline(lambda: config, self.balancer, open_upstream)
        self.loop = Loop()
        self.pool = Http1Pool(self.loop, self.pipeline)
        self.inputs = Http1Inputs(self.loop, self.pipeline, self.pool, Telemetry(access_log=False))

    def client(self) -> FakeEnd:
        end = FakeEnd()
        self.downs.append(Http1Downstream(self.inputs, Channel(end), CTX))
        return end

    def state(self):
        return self.balancer.state_of("10.244.1.5", 8080)

    def run_soon(self) -> None:
        while self.soon:
            self.soon.pop(0)()

    def close(self) -> None:
        self.loop.close()


@pytest.fixture
def rigs():
    made = []
    yield lambda *a, **k: made.append(Rig(*a, **k)) or made[-1]
    for rig in made:
        rig.close()


GET = b"GET / HTTP/1.1\r\nhost: echo\r\n\r\n"


def answer_all(rig: Rig, client: FakeEnd, response: bytes, seconds: float = 2.0) -> tuple[bytes, int]:
    """Answer every attempt upstream with `response` (a retry policy may send several, after a
    backoff on the loop's timers) until the client has its answer: (that answer, attempts)."""
    attempts = 0
    deadline = time.monotonic() + seconds
    answer = b""
    while time.monotonic() < deadline:
        for end in rig.upstreams:
            if end.take():
                attempts += 1
                end.deliver(response)
        rig.run_soon()
        answer += client.take()
        if answer:
            return answer, attempts
        rig.loop.run_once(0.01)
    raise AssertionError("the client got no answer")


def test_each_attempt_finishes_its_lease_with_the_endpoints_5xx(rigs):
    rig = rigs({"outlierDetection": {"consecutive5xxErrors": 100}})
    client = rig.client()
    client.deliver(GET)
    assert rig.state().outstanding == 1
    answer, attempts = answer_all(rig, client, UNAVAILABLE)
    assert answer.startswith(b"HTTP/1.1 503") and attempts >= 1
    assert rig.state().outstanding == 0 and rig.state().consecutive_5xx == attempts
    client.deliver(GET)
    answer, _ = answer_all(rig, client, OK)
    assert answer.endswith(b"ok") and rig.state().consecutive_5xx == 0


def test_a_refused_connection_counts_as_a_gateway_error(rigs):
    rig = rigs({"outlierDetection": {"consecutiveGatewayErrors": 1, "consecutive5xxErrors": 0}}, refuse=True)
    client = rig.client()
    client.deliver(GET)
    answer, _ = answer_all(rig, client, OK)
    assert answer.startswith(b"HTTP/1.1 503")
    assert rig.state().ejected and rig.state().outstanding == 0


def test_a_client_that_goes_away_is_not_the_endpoints_failure(rigs):
    rig = rigs({"outlierDetection": {"consecutive5xxErrors": 1}})
    client = rig.client()
    client.deliver(GET)
    rig.downs[-1].closed("the client went away")
    assert rig.state().outstanding == 0 and rig.state().consecutive_5xx == 0 and not rig.state().ejected


def test_beyond_max_connections_a_request_waits_and_beyond_pending_it_overflows(rigs):
    rig = rigs({"connectionPool": {"tcp": {"maxConnections": 1}, "http": {"http1MaxPendingRequests": 1}}})
    first, second, third = rig.client(), rig.client(), rig.client()
    first.deliver(GET)
    second.deliver(GET)
    assert len(rig.upstreams) == 1  # the second waits for the first's slot
    third.deliver(GET)
    answer = third.take()
    assert answer.startswith(b"HTTP/1.1 503") and b"x-envoy-overloaded: true\r\n" in answer
    rig.upstreams[0].deliver(OK)
    assert first.take().endswith(b"ok")
    rig.run_soon()  # the waiting request resumes on the loop
    assert second.take() == b""
    rig.upstreams[-1].deliver(OK)
    assert second.take().endswith(b"ok")
    assert rig.balancer.overflows == 1


def test_max_requests_per_connection_one_turns_keep_alive_off_upstream(rigs):
    rig = rigs({"connectionPool": {"http": {"maxRequestsPerConnection": 1}}})
    client = rig.client()
    for _ in range(2):
        client.deliver(GET)
        rig.upstreams[-1].deliver(OK)
        assert client.take().endswith(b"ok")
    assert len(rig.upstreams) == 2 and rig.upstreams[0].aborted and rig.upstreams[1].aborted
    assert rig.pool.open_connections == 0


def test_grpc_answers_count_as_envoy_maps_them():
    assert attempt_status(200, 14) == 503 and attempt_status(200, 0) == 200 and attempt_status(200, None) == 200
    assert attempt_status(503, None) == 503 and attempt_status(0, None) is None


def test_http2_connections_carry_max_requests_per_connection_streams_then_close():
    from types import SimpleNamespace

    from waypoint.config import Endpoint
    from waypoint.http2.exchange import Outbox
    from waypoint.http2.upstream import UpstreamPool

    pool = UpstreamPool(lambda endpoint, on_stream: None, Outbox())
    endpoint = Endpoint("10.244.1.5", 8080, None, False)
    lease = SimpleNamespace(per_connection=2)
    fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"echo")]
    first = pool.connection_for(endpoint, lease)
    exchanges = [SimpleNamespace(up_sid=0) for _ in range(2)]
    for exchange in exchanges:
        exchange.up_sid = first.open(exchange, fields, True)
    second = pool.connection_for(endpoint, lease)
    assert second is not first  # two streams carried: no room for a third
    assert pool.connection_for(endpoint) is first or pool.connection_for(endpoint) is second
    for exchange in exchanges:
        first.exchange_done(exchange)
    assert first.failed == "maxRequestsPerConnection reached" and first not in pool.connections()
