"""Telemetry per request: Istio's request metrics with `reporter="waypoint"`, and the access log.

Every request the waypoint answers — proxied, redirected, denied or refused as malformed — ends
in one `RequestRecord.finish(status, ...)`: `istio_requests_total` +1,
`istio_request_duration_milliseconds`, `istio_request_bytes` and `istio_response_bytes`
(histograms with Envoy's default buckets, as Istio's are), and one `request complete` access-log
line with method, path, status, upstream, duration, both identities, the route and the response
flags. TCP pass-through connections count `istio_tcp_*` as ztunnel does (`ConnectionRecord`).
Labels are Istio's (ztunnel/metrics.py has the same set for TCP); values that are not known are
`unknown`. The counters are wisp.metrics's; served on 15020 `/stats/prometheus` (app.py).

Label sets are built once per kind of request and cached (cleared per config version, as
workloads and services are new objects then): building 21 labels per request would cost more
than the counters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from wisp.identity import SpiffeId
from wisp.metrics import Registry
from wisp.model import Service, Workload

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


class Telemetry:
    def __init__(self, access_log: bool = True) -> None:
        self.registry = Registry()
        self.access_log = access_log
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

    def forget_series(self) -> None:
        self._series.clear()

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
                 "response_bytes", "done")

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
        if not telemetry.access_log:
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
