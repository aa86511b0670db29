"""The span of a request proxied by each protocol shell: the shell hands the pipeline's `Span`
to its `RequestRecord`, which exports it when the response ends (HTTP/2 here with the byte-level
rig of tests/waypoint/http2_harness.py; HTTP/1.1 end to end in tests/e2e/test_waypoint_tracing.py)."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.waypoint.http2_harness import GATEWAY, Rig, snapshot
from waypoint.config import compile_config
from waypoint.tracing import Exporter, Identity, TracingDefaults

from .test_http2_proxy import headers_of, respond

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


@pytest.fixture
def traced_rig():
    rig = Rig()
    rig.config = compile_config(snapshot(), GATEWAY, "2", tracing=TracingDefaults(endpoint="127.0.0.1:4317"))
    memory = InMemorySpanExporter()
    exporter = Exporter(("127.0.0.1", 4317), Identity("shop", "waypoint"), span_exporter=memory,
                        schedule_delay_ms=10)
    rig.telemetry.tracer = exporter
    yield rig, memory
    exporter.close()


def test_an_http2_request_exports_its_span_when_the_response_ends(traced_rig):
    rig, memory = traced_rig
    rig.request("/hello", headers=[("traceparent", f"00-{TRACE}-{PARENT}-01")])
    [ep] = rig.endpoints
    [req] = headers_of(ep.pump(), 1)
    sent = dict(req.headers)["traceparent"]
    respond(ep, 1, "500")
    rig.pump_client()
    rig.telemetry.tracer.processor.force_flush()
    (span,) = memory.get_finished_spans()
    assert f"{span.context.span_id:016x}" == sent[36:52] and span.parent.span_id == int(PARENT, 16)
    assert span.attributes["http.protocol"] == "HTTP/2" and span.attributes["http.status_code"] == "500"
    assert span.attributes["error"] == "true"


def test_an_unsampled_http2_request_exports_nothing(traced_rig):
    rig, memory = traced_rig
    rig.request("/hello", headers=[("traceparent", f"00-{TRACE}-{PARENT}-00")])
    [ep] = rig.endpoints
    ep.pump()
    respond(ep, 1, "200")
    rig.pump_client()
    rig.telemetry.tracer.processor.force_flush()
    assert memory.get_finished_spans() == ()


def test_a_grpc_call_gets_envoys_grpc_tags(traced_rig):
    rig, memory = traced_rig
    sid = rig.grpc("/pkg.Echo/Say", headers=[("traceparent", f"00-{TRACE}-{PARENT}-01")], end_stream=True)
    [ep] = rig.endpoints
    ep.pump()
    respond(ep, 1, "200", b"\0\0\0\0\0", trailers=[("grpc-status", "5"), ("grpc-message", "not found")],
            extra=[("content-type", "application/grpc")])
    rig.pump_client()
    rig.telemetry.tracer.processor.force_flush()
    (span,) = memory.get_finished_spans()
    assert sid == 1 and span.attributes["http.protocol"] == "HTTP/2"
    assert span.attributes["grpc.path"] == "/pkg.Echo/Say" and span.attributes["grpc.status_code"] == "5"


DENY_POST = {
    "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
    "metadata": {"name": "no-post", "namespace": "shop"},
    "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "echo"}], "action": "DENY",
             "rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]},
}


def test_a_request_the_waypoint_denies_is_traced_as_envoy_traces_it():
    rig = Rig(DENY_POST)
    rig.config = compile_config(snapshot(DENY_POST), GATEWAY, "2",
                                tracing=TracingDefaults(endpoint="127.0.0.1:4317"))
    memory = InMemorySpanExporter()
    rig.telemetry.tracer = Exporter(("127.0.0.1", 4317), Identity("shop", "waypoint"), span_exporter=memory,
                                    schedule_delay_ms=10)
    try:
        rig.request("/hello", "POST", headers=[("traceparent", f"00-{TRACE}-{PARENT}-01"),
                                               ("user-agent", "grpcurl")])
        rig.pump_client()
        assert rig.endpoints == []  # answered by the waypoint
        rig.telemetry.tracer.processor.force_flush()
        (span,) = memory.get_finished_spans()
        assert span.parent.span_id == int(PARENT, 16) and span.context.trace_id == int(TRACE, 16)
        assert span.name == "echo.shop.svc.cluster.local:80/*"
        assert span.attributes["http.status_code"] == "403" and span.attributes["response_flags"] == "RBAC"
        assert span.attributes["user_agent"] == "grpcurl"
    finally:
        rig.telemetry.tracer.close()
