"""One proxied HTTP/2 request: a client's stream joined to a stream on an upstream connection.

An `Exchange` relays both directions between two sans-IO codecs (wisp.h2): the client's
(`Downstream.codec`, server side) and the endpoint's (`UpstreamConnection.codec`, client side).

Flow control crosses the proxy without unbounded buffering: DATA from one side is handed to the
other side's codec within that stream's send window, and the bytes are returned to their sender
(`consumed`, hence WINDOW_UPDATE) only once handed on. What does not fit waits in the exchange
until the other side's window opens (`flush_up`/`flush_down` on WindowUpdated), so the most an
exchange ever holds is the window its sender was granted. Trailers (gRPC's status) follow the
last DATA; a RST_STREAM on one side resets the other; an upstream that fails before its response
headers gets the client a 503 (a gRPC client: trailers-only `grpc-status: 14`), after them a
RST_STREAM.

`Outbox` collects the connections whose codecs queued frames while events were handled; the
entry points flush it once at the end, so one write per connection carries every frame a batch
of events produced.

Resilience (`waypoint.resilience`, docs/resilience.md): `begin` waits out a fault-injected delay
on the loop's timer (the request's DATA waits in the exchange meanwhile, unacknowledged, so the
client's window bounds it), then starts the route's request timeout and the first attempt. An
attempt that fails before its response headers (connect failure, REFUSED_STREAM, reset, per-try
timeout) or whose response headers carry a retriable status or `grpc-status` is retried per
`Proxy.retry`: the upstream stream is cancelled, and after the policy's backoff a new stream is
opened on the endpoint `Pipeline.retarget` picks, if the backend's retry budget allows and the
whole request is in hand to replay: it has ended, and its body fitted in `MAX_REPLAY` bytes. Once
response headers went to the client nothing is retried; when retries run out the last response
(or failure: 503, or 504 for a per-try timeout) is the answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from wisp.h2 import frames

from wisp.h2.errors import H2Error

from waypoint.balance.balancer import attempt_status
from waypoint.pipeline import Proxy, RequestHead, Respond, response_headers_of
from waypoint.resilience.policy import (
    FAILED_CONNECT,
    FAILED_REFUSED,
    FAILED_RESET,
    FAILED_TIMEOUT,
    backoff_delay,
    retry_on_failure,
    retry_on_response,
)

from waypoint.telemetry import (
    FLAG_DOWNSTREAM_RESET,
    FLAG_NO_HEALTHY_UPSTREAM,
    FLAG_TIMEOUT,
    FLAG_UPSTREAM_CONNECT,
    FLAG_UPSTREAM_RESET,
    NO_FLAGS,
    Party,
    RequestRecord,
)

from .messages import Fields, clean_response, grpc_status_of, local_reply, status_of

# Request body kept to replay on a retry (as Envoy buffers up to per_request_buffer_limit_bytes);
# a larger request is not retried.
MAX_REPLAY = 64 * 1024

if TYPE_CHECKING:
    from .downstream import Downstream
    from .upstream import UpstreamConnection


class Flushable(Protocol):
    def flush(self) -> None: ...


class Outbox:
    """Connections with frames to write; `flush()` writes each once."""

    __slots__ = ("dirty",)

    def __init__(self) -> None:
        self.dirty: dict[int, Flushable] = {}

    def add(self, conn: Flushable) -> None:
        self.dirty[id(conn)] = conn

    def flush(self) -> None:
        while self.dirty:
            _, conn = self.dirty.popitem()
            conn.flush()


class Exchange:
    """See the module docstring. Created by `Downstream` for every request it proxies or answers."""

    __slots__ = ("down", "sid", "head", "grpc", "proxy", "up", "up_sid", "started", "status", "grpc_status",
                 "request_bytes", "response_bytes", "error", "done", "on_done", "_req_ended", "_req_sent_end",
                 "_to_up", "_to_up_end", "_to_up_trailers", "_resp_started", "_resp_ended", "_resp_sent_end",
                 "_to_down", "_to_down_end", "_to_down_trailers", "_up_closed", "record", "answer", "flags", "timer",
                 "mirrors", "fields", "attempt", "replay", "_req_trailers", "_credited", "_to_up_credit", "try_timer",
                 "wait_timer", "budget", "retry_slot")

    def __init__(self, down: Downstream, sid: int, head: RequestHead, grpc: bool, request_ended: bool,
                 on_done: Callable[[Exchange], None] | None = None) -> None:
        self.down = down
        self.sid = sid
        self.head = head
        self.grpc = grpc
        self.proxy: Proxy | None = None
        self.up: UpstreamConnection | None = None
        self.up_sid = 0
        self.started = time.monotonic()
        self.status = 0
        self.grpc_status: int | None = None
        self.request_bytes = 0
        self.response_bytes = 0
        self.error: str | None = None
        self.done = False
        self.on_done = on_done
        self._req_ended = request_ended      # the client sent END_STREAM
        self._req_sent_end = False           # ... and it was passed upstream
        self._to_up: bytearray | None = None
        self._to_up_end = False
        self._to_up_trailers: Fields | None = None
        self._resp_started = False           # final response headers sent to the client
        self._resp_ended = False             # the endpoint sent END_STREAM
        self._resp_sent_end = False          # ... and it was passed to the client
        self._to_down: bytearray | None = None
        self._to_down_end = False
        self._to_down_trailers: Fields | None = None
        self._up_closed = False
        self.record: RequestRecord | None = None
        self.answer: Respond | None = None   # the waypoint's own answer, when it made one
        self.flags = NO_FLAGS
        self.timer = None
        self.mirrors: list[Mirror] = []
        self.fields: Fields | None = None  # the request as endpoints get it, for each attempt
        self.attempt = 0  # retries so far
        self.replay: bytearray | None = None  # the request body, while it may still be replayed
        self._req_trailers: Fields | None = None
        self._credited = 0  # request bytes returned to the client as window
        self._to_up_credit = True  # bytes in _to_up are returned as window when sent (not a replay)
        self.try_timer = None  # the per-try timeout
        self.wait_timer = None  # a fault delay or a retry's backoff
        self.budget = None  # the backend cluster's retry budget, while this request counts in it
        self.retry_slot = False

    # -- starting ---------------------------------------------------------------------------------
    def respond(self, respond: Respond) -> None:
        """Answer the client ourselves (denied, redirected, no route, no endpoint, bad request)."""
        if self.down.codec.is_closed:  # the client's connection ended in an error meanwhile
            self._finish()
            return
        fields, body = local_reply(respond, self.grpc)
        self.answer = respond
        # What went on the wire: a gRPC reply is HTTP 200 with the status in grpc-status (so
        # Istio's response_code says 200 and grpc_response_status the code, as Envoy reports it).
        self.status = status_of(fields)
        self.grpc_status = grpc_status_of(fields)
        self._resp_started = True
        self._resp_ended = True
        self._up_closed = True
        self.down.codec.send_headers(self.sid, fields, end_stream=not body)
        if body:
            self._send_down(body, True)
        else:
            self._resp_sent_end = True
        self.down.dirty()
        self._maybe_done()

    def respond_late(self, respond: Respond) -> None:
        """A fault-injected abort after its delay, unless the client reset the stream meanwhile."""
        self.wait_timer = None
        if not self.done:
            self.respond(respond)
            self.down.outbox.flush()

    def begin(self, proxy: Proxy, fields: Fields) -> None:
        """Forward the request (`fields`, as endpoints get it) per `proxy`: after a fault-injected
        delay if there is one, then attempt by attempt (see the module docstring)."""
        self.proxy = proxy
        self.fields = fields
        budget = proxy.budget
        if budget is not None:
            budget.enter()
            self.budget = budget
        if not self._req_ended and proxy.retry.enabled:
            self.replay = bytearray()
        fault = proxy.fault
        call_later = self.down.call_later
        if fault is not None and fault.delay > 0 and call_later is not None:
            self.wait_timer = call_later(fault.delay, self._forward)
            return
        self._forward()

    def _forward(self) -> None:
        self.wait_timer = None
        if self.done:
            return
        proxy = self.proxy
        call_later = self.down.call_later
        if proxy.timeout and call_later is not None:
            # From the request head, as the HTTP/1.1 shell times it (waypoint/http1/downstream.py).
            self.timer = call_later(proxy.timeout, self._timed_out)
        self._attempt()
        self.down.outbox.flush()

    def _attempt(self) -> None:
        """Open a stream for this attempt on a connection to `proxy.endpoint`."""
        proxy = self.proxy
        try:
            up = self.down.upstreams.connection_for(proxy.endpoint, proxy.lease)
            pending = self._to_up is not None or self._to_up_trailers is not None
            end = self._req_ended and not pending
            self.up_sid = up.open(self, self.fields, end)
        except H2Error as exc:  # the upstream connection cannot take a stream after all
            self.up = None
            self._attempt_failed(FAILED_CONNECT, f"upstream connect error: {exc}", FLAG_UPSTREAM_CONNECT)
            return
        self.up = up
        self._up_closed = False
        self._req_sent_end = end
        if proxy.per_try_timeout and self.down.call_later is not None:
            self.try_timer = self.down.call_later(proxy.per_try_timeout, self._try_timed_out)
        if pending:
            self.flush_up()

    def _try_timed_out(self) -> None:
        """The per-try timeout passed: before the response, the attempt fails (and may be
        retried, else 504); after it, as the request timeout."""
        self.try_timer = None
        if self.done:
            return
        if self._resp_started:
            self._timed_out()
            return
        self._attempt_failed(FAILED_TIMEOUT, "upstream request timeout", FLAG_TIMEOUT, status=504,
                             detail="upstream_response_timeout")
        self.down.outbox.flush()

    # -- retries ----------------------------------------------------------------------------------
    def _may_retry(self) -> bool:
        """Attempts left, nothing sent to the client yet, the whole request in hand to replay, and
        room in the retry budget (taken here if so)."""
        policy = self.proxy.retry
        if self.attempt >= policy.attempts or self._resp_started or self.done or not self._req_ended:
            return False
        if self.replay is None and self.request_bytes:
            return False
        if self.budget is None:
            return True
        self.retry_slot = self.budget.next_retry(self.retry_slot)
        return self.retry_slot

    def _attempt_failed(self, failure: str, error: str, flags: str, status: int = 503,
                        detail: str = "upstream_reset_before_response_started", body: bytes | None = None) -> None:
        """An attempt ended without response headers: retry it, or answer `status`."""
        if retry_on_failure(self.proxy.retry, failure) and self._may_retry():
            self._retire_attempt(status if failure != FAILED_CONNECT else None, failure == FAILED_CONNECT)
            return
        self._reset_up(frames.CANCEL)
        self.error = error
        self.flags = flags
        self._to_down = None
        self.respond(Respond(status, error.encode("utf-8", "replace") if body is None else body,
                             [(b"content-type", b"text/plain")], detail=detail))

    def _retire_attempt(self, status: int | None, connect_failed: bool) -> None:
        """Cancel the current attempt and schedule the next after the backoff."""
        self._reset_up(frames.CANCEL)
        if self.up is not None:
            self.up.exchange_done(self)
            self.up = None
        self._up_closed = False
        self._to_up = None
        self._to_up_trailers = None
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        lease = self.proxy.lease
        if lease is not None:
            lease.finish(status, connect_failed)
        self.attempt += 1
        delay = backoff_delay(self.proxy.retry, self.attempt, self.down.pipeline.rng)
        call_later = self.down.call_later
        if call_later is None:
            self._retry_now()
        else:
            self.wait_timer = call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self.wait_timer = None
        if self.done:
            return
        refusal = self.down.pipeline.retarget(self.proxy)
        if refusal is not None:
            self.flags = FLAG_NO_HEALTHY_UPSTREAM
            self.respond(refusal)
            self.down.outbox.flush()
            return
        # The whole request again: every byte of it was returned to the client as window by now.
        uncredited = self.request_bytes - self._credited
        if uncredited > 0:
            self._credit_down(uncredited)
        if self.replay:
            self._to_up = bytearray(self.replay)
            self._to_up_end = True
            self._to_up_credit = False
        self._to_up_trailers = self._req_trailers
        self._req_sent_end = False
        self._attempt()
        self.down.outbox.flush()

    def _timed_out(self) -> None:
        """The route's request timeout passed: 504 (a gRPC client: UNAVAILABLE, as Envoy maps 504)
        before the response started, a reset after; the upstream stream is cancelled either way."""
        self.timer = None
        if self.done:
            return
        self.flags = FLAG_TIMEOUT
        self.error = "request timeout"
        self._reset_up(frames.CANCEL)
        if not self._resp_started:
            self._to_down = None
            self.respond(Respond(504, b"upstream request timeout", [(b"content-type", b"text/plain")],
                                 detail="upstream_response_timeout"))
        else:
            self.down.codec.reset_stream(self.sid, frames.CANCEL)
            self.down.dirty()
            self._finish()
        self.down.outbox.flush()

    # -- client → endpoint ---------------------------------------------------------------------
    def request_data(self, data, end: bool) -> None:
        self.request_bytes += len(data)
        if end:
            self._req_ended = True
        for mirror in self.mirrors:
            mirror.send(data, end)
        replay = self.replay
        if replay is not None and data:
            if len(replay) + len(data) <= MAX_REPLAY:
                replay += data
            else:
                self.replay = None  # too large to replay: this request is not retried
        if self.up is None and self.proxy is not None and not self._up_closed:
            # Waiting for the first attempt (a fault-injected delay): held, not acknowledged.
            if self._to_up is None:
                self._to_up = bytearray()
            self._to_up += data
            self._to_up_end = self._to_up_end or end
            return
        if self.up is None or self._up_closed:
            # Answered already (or the upstream is gone): the bytes go nowhere but back as window.
            if data:
                self._credit_down(len(data))
            self._maybe_done()
            return
        if self._to_up is not None:
            self._to_up += data
            self._to_up_end = self._to_up_end or end
            return
        codec = self.up.codec
        size = len(data)
        window = codec.send_window(self.up_sid)
        if window >= size:
            codec.send_data(self.up_sid, data, end_stream=end)
            if end:
                self._req_sent_end = True
            if size:
                self._credit_down(size)
        else:
            if window > 0:
                codec.send_data(self.up_sid, data[:window])
                self._credit_down(window)
            self._to_up = bytearray(data[window:])
            self._to_up_end = end
        self.up.dirty()
        self._maybe_done()

    def _credit_down(self, n: int) -> None:
        """Return `n` request bytes to the client as window."""
        self._credited += n
        self.down.codec.consumed(self.sid, n)
        self.down.dirty()

    def request_trailers(self, fields: Fields) -> None:
        self._req_ended = True
        self._req_trailers = fields
        for mirror in self.mirrors:
            mirror.trailers(fields)
        if self.up is None and self.proxy is not None and not self._up_closed:
            if self._to_up is None:
                self._to_up = bytearray()
            self._to_up_trailers = fields
            return
        if self.up is None or self._up_closed:
            self._maybe_done()
            return
        if self._to_up is not None:
            self._to_up_trailers = fields
            return
        self.up.codec.send_headers(self.up_sid, fields, end_stream=True)
        self._req_sent_end = True
        self.up.dirty()
        self._maybe_done()

    def flush_up(self) -> None:
        """The endpoint's window opened: send what waited."""
        pending = self._to_up
        if pending is None or self.up is None or self._up_closed:
            return
        codec = self.up.codec
        window = codec.send_window(self.up_sid)
        if window <= 0 and pending:
            return
        n = min(window, len(pending))
        last = n == len(pending)
        codec.send_data(self.up_sid, bytes(pending[:n]),
                        end_stream=last and self._to_up_end and self._to_up_trailers is None)
        del pending[:n]
        if n and self._to_up_credit:
            self._credit_down(n)
        if last:
            self._to_up = None
            self._to_up_credit = True
            if self._to_up_trailers is not None:
                codec.send_headers(self.up_sid, self._to_up_trailers, end_stream=True)
                self._to_up_trailers = None
                self._req_sent_end = True
            elif self._to_up_end:
                self._req_sent_end = True
        self.up.dirty()
        self._maybe_done()

    # -- endpoint → client ---------------------------------------------------------------------
    def response_headers(self, fields: list[tuple[str, str]] | Fields, end: bool) -> None:
        if self.done:
            return
        block = [(n.encode("latin-1"), v.encode("latin-1")) if isinstance(n, str) else (n, v) for n, v in fields]
        codec = self.down.codec
        if self._resp_started:  # trailers
            self._resp_ended = True
            grpc = grpc_status_of(block)
            if grpc is not None:
                self.grpc_status = grpc
            if self._to_down is not None:
                self._to_down_trailers = block
                return
            codec.send_headers(self.sid, block, end_stream=True)
            self._resp_sent_end = True
            self.down.dirty()
            self._maybe_done()
            return
        status = status_of(block)
        if status < 200:  # informational: passed on as it is
            codec.send_headers(self.sid, block)
            self.down.dirty()
            return
        proxy = self.proxy
        if proxy is not None and (status >= 400 or end):
            grpc = grpc_status_of(block)
            if retry_on_response(proxy.retry, status, grpc) and self._may_retry():
                self._retire_attempt(status, False)
                return
        self.status = status
        self._resp_started = True
        if self.proxy is not None and self.proxy.response_headers:
            pseudo = [f for f in block if f[0][:1] == b":"]
            regular = [f for f in block if f[0][:1] != b":"]
            block = pseudo + clean_response(response_headers_of(self.proxy, regular))
        grpc = grpc_status_of(block)
        if grpc is not None:  # trailers-only
            self.grpc_status = grpc
        codec.send_headers(self.sid, block, end_stream=end)
        if end:
            self._resp_ended = self._resp_sent_end = True
        self.down.dirty()
        self._maybe_done()

    def response_data(self, data, end: bool) -> None:
        if self.done or self.up is None:
            return
        self.response_bytes += len(data)
        if end:
            self._resp_ended = True
        self._send_down(data, end)
        self._maybe_done()

    def _send_down(self, data, end: bool) -> None:
        """Data for the client within its window; the endpoint gets its window back as it goes."""
        if self._to_down is not None:
            self._to_down += data
            self._to_down_end = self._to_down_end or end
            return
        codec = self.down.codec
        size = len(data)
        window = codec.send_window(self.sid)
        if window >= size:
            codec.send_data(self.sid, data, end_stream=end)
            if end:
                self._resp_sent_end = True
            self._credit_up(size)
        else:
            if window > 0:
                codec.send_data(self.sid, data[:window])
                self._credit_up(window)
            self._to_down = bytearray(data[window:])
            self._to_down_end = end
        self.down.dirty()

    def _credit_up(self, n: int) -> None:
        if n and self.up is not None and not self._up_closed:
            self.up.codec.consumed(self.up_sid, n)
            self.up.dirty()

    def flush_down(self) -> None:
        """The client's window opened: send what waited."""
        pending = self._to_down
        if pending is None or self.done:
            return
        codec = self.down.codec
        window = codec.send_window(self.sid)
        if window <= 0 and pending:
            return
        n = min(window, len(pending))
        last = n == len(pending)
        codec.send_data(self.sid, bytes(pending[:n]),
                        end_stream=last and self._to_down_end and self._to_down_trailers is None)
        del pending[:n]
        self._credit_up(n)
        if last:
            self._to_down = None
            if self._to_down_trailers is not None:
                codec.send_headers(self.sid, self._to_down_trailers, end_stream=True)
                self._to_down_trailers = None
                self._resp_sent_end = True
            elif self._to_down_end:
                self._resp_sent_end = True
        self.down.dirty()
        self._maybe_done()

    # -- ending ---------------------------------------------------------------------------------
    def client_reset(self, error_code: int) -> None:
        """The client reset its stream (or its connection went away): cancel upstream."""
        if self.done:
            return
        for mirror in self.mirrors:
            if not mirror.sent_end:
                mirror.abort()
        self.error = f"client reset the stream (HTTP/2 error code {error_code})"
        self.flags = FLAG_DOWNSTREAM_RESET
        self._reset_up(frames.CANCEL)
        self._finish()

    def upstream_reset(self, error_code: int, reason: str | None = None) -> None:
        """The endpoint reset the stream, or its connection failed (`reason`)."""
        if self.done:
            return
        self._up_closed = True
        if error_code == frames.NO_ERROR and reason is None and self._resp_ended:
            # RFC 9113 §8.1: a complete response, and the endpoint wants no more of the request.
            self._maybe_done()
            return
        if not self._resp_started:
            if reason is not None and reason.startswith("upstream connect error"):
                failure = FAILED_CONNECT
            elif error_code == frames.REFUSED_STREAM:
                failure = FAILED_REFUSED
            else:
                failure = FAILED_RESET
            cause = b"connection failure" if reason else b"remote reset"
            self._attempt_failed(failure, reason or f"upstream reset the stream (HTTP/2 error code {error_code})",
                                 FLAG_UPSTREAM_CONNECT if reason else FLAG_UPSTREAM_RESET,
                                 body=b"upstream connect error or disconnect/reset before headers. reset reason: "
                                 + cause)
            return
        self.error = reason or f"upstream reset the stream (HTTP/2 error code {error_code})"
        self.flags = FLAG_UPSTREAM_RESET
        code = error_code if reason is None and error_code != frames.NO_ERROR else frames.INTERNAL_ERROR
        self.down.codec.reset_stream(self.sid, code)
        self.down.dirty()
        self._finish()

    def _reset_up(self, code: int) -> None:
        if self.up is not None and not self._up_closed:
            self._up_closed = True
            self.up.codec.reset_stream(self.up_sid, code)
            self.up.dirty()

    def _maybe_done(self) -> None:
        """Done once the response's end reached the client and the request's end is accounted
        for: passed upstream, or — with no upstream stream left — stopped by RST_STREAM NO_ERROR
        (RFC 9113 §8.1: a complete response may end a request the server no longer needs)."""
        if self.done or not self._resp_sent_end:
            return
        if self.up is None or self._up_closed:
            if not self._req_ended:
                self.down.codec.reset_stream(self.sid, frames.NO_ERROR)
                self.down.dirty()
            self._finish()
        elif self._req_ended and self._req_sent_end:
            self._finish()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self._to_up = self._to_down = None
        self.replay = None
        for timer in (self.timer, self.try_timer, self.wait_timer):
            if timer is not None:
                timer.cancel()
        self.timer = self.try_timer = self.wait_timer = None
        budget = self.budget
        if budget is not None:
            self.budget = None
            budget.leave()
            if self.retry_slot:
                self.retry_slot = False
                budget.retry_done()
        self.down.exchange_done(self)
        if self.up is not None:
            self.up.exchange_done(self)
        proxy = self.proxy
        if proxy is not None and proxy.lease is not None:
            # The attempt ends: the endpoint's status (or the 503/504 answered for it); a
            # client's reset is not the endpoint's doing.
            flags = self.flags
            if flags == FLAG_DOWNSTREAM_RESET:
                proxy.lease.finish(None)
            else:
                proxy.lease.finish(attempt_status(self.status, self.grpc_status), flags == FLAG_UPSTREAM_CONNECT)
        if self.record is not None:
            self._record()
        on_done, self.on_done = self.on_done, None
        if on_done is not None:
            on_done(self)

    def _record(self) -> None:
        record = self.record
        record.request_bytes = self.request_bytes
        record.response_bytes = self.response_bytes
        grpc = "" if self.grpc_status is None else str(self.grpc_status)
        proxy = self.proxy
        answer = self.answer
        if proxy is not None and (answer is None or self.flags != NO_FLAGS):
            endpoint = proxy.endpoint
            record.finish(self.status, destination=Party(endpoint.workload, endpoint.identity), service=proxy.service,
                          upstream=str(endpoint), flags=self.flags, grpc_status=grpc, route=proxy.route,
                          detail=answer.detail if answer is not None else "", error=self.error)
        elif answer is not None:
            record.finish(self.status, service=answer.service, route=answer.route, flags=self.flags,
                          grpc_status=grpc, detail=answer.detail, error=self.error)
        else:
            record.finish(self.status, flags=self.flags, grpc_status=grpc, error=self.error)


MIRROR_BUFFER = 1024 * 1024


class Mirror:
    """A copy of one request to a mirror backend (RequestMirror): fire and forget, as Envoy's
    shadow requests are. It gets the request's DATA as the main exchange does, within the mirror
    stream's window; what does not fit waits, up to MIRROR_BUFFER, beyond which the copy is reset
    rather than let a slow mirror hold the client back. Its response is read and dropped."""

    __slots__ = ("up", "up_sid", "pending", "pending_end", "pending_trailers", "sent_end", "dead")

    def __init__(self, up: UpstreamConnection, fields: Fields, end: bool) -> None:
        self.up = up
        self.pending: bytearray | None = None
        self.pending_end = False
        self.pending_trailers: Fields | None = None
        self.sent_end = end
        self.dead = False
        self.up_sid = up.open(self, fields, end)

    def send(self, data, end: bool) -> None:
        if self.dead or self.sent_end:
            return
        if self.pending is not None:
            if len(self.pending) + len(data) > MIRROR_BUFFER:
                self.abort()
                return
            self.pending += data
            self.pending_end = self.pending_end or end
            return
        codec = self.up.codec
        window = codec.send_window(self.up_sid)
        if window >= len(data):
            codec.send_data(self.up_sid, data, end_stream=end)
            self.sent_end = end
        else:
            if window > 0:
                codec.send_data(self.up_sid, data[:window])
            self.pending = bytearray(data[window:])
            self.pending_end = end
        self.up.dirty()

    def trailers(self, fields: Fields) -> None:
        if self.dead or self.sent_end:
            return
        if self.pending is not None:
            self.pending_trailers = fields
            return
        self.up.codec.send_headers(self.up_sid, fields, end_stream=True)
        self.sent_end = True
        self.up.dirty()

    def flush_up(self) -> None:
        pending = self.pending
        if pending is None or self.dead:
            return
        codec = self.up.codec
        n = min(codec.send_window(self.up_sid), len(pending))
        last = n == len(pending)
        if n or last:
            codec.send_data(self.up_sid, bytes(pending[:n]),
                            end_stream=last and self.pending_end and self.pending_trailers is None)
            del pending[:n]
        if last:
            self.pending = None
            if self.pending_trailers is not None:
                codec.send_headers(self.up_sid, self.pending_trailers, end_stream=True)
                self.sent_end = True
            elif self.pending_end:
                self.sent_end = True
        self.up.dirty()

    def response_headers(self, fields, end: bool) -> None:
        if end:
            self._answered()

    def response_data(self, data, end: bool) -> None:
        if data:
            self.up.codec.consumed(self.up_sid, len(data))
            self.up.dirty()
        if end:
            self._answered()

    def _answered(self) -> None:
        if self.sent_end or self.dead:
            self._forget()
        else:  # the mirror answered before the request ended: it needs no more of it
            self.abort()

    def upstream_reset(self, error_code: int, reason: str | None = None) -> None:
        self.dead = True
        self.pending = None
        self._forget()

    def abort(self) -> None:
        if self.dead:
            return
        self.dead = True
        self.pending = None
        self.up.codec.reset_stream(self.up_sid)
        self.up.dirty()
        self._forget()

    def _forget(self) -> None:
        self.up.exchange_done(self)
