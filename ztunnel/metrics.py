"""Telemetry per connection: Istio's `istio_tcp_*` counters and the `connection complete` log.

A `ConnectionRecord` follows one proxied connection: it counts the open, is flushed
periodically while the connection lives (so long connections show their bytes), and on close
counts the close, the remaining bytes and writes the access log. Labels follow Istio's
(reference §11): reporter `source` on outbound, `destination` on inbound; missing values are
`unknown`. The counters are wisp.metrics's (no prometheus-client: it cost 2.5 MB of RSS).

With worker processes, each worker writes its counters to a file in the directory the supervisor
names in WISP_METRICS_DIR (`flush_periodically` does it in a worker), and the main process adds
them to its own when scraped (`scrape`), so the counters are the node's totals and survive a
worker's restart; wisp/metrics.py has the mechanism and its guarantees.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import structlog
import trio

from wisp import metrics as wisp_metrics
from wisp.identity import SpiffeId
from wisp.metrics import CounterChild, Registry, WorkerDirectory, WorkerWriter
from wisp.model import Service, Workload

log = structlog.get_logger("ztunnel.access")


class Transfer:
    """Bytes moved so far, read by metrics while the connection lives; the handlers replace it
    with the connection's splice (wisp.engine.splice.Splice), which counts the same fields."""

    __slots__ = ("upstream", "downstream", "error")

    def __init__(self) -> None:
        self.upstream = 0  # client → server (Istio's "received")
        self.downstream = 0  # server → client (Istio's "sent")
        self.error: str | None = None


LABELS = (
    "reporter", "source_workload", "source_workload_namespace", "source_principal", "source_app",
    "source_version", "source_cluster", "destination_service", "destination_service_namespace",
    "destination_service_name", "destination_workload", "destination_workload_namespace",
    "destination_principal", "destination_app", "destination_version", "destination_cluster",
    "request_protocol", "response_flags", "connection_security_policy",
)
UNKNOWN = "unknown"
MUTUAL_TLS = "mutual_tls"
CONTENT_TYPE = wisp_metrics.CONTENT_TYPE  # text format 0.0.4

# response_flags values (Envoy's short names, as Istio reports them).
FLAG_NONE = "-"
FLAG_DENY = "DENY"
FLAG_CONNECT = "CONNECT"  # upstream connect failed


@dataclass(slots=True, frozen=True)
class Peer:
    """One end of a connection as telemetry describes it."""

    workload: Workload | None = None
    identity: SpiffeId | None = None
    address: str | None = None


def _workload_labels(prefix: str, peer: Peer) -> dict[str, str]:
    w = peer.workload
    return {
        f"{prefix}_workload": (w.workload_name or w.name) if w else UNKNOWN,
        f"{prefix}_workload_namespace": w.namespace if w else UNKNOWN,
        f"{prefix}_principal": str(peer.identity) if peer.identity else UNKNOWN,
        f"{prefix}_app": (w.canonical_name or w.workload_name or w.name) if w else UNKNOWN,
        f"{prefix}_version": (w.canonical_revision or "latest") if w else UNKNOWN,
        f"{prefix}_cluster": (w.cluster_id or "Kubernetes") if w else UNKNOWN,
    }


def connection_labels(reporter: str, source: Peer, destination: Peer, service: Service | None,
                      security: str, response_flags: str = FLAG_NONE) -> dict[str, str]:
    labels = {"reporter": reporter}
    labels.update(_workload_labels("source", source))
    labels["destination_service"] = service.hostname if service else (
        destination.workload.name if destination.workload else UNKNOWN)
    labels["destination_service_namespace"] = service.namespace if service else (
        destination.workload.namespace if destination.workload else UNKNOWN)
    labels["destination_service_name"] = service.name if service else (
        destination.workload.name if destination.workload else UNKNOWN)
    labels.update(_workload_labels("destination", destination))
    labels["request_protocol"] = "tcp"
    labels["response_flags"] = response_flags
    labels["connection_security_policy"] = security
    return {k: (v or UNKNOWN) for k, v in labels.items()}


_SERIES_CACHE = 4096


@dataclass(slots=True, frozen=True)
class Series:
    labels: dict[str, str]
    opened: CounterChild
    closed: CounterChild
    received: CounterChild
    sent: CounterChild
    pinned: tuple


class Metrics:
    def __init__(self) -> None:
        self.registry = Registry()
        self.opened = self.registry.counter("istio_tcp_connections_opened_total",
                                            "Connections opened by the proxy", LABELS)
        self.closed = self.registry.counter("istio_tcp_connections_closed_total",
                                            "Connections closed by the proxy", LABELS)
        self.sent = self.registry.counter("istio_tcp_sent_bytes_total",
                                          "Bytes sent to the client (server to client)", LABELS)
        self.received = self.registry.counter("istio_tcp_received_bytes_total",
                                              "Bytes received from the client (client to server)", LABELS)
        # Inbound connections refused because the peer's certificate is not the identity of the
        # workload at its address (ztunnel/proxy/inbound.py).
        self.identity_mismatch = self.registry.counter(
            "wisp_inbound_identity_mismatch_total",
            "Inbound HBONE connections whose peer certificate names another identity than the "
            "workload at the peer's address (refused)")
        self.live: set[ConnectionRecord] = set()
        self._series: dict[tuple, Series] = {}
        self._workers: WorkerDirectory | None = None

    def series(self, reporter: str, source: Peer, destination: Peer, service: Service | None, security: str,
               response_flags: str) -> Series:
        """The label set and counters of connections like this one, built once per config version
        (19 labels and four `labels()` look-ups were a tenth of a new connection's cost)."""
        key = (reporter, id(source.workload), source.identity, id(destination.workload), destination.identity,
               id(service), security, response_flags)
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= _SERIES_CACHE:
                self._series.clear()
            labels = connection_labels(reporter, source, destination, service, security, response_flags)
            values = tuple(labels[name] for name in LABELS)
            series = self._series[key] = Series(
                labels, self.opened.labels(*values), self.closed.labels(*values),
                self.received.labels(*values), self.sent.labels(*values),
                # Held so that the ids in the key cannot be reused while it is cached.
                (source.workload, destination.workload, service),
            )
        return series

    def forget_series(self) -> None:
        """A new config version: workloads and services are new objects, label sets may differ."""
        self._series.clear()

    def exposition(self, workers_dir: str | None = None) -> bytes:
        """The Prometheus text now; with `workers_dir`, the sum of ours and the workers' counters
        as their files hold them (`scrape` asks the workers to write first, off the loop)."""
        return wisp_metrics.exposition(self.registry, self._worker_directory(workers_dir))

    async def scrape(self, workers_dir: str | None = None) -> bytes:
        """What /metrics answers: our counters plus, with `workers_dir`, every worker's as of now."""
        return await wisp_metrics.scrape(self.registry, self._worker_directory(workers_dir))

    def _worker_directory(self, workers_dir: str | None) -> WorkerDirectory | None:
        # Kept per directory: it holds the counts of workers that exited.
        if workers_dir is None:
            return None
        if self._workers is None or self._workers.directory != workers_dir:
            self._workers = WorkerDirectory(workers_dir)
        return self._workers

    def value(self, name: str, **labels: str) -> float:
        """Sum of a counter's samples whose labels include `labels` (for tests and debugging)."""
        return self.registry.value(name, **labels)

    def flush(self) -> None:
        """Report the bytes of live connections moved since their last flush."""
        for record in list(self.live):
            record.flush()

    async def flush_periodically(self, interval: float = 5.0) -> None:
        """Flush every `interval`. In a worker process (the supervisor set METRICS_DIR_ENV) also
        write our counters to the workers' directory then, whenever the main process asks, and
        once more when cancelled."""
        directory = os.environ.get(wisp_metrics.METRICS_DIR_ENV)
        if directory:
            await WorkerWriter(directory, self.registry, self.flush).run(interval)
            return
        while True:
            await trio.sleep(interval)
            self.flush()


class ConnectionRecord:
    """The telemetry of one connection, from open to close."""

    def __init__(self, metrics: Metrics, *, direction: str, source: Peer, destination: Peer,
                 service: Service | None, security: str, src_addr: str, dst_addr: str,
                 hbone_addr: str | None = None) -> None:
        self.metrics = metrics
        self.direction = direction
        self.source = source
        self.destination = destination
        self.service = service
        self.security = security
        self.src_addr = src_addr
        self.dst_addr = dst_addr
        self.hbone_addr = hbone_addr
        self.transfer = Transfer()
        self.response_flags = FLAG_NONE
        self.started = time.monotonic()
        self._reported_up = 0
        self._reported_down = 0
        self._closed = False
        self._label_series()
        self._series.opened.inc()
        metrics.live.add(self)

    def _label_series(self) -> None:
        """The connection's label set and counters (cached per kind of connection in Metrics);
        looked up again only if closing changes the response flags."""
        reporter = "source" if self.direction == "outbound" else "destination"
        self._series = self.metrics.series(reporter, self.source, self.destination, self.service,
                                           self.security, self.response_flags)
        self._received = self._series.received
        self._sent = self._series.sent

    def flush(self) -> None:
        up, down = self.transfer.upstream, self.transfer.downstream
        if up == self._reported_up and down == self._reported_down:
            return
        if up > self._reported_up:
            self._received.inc(up - self._reported_up)
        if down > self._reported_down:
            self._sent.inc(down - self._reported_down)
        self._reported_up, self._reported_down = up, down

    def close(self, response_flags: str | None = None, error: str | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        self.metrics.live.discard(self)
        if response_flags and response_flags != self.response_flags:
            self.response_flags = response_flags
            self._label_series()
        self.flush()
        self._series.closed.inc()
        duration_ms = int((time.monotonic() - self.started) * 1000)
        src, dst = self.source, self.destination
        fields = {
            "src.addr": self.src_addr,
            "src.workload": src.workload.name if src.workload else None,
            "src.namespace": src.workload.namespace if src.workload else None,
            "src.identity": str(src.identity) if src.identity else None,
            "dst.addr": self.dst_addr,
            "dst.hbone_addr": self.hbone_addr,
            "dst.service": self.service.hostname if self.service else None,
            "dst.workload": dst.workload.name if dst.workload else None,
            "dst.namespace": dst.workload.namespace if dst.workload else None,
            "dst.identity": str(dst.identity) if dst.identity else None,
            "direction": self.direction,
            "bytes_sent": self.transfer.upstream,
            "bytes_recv": self.transfer.downstream,
            "duration": f"{duration_ms}ms",
        }
        if self.response_flags != FLAG_NONE:
            fields["response_flags"] = self.response_flags
        error = error or self.transfer.error
        if error:
            fields["error"] = error
        log.info("connection complete", **{k: v for k, v in fields.items() if v is not None})
