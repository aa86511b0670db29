"""Telemetry per request: Istio's request metrics with `reporter="waypoint"`, and the access log.

Every request the waypoint answers — proxied, redirected, denied or refused as malformed — ends
in one `RequestRecord.finish(status, ...)`: `istio_requests_total` +1,
`istio_request_duration_milliseconds`, `istio_request_bytes` and `istio_response_bytes`
(histograms with Envoy's default buckets, as Istio's are), and one `request complete` access-log
line with method, path, status, upstream, duration, both identities, the route and the response
flags. TCP pass-through connections count `istio_tcp_*` as ztunnel does (`ConnectionRecord`).
Labels are Istio's (ztunnel/metrics.py has the same set for TCP); values that are not known are
`unknown`. The counters are wisp.metrics's; served on 15020 `/stats/prometheus` (app.py).

A request the pipeline sampled for tracing carries its span in `RequestRecord.trace` (the shell
sets it from `Proxy.trace`); `finish` hands it to `Telemetry.tracer` (a
`waypoint.tracing.Exporter`, None when no collector is configured) with the outcome. Unsampled
requests pay one attribute test.

Label sets are built once per kind of request and cached (cleared per config version, as
workloads and services are new objects then): building 21 labels per request would cost more
than the counters.

The access log (`AccessLog`) writes the JSON line structlog's JSONRenderer would — the same keys,
`event`, `level` and `timestamp` — but formats it here, with the parts that repeat (identities,
service, route, upstream) formatted once per combination, and writes the lines of one loop pass
in one write at the pass's end (`Loop.mark_dirty`). Through structlog a line cost ~14.6 µs (its
processor chain, `json.dumps` of a fresh dict, a write per line), a tenth of the waypoint's CPU
per request at saturation; this costs ~3 µs. With a console (non-JSON) log or a level above
info the lines go through structlog as before. Istio's waypoints log requests only when asked
(`meshConfig.accessLogFile`, set by its demo profile, or the Telemetry API); wisp keeps them on
by default because its demo and `wisp waypoint` walkthrough read them (`--no-access-log`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _quote

import structlog

from wisp.identity import SpiffeId
from wisp.metrics import Registry
from wisp.model import Service, Workload

from .tracing import wall_clock_ns

log = structlog.get_logger("waypoint.access")

REPORTER = "waypoint"
UNKNOWN = "unknown"
MUTUAL_TLS = "mutual_tls"

REQUEST_LABELS = (
    "reporter", "source_workload", "source_workload_namespace", "source_principal", "source_app",
    "source_version", "source_cluster", "destination_service", "destination_service_namespace",
    "destination_service_name", "destination_workload", "destination_workload_namespace",
    "destination_principal", "destination_app", "destination_version", "destination_cluster",
    "request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
)
TCP_LABELS = tuple(label for label in REQUEST_LABELS if label not in ("response_code", "grpc_response_status"))
# Envoy's default histogram buckets (Istio keeps them for its request histograms).
BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
           1800000, 3600000)

# response_flags (Envoy's short names)
NO_FLAGS = "-"
FLAG_NO_ROUTE = "NR"
FLAG_NO_HEALTHY_UPSTREAM = "UH"
FLAG_UPSTREAM_CONNECT = "UF"
FLAG_UPSTREAM_RESET = "UR"
FLAG_DOWNSTREAM_RESET = "DR"
FLAG_RBAC = "RBAC"  # Envoy reports a denial as the detail; Istio shows it in response_flags too
FLAG_TIMEOUT = "UT"
FLAG_DOWNSTREAM_PROTOCOL = "DPE"
FLAG_UPSTREAM_PROTOCOL = "UPE"

_SERIES_CACHE = 4096


@dataclass(slots=True, frozen=True)
class Party:
    """One side of a request as telemetry names it."""

    workload: Workload | None
    identity: SpiffeId | None


def _party_labels(prefix: str, party: Party) -> list[str]:
    w = party.workload
    return [
        (w.workload_name or w.name) if w else UNKNOWN,
        w.namespace if w else UNKNOWN,
        str(party.identity) if party.identity else UNKNOWN,
        (w.canonical_name or w.workload_name or w.name) if w else UNKNOWN,
        (w.canonical_revision or "latest") if w else UNKNOWN,
        (w.cluster_id or "Kubernetes") if w else UNKNOWN,
    ]


def _service_labels(service: Service | None, destination: Party) -> list[str]:
    if service is not None:
        return [service.hostname, service.namespace, service.name]
    w = destination.workload
    return [w.name, w.namespace, w.name] if w else [UNKNOWN, UNKNOWN, UNKNOWN]


def _stderr_write(text: str) -> None:
    # sys.stderr as it is now (tests and structlog's PrintLogger may have replaced it).
    stream = sys.stderr
    stream.write(text)
    stream.flush()


class AccessLog:
    """`request complete` lines as JSON, batched per loop pass (see the module docstring)."""

    __slots__ = ("_write", "_lines", "_loop", "_second", "_stamp", "_fixed", "_strings")

    def __init__(self, write: Callable[[str], None] | None = None) -> None:
        self._write = write or _stderr_write
        self._lines: list[str] = []
        self._loop = None
        self._second = -1
        self._stamp = ""
        self._fixed: dict[tuple, str] = {}
        self._strings: dict[str, str] = {}

    def attach(self, loop) -> None:
        """Batch lines per pass of `loop` (a `wisp.engine.loop.Loop`); until then each is written at once."""
        self._loop = loop

    def _string(self, value: str) -> str:
        quoted = self._strings.get(value)
        if quoted is None:
            if len(self._strings) >= _SERIES_CACHE:
                self._strings.clear()
            quoted = self._strings[value] = _quote(value)
        return quoted

    def _timestamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return '%s.%06dZ"}\n' % (self._stamp, int((now - second) * 1e6))

    def forget(self) -> None:
        """Drop the formatted parts (per config version: they are keyed by object ids)."""
        self._fixed.clear()

    def request(self, method: str, path: str, authority: str, protocol: str, status: int, duration_ms: float,
                upstream: str | None, source: SpiffeId | None, destination: SpiffeId | None,
                service: Service | None, route, received: int, sent: int, extra: dict[str, str] | None) -> None:
        """One line. Service and route are config objects, alive as long as their config version."""
        key = (upstream, source, destination, id(service), id(route))
        tail = self._fixed.get(key)
        if tail is None:
            if len(self._fixed) >= _SERIES_CACHE:
                self._fixed.clear()
            values = (("upstream", upstream), ("src.identity", str(source) if source else None),
                      ("dst.identity", str(destination) if destination else None),
                      ("dst.service", service.hostname if service is not None else None),
                      ("route", f"{route.kind}/{route.namespace}/{route.name}" if route is not None else None))
            tail = self._fixed[key] = "".join(', "%s": %s' % (name, _quote(value))
                                              for name, value in values if value is not None)
        string = self._string
        line = '{"method": %s, "path": %s, "authority": %s, "protocol": %s, "status": %d%s, "duration": "%.1fms", ' \
               '"bytes_received": %d, "bytes_sent": %d' % (
                   string(method), _quote(path), string(authority), string(protocol), status, tail, duration_ms,
                   received, sent)
        if extra:
            line += "".join(', "%s": %s' % (name, _quote(value)) for name, value in extra.items())
        line += ', "event": "request complete", "level": "info", "timestamp": "' + self._timestamp()
        self._lines.append(line)
        loop = self._loop
        if loop is None:
            self.flush()
        elif len(self._lines) == 1:
            loop.mark_dirty(self)

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if lines:
            try:
                self._write("".join(lines))
            except (OSError, ValueError):
                pass  # a closed or full stderr must not cost a request


class Telemetry:
    def __init__(self, access_log: bool = True, *, json_lines: bool = False) -> None:
        """`json_lines`: the process logs JSON at info or below, so the access log may be
        formatted here (`AccessLog`) instead of by structlog."""
        self.registry = Registry()
        self.access_log = access_log
        self.lines = AccessLog() if access_log and json_lines else None
        self.requests = self.registry.counter("istio_requests_total", "Requests the proxy answered", REQUEST_LABELS)
        self.duration = self.registry.histogram("istio_request_duration_milliseconds",
                                                "Request duration in milliseconds", REQUEST_LABELS, BUCKETS)
        self.request_bytes = self.registry.histogram("istio_request_bytes", "Request size in bytes (body and head)",
                                                     REQUEST_LABELS, BUCKETS)
        self.response_bytes = self.registry.histogram("istio_response_bytes",
                                                      "Response size in bytes (body and head)", REQUEST_LABELS,
                                                      BUCKETS)
        self.tcp_opened = self.registry.counter("istio_tcp_connections_opened_total", "Connections opened", TCP_LABELS)
        self.tcp_closed = self.registry.counter("istio_tcp_connections_closed_total", "Connections closed", TCP_LABELS)
        self.tcp_sent = self.registry.counter("istio_tcp_sent_bytes_total",
                                              "Bytes sent to the client (server to client)", TCP_LABELS)
        self.tcp_received = self.registry.counter("istio_tcp_received_bytes_total",
                                                  "Bytes received from the client (client to server)", TCP_LABELS)
        self._series: dict[tuple, tuple] = {}
        self.tracer = None  # waypoint.tracing.Exporter while a collector is configured (app.py)

    def forget_series(self) -> None:
        self._series.clear()
        if self.lines is not None:
            self.lines.forget()

    def value(self, name: str, **labels: str) -> float:
        return self.registry.value(name, **labels)

    def request_series(self, source: Party, destination: Party, service: Service | None, protocol: str,
                       status: int, grpc_status: str, flags: str) -> tuple:
        key = (id(source.workload), source.identity, id(destination.workload), destination.identity, id(service),
               protocol, status, grpc_status, flags)
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= _SERIES_CACHE:
                self._series.clear()
            values = (REPORTER, *_party_labels("source", source), *_service_labels(service, destination),
                      *_party_labels("destination", destination), protocol, str(status), grpc_status, flags,
                      MUTUAL_TLS)
            values = tuple(v or UNKNOWN for v in values)
            series = self._series[key] = (
                self.requests.labels(*values), self.duration.labels(*values), self.request_bytes.labels(*values),
                self.response_bytes.labels(*values), (source.workload, destination.workload, service),
            )
        return series

    def tcp_series(self, source: Party, destination: Party, service: Service | None) -> tuple:
        key = ("tcp", id(source.workload), source.identity, id(destination.workload), destination.identity,
               id(service))
        series = self._series.get(key)
        if series is None:
            values = (REPORTER, *_party_labels("source", source), *_service_labels(service, destination),
                      *_party_labels("destination", destination), "tcp", NO_FLAGS, MUTUAL_TLS)
            values = tuple(v or UNKNOWN for v in values)
            series = self._series[key] = (
                self.tcp_opened.labels(*values), self.tcp_closed.labels(*values), self.tcp_received.labels(*values),
                self.tcp_sent.labels(*values), (source.workload, destination.workload, service),
            )
        return series


class RequestRecord:
    """One request from its head to its last response byte (or its failure)."""

    __slots__ = ("telemetry", "started", "source", "method", "path", "authority", "protocol", "request_bytes",
                 "response_bytes", "done", "trace")

    def __init__(self, telemetry: Telemetry, source: Party, method: bytes, path: bytes, authority: bytes,
                 protocol: str) -> None:
        self.telemetry = telemetry
        self.started = time.monotonic()
        self.source = source
        self.method = method
        self.path = path
        self.authority = authority
        self.protocol = protocol
        self.request_bytes = 0
        self.response_bytes = 0
        self.done = False
        self.trace = None  # waypoint.tracing.Span of a sampled request (set by the shell)

    def finish(self, status: int, *, destination: Party | None = None, service: Service | None = None,
               upstream: str | None = None, flags: str = NO_FLAGS, grpc_status: str = "",
               route: object = None, detail: str = "", error: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        telemetry = self.telemetry
        destination = destination or Party(None, None)
        duration = (time.monotonic() - self.started) * 1000.0
        protocol = "grpc" if self.protocol == "gRPC" else "http"
        requests, durations, request_sizes, response_sizes, _ = telemetry.request_series(
            self.source, destination, service, protocol, status, grpc_status or UNKNOWN, flags)
        requests.inc()
        durations.observe(duration)
        request_sizes.observe(self.request_bytes)
        response_sizes.observe(self.response_bytes)
        if self.trace is not None and telemetry.tracer is not None:
            self._export(destination, status, flags, grpc_status)
        if not telemetry.access_log:
            return
        lines = telemetry.lines
        if lines is not None:
            extra = None
            if flags != NO_FLAGS or detail or grpc_status or error:
                extra = {k: v for k, v in (("response_flags", flags if flags != NO_FLAGS else ""),
                                           ("response_code_details", detail), ("grpc_status", grpc_status),
                                           ("error", error)) if v}
            lines.request(
                self.method.decode("latin-1"), self.path.decode("latin-1"), self.authority.decode("latin-1"),
                self.protocol, status, duration, upstream, self.source.identity, destination.identity, service,
                route, self.request_bytes, self.response_bytes, extra)
            return
        fields = {
            "method": self.method.decode("latin-1"),
            "path": self.path.decode("latin-1"),
            "authority": self.authority.decode("latin-1"),
            "protocol": self.protocol,
            "status": status,
            "upstream": upstream,
            "duration": f"{duration:.1f}ms",
            "src.identity": str(self.source.identity) if self.source.identity else None,
            "dst.identity": str(destination.identity) if destination.identity else None,
            "dst.service": service.hostname if service is not None else None,
            "route": f"{route.kind}/{route.namespace}/{route.name}" if route is not None else None,
            "bytes_received": self.request_bytes,
            "bytes_sent": self.response_bytes,
        }
        if flags != NO_FLAGS:
            fields["response_flags"] = flags
        if detail:
            fields["response_code_details"] = detail
        if grpc_status:
            fields["grpc_status"] = grpc_status
        if error:
            fields["error"] = error
        log.info("request complete", **{k: v for k, v in fields.items() if v is not None})

    def _export(self, destination: Party, status: int, flags: str, grpc_status: str) -> None:
        start_ns, end_ns = wall_clock_ns(self.started)
        self.telemetry.tracer.end(
            self.trace, start_ns=start_ns, end_ns=end_ns, method=self.method.decode("latin-1"),
            path=self.path.decode("latin-1"), authority=self.authority.decode("latin-1"), protocol=self.protocol,
            status=status, flags=flags, request_size=self.request_bytes, response_size=self.response_bytes,
            source=str(self.source.identity) if self.source.identity else None,
            destination=str(destination.identity) if destination.identity else None, grpc_status=grpc_status)
