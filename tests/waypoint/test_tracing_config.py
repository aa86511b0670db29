"""Sampling configuration from the Telemetry API and the mesh default (waypoint/tracing.py
`compile_tracing`, through `compile_config`), and the exported span (`Exporter` with the SDK's
in-memory exporter in place of OTLP)."""

from __future__ import annotations

import random
import time

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from waypoint.config import compile_config
from waypoint.pipeline import ClientContext, forwarded
from waypoint.telemetry import Party, RequestRecord, Telemetry
from waypoint.tracing import Exporter, Identity, TracingDefaults, parse_endpoint
from wisp.identity import SpiffeId
from wisp.model import ModelSnapshot, PortMapping, Service

from waypoint.authz import WaypointRef

HOST = "echo.shop.svc.cluster.local"
WAYPOINT = WaypointRef("shop", "waypoint")
ECHO = Service("echo", "shop", HOST, ("10.96.0.10",), (PortMapping(80, 8080),))
OTHER = Service("other", "shop", "other.shop.svc.cluster.local", ("10.96.0.11",), (PortMapping(80, 8080),))


def _telemetry(namespace, name, percentage=None, target=None, **extra):
    tracing = {}
    if percentage is not None:
        tracing["randomSamplingPercentage"] = percentage
    tracing.update(extra)
    spec = {"tracing": [tracing]}
    if target is not None:
        spec["targetRefs"] = [target]
    return {"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
            "metadata": {"namespace": namespace, "name": name}, "spec": spec}


GATEWAY_REF = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": WAYPOINT.name}


def _policy(*objects, defaults=TracingDefaults(), gateway_annotations=None):
    objs = list(objects)
    if gateway_annotations is not None:
        objs.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                     "metadata": {"namespace": WAYPOINT.namespace, "name": WAYPOINT.name,
                                  "annotations": gateway_annotations},
                     "spec": {"gatewayClassName": "istio-waypoint"}})
    snapshot = ModelSnapshot.of([ECHO, OTHER])
    return compile_config(snapshot, WAYPOINT, "1", objs, tracing=defaults)


def test_without_telemetry_the_mesh_default_applies_and_nothing_is_exported():
    config = _policy()
    assert config.tracing.percentage == 1.0 and not config.tracing.export
    assert _policy(defaults=TracingDefaults(percentage=7.5)).tracing.percentage == 7.5


def test_root_then_namespace_then_waypoint_the_most_specific_wins():
    root = _telemetry("istio-system", "mesh", 10)
    namespace = _telemetry(WAYPOINT.namespace, "ns", 20)
    waypoint = _telemetry(WAYPOINT.namespace, "wp", 30, GATEWAY_REF)
    assert _policy(root).tracing.percentage == 10
    assert _policy(root, namespace).tracing.percentage == 20
    assert _policy(root, namespace, waypoint).tracing.percentage == 30
    # another namespace's Telemetry without targetRefs is not ours
    assert _policy(_telemetry("elsewhere", "ns", 50)).tracing.percentage == 1.0


def test_the_waypoint_gateway_class_in_the_root_namespace_is_mesh_wide():
    klass = {"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "istio-waypoint"}
    assert _policy(_telemetry("istio-system", "all-waypoints", 12, klass)).tracing.percentage == 12
    assert _policy(_telemetry(WAYPOINT.namespace, "not-root", 12, klass)).tracing.percentage == 1.0


def test_a_service_target_sets_that_services_rate_only():
    config = _policy(_telemetry("shop", "echo", 100, {"group": "", "kind": "Service", "name": "echo"}),
                     _telemetry("istio-system", "mesh", 5))
    assert config.tracing.percentage_for("shop", "echo") == 100
    assert config.tracing.percentage_for("shop", "other") == 5


def test_disable_span_reporting_stops_export_but_not_the_sampling_decision():
    config = _policy(_telemetry("istio-system", "mesh", 100),
                     _telemetry(WAYPOINT.namespace, "off", None, disableSpanReporting=True),
                     _telemetry("shop", "echo", None, {"group": "", "kind": "Service", "name": "echo"},
                                disableSpanReporting=False),
                     defaults=TracingDefaults(endpoint="127.0.0.1:4317"))
    assert config.tracing.for_service("shop", "other") == (100.0, False)
    assert config.tracing.for_service("shop", "echo") == (100.0, True)
    assert config.tracing.for_service(None, None) == (100.0, False)


def test_a_bad_telemetry_is_a_note_not_a_failure():
    config = _policy(_telemetry("istio-system", "bad", 250), _telemetry(WAYPOINT.namespace, "ns", 20),
                     _telemetry(WAYPOINT.namespace, "sel", 40, None) | {"spec": {"selector": {"matchLabels": {}},
                                                                               "tracing": [{}]}})
    assert config.tracing.percentage == 20
    assert any("randomSamplingPercentage" in note for note in config.notes)


def test_the_endpoint_comes_from_the_flag_or_the_gateways_annotation_and_resolves_service_names():
    assert _policy(defaults=TracingDefaults(endpoint="127.0.0.1:4317")).tracing.endpoint == ("127.0.0.1", 4317)
    config = _policy(defaults=TracingDefaults(endpoint="127.0.0.1:4317"),
                     gateway_annotations={"tracing.wisp.io/otlp-endpoint": f"{HOST}:4317"})
    assert config.tracing.endpoint == ("10.96.0.10", 4317) and config.tracing.export
    broken = _policy(gateway_annotations={"tracing.wisp.io/otlp-endpoint": "nowhere.example:4317"})
    assert not broken.tracing.export and any("nowhere.example" in note for note in broken.notes)


def test_endpoint_syntax_errors_say_what_is_wrong():
    for bad in ("", "4317", "host:", "host:99999", ":4317"):
        with pytest.raises(ValueError, match="OTLP endpoint"):
            parse_endpoint(bad)
    assert parse_endpoint("[::1]:4317") == ("::1", 4317)
    assert parse_endpoint("echo.shop:4317", [ECHO]) == ("10.96.0.10", 4317)


# -- the exported span ------------------------------------------------------------------------------

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


@pytest.fixture
def exported():
    memory = InMemorySpanExporter()
    exporter = Exporter(("127.0.0.1", 4317), Identity("shop", "waypoint", "cluster.local", "waypoint-0", "10.244.1.5"),
                        span_exporter=memory, schedule_delay_ms=10)
    yield exporter, memory
    exporter.close()


def _request(exporter, headers, status=200):
    telemetry = Telemetry(access_log=False)
    telemetry.tracer = exporter
    ctx = ClientContext(SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/client"), "10.244.2.9", 40000,
                        "10.96.0.10", 80)
    out, span = forwarded(headers, ctx, random.Random(3), 0.0, True, HOST, 80, True)
    record = RequestRecord(telemetry, Party(None, ctx.identity), b"GET", b"/hello", HOST.encode(), "HTTP/1.1")
    record.trace = span
    record.request_bytes, record.response_bytes = 10, 20
    record.finish(status, destination=Party(None, SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/echo")),
                  service=ECHO, upstream="10.244.1.9:8080")
    exporter.processor.force_flush()
    return dict(out), span


def test_the_exported_span_has_the_forwarded_ids_istios_name_and_tags(exported):
    exporter, memory = exported
    before = time.time_ns()
    values, span = _request(exporter, [(b"traceparent", f"00-{TRACE}-{PARENT}-01".encode()),
                                       (b"user-agent", b"curl/8")])
    (done,) = memory.get_finished_spans()
    assert done.context.trace_id == int(TRACE, 16) and done.parent.span_id == int(PARENT, 16)
    assert f"{done.context.span_id:016x}" == values[b"traceparent"].decode()[36:52]
    assert done.name == f"{HOST}:80/*" and done.kind is SpanKind.SERVER
    tags = done.attributes
    assert tags["upstream_cluster"] == f"inbound-vip|80|http|{HOST}"
    assert tags["http.status_code"] == "200" and tags["http.method"] == "GET"
    assert tags["http.url"] == f"http://{HOST}/hello" and tags["response_flags"] == "-"
    assert tags["component"] == "proxy" and tags["peer.address"] == "10.244.2.9"
    assert tags["istio.canonical_service"] == "waypoint" and tags["istio.namespace"] == "shop"
    assert tags["node_id"] == "waypoint~10.244.1.5~waypoint-0.shop~shop.svc.cluster.local"
    assert tags["source.principal"] == "spiffe://cluster.local/ns/shop/sa/client"
    assert tags["destination.principal"] == "spiffe://cluster.local/ns/shop/sa/echo"
    assert tags["guid:x-request-id"] == values[b"x-request-id"].decode() and tags["user_agent"] == "curl/8"
    assert "error" not in tags and done.status.status_code is StatusCode.UNSET
    assert before <= done.start_time <= done.end_time <= time.time_ns()
    assert done.resource.attributes["service.name"] == "waypoint.shop"


def test_a_5xx_span_is_an_error(exported):
    exporter, memory = exported
    _request(exporter, [(b"traceparent", f"00-{TRACE}-{PARENT}-01".encode())], status=503)
    (done,) = memory.get_finished_spans()
    assert done.attributes["error"] == "true" and done.status.status_code is StatusCode.ERROR


def test_an_unsampled_request_exports_nothing(exported):
    exporter, memory = exported
    values, span = _request(exporter, [(b"traceparent", f"00-{TRACE}-{PARENT}-00".encode())])
    assert span is None and memory.get_finished_spans() == ()


def test_the_waypoint_follows_its_gateways_collector_annotation_across_config_versions():
    from waypoint.app import Waypoint
    from waypoint.config import WaypointSettings
    from wisp.model import config_object

    def snapshot(annotation):
        gateway = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                   "metadata": {"namespace": "shop", "name": "waypoint",
                                "annotations": {"tracing.wisp.io/otlp-endpoint": annotation} if annotation else {}},
                   "spec": {"gatewayClassName": "istio-waypoint",
                            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}
        return ModelSnapshot.of([ECHO, config_object(gateway)])

    waypoint = Waypoint(WaypointSettings("shop", "waypoint", None), access_log=False)
    assert waypoint.telemetry.tracer is None
    waypoint.apply_config(snapshot("echo.shop:4317"), "1")
    first = waypoint.telemetry.tracer
    assert first.endpoint == ("10.96.0.10", 4317) and waypoint.config.tracing.export
    waypoint.apply_config(snapshot("echo.shop:4317"), "2")
    assert waypoint.telemetry.tracer is first  # unchanged address: the same exporter and queue
    waypoint.apply_config(snapshot("127.0.0.1:14317"), "3")
    assert waypoint.telemetry.tracer.endpoint == ("127.0.0.1", 14317)
    waypoint.apply_config(snapshot(None), "4")
    assert waypoint.telemetry.tracer is None and not waypoint.config.tracing.export
