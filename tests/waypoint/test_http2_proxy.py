"""HTTP/2 (h2c) and gRPC through the waypoint's shell, with bytes alone: routing, multiplexing,
flow control both ways, trailers, resets, the waypoint's own answers, and a client that breaks
flow control losing its connection while another client's request goes on."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wisp.h2 import frames, testing
from wisp.h2.connection import Connection as H2
from wisp.h2.events import DataReceived, HeadersReceived, StreamReset

from tests.waypoint.http2_harness import ECHO_POD, V2_POD, ClientTransport, Rig
from waypoint.channel import Channel
from waypoint.http2 import looks_like_http2
from waypoint.pipeline import ClientContext

GRPC_ROUTE = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
    "metadata": {"name": "echo-grpc", "namespace": "shop", "creationTimestamp": "2024-01-01T00:00:00Z"},
    "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}],
             "rules": [{"matches": [{"method": {"service": "pkg.Echo", "method": "Say"}}],
                        "filters": [{"type": "RequestHeaderModifier",
                                     "requestHeaderModifier": {"add": [{"name": "x-route", "value": "grpc"}]}}],
                        "backendRefs": [{"name": "echo-v2", "port": 80}]}]},
}
DENY_POST = {
    "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
    "metadata": {"name": "no-post", "namespace": "shop"},
    "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "echo"}], "action": "DENY",
             "rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]},
}


TIMEOUT_ROUTE = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
    "metadata": {"name": "echo-timeout", "namespace": "shop", "creationTimestamp": "2024-01-01T00:00:00Z"},
    "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}],
             "rules": [{"timeouts": {"request": "2s"}, "backendRefs": [{"name": "echo", "port": 80}]}]},
}


def headers_of(events, sid):
    return [e for e in events if isinstance(e, HeadersReceived) and e.stream_id == sid]


def body_of(events, sid):
    return b"".join(bytes(e.data) for e in events if isinstance(e, DataReceived) and e.stream_id == sid)


def field(block, name):
    return dict(block.headers).get(name)


def respond(ep, sid, status="200", body=b"", trailers=None, extra=()):
    ep.codec.send_headers(sid, [(":status", status), *extra], end_stream=not body and trailers is None)
    if body:
        ep.codec.send_data(sid, body, end_stream=trailers is None)
    if trailers is not None:
        ep.codec.send_headers(sid, trailers, end_stream=True)
    ep.answer()


def test_preface_is_recognised_from_its_first_bytes():
    assert looks_like_http2(frames.PREFACE + b"\0\0") is True
    assert looks_like_http2(b"PRI * HT") is None
    assert looks_like_http2(b"GET / HTTP/1.1\r\n") is False


def test_request_goes_to_the_dialled_service_with_forwarding_headers_and_the_answer_comes_back():
    rig = Rig()
    sid = rig.request("/hello?x=1")
    [ep] = rig.endpoints
    assert ep.address == ECHO_POD
    [req] = headers_of(ep.pump(), 1)
    got = dict(req.headers)
    assert got[":path"] == "/hello?x=1" and got[":authority"] == "echo.shop.svc.cluster.local"
    assert got["x-forwarded-for"] == "10.244.0.9" and got["traceparent"].startswith("00-")
    assert req.end_stream
    respond(ep, 1, body=b"hi there", extra=[("content-type", "text/plain")])
    events = rig.pump_client()
    [resp] = headers_of(events, sid)
    assert field(resp, ":status") == "200"
    assert body_of(events, sid) == b"hi there"
    assert rig.done[0].status == 200 and not rig.down.exchanges


def test_grpc_route_chooses_the_backend_by_service_and_method_and_trailers_carry_the_status():
    rig = Rig(GRPC_ROUTE)
    sid = rig.grpc("/pkg.Echo/Say")
    rig.client.send_data(sid, b"\0\0\0\0\x03abc", end_stream=True)
    rig.send()
    [ep] = rig.endpoints
    assert ep.address == V2_POD
    events = ep.pump()
    [req] = headers_of(events, 1)
    assert dict(req.headers)["x-route"] == "grpc" and dict(req.headers)["te"] == "trailers"
    assert body_of(events, 1) == b"\0\0\0\0\x03abc"
    respond(ep, 1, body=b"\0\0\0\0\x02ok", trailers=[("grpc-status", "0"), ("grpc-message", "fine")],
            extra=[("content-type", "application/grpc")])
    events = rig.pump_client()
    response, trailers = headers_of(events, sid)
    assert field(response, ":status") == "200" and not response.end_stream
    assert body_of(events, sid) == b"\0\0\0\0\x02ok"
    assert field(trailers, "grpc-status") == "0" and trailers.end_stream
    assert rig.done[0].grpc_status == 0


def test_grpc_calls_are_counted_with_protocol_grpc_and_their_status():
    rig = Rig(DENY_POST)
    rig.grpc("/pkg.Echo/Say", end_stream=True)
    rig.request("/plain")
    [ep] = rig.endpoints
    ep.pump()
    respond(ep, 1, body=b"ok")
    rig.pump_client()
    assert rig.telemetry.value("istio_requests_total", reporter="waypoint", request_protocol="grpc",
                               response_code="200", grpc_response_status="7", response_flags="RBAC") == 1
    assert rig.telemetry.value("istio_requests_total", reporter="waypoint", request_protocol="http",
                               response_code="200", destination_service_name="echo",
                               destination_principal="spiffe://cluster.local/ns/shop/sa/echo") == 1


def test_unmatched_grpc_method_is_answered_unimplemented_without_an_upstream():
    rig = Rig(GRPC_ROUTE)
    sid = rig.grpc("/pkg.Echo/Shout", end_stream=True)
    [answer] = headers_of(rig.pump_client(), sid)
    assert answer.end_stream and field(answer, ":status") == "200"
    assert field(answer, "grpc-status") == "12"
    assert rig.endpoints == []


def test_denied_grpc_call_gets_permission_denied_trailers_only_as_envoy_answers():
    rig = Rig(DENY_POST)
    sid = rig.grpc("/pkg.Echo/Say")
    events = rig.pump_client()
    [answer] = headers_of(events, sid)
    assert answer.end_stream
    assert field(answer, ":status") == "200" and field(answer, "content-type") == "application/grpc"
    assert field(answer, "grpc-status") == "7" and field(answer, "grpc-message") == "RBAC: access denied"
    # The request had not ended: the waypoint stops it (RFC 9113 §8.1) and opens nothing upstream.
    assert [e.error_code for e in events if isinstance(e, StreamReset)] == [frames.NO_ERROR]
    assert rig.endpoints == []


def test_denied_http2_request_gets_403_rbac_access_denied():
    rig = Rig(DENY_POST)
    sid = rig.request("/", "POST")
    events = rig.pump_client()
    [answer] = headers_of(events, sid)
    assert field(answer, ":status") == "403"
    assert body_of(events, sid) == b"RBAC: access denied"


def test_streams_of_one_client_share_one_upstream_connection():
    rig = Rig()
    first, second = rig.request("/a"), rig.request("/b")
    [ep] = rig.endpoints
    events = ep.pump()
    assert [dict(e.headers)[":path"] for e in headers_of(events, 1) + headers_of(events, 3)] == ["/a", "/b"]
    respond(ep, 3, body=b"b")
    respond(ep, 1, body=b"a")
    events = rig.pump_client()
    assert body_of(events, first) == b"a" and body_of(events, second) == b"b"


def test_request_body_larger_than_the_endpoint_window_waits_for_it_and_arrives_whole():
    rig = Rig()
    sid = rig.request("/upload", "POST", end_stream=False)
    body = bytes(range(256)) * 800  # 204,800 bytes; the endpoint grants 65,535
    rig.client.send_data(sid, body, end_stream=True)
    rig.send()
    [ep] = rig.endpoints
    received = body_of(ep.pump(), 1)
    assert len(received) == frames.DEFAULT_WINDOW - 0  # the endpoint's window, not a byte more
    while len(received) < len(body):
        ep.codec.consumed(1, len(received))
        ep.answer()
        rig.settle(1)
        received = body_of(ep.events, 1)
    assert received == body
    assert any(isinstance(e, DataReceived) and e.end_stream for e in ep.events)


def test_response_body_larger_than_the_client_window_waits_for_it_and_arrives_whole():
    rig = Rig()
    sid = rig.request("/download")
    [ep] = rig.endpoints
    ep.pump()
    body = b"z" * 200_000
    ep.codec.send_headers(1, [(":status", "200")])
    # The waypoint gives the endpoint 1 MiB of stream window; its sends are only bounded by that.
    sent = min(len(body), ep.codec.send_window(1))
    ep.codec.send_data(1, body[:sent])
    ep.answer()
    got = body_of(rig.pump_client(), sid)
    assert len(got) == frames.DEFAULT_WINDOW  # the client's default window
    while len(body_of(rig.client_events, sid)) < sent:
        rig.client.consumed(sid, len(body_of(rig.client_events, sid)))
        rig.settle(1)
    assert body_of(rig.client_events, sid) == body[:sent]


def test_trailers_wait_behind_data_the_client_has_no_window_for():
    rig = Rig()
    sid = rig.grpc("/pkg.Echo/Stream", end_stream=True)
    [ep] = rig.endpoints
    ep.pump()
    respond(ep, 1, body=b"m" * 100_000, trailers=[("grpc-status", "0")], extra=[("content-type", "application/grpc")])
    events = rig.pump_client()
    assert len(headers_of(events, sid)) == 1  # the response; the trailers wait for the data
    while len(headers_of(rig.client_events, sid)) < 2:
        rig.client.consumed(sid, len(body_of(rig.client_events, sid)))
        rig.settle(1)
    assert body_of(rig.client_events, sid) == b"m" * 100_000
    assert field(headers_of(rig.client_events, sid)[1], "grpc-status") == "0"


def test_client_reset_cancels_the_upstream_stream():
    rig = Rig()
    sid = rig.request("/slow", end_stream=False)
    [ep] = rig.endpoints
    ep.pump()
    rig.client.reset_stream(sid)
    rig.send()
    resets = [e for e in ep.pump() if isinstance(e, StreamReset)]
    assert [(r.stream_id, r.error_code) for r in resets] == [(1, frames.CANCEL)]
    assert not rig.down.exchanges


def test_upstream_reset_before_the_response_is_a_503_and_unavailable_for_grpc():
    rig = Rig()
    plain = rig.request("/")
    call = rig.grpc("/pkg.Echo/Say", end_stream=True)
    [ep] = rig.endpoints
    ep.pump()
    # Not REFUSED_STREAM: Istio's default retry policy retries that (test_resilience_http2.py).
    ep.codec.reset_stream(1, frames.PROTOCOL_ERROR)
    ep.codec.reset_stream(3, frames.INTERNAL_ERROR)
    ep.answer()
    events = rig.pump_client()
    assert field(headers_of(events, plain)[0], ":status") == "503"
    assert b"reset reason: remote reset" in body_of(events, plain)
    assert field(headers_of(events, call)[0], "grpc-status") == "14"


def test_upstream_reset_after_the_response_started_resets_the_client_stream():
    rig = Rig()
    sid = rig.request("/")
    [ep] = rig.endpoints
    ep.pump()
    ep.codec.send_headers(1, [(":status", "200")])
    ep.codec.send_data(1, b"partial")
    ep.codec.reset_stream(1, frames.INTERNAL_ERROR)
    ep.answer()
    events = rig.pump_client()
    assert body_of(events, sid) == b"partial"
    assert [(e.stream_id, e.error_code) for e in events if isinstance(e, StreamReset)] == [(sid, frames.INTERNAL_ERROR)]


def test_endpoint_that_cannot_be_reached_fails_its_requests_with_the_reason():
    rig = Rig(connect=False)
    sid = rig.request("/")
    for attempt in range(3):  # the first try and Istio's default 2 retries on connect-failure
        rig.endpoints[attempt].callback(None, "connection refused")
        if attempt < 2:
            [backoff] = [t for t in rig.timers if not t.cancelled and t.delay <= 0.075 and t.callback]
            backoff.fire()
            backoff.callback = None
    events = rig.pump_client()
    assert field(headers_of(events, sid)[0], ":status") == "503"
    assert b"connection failure" in body_of(events, sid)
    assert rig.proxy.upstreams.connections() == []


def test_connect_inside_the_tunnel_is_refused_with_405():
    rig = Rig()
    sid = rig.client.open_stream([(":method", "CONNECT"), (":authority", "10.0.0.1:80")], end_stream=True)
    rig.send()
    assert field(headers_of(rig.pump_client(), sid)[0], ":status") == "405"


def test_flow_control_violation_ends_that_client_connection_only():
    rig = Rig(connect=False)  # nothing is forwarded yet, so no window goes back to the client
    victims = [rig.request("/upload", "POST", end_stream=False) for _ in range(5)]
    other = H2(client=True)
    other.initiate()
    other_transport = ClientTransport()
    rig.proxy.serve(Channel(other_transport), ClientContext(None, "10.244.0.10", 40001, "10.96.0.10", 80),
                    testing.take(other))
    other_sid = other.open_stream([(":method", "GET"), (":scheme", "http"), (":authority", "echo"),
                                   (":path", "/ok")], end_stream=True)
    other_transport.deliver(testing.take(other))
    # The victim keeps within each stream's window (1 MiB) but not the connection's (4 MiB).
    rig.transport.deliver(b"".join(testing.RawPeer.data(sid, b"x" * 16384) for sid in victims for _ in range(58)))
    goaways = [f for f in testing.parse_frames(rig.transport.take()) if f.type == frames.GOAWAY]
    assert [f.error_code for f in goaways] == [frames.FLOW_CONTROL_ERROR]
    assert rig.transport.eof and not rig.down.exchanges
    # Both clients' requests went to one upstream connection; it comes up now and serves the other.
    [ep] = rig.endpoints
    ep.callback(ep.end, None)
    sent = testing.parse_frames(ep.end.sent)
    assert [(f.stream_id, f.error_code) for f in sent if f.type == frames.RST_STREAM] == [
        (sid, frames.CANCEL) for sid in (1, 3, 5, 7, 9)]
    ep.pump()
    respond(ep, 11, body=b"still here")
    assert body_of(other.receive(other_transport.take()), other_sid) == b"still here"


def test_a_stream_beyond_its_window_is_reset_and_its_neighbour_goes_on():
    rig = Rig()
    victim = rig.request("/upload", "POST", end_stream=False)
    neighbour = rig.request("/ok")
    [ep] = rig.endpoints
    ep.pump()
    # Nothing of the victim's body reaches the client's credit before the flood: 65 frames > 1 MiB + 64 KiB.
    rig.transport.deliver(b"".join(testing.RawPeer.data(victim, b"x" * 16384) for _ in range(70)))
    events = rig.pump_client()
    assert [(e.stream_id, e.error_code) for e in events if isinstance(e, StreamReset)] == [
        (victim, frames.FLOW_CONTROL_ERROR)]
    assert [(e.stream_id, e.error_code) for e in ep.pump() if isinstance(e, StreamReset)] == [(1, frames.CANCEL)]
    respond(ep, 3, body=b"fine")
    assert body_of(rig.pump_client(), neighbour) == b"fine"


def test_a_client_that_resets_too_fast_is_cut_off_without_touching_upstream_connections():
    rig = Rig()
    rig.request("/")
    [ep] = rig.endpoints
    ep.pump()
    peer = testing.RawPeer()
    request = [(":method", "GET"), (":scheme", "http"), (":authority", "e"), (":path", "/")]
    rig.transport.deliver(b"".join(peer.headers(sid, request) + peer.rst(sid) for sid in range(3, 803, 2)))
    goaways = [f for f in testing.parse_frames(rig.transport.take()) if f.type == frames.GOAWAY]
    assert [f.error_code for f in goaways] == [frames.ENHANCE_YOUR_CALM]
    assert ep.end.aborted is None and rig.proxy.upstreams.connections()


def test_route_request_timeout_answers_504_and_cancels_the_upstream_stream():
    rig = Rig(TIMEOUT_ROUTE)
    sid = rig.request("/slow")
    [ep] = rig.endpoints
    ep.pump()
    [timer] = rig.route_timers()
    timer.fire()
    events = rig.pump_client()
    assert field(headers_of(events, sid)[0], ":status") == "504"
    assert body_of(events, sid) == b"upstream request timeout"
    assert [(e.stream_id, e.error_code) for e in ep.pump() if isinstance(e, StreamReset)] == [(1, frames.CANCEL)]
    assert rig.telemetry.value("istio_requests_total", response_code="504", response_flags="UT") == 1


def test_a_grpc_call_past_the_route_timeout_is_unavailable():
    rig = Rig(TIMEOUT_ROUTE)
    sid = rig.grpc("/pkg.Echo/Say", end_stream=True)
    rig.route_timers()[0].fire()
    [answer] = headers_of(rig.pump_client(), sid)
    assert field(answer, "grpc-status") == "14" and answer.end_stream


def test_a_response_in_time_cancels_the_timer():
    rig = Rig(TIMEOUT_ROUTE)
    rig.request("/")
    [ep] = rig.endpoints
    ep.pump()
    respond(ep, 1, body=b"quick")
    rig.pump_client()
    assert rig.route_timers()[0].cancelled


def test_idle_upstream_connections_are_closed_with_goaway_and_leave_the_pool():
    rig = Rig()
    rig.request("/")
    [ep] = rig.endpoints
    ep.pump()
    pool = rig.proxy.upstreams
    [conn] = pool.connections()
    assert pool.close_idle(idle_seconds=0.0) == 0  # a stream is open
    respond(ep, 1, body=b"done")
    rig.pump_client()
    assert pool.close_idle(idle_seconds=300.0, now=conn.idle_since + 299) == 0
    assert pool.close_idle(idle_seconds=300.0, now=conn.idle_since + 300) == 1
    assert pool.connections() == [] and ep.end.eof
    assert [f.type for f in testing.parse_frames(ep.end.take())][-1] == frames.GOAWAY
    # The next request opens a new connection.
    rig.request("/again")
    assert len(rig.endpoints) == 2


MIRROR_ROUTE = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
    "metadata": {"name": "echo-mirror", "namespace": "shop", "creationTimestamp": "2024-01-01T00:00:00Z"},
    "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}],
             "rules": [{"filters": [{"type": "RequestMirror",
                                     "requestMirror": {"backendRef": {"name": "echo-v2", "port": 80}}}],
                        "backendRefs": [{"name": "echo", "port": 80}]}]},
}


def test_request_mirror_sends_a_copy_with_its_body_and_drops_the_answer():
    rig = Rig(MIRROR_ROUTE)
    sid = rig.request("/m", "POST", end_stream=False)
    rig.client.send_data(sid, b"payload", end_stream=True)
    rig.send()
    main, mirror = sorted(rig.endpoints, key=lambda ep: ep.address)
    assert (main.address, mirror.address) == (ECHO_POD, V2_POD)
    copy = mirror.pump()
    assert dict(headers_of(copy, 1)[0].headers)[":authority"] == "echo.shop.svc.cluster.local-shadow"
    assert body_of(copy, 1) == b"payload"
    respond(mirror, 1, status="500", body=b"mirror says no")
    main.pump()
    respond(main, 1, body=b"main")
    events = rig.pump_client()
    assert field(headers_of(events, sid)[0], ":status") == "200" and body_of(events, sid) == b"main"
    assert all(not conn.exchanges for conn in rig.proxy.upstreams.connections())


def test_an_endpoint_without_h2c_fails_its_requests_with_that_reason():
    rig = Rig()
    sid = rig.request("/")
    [ep] = rig.endpoints
    ep.end.deliver(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
    events = rig.pump_client()
    assert field(headers_of(events, sid)[0], ":status") == "503"
    assert rig.done[0].error.endswith("it does not speak h2c")
    assert ep.end.aborted is not None and rig.proxy.upstreams.connections() == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), max_size=6), st.booleans())
def test_whatever_a_client_sends_after_the_preface_never_raises(chunks, with_request):
    rig = Rig()
    if with_request:
        rig.request("/", end_stream=False)
    for chunk in chunks:
        rig.transport.deliver(chunk)
    for ep in rig.endpoints:
        ep.pump()
    rig.pump_client()
    if rig.down.error is not None:
        assert rig.transport.eof


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_whatever_an_endpoint_answers_never_raises_and_the_client_hears_an_end(chunks):
    rig = Rig()
    sid = rig.request("/")
    [ep] = rig.endpoints
    ep.pump()
    ep.answer()
    for chunk in chunks:
        ep.end.deliver(chunk)
    ep.end.deliver_eof()
    events = rig.pump_client()
    ended = any(getattr(e, "stream_id", None) == sid and (getattr(e, "end_stream", False) or isinstance(e, StreamReset))
                for e in events)
    assert ended or rig.down.exchanges == {}
