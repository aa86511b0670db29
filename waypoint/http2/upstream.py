"""The endpoints' side: h2c connections to endpoints, each multiplexing many exchanges.

`UpstreamPool.connection_for(endpoint)` returns a connection to that endpoint with room for one
more stream (at most `max_streams`, and never more than the endpoint's MAX_CONCURRENT_STREAMS),
opening a new one when none has room. A new connection exists at once as a client-side wisp.h2
codec, so exchanges open their streams on it straight away; its frames wait in the codec until
the stream under it (`Pipeline.open_upstream`: HBONE through the waypoint's pool, or TCP for
an endpoint outside the mesh) is there, and a stream that cannot be had fails every exchange on
the connection with the reason (each client gets a 503, or gRPC UNAVAILABLE).

Connections are shared by every client connection of the process, as Envoy shares its upstream
HTTP/2 connections per cluster endpoint. A GOAWAY takes a connection out of the pool (its open
streams finish; those the endpoint never processed are refused and answered 503), a connection
error or a closed stream fails what is left on it. Idle connections stay open until
`close_idle()` (the process calls it on a timer) or the endpoint closes them.

With the attempt's lease (waypoint.balance), a connection carries at most the cluster's
DestinationRule `http.maxRequestsPerConnection` streams and is closed (GOAWAY) once the last of
them ends.

The endpoint must speak h2c: requests reach it in the protocol the client used, as Envoy's
`use_downstream_protocol` does. One that answers the preface in HTTP/1.x fails its requests with
that reason (503); translating HTTP/2 to HTTP/1.1 for such endpoints is not done.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from wisp.h2.connection import Connection as H2
from wisp.h2.events import (
    ConnectionTerminated,
    DataReceived,
    GoAwayReceived,
    HeadersReceived,
    SettingsReceived,
    StreamReset,
    WindowUpdated,
)
from wisp.h2 import frames
from wisp.h2.settings import Settings

from waypoint.channel import Channel
from waypoint.config import Endpoint

from .exchange import Exchange, Outbox

log = structlog.get_logger("waypoint.http2")

MiB = 1024 * 1024
STREAM_WINDOW = 1 * MiB
CONNECTION_WINDOW = 4 * MiB
MAX_STREAMS = 100
IDLE_SECONDS = 300.0

OnStream = Callable[[object | None, str | None], None]
Opener = Callable[[Endpoint, OnStream], None]


def client_settings() -> Settings:
    return Settings(initial_window_size=STREAM_WINDOW, max_header_list_size=64 * 1024)


class UpstreamConnection:
    """One h2c connection to one endpoint; the `Reader` of the stream under it."""

    def __init__(self, pool: UpstreamPool, key: tuple, endpoint: Endpoint) -> None:
        self.pool = pool
        self.key = key
        self.endpoint = endpoint
        self.outbox = pool.outbox
        self.codec = H2(client=True, local=client_settings(), connection_window=CONNECTION_WINDOW)
        self.codec.initiate()
        self.channel: Channel | None = None
        self.exchanges: dict[int, Exchange] = {}
        self.failed: str | None = None
        self.idle_since = time.monotonic()
        self._heard = False
        self.opened = 0  # streams opened on this connection
        self.limit: int | None = None  # streams it may carry (maxRequestsPerConnection)

    # -- the pool's side ----------------------------------------------------------------------------
    def has_room(self, max_streams: int) -> bool:
        codec = self.codec
        if self.failed is not None or codec.goaway_received or codec.goaway_sent or codec.is_closed:
            return False
        peer_limit = codec.peer_settings.max_concurrent_streams
        limit = max_streams if peer_limit is None else min(max_streams, peer_limit)
        return codec.local_open_streams < limit

    def open(self, exchange: Exchange, fields: list[tuple[bytes, bytes]], end_stream: bool) -> int:
        sid = self.codec.open_stream(fields, end_stream=end_stream)
        self.exchanges[sid] = exchange
        self.opened += 1
        self.dirty()
        return sid

    def exchange_done(self, exchange: Exchange) -> None:
        if self.exchanges.pop(exchange.up_sid, None) is not None and not self.exchanges:
            self.idle_since = time.monotonic()
            if self.limit is not None and self.opened >= self.limit:
                self.close("maxRequestsPerConnection reached")

    def connected(self, end, reason: str | None) -> None:
        """The stream under the connection is there (`end`), or could not be had (`reason`)."""
        if end is None:
            self.fail(f"upstream connect error to {self.endpoint}: {reason or 'refused'}")
        elif self.failed is not None:
            end.abort(self.failed)
        else:
            self.channel = Channel(end, self)
            self.channel.start()
            self.dirty()
        self.outbox.flush()

    def close(self, reason: str) -> None:
        """An orderly end: GOAWAY, then our side of the stream."""
        if self.failed is not None:
            return
        self.pool.forget(self)
        if not self.codec.is_closed:
            self.codec.goaway()
        self.flush()
        self.failed = reason
        if self.channel is not None:
            self.channel.write_eof()

    # -- writing ------------------------------------------------------------------------------------
    def dirty(self) -> None:
        self.outbox.add(self)

    def flush(self) -> None:
        out = self.codec.out
        if out and self.channel is not None and not self.channel.done:
            data = bytes(out)
            del out[:]
            self.channel.write(data)

    # -- the Reader surface -------------------------------------------------------------------------
    def data_received(self, data) -> bool:
        if self.failed is not None:
            return True
        if not self._heard:
            self._heard = True
            if bytes(data[:7]) == b"HTTP/1.":
                # Our preface answered in HTTP/1.x (typically 400): the server has no h2c.
                self.fail(f"{self.endpoint} answered HTTP/1.x to HTTP/2 with prior knowledge: it does not speak h2c")
                self.outbox.flush()
                return True
        for event in self.codec.receive(data):
            kind = type(event)
            if kind is DataReceived:
                exchange = self.exchanges.get(event.stream_id)
                if exchange is not None:
                    exchange.response_data(event.data, event.end_stream)
                else:
                    self.codec.consumed(event.stream_id, event.flow_controlled_length)
            elif kind is HeadersReceived:
                exchange = self.exchanges.get(event.stream_id)
                if exchange is not None:
                    exchange.response_headers(event.headers, event.end_stream)
            elif kind is WindowUpdated:
                if event.stream_id:
                    exchange = self.exchanges.get(event.stream_id)
                    if exchange is not None:
                        exchange.flush_up()
                else:
                    for exchange in list(self.exchanges.values()):
                        exchange.flush_up()
            elif kind is StreamReset:
                exchange = self.exchanges.get(event.stream_id)
                if exchange is not None:
                    exchange.upstream_reset(event.error_code)
            elif kind is SettingsReceived:
                for exchange in list(self.exchanges.values()):
                    exchange.flush_up()
            elif kind is GoAwayReceived:
                self.pool.forget(self)
            elif kind is ConnectionTerminated:
                self.fail(f"HTTP/2 error from {self.endpoint}: {event.debug}")
        if self.codec.out:
            self.dirty()
        self.outbox.flush()
        return True

    def eof_received(self) -> None:
        self.fail(f"{self.endpoint} closed the connection")
        self.outbox.flush()

    def writable(self) -> None:
        pass

    def closed(self, reason: str | None) -> None:
        self.fail(reason or f"the connection to {self.endpoint} closed")
        self.outbox.flush()

    def fail(self, reason: str) -> None:
        """Every exchange still here fails with `reason`; the connection leaves the pool."""
        if self.failed is not None:
            return
        self.failed = reason
        self.pool.forget(self)
        exchanges = list(self.exchanges.values())
        self.exchanges.clear()
        for exchange in exchanges:
            exchange.upstream_reset(frames.INTERNAL_ERROR, reason)
        if exchanges:
            log.info("waypoint_http2_upstream_failed", endpoint=str(self.endpoint), streams=len(exchanges),
                     reason=reason)
        if self.channel is not None and not self.channel.done:
            self.channel.abort(reason)


class UpstreamPool:
    """The process's h2c connections to endpoints (see the module docstring)."""

    def __init__(self, opener: Opener, outbox: Outbox, *, max_streams: int = MAX_STREAMS) -> None:
        self._open = opener
        self.outbox = outbox
        self.max_streams = max_streams
        self._connections: dict[tuple, list[UpstreamConnection]] = {}

    def connection_for(self, endpoint: Endpoint, lease=None) -> UpstreamConnection:
        key = (endpoint.address, endpoint.port, endpoint.identity, endpoint.hbone)
        limit = lease.per_connection if lease is not None else None
        for conn in self._connections.get(key, ()):
            if conn.has_room(self.max_streams) and (limit is None or conn.opened < limit):
                if limit is not None and (conn.limit is None or limit < conn.limit):
                    conn.limit = limit
                return conn
        conn = UpstreamConnection(self, key, endpoint)
        conn.limit = limit
        self._connections.setdefault(key, []).append(conn)
        self._open(endpoint, conn.connected)
        return conn

    def connections(self) -> list[UpstreamConnection]:
        return [conn for conns in self._connections.values() for conn in conns]

    def forget(self, conn: UpstreamConnection) -> None:
        conns = self._connections.get(conn.key)
        if conns is not None and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._connections[conn.key]

    def close_idle(self, idle_seconds: float = IDLE_SECONDS, now: float | None = None) -> int:
        """Close connections without an exchange for `idle_seconds`; returns how many."""
        now = time.monotonic() if now is None else now
        idle = [c for c in self.connections() if not c.exchanges and now - c.idle_since >= idle_seconds]
        for conn in idle:
            conn.close("idle")
        self.outbox.flush()
        return len(idle)

    def close(self, reason: str = "waypoint stopping") -> None:
        for conn in self.connections():
            conn.close(reason)
        self.outbox.flush()
