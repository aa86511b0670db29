"""HTTP/1.1 to endpoints: one request at a time per connection, kept alive and reused.

An `UpstreamConnection` is an HTTP/1.1 client over one stream the pipeline opened (an HBONE
CONNECT to the endpoint's ztunnel, or plain TCP): `begin(owner, method)` hands it to one
request's `Owner`, `send(data)` writes request bytes, and the response's events go to the owner
(`response_head`, `response_data`, `response_end`, `upstream_failed`, `upstream_writable`).
When a response ended with both sides keeping the connection, the owner gives it back with
`Http1Pool.release`; otherwise `close`.

`Http1Pool.acquire(endpoint, on_ready)` hands out an idle connection to that endpoint (same
address, port and identity) at once, or opens a new one; `on_ready(conn, None, reused)` or
`on_ready(None, reason, False)`. Idle connections wait at most `IDLE_TIMEOUT` seconds (a quarter
more at worst: one timer per pool sweeps them, instead of a timer set and cancelled per request)
and at most `MAX_IDLE` per endpoint; one that the server closes or writes to while idle leaves
the pool.
A reused connection can race with the server closing it: `reused` tells the owner the request
may be retried once on a fresh one if nothing of the response came.

With the attempt's `lease` (waypoint.balance), `acquire` first waits for the cluster's connection
pool to admit the request (`lease.ready`: DestinationRule tcp.maxConnections and
http1MaxPendingRequests), and a connection that has carried the cluster's
http.maxRequestsPerConnection requests is closed instead of kept. `open_connections` counts the
connections open now (a gauge for the metrics and the overload tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from wisp.engine.loop import Loop, Timer

from ..channel import Channel
from ..config import Endpoint
from ..pipeline import Pipeline
from . import codec

IDLE_TIMEOUT = 60.0
MAX_IDLE = 64


class Owner(Protocol):
    def response_head(self, head: codec.Head) -> None: ...
    def response_data(self, data: memoryview) -> bool: ...
    def response_end(self, trailers: list[tuple[bytes, bytes]]) -> None: ...
    def upstream_failed(self, reason: str, status: int) -> None: ...
    def upstream_writable(self) -> None: ...


class UpstreamConnection:
    """One HTTP/1.1 client connection over a splice end (a `waypoint.channel.Reader`)."""

    __slots__ = ("pool", "endpoint", "key", "channel", "parser", "owner", "requests", "idle_since", "broken",
                 "response_started", "limit", "counted")

    def __init__(self, pool: Http1Pool, endpoint: Endpoint, key: tuple, end: object) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.key = key
        self.parser = codec.Parser(request=False)
        self.owner: Owner | None = None
        self.requests = 0
        self.idle_since = 0.0
        self.broken = False
        self.response_started = False
        self.limit: int | None = None  # requests this connection may carry (maxRequestsPerConnection)
        self.counted = True  # in the pool's open_connections until it closes
        pool.open_connections += 1
        self.channel = Channel(end, self)

    # -- the owner's side ------------------------------------------------------------------------
    def begin(self, owner: Owner, method: bytes) -> None:
        self.owner = owner
        self.requests += 1
        self.response_started = False
        self.parser.expect_response_to(method)

    def send(self, data: bytes | memoryview) -> bool:
        return self.channel.write(data)

    def pause_reading(self) -> None:
        self.channel.pause_reading()

    def resume_reading(self) -> None:
        self.channel.resume_reading()

    def close(self, reason: str = "closed") -> None:
        self.broken = True
        self.owner = None
        self.pool.forget(self)
        self.channel.abort(reason)

    @property
    def reusable(self) -> bool:
        """Open and between requests (an idle one was reset for its next response)."""
        return not self.broken and not self.channel.done and self.owner is None

    # -- the end's side (Reader) -----------------------------------------------------------------
    def data_received(self, data: memoryview | bytes) -> bool:
        owner = self.owner
        if owner is None:  # bytes from an idle server: it cannot be trusted with a next request
            self.close("the upstream sent bytes while idle")
            return True
        try:
            events = self.parser.receive(data)
        except codec.ParseError as exc:
            self._failed(f"invalid response from the upstream: {exc.reason}", 502)
            return True
        return self._deliver(events)

    def _deliver(self, events: list) -> bool:
        ok = True
        for kind, value in events:
            owner = self.owner
            if owner is None:
                return True
            if kind == codec.DATA:
                ok = owner.response_data(value) and ok
            elif kind == codec.HEAD:
                self.response_started = True
                owner.response_head(value)
            else:
                self.owner = None
                owner.response_end(value)
        return ok

    def eof_received(self) -> None:
        try:
            events = self.parser.eof()
        except codec.ParseError:
            self._failed("the upstream closed the connection before the response ended", 502)
            return
        self.broken = True
        if events:
            self._deliver(events)
        if self.owner is not None:
            self._failed("the upstream closed the connection without a response", 503)
        else:
            self.close("the upstream closed the connection")

    def writable(self) -> None:
        if self.owner is not None:
            self.owner.upstream_writable()

    def closed(self, reason: str | None) -> None:
        self.broken = True
        self.pool.forget(self)
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.upstream_failed(reason or "the upstream connection closed", 503)

    def _failed(self, reason: str, status: int) -> None:
        owner, self.owner = self.owner, None
        self.close(reason)
        if owner is not None:
            owner.upstream_failed(reason, status)

    # -- idle ------------------------------------------------------------------------------------
    def idle(self, now: float) -> None:
        self.parser.next_message()
        self.idle_since = now


OnReady = Callable[[UpstreamConnection | None, str | None, bool], None]


class Http1Pool:
    """Idle HTTP/1.1 connections per endpoint, over the pipeline's upstream streams."""

    def __init__(self, loop: Loop, pipeline: Pipeline, *, idle_timeout: float = IDLE_TIMEOUT,
                 max_idle: int = MAX_IDLE) -> None:
        self.loop = loop
        self.pipeline = pipeline
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self._idle: dict[tuple, list[UpstreamConnection]] = {}
        self._sweeper: Timer | None = None
        self.opened = 0
        self.reused = 0
        self.open_connections = 0

    @staticmethod
    def key_of(endpoint: Endpoint) -> tuple:
        return (endpoint.address, endpoint.port, endpoint.identity, endpoint.hbone)

    def acquire(self, endpoint: Endpoint, on_ready: OnReady, *, fresh: bool = False, lease=None) -> None:
        limit = None
        if lease is not None:
            if not lease.ready(lambda: self.acquire(endpoint, on_ready, fresh=fresh, lease=lease)):
                return  # the cluster's connection pool is full: wait for a slot
            limit = lease.per_connection
        key = self.key_of(endpoint)
        idle = self._idle.get(key)
        while idle and not fresh:
            conn = idle.pop()
            if not idle:
                del self._idle[key]
            if conn.reusable:
                self.reused += 1
                conn.limit = limit
                on_ready(conn, None, True)
                return
            idle = self._idle.get(key)

        def opened(end: object | None, error: str | None) -> None:
            if end is None:
                on_ready(None, error or "cannot reach the upstream", False)
                return
            self.opened += 1
            conn = UpstreamConnection(self, endpoint, key, end)
            conn.limit = limit
            conn.channel.start()
            on_ready(conn, None, False)

        self.pipeline.open_upstream(endpoint, opened)

    def release(self, conn: UpstreamConnection) -> None:
        """Keep `conn` for the next request to its endpoint (or close it if it cannot be kept)."""
        conn.owner = None
        if not conn.reusable or not conn.parser.done or conn.parser.buffered:
            conn.close("not reusable")
            return
        if conn.limit is not None and conn.requests >= conn.limit:
            conn.close("maxRequestsPerConnection reached")
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle:
            conn.close("too many idle connections")
            return
        conn.idle(time.monotonic())
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.idle_timeout / 4, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle for `idle_timeout`; again in a quarter of it while any are idle."""
        self._sweeper = None
        deadline = time.monotonic() - self.idle_timeout
        for conns in list(self._idle.values()):
            for conn in [c for c in conns if c.idle_since <= deadline]:
                conn.close("idle")
        if self._idle:
            self._sweeper = self.loop.call_later(self.idle_timeout / 4, self._sweep)

    def forget(self, conn: UpstreamConnection) -> None:
        if conn.counted:  # forget runs when a connection closes, by either side (maybe twice)
            conn.counted = False
            self.open_connections -= 1
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
            if not idle:
                del self._idle[conn.key]

    def idle_count(self) -> int:
        return sum(len(conns) for conns in self._idle.values())

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conns in list(self._idle.values()):
            for conn in list(conns):
                conn.close("waypoint stopping")
        self._idle.clear()
