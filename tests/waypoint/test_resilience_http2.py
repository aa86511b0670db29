"""Retries, timeouts, the retry budget and fault injection in the HTTP/2 and gRPC shell, with
bytes alone (tests/waypoint/http2_harness.py: the waypoint's timers are fired by the test)."""

from __future__ import annotations

import dataclasses

from wisp.h2 import frames
from wisp.h2.events import DataReceived, HeadersReceived, StreamReset

from tests.waypoint.http2_harness import Rig
from tests.waypoint.test_http2_proxy import body_of, field, headers_of, respond
from waypoint.http2 import exchange as h2x
from waypoint.resilience import FaultPolicy


def route(**rule) -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "echo", "namespace": "shop", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}],
                     "rules": [{"backendRefs": [{"name": "echo", "port": 80}], **rule}]}}


class _FaultRoutes:
    def __init__(self, routes, fault: FaultPolicy) -> None:
        self.routes = routes
        self.fault = fault

    def route(self, *args):
        return dataclasses.replace(self.routes.route(*args), fault=self.fault)


def with_fault(rig: Rig, fault: FaultPolicy) -> Rig:
    rig.config = dataclasses.replace(rig.config, routes=_FaultRoutes(rig.config.routes, fault))
    return rig


def live(rig: Rig, at_most: float = 60.0) -> list:
    return [t for t in rig.timers if not t.cancelled and t.delay <= at_most]


def fire_backoff(rig: Rig) -> None:
    [timer] = live(rig, 0.075)
    timer.cancelled = True
    timer.callback()


def streams(ep) -> list[HeadersReceived]:
    """The request head of each stream the endpoint was sent."""
    return [e for e in ep.events if isinstance(e, HeadersReceived) and ":method" in dict(e.headers)]


def budget(rig: Rig):
    return rig.pipeline.budgets.get(("shop", "echo", 80))


def test_a_503_is_retried_on_a_new_stream_and_the_client_gets_only_the_200():
    rig = Rig()
    sid = rig.request("/")
    [ep] = rig.endpoints
    ep.pump()
    respond(ep, 1, status="503", body=b"busy")
    assert headers_of(rig.pump_client(), sid) == []
    fire_backoff(rig)
    ep.pump()
    assert [e.stream_id for e in streams(ep)] == [1, 3]
    respond(ep, 3, body=b"fine")
    events = rig.pump_client()
    assert field(headers_of(events, sid)[0], ":status") == "200" and body_of(events, sid) == b"fine"
    assert (budget(rig).active, budget(rig).retries, budget(rig).granted) == (0, 0, 1)


def test_a_grpc_unavailable_trailers_only_answer_is_retried():
    rig = Rig()
    sid = rig.grpc("/pkg.Echo/Say", end_stream=True)
    [ep] = rig.endpoints
    ep.pump()
    respond(ep, 1, extra=[("content-type", "application/grpc"), ("grpc-status", "14")])
    fire_backoff(rig)
    ep.pump()
    respond(ep, 3, body=b"\0\0\0\0\0", trailers=[("grpc-status", "0")], extra=[("content-type", "application/grpc")])
    events = rig.pump_client()
    [head, trailers] = headers_of(events, sid)
    assert field(head, ":status") == "200" and field(trailers, "grpc-status") == "0"


def test_grpc_internal_is_not_retried_by_the_default_policy():
    rig = Rig()
    sid = rig.grpc("/pkg.Echo/Say", end_stream=True)
    [ep] = rig.endpoints
    ep.pump()
    respond(ep, 1, extra=[("content-type", "application/grpc"), ("grpc-status", "13")])
    assert field(headers_of(rig.pump_client(), sid)[0], "grpc-status") == "13"
    assert live(rig, 1) == []


def test_a_refused_stream_is_retried():
    rig = Rig()
    sid = rig.request("/")
    [ep] = rig.endpoints
    ep.pump()
    ep.codec.reset_stream(1, frames.REFUSED_STREAM)
    ep.answer()
    fire_backoff(rig)
    ep.pump()
    respond(ep, 3)
    assert field(headers_of(rig.pump_client(), sid)[0], ":status") == "200"


def test_a_request_body_is_replayed_whole_with_its_trailers():
    rig = Rig()
    sid = rig.request("/p", "POST", end_stream=False)
    rig.client.send_data(sid, b"hello")
    rig.client.send_headers(sid, [("x-check", "1")], end_stream=True)
    rig.send()
    [ep] = rig.endpoints
    ep.pump()
    respond(ep, 1, status="503")
    fire_backoff(rig)
    ep.pump()
    retried = [e for e in ep.events if getattr(e, "stream_id", 0) == 3]
    assert b"".join(bytes(e.data) for e in retried if isinstance(e, DataReceived)) == b"hello"
    assert dict(retried[-1].headers) == {"x-check": "1"} and retried[-1].end_stream
    respond(ep, 3, body=b"ok")
    assert body_of(rig.pump_client(), sid) == b"ok"


def test_a_request_still_sending_its_body_is_not_retried():
    rig = Rig()
    sid = rig.request("/p", "POST", end_stream=False)
    rig.client.send_data(sid, b"part")
    rig.send()
    [ep] = rig.endpoints
    ep.pump()
    respond(ep, 1, status="503")
    assert field(headers_of(rig.pump_client(), sid)[0], ":status") == "503"


def test_a_body_larger_than_the_replay_limit_is_not_retried():
    rig = Rig()
    sid = rig.request("/p", "POST", end_stream=False)
    for _ in range(3):
        rig.client.send_data(sid, b"x" * (h2x.MAX_REPLAY // 2 + 1))
        rig.settle()
    rig.client.send_data(sid, b"", end_stream=True)
    rig.settle()
    [ep] = rig.endpoints
    respond(ep, 1, status="503")
    assert field(headers_of(rig.pump_client(), sid)[0], ":status") == "503"


def test_per_try_timeouts_are_retried_and_the_last_answers_504():
    rig = Rig(route(retry={"attempts": 2}, timeouts={"request": "10s", "backendRequest": "1s"}))
    sid = rig.request("/slow")
    for attempt in range(3):
        rig.endpoints[0].pump()  # the endpoint has the request, and does not answer
        [per_try] = [t for t in live(rig) if t.delay == 1.0]
        per_try.cancelled = True
        per_try.callback()
        if attempt < 2:
            fire_backoff(rig)
    events = rig.pump_client()
    assert field(headers_of(events, sid)[0], ":status") == "504"
    assert body_of(events, sid) == b"upstream request timeout"
    [ep] = rig.endpoints
    ep.pump()
    assert [e.stream_id for e in ep.events if isinstance(e, StreamReset)] == [1, 3, 5]
    assert rig.telemetry.value("istio_requests_total", response_code="504", response_flags="UT") == 1


def test_a_retry_the_budget_refuses_answers_the_failed_response():
    rig = Rig()
    budget(rig).retries = 3
    sid = rig.request("/")
    [ep] = rig.endpoints
    ep.pump()
    respond(ep, 1, status="503", body=b"busy")
    events = rig.pump_client()
    assert field(headers_of(events, sid)[0], ":status") == "503" and body_of(events, sid) == b"busy"
    assert budget(rig).overflow == 1


def test_a_client_reset_during_the_backoff_leaves_the_budget():
    rig = Rig()
    sid = rig.request("/")
    [ep] = rig.endpoints
    ep.pump()
    respond(ep, 1, status="503")
    [backoff] = live(rig, 0.075)
    rig.client.reset_stream(sid)
    rig.send()
    assert backoff.cancelled and (budget(rig).active, budget(rig).retries) == (0, 0)


# -- fault injection ---------------------------------------------------------------------------------


def test_a_grpc_fault_abort_is_http_200_with_grpc_status_trailers_only():
    rig = with_fault(Rig(route()), FaultPolicy(abort_grpc_status=14, abort_percent=100))
    sid = rig.grpc("/pkg.Echo/Say", end_stream=True)
    [answer] = headers_of(rig.pump_client(), sid)
    assert field(answer, ":status") == "200" and field(answer, "grpc-status") == "14" and answer.end_stream
    assert rig.endpoints == []
    assert rig.telemetry.value("istio_requests_total", response_flags="FI") == 1


def test_an_http_fault_abort_answers_a_grpc_client_with_the_mapped_status():
    rig = with_fault(Rig(route()), FaultPolicy(abort_status=503, abort_percent=100))
    sid = rig.grpc("/pkg.Echo/Say", end_stream=True)
    assert field(headers_of(rig.pump_client(), sid)[0], "grpc-status") == "14"


def test_a_fault_delay_holds_the_request_and_its_body_until_the_timer():
    rig = with_fault(Rig(route()), FaultPolicy(delay=1.0, delay_percent=100))
    sid = rig.request("/p", "POST", end_stream=False)
    rig.client.send_data(sid, b"early", end_stream=True)
    rig.send()
    assert rig.endpoints == []
    [delay] = [t for t in live(rig) if t.delay == 1.0]
    delay.callback()
    [ep] = rig.endpoints
    ep.pump()
    assert b"".join(bytes(e.data) for e in ep.events if isinstance(e, DataReceived)) == b"early"
    respond(ep, 1, body=b"late")
    assert body_of(rig.pump_client(), sid) == b"late"


def test_a_fault_abort_after_a_delay():
    rig = with_fault(Rig(route()), FaultPolicy(delay=0.2, delay_percent=100, abort_status=500, abort_percent=100))
    sid = rig.request("/")
    assert headers_of(rig.pump_client(), sid) == []
    [delay] = [t for t in live(rig) if t.delay == 0.2]
    delay.callback()
    assert field(headers_of(rig.pump_client(), sid)[0], ":status") == "500"
