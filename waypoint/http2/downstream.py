"""The client's side: one h2c (prior knowledge) connection inside an inbound HBONE stream.

`Downstream` is the `Reader` of the inbound stream's `waypoint.channel.Channel` once protocol
detection saw the HTTP/2 preface. It feeds the bytes to a server-side wisp.h2 codec and turns
each request stream into an `Exchange`: the request head goes through the pipeline
(`Pipeline.decide`: authorize, route — GRPCRoute by service/method and headers, HTTPRoute
otherwise — endpoint, forwarding headers), then is answered here (`Respond`) or opened on an
upstream connection to the chosen endpoint (`Proxy`, waypoint.http2.upstream).

A connection error by the client — a flow-control violation, a malformed frame, too many resets
— is the codec's to detect: it queues GOAWAY and reports `ConnectionTerminated`; the waypoint
then cancels that connection's upstream streams, writes the GOAWAY, ends its side of the tunnel
and reads nothing more from it. Other connections, and the upstream connections they share, are
untouched. A stream error resets that stream alone.

Settings: 100 concurrent streams, a 1 MiB stream window and a 4 MiB connection window (what
one client connection may have in flight through the waypoint; an exchange never holds more
than the window its sender was granted), header lists up to 64 KiB (HTTP/1.1's bound here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import structlog

from wisp.h2.connection import Connection as H2
from wisp.h2.errors import H2Error
from wisp.h2.events import (
    ConnectionTerminated,
    DataReceived,
    HeadersReceived,
    SettingsReceived,
    StreamReset,
    WindowUpdated,
)
from wisp.engine.loop import Timer
from wisp.h2.settings import Settings

from waypoint.pipeline import PROTOCOL_GRPC, ClientContext, Pipeline, Proxy, RequestHead, Respond
from waypoint.telemetry import (
    FLAG_DOWNSTREAM_PROTOCOL,
    FLAG_NO_HEALTHY_UPSTREAM,
    FLAG_NO_ROUTE,
    FLAG_RBAC,
    FLAG_UPSTREAM_CONNECT,
    Party,
    RequestRecord,
    Telemetry,
)

from waypoint.resilience.policy import FLAG_FAULT_ABORT

from .exchange import Exchange, Mirror, Outbox
from .messages import RequestProblem, request_head, response_fields, upstream_request

log = structlog.get_logger("waypoint.http2")

MiB = 1024 * 1024
STREAM_WINDOW = 1 * MiB
CONNECTION_WINDOW = 4 * MiB
MAX_STREAMS = 100
MAX_HEADER_LIST = 64 * 1024


class Transport(Protocol):
    """What a connection writes to: `waypoint.channel.Channel`'s surface."""

    def write(self, data: bytes) -> bool: ...
    def write_eof(self) -> None: ...
    def abort(self, reason: str) -> None: ...


class UpstreamSource(Protocol):
    def connection_for(self, endpoint): ...


def server_settings() -> Settings:
    return Settings(initial_window_size=STREAM_WINDOW, max_concurrent_streams=MAX_STREAMS,
                    max_header_list_size=MAX_HEADER_LIST)


class Downstream:
    """See the module docstring."""

    def __init__(self, transport: Transport, ctx: ClientContext, pipeline: Pipeline, upstreams: UpstreamSource,
                 outbox: Outbox, *, telemetry: Telemetry | None = None,
                 call_later: Callable[[float, Callable[[], None]], Timer] | None = None,
                 on_exchange_done: Callable[[Exchange], None] | None = None) -> None:
        self.transport = transport
        self.ctx = ctx
        self.pipeline = pipeline
        self.upstreams = upstreams
        self.outbox = outbox
        self.on_exchange_done = on_exchange_done
        self.telemetry = telemetry
        self.call_later = call_later
        self.source = Party(pipeline.current().workload_at(ctx.source_ip), ctx.identity)
        self.codec = H2(client=False, local=server_settings(), connection_window=CONNECTION_WINDOW,
                        header_block_limit=MAX_HEADER_LIST)
        self.exchanges: dict[int, Exchange] = {}
        self.error: str | None = None
        self._eof = False
        self._gone = False

    def start(self, initial: bytes | memoryview = b"") -> None:
        """Send our SETTINGS and read what detection already took from the stream."""
        self.codec.initiate()
        self.dirty()
        if initial:
            self.data_received(initial)
        else:
            self.outbox.flush()

    # -- writing -----------------------------------------------------------------------------------
    def dirty(self) -> None:
        self.outbox.add(self)

    def flush(self) -> None:
        out = self.codec.out
        if out and not self._gone:
            data = bytes(out)
            del out[:]
            self.transport.write(data)

    # -- the Reader surface ------------------------------------------------------------------------
    def data_received(self, data) -> bool:
        if self._gone or self.error is not None:
            return True  # after a connection error nothing more is read
        for event in self.codec.receive(data):
            kind = type(event)
            if kind is DataReceived:
                exchange = self.exchanges.get(event.stream_id)
                if exchange is not None:
                    exchange.request_data(event.data, event.end_stream)
                else:
                    self.codec.consumed(event.stream_id, event.flow_controlled_length)
            elif kind is HeadersReceived:
                exchange = self.exchanges.get(event.stream_id)
                if exchange is None:
                    self._request(event.stream_id, event.headers, event.end_stream)
                else:
                    exchange.request_trailers(response_fields(event.headers))
            elif kind is WindowUpdated:
                if event.stream_id:
                    exchange = self.exchanges.get(event.stream_id)
                    if exchange is not None:
                        exchange.flush_down()
                else:
                    self._flush_all()
            elif kind is StreamReset:
                exchange = self.exchanges.get(event.stream_id)
                if exchange is not None:
                    exchange.client_reset(event.error_code)
            elif kind is SettingsReceived:
                self._flush_all()
            elif kind is ConnectionTerminated:
                self._connection_error(event.error_code, event.debug)
        if self.codec.out:
            self.dirty()
        self.outbox.flush()
        if self.error is not None:
            self.transport.write_eof()
        return True

    def eof_received(self) -> None:
        self._eof = True
        if not self.exchanges and not self._gone:
            self.transport.write_eof()

    def writable(self) -> None:
        pass

    def closed(self, reason: str | None) -> None:
        """The tunnel is gone: every stream still open is cancelled upstream."""
        self._gone = True
        for exchange in list(self.exchanges.values()):
            exchange.client_reset(0)
        self.outbox.flush()

    # -- requests ------------------------------------------------------------------------------------
    def _request(self, sid: int, fields: list[tuple[str, str]], end_stream: bool) -> None:
        try:
            head = request_head(fields)
        except RequestProblem as problem:
            exchange = self._exchange(sid, RequestHead(b"-", b"-", b"", []), end_stream)
            exchange.flags = FLAG_DOWNSTREAM_PROTOCOL
            exchange.respond(Respond(problem.status, str(problem).encode(), [(b"content-type", b"text/plain")],
                                     detail="downstream_protocol_error"))
            return
        exchange = self._exchange(sid, head, end_stream)
        try:
            outcome = self.pipeline.decide(self.ctx, head)
        except Exception:  # noqa: BLE001 - a bug in one decision must not end the connection
            log.exception("waypoint_http2_decide_failed", client=str(self.ctx.identity), stream=sid)
            outcome = Respond(500, b"internal error", [(b"content-type", b"text/plain")], detail="internal_error")
        if exchange.record is not None:
            exchange.record.trace = outcome.trace
        if type(outcome) is not Proxy:
            if outcome.status == 403 and outcome.authz is not None:
                exchange.flags = FLAG_RBAC
            elif outcome.detail == "route_not_found":
                exchange.flags = FLAG_NO_ROUTE
            elif outcome.detail == "no_healthy_upstream":
                exchange.flags = FLAG_NO_HEALTHY_UPSTREAM
            elif outcome.detail == "fault_filter_abort":
                exchange.flags = FLAG_FAULT_ABORT
            if outcome.delay > 0 and self.call_later is not None:  # a fault-injected delay, then the abort
                exchange.wait_timer = self.call_later(outcome.delay, lambda: exchange.respond_late(outcome))
                return
            exchange.respond(outcome)
            return
        try:
            for mirror_head, endpoint in outcome.mirrors:
                exchange.mirrors.append(Mirror(self.upstreams.connection_for(endpoint), upstream_request(mirror_head),
                                               end_stream))
            exchange.begin(outcome, upstream_request(outcome.head))
        except H2Error as exc:  # the upstream connection cannot take a stream after all
            exchange.up = None
            exchange.flags = FLAG_UPSTREAM_CONNECT
            exchange.respond(Respond(503, f"upstream connect error: {exc}".encode(),
                                     [(b"content-type", b"text/plain")], detail="upstream_connect_error"))

    def _exchange(self, sid: int, head: RequestHead, end_stream: bool) -> Exchange:
        exchange = Exchange(self, sid, head, head.protocol == PROTOCOL_GRPC, end_stream, self.on_exchange_done)
        if self.telemetry is not None:
            exchange.record = RequestRecord(self.telemetry, self.source, head.method, head.target, head.authority,
                                            head.protocol)
        self.exchanges[sid] = exchange
        return exchange

    def exchange_done(self, exchange: Exchange) -> None:
        self.exchanges.pop(exchange.sid, None)
        if self._eof and not self.exchanges and not self._gone:
            self.transport.write_eof()

    def _flush_all(self) -> None:
        for exchange in list(self.exchanges.values()):
            exchange.flush_down()

    def _connection_error(self, code: int, debug: str) -> None:
        self.error = debug
        log.info("waypoint_http2_client_connection_error", client=str(self.ctx.identity),
                 source=self.ctx.source_ip, error_code=code, reason=debug)
        for exchange in list(self.exchanges.values()):
            exchange.client_reset(code)
