"""The waypoint process: its config, certificate, listeners and the shells requests pass through.

Holds the compiled config (`WaypointConfig`, replaced per version), the certificate
(`identity.CertificateSource`), the telemetry, the HBONE server on 15008 and the HBONE pool
upstream, the pipeline and the protocol shells (HTTP/1.1 in `http1`, HTTP/2 in `http2`, TCP in
`passthrough`); runs the config subscription (role waypoint, its Gateway named), the readiness
(15021 `/healthz/ready`: 200 once it has config and a certificate) and metrics (15020
`/stats/prometheus`) endpoints, and the drain on SIGTERM. The data path runs in the engine's
loop; everything that waits runs on trio (wisp.engine.runtime).

Without a control plane (`WaypointSettings.control_plane` None) config comes from
`apply_config` (tests) or a static file, and the certificate from a directory (main.py).
"""

from __future__ import annotations

import functools
import logging
import random
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable

import structlog
import trio

from wisp import sockets
from wisp.controlplane.client import ConfigSubscriber, Endpoint, fetch_certificate
from wisp.engine.pool import Pool
from wisp.engine.runtime import Engine, return_freed_memory
from wisp.engine.server import HboneServer
from wisp.hbone.tls import ContextCache
from wisp.identity import CertBundle, SpiffeId
from wisp.metrics import exposition
from wisp.model import ModelSnapshot

from . import endpoints, inbound, passthrough
from .authn import RemoteJwks, mesh_fetch, service_for_host
from .channel import Channel
from .config import WaypointConfig, WaypointSettings, compile_config, empty_config
from .detect import HTTP1, HTTP2, TCP
from .http1.downstream import Http1Downstream, Http1Inputs
from .http1.upstream import Http1Pool
from .identity import CertificateSource
from .pipeline import ClientContext, Pipeline
from .telemetry import Telemetry
from .tracing import Exporter, Identity, TracingDefaults
from .balance.balancer import Balancer
from .upstream import Upstreams

log = structlog.get_logger("waypoint")


class Waypoint:
    def __init__(self, settings: WaypointSettings, engine: Engine | None = None, *,
                 fetch: Callable[[SpiffeId], Awaitable[CertBundle]] | None = None,
                 static_config: ModelSnapshot | None = None, access_log: bool = True) -> None:
        self.settings = settings
        self.engine = engine or Engine(settings.engine)
        self.config: WaypointConfig = empty_config(settings.gateway)
        self.config_synced = False
        self.telemetry = Telemetry(access_log=access_log, json_lines=_json_at_info(settings))
        self.identity = settings.identity
        self.certs = CertificateSource(self.identity, fetch or self._fetch_from_control_plane)
        self._contexts = ContextCache()
        self.rng = random.Random()
        # Endpoint choice, connection-pool limits and outlier detection (waypoint.balance); its
        # waiting requests resume on the loop.
        self.balancer = Balancer(self.rng, call_soon=self.engine.loop.call_soon)
        self._static = static_config
        self.subscriber: ConfigSubscriber | None = None
        self.server: HboneServer | None = None
        self.pool: Pool | None = None
        self.upstreams: Upstreams | None = None
        self.http1_pool: Http1Pool | None = None
        self.jwks: RemoteJwks | None = None  # the jwksUri key sets (waypoint.authn.fetch), once running
        self.http2 = None
        self.pipeline = Pipeline(self.current, self.balancer, self._open_upstream, self.rng)
        self.bound: dict[str, tuple[str, int]] = {}
        self.draining = False
        self._shutdown = trio.Event()
        self._tracing = TracingDefaults(settings.trace_sampling, settings.otlp_endpoint)

    # -- config --------------------------------------------------------------------------------
    def current(self) -> WaypointConfig:
        return self.config

    def apply_config(self, snapshot: ModelSnapshot, version: str | None = None) -> None:
        """Compile and install a config version; requests already decided keep their decision."""
        config = compile_config(snapshot, self.settings.gateway, version, tracing=self._tracing)
        self._export_to(config.tracing.endpoint if config.tracing.export else None)
        self.config = config
        self.config_synced = True
        if self.jwks is not None:
            self.jwks.track(config.authn.remote)
        self.telemetry.forget_series()
        for note in config.notes:
            log.warning("config note", note=note)
        log.info("config applied", version=version, **config.counts)

    def _export_to(self, endpoint: tuple[str, int] | None) -> None:
        """Point span export at `endpoint` (None: stop); the old exporter flushes on a thread of its own."""
        old = self.telemetry.tracer
        if (old.endpoint if old is not None else None) == endpoint:
            return
        new = None
        if endpoint is not None:
            settings = self.settings
            try:
                new = Exporter(endpoint, Identity.from_environment(settings.namespace, settings.name,
                                                                   settings.trust_domain))
            except ImportError as exc:
                log.warning("tracing unavailable: opentelemetry-sdk is not installed", error=str(exc))
        self.telemetry.tracer = new
        log.info("tracing export", endpoint="%s:%d" % endpoint if endpoint else None)
        if old is not None:
            threading.Thread(target=old.close, name="wisp-trace-close", daemon=True).start()

    def pending(self) -> list[str]:
        waiting = []
        if not self.config_synced:
            waiting.append("config")
        if self.certs.current() is None:
            waiting.append("certificate")
        if self.draining:
            waiting.append("shutdown (draining)")
        return waiting

    def request_shutdown(self) -> None:
        self._shutdown.set()

    # -- the data path's hooks -----------------------------------------------------------------
    def _choose(self, config: WaypointConfig, service, port: int, source_ip: str | None = None):
        return self.balancer.choose(config, service, port, source_ip=source_ip)

    def _jwks_endpoint(self, target):
        """Where a jwksUri is fetched: an endpoint of the mesh Service its host names, or None."""
        config = self.config
        service = service_for_host(target.host, config.services_by_name, config.services_by_vip)
        return self._choose(config, service, target.port) if service is not None else None

    def _open_upstream(self, endpoint, on_stream) -> None:
        self.upstreams.open(endpoint, on_stream)

    def _client_context(self, identity: SpiffeId):
        bundle = self.certs.current()
        if bundle is None or identity != self.identity:
            return None
        return self._contexts.get(bundle, server_side=False)

    def _server_context(self):
        bundle = self.certs.current()
        return self._contexts.get(bundle, server_side=True) if bundle is not None else None

    def _missing_certificate(self, then: Callable[[], None]) -> None:
        async def wait() -> None:
            with trio.move_on_after(10):
                while self.certs.current() is None:
                    await self.certs.changed.wait()
            then()
        self.engine.spawn(wait)

    def dispatch(self, protocol: str, channel: Channel, ctx: ClientContext, initial: bytes) -> None:
        """Protocol detection's verdict: the shell that serves this client connection."""
        if protocol == HTTP1:
            Http1Downstream(self.http1_inputs, channel, ctx).start(initial)
        elif protocol == HTTP2 and self.http2 is not None:
            self.http2.serve(channel, ctx, initial)
        elif protocol == TCP:
            passthrough.serve(self.pipeline, self.telemetry, channel, ctx, initial, self._choose)
        else:
            channel.abort(f"no shell for {protocol}")

    # -- running -------------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED, handle_signals: bool = True) -> None:
        settings = self.settings
        loop = self.engine.loop
        mesh_sock = sockets.listener(settings.mesh_address, reuse_port=False)
        self.bound["mesh"] = mesh_sock.getsockname()[:2]
        async with trio.open_nursery() as nursery:
            await nursery.start(self.engine.serve)
            await nursery.start(self.certs.run)
            self.pool = Pool(loop, self._client_context, _socket_factory,
                             on_missing_certificate=lambda identity, retry: self._missing_certificate(retry))
            self.upstreams = Upstreams(loop, self.identity, self.pool)
            if self.telemetry.lines is not None:
                self.telemetry.lines.attach(loop)
            self.http1_pool = Http1Pool(loop, self.pipeline)
            self.jwks = RemoteJwks(mesh_fetch(self.http1_pool, self._jwks_endpoint, loop.call_later), loop.call_later)
            self.pipeline.jwks = self.jwks
            self.jwks.track(self.config.authn.remote)
            self.http1_inputs = Http1Inputs(loop, self.pipeline, self.http1_pool, self.telemetry)
            self.http2 = _http2_proxy(self.pipeline, self.telemetry, loop)
            self.server = HboneServer(
                loop, mesh_sock, self._server_context,
                on_request=functools.partial(inbound.handle, loop, self.current, self.dispatch),
                trust_domain=settings.trust_domain, name="waypoint:15008",
                fetch_certificate=self._missing_certificate,
            )
            for name, address, handler in (
                ("readiness", settings.readiness_address, endpoints.readiness_handler(self.pending)),
                ("metrics", settings.metrics_address, endpoints.metrics_handler(self._metrics)),
            ):
                sock = sockets.listener(address, reuse_port=False)
                self.bound[name] = sock.getsockname()[:2]
                await nursery.start(endpoints.serve_http, sock, handler)
            if self._static is not None:
                self.apply_config(self._static, "static")
            elif settings.control_plane:
                endpoint = self._control_plane()
                self.subscriber = ConfigSubscriber(
                    endpoint, settings.subscriber_id,
                    lambda snapshot: self.apply_config(snapshot, self.subscriber.view.version),
                    **_gateway_argument(settings),
                )
                nursery.start_soon(self.subscriber.run)
            nursery.start_soon(return_freed_memory)
            if handle_signals:
                nursery.start_soon(self._watch_signals)
            log.info("waypoint started", gateway=f"{settings.namespace}/{settings.name}",
                     identity=str(self.identity), **{k: f"{h}:{p}" for k, (h, p) in self.bound.items()})
            task_status.started(self)
            await self._shutdown.wait()
            await self.drain()
            self.server.close("waypoint stopped")
            self.jwks.close()
            self.http1_pool.close()
            if self.http2 is not None:
                self.http2.close()
            self.pool.close("waypoint stopped")
            tracer, self.telemetry.tracer = self.telemetry.tracer, None
            if tracer is not None:
                await trio.to_thread.run_sync(tracer.close)
            nursery.cancel_scope.cancel()
        log.info("waypoint stopped")

    async def drain(self) -> None:
        """GOAWAY to clients, let streams in flight finish until the deadline."""
        self.draining = True
        self.server.drain()
        with trio.move_on_after(self.settings.drain_seconds):
            while self.server.open_streams:
                await trio.sleep(0.05)

    async def _metrics(self) -> bytes:
        return exposition(self.telemetry.registry) + self._pool_counters()

    def _pool_counters(self) -> bytes:
        """Upstream reuse, as Envoy's upstream_cx_total / upstream_rq counters show it: HTTP/1.1
        connections opened (one HBONE stream each) and requests that reused a kept-alive one,
        HBONE connections dialled and open. Read from the pools' own counts at scrape time."""
        http1, hbone = self.http1_pool, self.pool
        if http1 is None or hbone is None:
            return b""
        retries, retry_overflows = self.pipeline.budgets.totals()
        lines = []
        for name, kind, value, text in (
            ("wisp_waypoint_http1_upstream_connections_opened_total", "counter", http1.opened,
             "HTTP/1.1 connections opened to endpoints (each one HBONE stream or TCP connection)"),
            ("wisp_waypoint_http1_upstream_requests_reused_total", "counter", http1.reused,
             "requests sent on a kept-alive HTTP/1.1 connection to an endpoint"),
            ("wisp_waypoint_hbone_connections_dialled_total", "counter", hbone.dials,
             "HBONE (TLS) connections dialled to endpoints' ztunnels"),
            ("wisp_waypoint_hbone_connections_open", "gauge", len(hbone.connections()),
             "HBONE connections to endpoints' ztunnels open now"),
            ("wisp_waypoint_http1_upstream_connections_open", "gauge", http1.open_connections,
             "HTTP/1.1 connections to endpoints open now"),
            ("wisp_waypoint_upstream_rq_overflow_total", "counter", self.balancer.overflows,
             "requests answered 503 x-envoy-overloaded: a DestinationRule connectionPool was full"),
            ("wisp_waypoint_upstream_rq_retry_total", "counter", retries,
             "retries made (Envoy's upstream_rq_retry): attempts after a request's first"),
            ("wisp_waypoint_upstream_rq_retry_overflow_total", "counter", retry_overflows,
             "retries not made because the backend's retry budget was spent (upstream_rq_retry_overflow)"),
            ("wisp_waypoint_outlier_ejections_total", "counter", self.balancer.ejections,
             "endpoints ejected by a DestinationRule's outlierDetection"),
            ("wisp_waypoint_outlier_ejections_active", "gauge", self.balancer.ejected_now(),
             "endpoints ejected now"),
        ):
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return ("\n".join(lines) + "\n").encode()

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("shutdown signal received", signal=signal.Signals(signum).name)
                self._shutdown.set()

    def _control_plane(self) -> Endpoint:
        settings = self.settings
        with open(settings.token_path()) as token, open(settings.root_path(), "rb") as roots:
            return Endpoint(settings.control_plane, roots.read(), token.read().strip())

    async def _fetch_from_control_plane(self, identity: SpiffeId) -> CertBundle:
        if not self.settings.control_plane:
            raise RuntimeError("no control plane configured; cannot obtain a certificate")
        return await fetch_certificate(self._control_plane(), identity)


def _json_at_info(settings: WaypointSettings) -> bool:
    """Whether the process logs JSON lines at level info (wisp.log.configure's rule for JSON)."""
    json = settings.log_json if settings.log_json is not None else not sys.stderr.isatty()
    level = logging.getLevelName(str(settings.log_level).upper())
    return json and isinstance(level, int) and level <= logging.INFO


def _socket_factory(address: tuple[str, int], source_ip: str | None) -> socket.socket:
    return sockets.new_tcp_socket(address[0])


def _gateway_argument(settings: WaypointSettings) -> dict:
    """`gateway=` for a ConfigSubscriber that takes it (the control plane filters by it)."""
    import inspect

    if "gateway" in inspect.signature(ConfigSubscriber.__init__).parameters:
        return {"gateway": f"{settings.namespace}/{settings.name}"}
    return {}


def _http2_proxy(pipeline: Pipeline, telemetry: Telemetry, loop):
    """The HTTP/2 shell (waypoint/http2), or None while it is not there."""
    try:
        from .http2 import Http2Proxy
    except ImportError as exc:
        log.warning("HTTP/2 shell unavailable; h2c connections will be refused", error=str(exc))
        return None
    return Http2Proxy(pipeline, telemetry=telemetry, call_later=loop.call_later)
