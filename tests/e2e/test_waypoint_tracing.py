"""Distributed tracing through a waypoint on the shared local mesh, read back from a real Jaeger
(issue 12's Must-show: "a trace of one request is read back from the collector with the
waypoint's span and its parent").

The module's fixture adds a namespace `trace`: a client pod, an echo Deployment (it reports the
headers it received) behind Service `echo`, the waypoint Gateway (annotated with its collector,
`tracing.wisp.io/otlp-endpoint: jaeger.trace:4317`, docs/tracing.md) and Jaeger v2 — built from
its Go module (runtime/testbed/jaeger.py) — as a pod outside the mesh
(`istio.io/dataplane-mode: none`) behind Service `jaeger`. Jaeger's OTLP receiver listens in its
pod's network namespace (which the mesh made), its query API on that namespace's loopback only;
the test reads it with `ip netns exec`. The waypoint, in its own pod namespace, reaches the
collector's Service VIP the way any pod outside the mesh does (the node's service DNAT).
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

from runtime.testbed import build as testbed_build
from runtime.testbed import jaeger

from .objects import client, echo_deployment, manifest, namespace, service

HOST = "echo.trace.svc.cluster.local"
JAEGER_QUERY = "http://127.0.0.1:16686"

JAEGER_CONFIG = """
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics: {level: none}
    logs: {level: warn}
extensions:
  jaeger_query:
    storage: {traces: memstore}
    http: {endpoint: "127.0.0.1:16686"}
    grpc: {endpoint: "127.0.0.1:16685"}
  jaeger_storage:
    backends:
      memstore:
        memory: {max_traces: 10000}
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "0.0.0.0:4317"}
processors:
  batch: {timeout: 200ms}
exporters:
  jaeger_storage_exporter: {trace_storage: memstore}
"""

APP = manifest(
    namespace("trace", **{"istio.io/use-waypoint": "waypoint"}),
    {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
     "metadata": {"name": "waypoint", "namespace": "trace", "labels": {"istio.io/waypoint-for": "service"},
                  "annotations": {"tracing.wisp.io/otlp-endpoint": "jaeger.trace:4317"}},
     "spec": {"gatewayClassName": "istio-waypoint",
              "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}},
    client("trace"),
    echo_deployment("trace", "echo"),
    service("trace", "echo"),
    # Outside the mesh; JAEGER_BINARY and JAEGER_CONFIG_FILE are filled in by the fixture.
    {"apiVersion": "v1", "kind": "Pod",
     "metadata": {"name": "jaeger", "namespace": "trace",
                  "labels": {"app": "jaeger", "istio.io/dataplane-mode": "none"}},
     "spec": {"nodeName": "node1",
              "containers": [{"name": "jaeger", "command": ["JAEGER_BINARY", "--config", "JAEGER_CONFIG_FILE"]}]}},
    service("trace", "jaeger", ports=[{"name": "grpc-otlp", "port": 4317, "targetPort": 4317}]),
)

SERVICE_TELEMETRY = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: echo-always, namespace: trace}
spec:
  targetRefs: [{group: "", kind: Service, name: echo}]
  tracing: [{randomSamplingPercentage: 100}]
"""


@pytest.fixture(scope="module")
def jaeger_binary() -> str:
    try:
        path, _ = jaeger.build_jaeger()
    except testbed_build.BuildError as exc:
        pytest.fail(f"cannot build Jaeger from its Go module: {exc}", pytrace=False)
    return str(path)


def query(mesh, path: str) -> tuple[int, dict]:
    """(status, JSON) of Jaeger's query API, on the loopback of the collector's pod."""
    result = mesh.in_pod("trace", "jaeger", "curl", "-s", "-m", "5", "-w", "\n%{http_code}", JAEGER_QUERY + path)
    body, _, code = result.stdout.rpartition("\n")
    try:
        return int(code or 0), json.loads(body) if body else {}
    except ValueError:
        return int(code or 0), {}


@pytest.fixture(scope="module")
def traced(mesh, jaeger_binary):
    # The collector runs as its pod's own unprivileged user (runtime/sandbox.py), so its
    # configuration goes where others may read it (pytest's own temporary root is 0700).
    directory = Path(tempfile.mkdtemp(prefix="wisp-e2e-jaeger-"))
    directory.chmod(0o755)
    config = directory / "config.yaml"
    config.write_text(JAEGER_CONFIG)
    app = APP.replace("JAEGER_BINARY", jaeger_binary).replace("JAEGER_CONFIG_FILE", str(config))
    mesh.apply(app, "tracing-app")
    try:
        mesh.wait_for(lambda: len([p for p in mesh.status()["pods"] if p["namespace"] == "trace"]) == 4
                      and all(p["ready"] for p in mesh.status()["pods"] if p["namespace"] == "trace"),
                      timeout=90, what="trace's pods (client, echo, jaeger, waypoint) ready")
        mesh.wait_for(lambda: query(mesh, "/api/services")[0] == 200, timeout=30, what="Jaeger's query API")
        # The route through the waypoint is in place once a request shows the waypoint's headers.
        mesh.wait_for(lambda: "x-forwarded-for" in seen_headers(mesh, {}), timeout=30,
                      what="echo reached through the waypoint")
        yield mesh
    finally:
        mesh.delete(app, "tracing-app")
        shutil.rmtree(directory, ignore_errors=True)


def seen_headers(mesh, headers: dict[str, str]) -> dict[str, list[str]]:
    """The headers the echo app received for one request from the client pod."""
    extra = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    code, body = mesh.curl("trace", "client", "http://echo.trace/traced?format=json", *extra)
    if code != 200:
        return {}
    return json.loads(body)["headers"]


def new_ids() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


def traceparent_parts(value: str) -> tuple[str, str, str]:
    version, trace_id, parent_id, flags = value.split("-")
    assert version == "00" and len(trace_id) == 32 and len(parent_id) == 16
    return trace_id, parent_id, flags


def read_trace(mesh, trace_id: str, timeout: float = 20) -> list[dict]:
    """The spans Jaeger holds for `trace_id` (waits for the batch exports to land)."""
    def spans():
        code, data = query(mesh, f"/api/traces/{trace_id}")
        return (data.get("data") or [{}])[0].get("spans") if code == 200 else None
    return mesh.wait_for(spans, timeout=timeout, interval=0.5, what=f"trace {trace_id} in Jaeger")


def tags(span: dict) -> dict[str, object]:
    return {tag["key"]: tag["value"] for tag in span.get("tags", [])}


def test_the_waypoints_span_is_the_child_of_the_clients_and_the_parent_the_server_saw(traced):
    trace_id, client_span = new_ids()
    seen = seen_headers(traced, {"traceparent": f"00-{trace_id}-{client_span}-01", "tracestate": "client=1"})
    assert seen, "the request through the waypoint failed"
    forwarded_trace, waypoint_span, flags = traceparent_parts(seen["traceparent"][0])
    assert forwarded_trace == trace_id and flags == "01" and waypoint_span != client_span
    assert seen["tracestate"] == ["client=1"]

    spans = read_trace(traced, trace_id)
    (span,) = [s for s in spans if s["spanID"] == waypoint_span]
    assert span["operationName"] == f"{HOST}:80/*"
    assert span["references"] == [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": client_span}]
    got = tags(span)
    client_ip = traced.pod("trace", "client")["ip"]
    assert got["span.kind"] == "server" and got["component"] == "proxy"
    assert got["upstream_cluster"] == f"inbound-vip|80|http|{HOST}"
    assert got["http.status_code"] == "200" and got["http.method"] == "GET"
    assert got["http.url"] == "http://echo.trace/traced?format=json"
    assert got["response_flags"] == "-" and got["peer.address"] == client_ip
    assert got["istio.canonical_service"] == "waypoint" and got["istio.namespace"] == "trace"
    assert got["source.principal"] == "spiffe://cluster.local/ns/trace/sa/client"
    assert got["destination.principal"] == "spiffe://cluster.local/ns/trace/sa/echo"
    assert str(got["node_id"]).startswith("waypoint~10.244.")
    process = (traced_process(traced, trace_id, span) or {}).get("serviceName")
    assert process == "waypoint.trace"


def traced_process(mesh, trace_id: str, span: dict) -> dict | None:
    _, data = query(mesh, f"/api/traces/{trace_id}")
    processes = (data.get("data") or [{}])[0].get("processes") or {}
    return processes.get(span.get("processID"))


def test_an_unsampled_parent_produces_no_span_but_its_context_still_passes(traced):
    trace_id, client_span = new_ids()
    seen = seen_headers(traced, {"traceparent": f"00-{trace_id}-{client_span}-00"})
    forwarded_trace, waypoint_span, flags = traceparent_parts(seen["traceparent"][0])
    assert forwarded_trace == trace_id and flags == "00" and waypoint_span != client_span
    # A sampled request after it: once its span is in Jaeger, an earlier export would be too.
    marker_trace, marker_span = new_ids()
    seen_headers(traced, {"traceparent": f"00-{marker_trace}-{marker_span}-01"})
    read_trace(traced, marker_trace)
    code, data = query(traced, f"/api/traces/{trace_id}")
    assert code == 404 or not (data.get("data") or []), data


def test_b3_headers_are_continued_and_propagated(traced):
    trace_id, client_span = new_ids()
    seen = seen_headers(traced, {"x-b3-traceid": trace_id, "x-b3-spanid": client_span, "x-b3-sampled": "1"})
    waypoint_span = seen["x-b3-spanid"][0]
    assert seen["x-b3-traceid"] == [trace_id] and seen["x-b3-parentspanid"] == [client_span]
    assert seen["traceparent"] == [f"00-{trace_id}-{waypoint_span}-01"]
    (span,) = [s for s in read_trace(traced, trace_id) if s["spanID"] == waypoint_span]
    assert span["references"][0]["spanID"] == client_span


def test_a_telemetry_at_100_percent_samples_requests_that_came_without_a_trace(traced):
    traced.apply(SERVICE_TELEMETRY, "tracing-telemetry")
    try:
        def sampled_root():
            headers = seen_headers(traced, {})
            value = (headers.get("traceparent") or ["-"])[0]
            return value if value.endswith("-01") else None
        value = traced.wait_for(sampled_root, timeout=20, interval=0.5, what="the Telemetry's 100% sampling")
        trace_id, waypoint_span, _ = traceparent_parts(value)
        (span,) = [s for s in read_trace(traced, trace_id) if s["spanID"] == waypoint_span]
        assert span["references"] == []  # the waypoint started this trace
    finally:
        traced.delete(SERVICE_TELEMETRY, "tracing-telemetry")
    # Back to the mesh default (1%): requests without a trace are (almost always) not sampled.
    def flag() -> str:
        return traceparent_parts(seen_headers(traced, {})["traceparent"][0])[2]
    traced.wait_for(lambda: flag() == "00", timeout=20, interval=0.5, what="the Telemetry's removal")
    flags = [flag() for _ in range(5)]
    assert flags.count("00") >= 4, flags


DENY_PATH = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-denied, namespace: trace}
spec:
  targetRefs: [{group: "", kind: Service, name: echo}]
  action: DENY
  rules: [{to: [{operation: {paths: [/denied]}}]}]
"""


def test_a_request_the_waypoint_denies_has_its_span_too(traced):
    traced.apply(DENY_PATH, "tracing-deny")
    try:
        def denied():
            trace_id, client_span = new_ids()
            code, _ = traced.curl("trace", "client", "http://echo.trace/denied", "-H",
                                  f"traceparent: 00-{trace_id}-{client_span}-01")
            return (trace_id, client_span) if code == 403 else None
        trace_id, client_span = traced.wait_for(denied, timeout=20, interval=0.5, what="the DENY policy")
        (span,) = read_trace(traced, trace_id)
        assert span["references"] == [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": client_span}]
        got = tags(span)
        assert got["http.status_code"] == "403" and got["response_flags"] == "RBAC"
        assert span["operationName"] == f"{HOST}:80/*"
    finally:
        traced.delete(DENY_PATH, "tracing-deny")
