"""The HTTP/1.1 shell (waypoint/http1/downstream.py, upstream.py) with bytes alone.

Both streams are `FakeEnd`s: what the shell writes is recorded, and bytes "arrive" the way the
engine delivers them, through the end's splice (here the shell's `Channel`). No socket, no loop
pass: the pipeline's upstream opener hands out a new FakeEnd at once.
"""

from __future__ import annotations

import random

import pytest

from tests.support.balancer import FunctionBalancer
from waypoint.authz import WaypointRef
from waypoint.channel import Channel
from waypoint.config import compile_config
from waypoint.http1.downstream import Http1Downstream, Http1Inputs
from waypoint.http1.upstream import Http1Pool
from waypoint.pipeline import ClientContext, Pipeline
from waypoint.telemetry import Telemetry
from waypoint.upstream import choose_endpoint
from wisp.engine.loop import Loop
from wisp.identity import SpiffeId
from wisp.model import ModelSnapshot, PortMapping, Service, Workload, config_object

HOST = "echo.shop.svc.cluster.local"
ECHO = Service("echo", "shop", HOST, ("10.96.0.10",), (PortMapping(80, 8080),))
POD = Workload("u1", "echo-1", "shop", ("10.244.1.5",), tunnel_protocol="HBONE",
               services={f"shop/{HOST}": (PortMapping(80, 8080),)})
DENY_DELETE = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
               "metadata": {"name": "no-delete", "namespace": "shop"},
               "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "echo"}], "action": "DENY",
                        "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]}}


class FakeEnd:
    """A splice end that records writes; `deliver` plays bytes read from it."""

    def __init__(self) -> None:
        self.splice = None
        self.written = bytearray()
        self.eof = False
        self.aborted: str | None = None
        self.closed = False
        self.paused = False

    def start(self) -> None:
        pass

    def write(self, data) -> bool:
        self.written += data
        return True

    def write_eof(self) -> None:
        self.eof = True
        self.splice.direction_done()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def abort(self, reason: str) -> None:
        self.aborted = reason

    def close(self) -> None:
        self.closed = True

    def deliver(self, data: bytes) -> bool:
        return self.splice.peer_of(self).write(memoryview(data))

    def deliver_eof(self) -> None:
        self.splice.peer_of(self).write_eof()

    def take(self) -> bytes:
        data = bytes(self.written)
        self.written.clear()
        return data


class Rig:
    def __init__(self) -> None:
        snapshot = ModelSnapshot.of([POD, ECHO, config_object(DENY_DELETE)])
        config = compile_config(snapshot, WaypointRef("shop", "waypoint"), "v1")
        rng = random.Random(3)
        self.upstreams: list[FakeEnd] = []

        def open_upstream(endpoint, on_stream) -> None:
            end = FakeEnd()
            self.upstreams.append(end)
            on_stream(end, None)

        self.pipeline = Pipeline(lambda: config, FunctionBalancer(lambda c, s, p: choose_endpoint(c, s, p, rng)), open_upstream,
                                 rng)
        self.loop = Loop()
        self.pool = Http1Pool(self.loop, self.pipeline)
        self.telemetry = Telemetry(access_log=False)
        self.client = FakeEnd()
        ctx = ClientContext(SpiffeId("cluster.local", "shop", "client"), "10.244.2.9", 40000, "10.96.0.10", 80)
        self.down = Http1Downstream(Http1Inputs(self.loop, self.pipeline, self.pool, self.telemetry),
                                    Channel(self.client), ctx)

    def close(self) -> None:
        self.loop.close()


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\nx-up: 1\r\n\r\nok"


def test_a_request_goes_upstream_without_hop_by_hop_and_the_answer_comes_back(rig):
    rig.client.deliver(b"GET /a HTTP/1.1\r\nhost: echo\r\nconnection: x-priv\r\nx-priv: 1\r\nte: trailers\r\n"
                       b"x-keep: yes\r\n\r\n")
    upstream = rig.upstreams[0]
    sent = upstream.take()
    assert sent.startswith(b"GET /a HTTP/1.1\r\nhost: echo\r\nx-keep: yes\r\n")
    assert b"x-priv" not in sent and b"te:" not in sent and b"x-forwarded-for: 10.244.2.9\r\n" in sent
    upstream.deliver(OK)
    answer = rig.client.take()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nok")
    assert b"keep-alive" not in answer and b"x-up: 1\r\n" in answer


def test_keep_alive_both_ways_reuses_the_upstream_connection(rig):
    for _ in range(3):
        rig.client.deliver(b"GET / HTTP/1.1\r\nhost: echo\r\n\r\n")
        rig.upstreams[-1].deliver(OK)
        assert rig.client.take().endswith(b"ok")
    assert len(rig.upstreams) == 1 and rig.pool.reused == 2


def test_pipelined_requests_are_answered_in_order_one_at_a_time(rig):
    rig.client.deliver(b"GET /1 HTTP/1.1\r\nhost: echo\r\n\r\nGET /2 HTTP/1.1\r\nhost: echo\r\n\r\n")
    upstream = rig.upstreams[0]
    assert upstream.take().startswith(b"GET /1 ")  # /2 waits for /1's response
    upstream.deliver(OK)
    assert upstream.take().startswith(b"GET /2 ")
    upstream.deliver(OK)
    assert rig.client.take().count(b"HTTP/1.1 200 OK") == 2


def test_a_chunked_body_is_re_encoded_and_a_close_delimited_answer_is_re_chunked(rig):
    rig.client.deliver(b"POST /p HTTP/1.1\r\nhost: echo\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
    rig.client.deliver(b"0\r\n\r\n")
    upstream = rig.upstreams[0]
    assert upstream.take().endswith(b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    upstream.deliver(b"HTTP/1.1 200 OK\r\n\r\nstream")
    upstream.deliver_eof()
    answer = rig.client.take()
    assert b"transfer-encoding: chunked\r\n" in answer and answer.endswith(b"6\r\nstream\r\n0\r\n\r\n")


def test_expect_100_continue_is_answered_by_the_waypoint_and_not_forwarded(rig):
    rig.client.deliver(b"PUT /x HTTP/1.1\r\nhost: echo\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n")
    assert rig.client.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    rig.client.deliver(b"hi")
    sent = rig.upstreams[0].take()
    assert b"expect" not in sent.lower() and sent.endswith(b"content-length: 2\r\n\r\nhi")


def test_a_denied_request_gets_403_and_its_body_is_dropped_on_a_kept_connection(rig):
    rig.client.deliver(b"DELETE /x HTTP/1.1\r\nhost: echo\r\ncontent-length: 4\r\n\r\nbody")
    answer = rig.client.take()
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n") and answer.endswith(b"RBAC: access denied")
    assert not rig.upstreams
    rig.client.deliver(b"GET / HTTP/1.1\r\nhost: echo\r\n\r\n")
    assert rig.upstreams[0].take().startswith(b"GET / HTTP/1.1")
    assert rig.telemetry.value("istio_requests_total", response_code="403", response_flags="RBAC") == 1


def test_denied_requests_without_a_body_are_answered_one_after_another_on_a_kept_connection(rig):
    for _ in range(2):
        rig.client.deliver(b"DELETE /a HTTP/1.1\r\nhost: echo\r\n\r\n")
        assert rig.client.take().startswith(b"HTTP/1.1 403")
    assert rig.upstreams == []


def test_a_malformed_request_is_400_with_connection_close_and_the_stream_ends(rig):
    rig.client.deliver(b"GET /a b HTTP/1.1\r\nhost: echo\r\n\r\n")
    answer = rig.client.take()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"connection: close\r\n" in answer
    assert rig.client.eof


def test_a_client_that_stops_mid_body_ends_the_upstream_too(rig):
    rig.client.deliver(b"POST /x HTTP/1.1\r\nhost: echo\r\ncontent-length: 10\r\n\r\nabc")
    upstream = rig.upstreams[0]
    rig.client.deliver_eof()
    assert upstream.aborted is not None
    assert rig.client.aborted is not None or rig.client.closed
    assert rig.telemetry.value("istio_requests_total", response_flags="DR") == 1


def test_an_upstream_that_fails_before_answering_gives_503(rig):
    rig.client.deliver(b"GET / HTTP/1.1\r\nhost: echo\r\n\r\n")
    rig.upstreams[0].splice.fail("connection reset by peer")
    answer = rig.client.take()
    assert answer.startswith(b"HTTP/1.1 503 ") and b"connection reset by peer" in answer


def test_an_upstream_that_fails_mid_response_resets_the_client(rig):
    rig.client.deliver(b"GET / HTTP/1.1\r\nhost: echo\r\n\r\n")
    upstream = rig.upstreams[0]
    upstream.deliver(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
    upstream.splice.fail("connection reset by peer")
    assert rig.client.aborted is not None


def test_a_mirror_gets_a_copy_of_the_request_and_its_answer_is_dropped():
    shadow = Service("shadow", "shop", "shadow.shop.svc.cluster.local", ("10.96.0.11",), (PortMapping(80, 9090),))
    shadow_pod = Workload("u2", "shadow-1", "shop", ("10.244.1.6",), tunnel_protocol="HBONE",
                          services={"shop/shadow.shop.svc.cluster.local": (PortMapping(80, 9090),)})
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "mirrored", "namespace": "shop"},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}],
                      "rules": [{"filters": [{"type": "RequestMirror",
                                              "requestMirror": {"backendRef": {"name": "shadow", "port": 80}}}],
                                 "backendRefs": [{"name": "echo", "port": 80}]}]}}
    rig = Rig()
    try:
        snapshot = ModelSnapshot.of([POD, ECHO, shadow, shadow_pod, config_object(route)])
        config = compile_config(snapshot, WaypointRef("shop", "waypoint"), "v2")
        rig.pipeline.current = lambda: config
        rig.client.deliver(b"POST /m HTTP/1.1\r\nhost: echo\r\ncontent-length: 3\r\n\r\nabc")
        real, mirror = rig.upstreams[0], rig.upstreams[1]
        if b"echo-shadow" in real.written:
            real, mirror = mirror, real
        mirrored = mirror.take()
        assert mirrored.startswith(b"POST /m HTTP/1.1\r\nhost: echo-shadow\r\n")
        assert mirrored.endswith(b"3\r\nabc\r\n0\r\n\r\n")  # the body, chunked
        mirror.deliver(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")
        real.deliver(OK)
        answer = rig.client.take()
        assert answer.startswith(b"HTTP/1.1 200 OK") and b"500" not in answer
    finally:
        rig.close()


def test_an_http10_request_without_host_gets_the_dialled_service_name_and_a_closed_connection(rig):
    rig.client.deliver(b"GET /old HTTP/1.0\r\n\r\n")
    assert rig.upstreams[0].take().startswith(b"GET /old HTTP/1.1\r\nhost: echo.shop.svc.cluster.local\r\n")
    rig.upstreams[0].deliver(OK)
    answer = rig.client.take()
    assert answer.startswith(b"HTTP/1.1 200 OK") and b"connection: close\r\n" in answer and rig.client.eof
