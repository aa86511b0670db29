"""HTTP/2 (h2c with prior knowledge) and gRPC through the waypoint.

Inside an inbound HBONE stream a client may speak HTTP/2 without TLS or Upgrade (RFC 9113 §3.3,
"prior knowledge"); protocol detection (`waypoint.detect`) recognises the connection preface and
hands the stream to `Http2Proxy.serve`. From there, in the order a request meets them:
`downstream` (the client's connection: a server-side wisp.h2 codec, one `Exchange` per request
stream, the pipeline's decision), `exchange` (one request relayed between the two codecs with
flow control in both directions, trailers, resets), `upstream` (h2c connections to endpoints,
multiplexing exchanges, shared by every client connection of the process), `messages` (header
blocks ↔ the pipeline's request head, the waypoint's own replies — trailers-only for gRPC).

Everything here is sans-IO over wisp.h2 and `waypoint.channel.Channel`: bytes in through
`data_received`, bytes out through the channel's `write`, no socket, no await; the one timer
(a route's request timeout) comes from the `call_later` it is given; the
tests drive it with bytes alone.
"""

from __future__ import annotations

from collections.abc import Callable

from wisp.engine.loop import Timer
from wisp.h2.frames import PREFACE

from waypoint.pipeline import ClientContext, Pipeline
from waypoint.telemetry import Telemetry

from .downstream import Downstream, Transport
from .exchange import Exchange, Outbox
from .upstream import UpstreamPool

# Upstream connections without a stream for IDLE_SECONDS (waypoint.http2.upstream) are closed by a
# sweep this often.
IDLE_SWEEP_SECONDS = 60.0

__all__ = ["PREFACE", "Downstream", "Exchange", "Http2Proxy", "UpstreamPool", "looks_like_http2"]


def looks_like_http2(data: bytes | memoryview) -> bool | None:
    """True: `data` starts with the HTTP/2 client preface; False: it cannot; None: too short to tell."""
    head = bytes(data[: len(PREFACE)])
    if not PREFACE.startswith(head):
        return False
    return True if len(head) == len(PREFACE) else None


class Http2Proxy:
    """One per waypoint process: serves the h2c connections detection hands over."""

    def __init__(self, pipeline: Pipeline, *, telemetry: Telemetry | None = None,
                 call_later: Callable[[float, Callable[[], None]], Timer] | None = None,
                 on_exchange_done: Callable[[Exchange], None] | None = None, max_upstream_streams: int = 100) -> None:
        self.pipeline = pipeline
        self.outbox = Outbox()
        self.upstreams = UpstreamPool(pipeline.open_upstream, self.outbox, max_streams=max_upstream_streams)
        self.on_exchange_done = on_exchange_done
        self.telemetry = telemetry
        # The loop's timers, for routes' request timeouts and the idle sweep (None: neither runs).
        self.call_later = call_later
        self._sweep: Timer | None = None
        if call_later is not None:
            self._sweep = call_later(IDLE_SWEEP_SECONDS, self._close_idle)

    def serve(self, transport: Transport, ctx: ClientContext, initial: bytes | memoryview = b"") -> Downstream:
        """Take over a client connection: `transport` is its Channel (the caller makes the returned
        Downstream the channel's reader), `initial` the bytes detection already read."""
        down = Downstream(transport, ctx, self.pipeline, self.upstreams, self.outbox, telemetry=self.telemetry,
                          call_later=self.call_later, on_exchange_done=self.on_exchange_done)
        if hasattr(transport, "reader"):
            transport.reader = down
        down.start(initial)
        return down

    def _close_idle(self) -> None:
        self.upstreams.close_idle()
        self._sweep = self.call_later(IDLE_SWEEP_SECONDS, self._close_idle)

    def close(self, reason: str = "waypoint stopped") -> None:
        """GOAWAY and close every upstream connection (the process is stopping)."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self.upstreams.close(reason)
