"""Protocol detection inside an inbound tunnel: HTTP/1.1, HTTP/2 prior knowledge, or TCP.

The first bytes the client sends decide, as Envoy's HTTP inspector does at Istio's waypoints:
- the HTTP/2 connection preface (`PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n`, RFC 9113 §3.4) → HTTP/2,
  handed to `waypoint.http2.Http2Proxy.serve` (h2c and gRPC);
- a request line's start: a method token of known HTTP methods followed by a space → HTTP/1.1
  (`waypoint.http1`);
- anything else → TCP pass-through: the connection is authorized with the L4 form of the
  policies (`WaypointPolicies.for_service(service, tcp=True)`, HTTP-only fields unavailable) and
  spliced to one endpoint of the dialled Service (or the dialled pod) — denied: closed.

A Service port that declares a non-HTTP `appProtocol` (tcp, mysql, mongo, redis, ...) skips
detection: server-first protocols would otherwise wait for bytes the client never sends first.
Detection also gives up after `DETECT_TIMEOUT` seconds without enough bytes and passes the
connection through as TCP, for the same reason. The bytes read while detecting are handed on.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from wisp.engine.loop import Timer

from .authz import RequestAttributes, ServiceRef, authorize
from .channel import Channel
from .pipeline import ClientContext

log = structlog.get_logger("waypoint.detect")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DETECT_TIMEOUT = 5.0
# Methods Envoy's HTTP inspector recognises (RFC 9110, WebDAV, and the common extensions).
METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
           b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK", b"SEARCH", b"REPORT",
           b"MKACTIVITY", b"CHECKOUT", b"MERGE", b"M-SEARCH", b"NOTIFY", b"SUBSCRIBE", b"UNSUBSCRIBE",
           b"PURGE", b"LINK", b"UNLINK", b"ACL", b"BIND", b"REBIND", b"UNBIND", b"MKCALENDAR", b"QUERY")
_METHOD_PREFIXES = frozenset(m + b" " for m in METHODS)
_LONGEST = max(len(m) for m in METHODS) + 1
TCP_APP_PROTOCOLS = frozenset({"tcp", "tls", "mysql", "mongo", "redis", "kafka", "zookeeper", "nats", "amqp"})

HTTP1 = "http/1.1"
HTTP2 = "http/2"
TCP = "tcp"


def classify(data: bytes) -> str | None:
    """HTTP1, HTTP2 or TCP for the first bytes of a connection; None: not enough bytes yet."""
    if data[:1] == b"P" and PREFACE.startswith(data[:len(PREFACE)]):
        return HTTP2 if len(data) >= len(PREFACE) else None
    space = data.find(b" ", 0, _LONGEST + 1)
    if space > 0:
        return HTTP1 if data[:space + 1] in _METHOD_PREFIXES else TCP
    if len(data) > _LONGEST:
        return TCP
    # A prefix of a method (or of the preface) may still become one.
    if any(m.startswith(data) for m in METHODS):
        return None
    return TCP


class Detector:
    """The reader of a new client stream until its protocol is known (a `channel.Reader`)."""

    __slots__ = ("channel", "ctx", "on_protocol", "buffer", "timer", "decided")

    def __init__(self, channel: Channel, ctx: ClientContext,
                 on_protocol: Callable[[str, Channel, ClientContext, bytes], None], timer: Timer | None) -> None:
        self.channel = channel
        self.ctx = ctx
        self.on_protocol = on_protocol
        self.buffer = b""
        self.timer = timer
        self.decided = False

    def data_received(self, data: memoryview | bytes) -> bool:
        if self.decided:
            return True
        self.buffer += data
        protocol = classify(self.buffer)
        if protocol is not None:
            self._decide(protocol)
        elif len(self.buffer) > 4096:
            self._decide(TCP)
        return True

    def timed_out(self) -> None:
        self.timer = None
        if not self.decided and not self.channel.done:
            self._decide(TCP)

    def _decide(self, protocol: str) -> None:
        self.decided = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.channel.reader = None
        self.on_protocol(protocol, self.channel, self.ctx, self.buffer)

    def eof_received(self) -> None:
        if not self.decided:
            # The client sent what it had and half-closed: whatever it is, it is not HTTP we
            # could answer without a request; pass it through.
            self._decide(TCP)  # the pass-through sees `channel.read_done` and forwards the EOF

    def writable(self) -> None:
        pass

    def closed(self, reason: str | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def authorize_tcp(config, ctx: ClientContext):
    """The L4 decision for a connection passed through as TCP."""
    service = config.service_at(ctx.dest_ip)
    policies = config.policies.for_service(ServiceRef(service.namespace, service.name) if service else None,
                                           tcp=True)
    attrs = RequestAttributes.for_connection(ctx.identity, ctx.source_ip, ctx.dest_ip, ctx.dest_port)
    return authorize(policies, attrs), service
