"""Distributed tracing at the waypoint: trace context in, one span per sampled request out.

The pipeline's forwarding step (`waypoint/pipeline.py`, step 5) calls `forward(headers, ...)`
once per proxied request. It reads the context the client sent, decides whether the request is
sampled, and rewrites the trace headers for the upstream with the waypoint's span as the new
parent:

- **W3C Trace Context** (`traceparent`, version 00; https://www.w3.org/TR/trace-context/): a valid
  one keeps its trace id and gets the waypoint's span id and the sampled flag; `tracestate`
  passes unchanged. Absent or malformed → a fresh trace.
- **B3** (https://github.com/openzipkin/b3-propagation), accepted when no valid `traceparent`
  came: the single `b3: {trace}-{span}[-{sampled}[-{parent}]]` header (or `b3: 0|1|d` alone) and
  the multi headers `x-b3-traceid`/`x-b3-spanid`/`x-b3-parentspanid`/`x-b3-sampled`/`x-b3-flags`.
  They are propagated in the form they came (the waypoint's span as `spanid`, the client's as
  `parentspanid`) and a `traceparent` is added. A malformed B3 context counts as absent.
Nothing here raises on bad input: a header that does not parse is a missing header.

Sampling (Envoy's order): a parent that says sampled or not sampled is obeyed (W3C flag 01/00,
B3 `1`/`0`/`d`); otherwise a request is sampled with the probability `TracingPolicy` gives its
Service (the Telemetry API's `randomSamplingPercentage`, resolved in `compile_tracing`; else the
mesh default, Istio's 1%). An unsampled request costs the header rewrite only: no `Span`, no
SDK object. A sampled request when export is configured gets a `Span` (a small slots object);
`RequestRecord.finish` (waypoint/telemetry.py) hands it with the outcome to `Exporter.end`, which
builds the OpenTelemetry SDK's `ReadableSpan` with exactly the ids the upstream was sent and puts
it on a `BatchSpanProcessor`, whose own thread exports over OTLP/gRPC: the engine's loop never
waits for the collector.

The span is Istio's server span for a waypoint: name `<host>:<port>/*` (Istio's route decorator
operation, `getRouteOperation` in istio's route translation, for a route to one Service), kind
SERVER, and Envoy/Istio's tags (`component`, `node_id`, `guid:x-request-id`, `http.url`,
`http.method`, `http.protocol`, `http.status_code`, `response_flags`, `request_size`,
`response_size`, `upstream_cluster`, `upstream_cluster.name`, `downstream_cluster`, `user_agent`,
`peer.address`, `istio.canonical_service`, `istio.canonical_revision`, `istio.namespace`,
`istio.mesh_id`, `error` for 5xx) plus the peers' SPIFFE identities (`source.principal`,
`destination.principal`). docs/tracing.md lists them with an example.

Configuration (`compile_tracing`, per config version): Telemetry objects
(`telemetry.istio.io/v1`, `spec.tracing[0]`) in the root namespace (mesh-wide), in the
waypoint's namespace without `targetRefs`/`selector` (namespace-wide), with `targetRefs` to the
waypoint's Gateway (this waypoint) or, in the root namespace, to the `istio-waypoint`
GatewayClass (every waypoint), or with `targetRefs` to a Service in their namespace (that
Service's requests); the most specific one that sets a field wins. `disableSpanReporting: true`
turns export off at that level (the sampling decision is still made and propagated, as Istio's). The collector is `TracingDefaults.endpoint` (the waypoint's
`--otlp-endpoint`, env `WISP_OTLP_ENDPOINT`), or the waypoint Gateway's annotation
`tracing.wisp.io/otlp-endpoint`; `host:port` where host is an IP or a Service hostname of the
mesh (resolved to its VIP here). No endpoint → nothing is exported and headers are still
propagated.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger("waypoint.tracing")

TELEMETRY_KIND = "Telemetry"
ENDPOINT_ANNOTATION = "tracing.wisp.io/otlp-endpoint"
DEFAULT_SAMPLING = 1.0  # percent; Istio's default (meshConfig.defaultConfig.tracing.sampling / PILOT_TRACE_SAMPLING)
DEFAULT_ROOT_NAMESPACE = "istio-system"

# How the client sent its B3 context (propagated in the same form).
B3_NONE = 0
B3_SINGLE = 1
B3_MULTI = 2

_HEX = frozenset(b"0123456789abcdef")
_B3_MULTI_NAMES = frozenset((b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled",
                             b"x-b3-flags"))
# Every header `forward` reads and rewrites (the pipeline splits them off in its own pass).
TRACE_HEADERS = frozenset((b"traceparent", b"tracestate", b"b3")) | _B3_MULTI_NAMES


@dataclass(slots=True)
class Parent:
    """The trace context a request came with. `span_id` 0: none (B3's sampling-only form);
    `sampled` None: the client left the decision to us; `wide`: a 128-bit trace id as received."""

    trace_id: int
    span_id: int
    sampled: bool | None
    b3: int = B3_NONE
    wide: bool = True


@dataclass(slots=True)
class Span:
    """A sampled request's span as the pipeline decided it; finished by `Exporter.end`."""

    trace_id: int
    span_id: int
    parent_id: int  # 0: a root span
    tracestate: str
    name: str
    cluster: str
    client_ip: str
    request_id: str
    scheme: str
    user_agent: str = "-"


# -- parsing ---------------------------------------------------------------------------------------


def _is_hex(value: bytes) -> bool:
    return bool(value) and set(value) <= _HEX


def parse_traceparent(value: bytes) -> Parent | None:
    """A W3C `traceparent`, or None if it is not a valid one (Trace Context §3.2: version 00 is
    exactly 55 characters; a later version may append `-...`; version ff and all-zero ids are
    invalid; hex is lower case)."""
    if len(value) < 55 or value[2:3] != b"-" or value[35:36] != b"-" or value[52:53] != b"-":
        return None
    if len(value) > 55 and (value[:2] == b"00" or value[55:56] != b"-"):
        return None
    version, trace, span, flags = value[:2], value[3:35], value[36:52], value[53:55]
    if version == b"ff" or not (_is_hex(version) and _is_hex(trace) and _is_hex(span) and _is_hex(flags)):
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not trace_id or not span_id:
        return None
    return Parent(trace_id, span_id, bool(int(flags, 16) & 1))


def _b3_id(value: bytes, sizes: tuple[int, ...]) -> int:
    """A B3 id of one of `sizes` hex digits (lower case), not zero; 0 when invalid."""
    if len(value) not in sizes or not _is_hex(value):
        return 0
    return int(value, 16)


def _b3_sampled(value: bytes) -> bool | None | str:
    """B3 sampling state: True, False, None (absent) or "bad"."""
    if value in (b"1", b"d", b"true"):
        return True
    if value in (b"0", b"false"):
        return False
    return None if not value else "bad"


def parse_b3(value: bytes) -> Parent | None:
    """The single `b3` header: `{trace}-{span}[-{state}[-{parent}]]` or a lone state; None if malformed.
    A lone state (`0`, `1`, `d`) carries a decision without ids: trace id 0 (the caller starts one)."""
    value = value.strip()
    if len(value) == 1:
        state = _b3_sampled(value)
        return None if state is None or state == "bad" else Parent(0, 0, state, B3_SINGLE)
    parts = value.split(b"-")
    if not 2 <= len(parts) <= 4:
        return None
    trace_id = _b3_id(parts[0], (16, 32))
    span_id = _b3_id(parts[1], (16,))
    if not trace_id or not span_id:
        return None
    sampled: bool | None | str = None
    if len(parts) >= 3:
        sampled = _b3_sampled(parts[2])
        if sampled is None or sampled == "bad":
            return None
    if len(parts) == 4 and not _b3_id(parts[3], (16,)):
        return None
    return Parent(trace_id, span_id, sampled, B3_SINGLE, len(parts[0]) == 32)  # type: ignore[arg-type]


def parse_b3_multi(values: Mapping[bytes, bytes]) -> Parent | None:
    """The `x-b3-*` headers (lower-case names); None if absent or malformed. `x-b3-flags: 1`
    (debug) means sampled; a sampling header alone carries a decision without ids."""
    sampled = _b3_sampled(values.get(b"x-b3-sampled", b"").strip())
    if sampled == "bad":
        return None
    if values.get(b"x-b3-flags", b"").strip() == b"1":
        sampled = True
    trace = values.get(b"x-b3-traceid", b"").strip()
    span = values.get(b"x-b3-spanid", b"").strip()
    if not trace and not span:
        return Parent(0, 0, sampled, B3_MULTI) if sampled is not None else None  # type: ignore[arg-type]
    trace_id = _b3_id(trace, (16, 32))
    span_id = _b3_id(span, (16,))
    if not trace_id or not span_id:
        return None
    parent = values.get(b"x-b3-parentspanid")
    if parent is not None and not _b3_id(parent.strip(), (16,)):
        return None
    return Parent(trace_id, span_id, sampled, B3_MULTI, len(trace) == 32)  # type: ignore[arg-type]


# -- the forwarding step ---------------------------------------------------------------------------


def forward(trace: list[tuple[bytes, bytes]], out: list[tuple[bytes, bytes]], percentage: float, export: bool,
            rng: random.Random, host: str, port: int, service: bool, client_ip: str, request_id: bytes,
            scheme: bytes = b"http") -> Span | None:
    """Append the upstream's trace headers to `out`; returns the span to export or None.

    `trace` holds the request's trace headers in order (the caller split them off the other
    headers in its own pass: `TRACE_HEADERS`); `percentage` is the sampling
    probability for a parent without a decision; `export` False (no collector) only propagates.
    `host`/`port` name the span (the backend Service's hostname and port, or for a pod its
    address), `service` says which; `request_id` is the forwarded `x-request-id`."""
    parent: Parent | None = None
    tracestate = b""
    single = None
    multi: dict[bytes, bytes] | None = None
    for name, value in trace:
        if name == b"traceparent":
            if parent is None:
                parent = parse_traceparent(value)
        elif name == b"tracestate":
            tracestate = value if not tracestate else tracestate + b"," + value
        elif name == b"b3":
            if single is None:
                single = value
        else:
            if multi is None:
                multi = {}
            multi.setdefault(name, value)
    if parent is None and single is not None:
        parent = parse_b3(single)
    if parent is None and multi is not None:
        parent = parse_b3_multi(multi)
    if parent is not None and parent.sampled is not None:
        sampled = parent.sampled
    else:
        sampled = percentage >= 100.0 or (percentage > 0.0 and rng.random() * 100.0 < percentage)
    span_id = rng.getrandbits(64) or 1
    if parent is not None and parent.trace_id:
        trace_id, parent_id = parent.trace_id, parent.span_id
    else:
        trace_id, parent_id = rng.getrandbits(128) or 1, 0
    if tracestate:
        out.append((b"tracestate", tracestate))
    out.append((b"traceparent", b"00-%032x-%016x-%s" % (trace_id, span_id, b"01" if sampled else b"00")))
    if parent is not None and parent.b3:
        width = 32 if parent.wide else 16
        trace_hex = b"%0*x" % (width, trace_id & ((1 << (4 * width)) - 1))
        if parent.b3 == B3_SINGLE:
            value = b"%s-%016x-%s" % (trace_hex, span_id, b"1" if sampled else b"0")
            if parent_id:
                value += b"-%016x" % parent_id
            out.append((b"b3", value))
        else:
            out.append((b"x-b3-traceid", trace_hex))
            out.append((b"x-b3-spanid", b"%016x" % span_id))
            if parent_id:
                out.append((b"x-b3-parentspanid", b"%016x" % parent_id))
            out.append((b"x-b3-sampled", b"1" if sampled else b"0"))
    if not (sampled and export):
        return None
    # Istio's upstream cluster at a waypoint: inbound-vip|port|http|host for a Service.
    cluster = "inbound-vip|%d|http|%s" % (port, host) if service else "connect_originate"
    return Span(trace_id, span_id, parent_id, tracestate.decode("latin-1"), "%s:%d/*" % (host, port), cluster,
                client_ip, request_id.decode("latin-1"), scheme.decode("latin-1"))


def answer(headers: list[tuple[bytes, bytes]], percentage: float, rng: random.Random, host: str, port: int,
           service: bool, client_ip: str) -> Span | None:
    """The span of a request the waypoint answers itself (a denial, no route, no endpoint, a
    fault abort): the client's context read as `forward` reads it, nothing sent upstream. Only
    called when export is on; None when not sampled."""
    trace: list[tuple[bytes, bytes]] = []
    request_id = user_agent = b""
    for pair in headers:
        name = pair[0]
        if name in TRACE_HEADERS:
            trace.append(pair)
        elif name == b"x-request-id" and not request_id:
            request_id = pair[1]
        elif name == b"user-agent" and not user_agent:
            user_agent = pair[1]
    span = forward(trace, [], percentage, True, rng, host, port, service, client_ip, request_id)
    if span is not None:
        if not service:
            span.cluster = "-"  # no upstream was chosen
        if user_agent:
            span.user_agent = user_agent.decode("latin-1")
    return span


# -- configuration ---------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class TracingDefaults:
    """The process's settings (waypoint/main.py): the mesh-wide sampling percentage when no
    Telemetry sets one, and the OTLP/gRPC collector (`host:port`), None for none."""

    percentage: float = DEFAULT_SAMPLING
    endpoint: str | None = None
    root_namespace: str = DEFAULT_ROOT_NAMESPACE


@dataclass(slots=True, frozen=True)
class Level:
    """What one Telemetry object says about tracing (None: it does not say)."""

    percentage: float | None = None
    disabled: bool | None = None
    provider: str | None = None


@dataclass(slots=True, frozen=True)
class TracingPolicy:
    """Tracing for one config version: the sampling percentage and whether spans are reported,
    per Service (by (namespace, name)) and for the rest; whether spans are exported, and where."""

    percentage: float = DEFAULT_SAMPLING
    report: bool = True  # False: disableSpanReporting (sampled and propagated, not exported)
    by_service: Mapping[tuple[str, str], tuple[float, bool]] = field(default_factory=dict)
    endpoint: tuple[str, int] | None = None
    export: bool = False
    notes: tuple[str, ...] = ()

    def for_service(self, namespace: str | None, name: str | None) -> tuple[float, bool]:
        """(sampling percentage, export its spans) for a request to that Service (None: a pod)."""
        if self.by_service and namespace is not None:
            found = self.by_service.get((namespace, name))  # type: ignore[arg-type]
            if found is not None:
                return found[0], found[1] and self.export
        return self.percentage, self.report and self.export

    def percentage_for(self, namespace: str | None, name: str | None) -> float:
        return self.for_service(namespace, name)[0]


class BadTelemetry(ValueError):
    """A Telemetry object's tracing section cannot be read; the message says which field."""


def telemetry_level(spec: Mapping[str, Any]) -> Level:
    """The tracing part of a Telemetry `spec` (Istio reads `tracing[0]` only, as here)."""
    tracing = spec.get("tracing")
    if tracing is None:
        return Level()
    if not isinstance(tracing, list):
        raise BadTelemetry("spec.tracing must be a list")
    if not tracing:
        return Level()
    first = tracing[0]
    if not isinstance(first, Mapping):
        raise BadTelemetry("spec.tracing[0] must be an object")
    percentage = first.get("randomSamplingPercentage")
    if percentage is not None:
        if isinstance(percentage, bool) or not isinstance(percentage, (int, float)) or not 0 <= percentage <= 100:
            raise BadTelemetry("spec.tracing[0].randomSamplingPercentage must be a number from 0 to 100, not %r"
                               % (percentage,))
        percentage = float(percentage)
    disabled = first.get("disableSpanReporting")
    if disabled is not None and not isinstance(disabled, bool):
        raise BadTelemetry("spec.tracing[0].disableSpanReporting must be true or false")
    providers = first.get("providers")
    provider = None
    if providers is not None:
        if not isinstance(providers, list) or not all(isinstance(p, Mapping) and isinstance(p.get("name"), str)
                                                      for p in providers):
            raise BadTelemetry("spec.tracing[0].providers must be a list of {name: ...}")
        provider = providers[0]["name"] if providers else None
    return Level(percentage, disabled, provider)


def _merge(levels: Iterable[Level]) -> Level:
    """Most specific last: each later level's set fields win."""
    percentage = disabled = provider = None
    for level in levels:
        if level.percentage is not None:
            percentage = level.percentage
        if level.disabled is not None:
            disabled = level.disabled
        if level.provider is not None:
            provider = level.provider
    return Level(percentage, disabled, provider)


def parse_endpoint(text: str, services: Iterable[Any] = ()) -> tuple[str, int]:
    """`host:port` → (ip, port); a host that is a Service hostname (or `name.namespace`) of the
    mesh resolves to its first VIP. ValueError says what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("OTLP endpoint %r is not host:port" % text)
    if not _looks_like_ip(host):
        for service in services:
            names = (service.hostname, "%s.%s" % (service.name, service.namespace))
            if host in names and service.addresses:
                return service.addresses[0].rpartition("/")[2], int(port)
        raise ValueError("OTLP endpoint host %r is neither an IP nor a Service of the mesh" % host)
    return host, int(port)


def _looks_like_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def compile_tracing(objects: Iterable[Mapping[str, Any]], gateway_namespace: str, gateway_name: str,
                    gateway_object: Mapping[str, Any] | None, services: Iterable[Any],
                    defaults: TracingDefaults) -> TracingPolicy:
    """The `TracingPolicy` of one config version from its Telemetry objects (see the module docstring)."""
    notes: list[str] = []
    root: list[Level] = []
    namespace: list[Level] = []
    waypoint: list[Level] = []
    per_service: dict[tuple[str, str], list[Level]] = {}
    for obj in sorted(objects, key=lambda o: ((o.get("metadata") or {}).get("namespace") or "",
                                              (o.get("metadata") or {}).get("name") or "")):
        meta = obj.get("metadata") or {}
        ns, name = meta.get("namespace") or "default", meta.get("name") or "?"
        spec = obj.get("spec") or {}
        try:
            if not isinstance(spec, Mapping):
                raise BadTelemetry("spec must be an object")
            level = telemetry_level(spec)
        except BadTelemetry as exc:
            notes.append("Telemetry %s/%s: ignored: %s" % (ns, name, exc))
            continue
        if level == Level():
            continue
        refs = spec.get("targetRefs") or ([spec["targetRef"]] if isinstance(spec.get("targetRef"), Mapping) else [])
        if spec.get("selector"):
            notes.append("Telemetry %s/%s: a workload selector does not select a waypoint; use targetRefs"
                         % (ns, name))
            continue
        if not refs:
            if ns == defaults.root_namespace:
                root.append(level)
            elif ns == gateway_namespace:
                namespace.append(level)
            continue
        if not isinstance(refs, list):
            notes.append("Telemetry %s/%s: ignored: targetRefs must be a list" % (ns, name))
            continue
        for ref in refs:
            if not isinstance(ref, Mapping):
                continue
            kind, group, target = ref.get("kind"), ref.get("group") or "", ref.get("name")
            if kind == "Gateway" and group == "gateway.networking.k8s.io":
                if ns == gateway_namespace and target == gateway_name:
                    waypoint.append(level)
            elif kind == "Service" and group == "":
                if isinstance(target, str):
                    per_service.setdefault((ns, target), []).append(level)
            elif kind == "GatewayClass" and group == "gateway.networking.k8s.io":
                if target == "istio-waypoint" and ns == defaults.root_namespace:
                    root.append(level)  # every waypoint of the mesh
            else:
                notes.append("Telemetry %s/%s: targetRef %s/%s is not a Gateway, GatewayClass or Service; ignored"
                             % (ns, name, group or "core", kind))
    # Istio takes one object per level (the oldest); with several, the last by name wins here.
    base = _merge([Level(defaults.percentage, False), *root[-1:], *namespace[-1:], *waypoint[-1:]])
    by_service = {key: _effective(_merge([base, levels[-1]])) for key, levels in per_service.items()}
    endpoint = None
    text = defaults.endpoint
    annotations = ((gateway_object or {}).get("metadata") or {}).get("annotations") or {}
    if isinstance(annotations, Mapping) and isinstance(annotations.get(ENDPOINT_ANNOTATION), str):
        text = annotations[ENDPOINT_ANNOTATION]
    if text:
        try:
            endpoint = parse_endpoint(text, services)
        except ValueError as exc:
            notes.append("tracing: %s; spans are not exported" % exc)
    percentage, report = _effective(base)
    return TracingPolicy(percentage, report, by_service, endpoint, endpoint is not None, tuple(notes))


def _effective(level: Level) -> tuple[float, bool]:
    """(sampling percentage, report spans) of a merged level. `disableSpanReporting` stops the
    reporting only: "This does NOT impact context propagation or trace sampling behavior"
    (Istio's Telemetry reference), so the rate still sets the flag the upstream is sent."""
    percentage = level.percentage if level.percentage is not None else DEFAULT_SAMPLING
    return percentage, not level.disabled


# -- export ----------------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Identity:
    """Who the waypoint is, for the span's resource and Istio's node tags."""

    namespace: str
    name: str
    mesh_id: str = "cluster.local"
    pod_name: str = ""
    pod_ip: str = ""

    @property
    def node_id(self) -> str:
        # Envoy's node id as Istio builds it: type~ip~pod.namespace~namespace.svc.cluster.local
        return "waypoint~%s~%s.%s~%s.svc.cluster.local" % (self.pod_ip or "0.0.0.0", self.pod_name or self.name,
                                                            self.namespace, self.namespace)

    @classmethod
    def from_environment(cls, namespace: str, name: str, mesh_id: str) -> Identity:
        # INSTANCE_IP on Kubernetes (the Deployment's downward API), POD_IP from the local runtime.
        return cls(namespace, name, mesh_id, os.environ.get("POD_NAME", ""),
                   os.environ.get("INSTANCE_IP") or os.environ.get("POD_IP", ""))


class Exporter:
    """Spans to one OTLP/gRPC collector through the OpenTelemetry SDK's BatchSpanProcessor.

    `end` runs on the loop and only builds the SDK's span and queues it; the processor's thread
    batches and exports (a full queue drops spans, as the SDK does, rather than block)."""

    def __init__(self, endpoint: tuple[str, int], identity: Identity, *, span_exporter: Any = None,
                 schedule_delay_ms: int = 1000) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

        self.endpoint = endpoint
        self.identity = identity
        if span_exporter is None:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            host, port = endpoint
            target = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
            span_exporter = OTLPSpanExporter(endpoint=target, insecure=True, timeout=5)
        self.processor = BatchSpanProcessor(span_exporter, schedule_delay_millis=schedule_delay_ms)
        # The SDK logs a warning per span it drops from a full queue: per request, on the loop.
        # Drops are the design's answer to a slow collector; keep them out of the log.
        logging.getLogger("opentelemetry.sdk._shared_internal").setLevel(logging.ERROR)
        # Istio's default OTel service name: <canonical service>.<namespace> (APP_LABEL_AND_NAMESPACE).
        self._resource = Resource.create({"service.name": "%s.%s" % (identity.name, identity.namespace),
                                          "k8s.namespace.name": identity.namespace})
        self._scope = InstrumentationScope("wisp.waypoint")
        self._fixed = {
            "component": "proxy",
            "node_id": identity.node_id,
            "istio.canonical_service": identity.name,
            "istio.canonical_revision": "latest",
            "istio.namespace": identity.namespace,
            "istio.mesh_id": identity.mesh_id,
            "downstream_cluster": "-",
        }
        self._readable = ReadableSpan
        self._context = SpanContext
        self._flags = TraceFlags(TraceFlags.SAMPLED)
        self._server = SpanKind.SERVER
        self._ok = Status(StatusCode.UNSET)
        self._error = Status(StatusCode.ERROR)
        self._tracestate = TraceState
        self._empty_state = TraceState()
        self.dropped = 0

    def end(self, span: Span, *, start_ns: int, end_ns: int, method: str, path: str, authority: str,
            protocol: str, status: int, flags: str, request_size: int, response_size: int,
            source: str | None, destination: str | None, grpc_status: str = "") -> None:
        """Queue one finished span (called once per sampled request, on the loop)."""
        attributes = dict(self._fixed)
        attributes.update({
            "guid:x-request-id": span.request_id,
            "http.url": "%s://%s%s" % (span.scheme, authority, path),
            "http.method": method,
            "http.protocol": "HTTP/2" if protocol == "gRPC" else protocol,
            "http.status_code": str(status),
            "response_flags": flags,
            "request_size": str(request_size),
            "response_size": str(response_size),
            "upstream_cluster": span.cluster,
            "upstream_cluster.name": span.cluster,
            "user_agent": span.user_agent,
            "peer.address": span.client_ip,
        })
        if protocol == "gRPC":
            # Envoy's gRPC tags (its tracer adds them for a request with a gRPC content type).
            attributes["grpc.path"] = path
            attributes["grpc.authority"] = authority
            if grpc_status:
                attributes["grpc.status_code"] = grpc_status
        if source:
            attributes["source.principal"] = source
        if destination:
            attributes["destination.principal"] = destination
        error = status >= 500 or status == 0
        if error:
            attributes["error"] = "true"
        state = self._empty_state
        if span.tracestate:
            try:
                state = self._tracestate.from_header([span.tracestate])
            except ValueError:
                state = self._empty_state
        context = self._context(span.trace_id, span.span_id, False, self._flags, state)
        parent = self._context(span.trace_id, span.parent_id, True, self._flags) if span.parent_id else None
        readable = self._readable(
            span.name, context, parent, self._resource, attributes, kind=self._server,
            status=self._error if error else self._ok, start_time=start_ns, end_time=end_ns,
            instrumentation_scope=self._scope,
        )
        self.processor.on_end(readable)

    def close(self) -> None:
        """Flush what is queued (bounded by the exporter's timeout) and stop the thread."""
        try:
            self.processor.shutdown()
        except Exception as exc:  # noqa: BLE001 - a collector gone at shutdown must not fail the drain
            log.warning("tracing exporter shutdown failed", error=str(exc))


def wall_clock_ns(started_monotonic: float) -> tuple[int, int]:
    """(start, end) in Unix nanoseconds for a request that started at `started_monotonic`."""
    now_ns = time.time_ns()
    elapsed = time.monotonic() - started_monotonic
    return now_ns - int(elapsed * 1e9), now_ns
