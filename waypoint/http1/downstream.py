"""HTTP/1.1 from the client: one connection inside an inbound HBONE stream, one request at a time.

`Http1Downstream` is the `waypoint.channel.Reader` of the client's stream. It parses requests
(`codec.Parser`), asks the pipeline for each head, and runs an `Exchange` per request:

- `Respond` (denied, redirected, no route, no healthy endpoint, bad path): the waypoint's own
  answer with a Content-Length body; a request body still on its way is read and dropped, so the
  connection stays usable.
- `Proxy`: an upstream HTTP/1.1 connection from the `Http1Pool` (kept-alive ones first); the
  head goes with the framing of the request (Content-Length or chunked, re-encoded chunk by
  chunk), the body is streamed as it arrives (bytes that came before the upstream was ready are
  held, up to `MAX_PENDING`, with the client's reading paused beyond that), and the response
  comes back with hop-by-hop fields removed, the route's response header modifiers applied, and
  framing for this client (a close-delimited upstream body is re-chunked for an HTTP/1.1 client).
  Backpressure both ways: a write that returns False pauses the other side's reading until
  `writable`. `Expect: 100-continue` is answered by the waypoint once the request is routed
  (and not forwarded); a request refused before its body gets no 100 and the connection closes.

Errors and their answers: a request the parser refuses → its status (400, 431, 505, ...) with
`connection: close`, then the stream is closed once the client has seen it; an upstream that
cannot be reached → 503 (`UF`); one that fails before its response head → 502/503 (`UR`), retried
once on a fresh connection when a reused one was closed under us and the request had no body;
one that fails mid-response, or a client that stops mid-body (`DR`), ends both streams. Pipelined
requests are held in the parser until the current response ended. Every request ends in one
`telemetry.RequestRecord.finish`.

Resilience (`waypoint.resilience`, docs/resilience.md): the route's request timeout runs from
the request head (after a fault-injected delay) and answers 504 (`UT`); a per-try timeout bounds
each attempt. An attempt that fails before its response head (connect failure, reset, per-try
timeout) or whose response head has a retriable status is retried per `Proxy.retry`: after the
policy's backoff (the loop's timer), on the endpoint `Pipeline.retarget` picks, if the backend's
retry budget allows and the request can be replayed: no body, or a body that has fitted in
`MAX_REPLAY` bytes so far (a larger one is streamed and never retried). A retried response is
read to its end and dropped (its connection goes back to the pool) or, if the request had not
ended, its connection closed. Once a response head went to the client nothing is retried; when
retries run out the last response (or failure) is the answer. A fault-injected delay waits on
the loop's timer before forwarding; an abort is a `Respond` (`FI`), after its delay.
"""

from __future__ import annotations

import structlog

from wisp.engine.loop import Loop, Timer

from ..channel import Channel
from ..pipeline import PROTOCOL_HTTP1, ClientContext, Pipeline, Proxy, RequestHead, Respond, response_headers_of
from ..resilience.policy import (
    FAILED_CONNECT,
    FAILED_RESET,
    FAILED_TIMEOUT,
    FLAG_FAULT_ABORT,
    backoff_delay,
    retry_on_failure,
    retry_on_response,
)
from ..telemetry import (
    FLAG_DOWNSTREAM_PROTOCOL,
    FLAG_DOWNSTREAM_RESET,
    FLAG_NO_HEALTHY_UPSTREAM,
    FLAG_NO_ROUTE,
    FLAG_RBAC,
    FLAG_TIMEOUT,
    FLAG_UPSTREAM_CONNECT,
    FLAG_UPSTREAM_PROTOCOL,
    FLAG_UPSTREAM_RESET,
    NO_FLAGS,
    Party,
    RequestRecord,
    Telemetry,
)
from . import codec
from .upstream import Http1Pool, UpstreamConnection

log = structlog.get_logger("waypoint.http1")

MAX_PENDING = 1024 * 1024  # request body held while the upstream connection is being made
MAX_MIRROR_PENDING = 256 * 1024
# Request body kept to replay on a retry; past it the request is not retried once its body has
# gone upstream (Envoy buffers up to per_request_buffer_limit_bytes for the same purpose).
MAX_REPLAY = 64 * 1024
MAX_DRAIN = 64 * 1024  # body of a retried response read and dropped to keep its connection
LINGER = 5.0  # how long a closing connection waits for the client to read our answer and close
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Http1Inputs:
    """What the HTTP/1.1 shell uses of the process (narrow, as ztunnel's ProxyInputs)."""

    __slots__ = ("loop", "pipeline", "pool", "telemetry")

    def __init__(self, loop: Loop, pipeline: Pipeline, pool: Http1Pool, telemetry: Telemetry) -> None:
        self.loop = loop
        self.pipeline = pipeline
        self.pool = pool
        self.telemetry = telemetry


class Http1Downstream:
    """One client connection (a `waypoint.channel.Reader`)."""

    __slots__ = ("inputs", "channel", "ctx", "parser", "exchange", "client_done", "closing", "_linger",
                 "source", "paused", "_handling", "_advance")

    def __init__(self, inputs: Http1Inputs, channel: Channel, ctx: ClientContext) -> None:
        self.inputs = inputs
        self.channel = channel
        self.ctx = ctx
        self.parser = codec.Parser(request=True)
        self.exchange: Exchange | None = None
        self.client_done = False
        self.closing = False
        self._linger: Timer | None = None
        self.paused = False
        self._handling = False
        self._advance = False
        config = inputs.pipeline.current()
        self.source = Party(config.workload_at(ctx.source_ip), ctx.identity)
        channel.reader = self

    def start(self, initial: bytes | memoryview = b"") -> None:
        if initial:
            self.data_received(initial)

    # -- Reader ----------------------------------------------------------------------------------
    def data_received(self, data: memoryview | bytes) -> bool:
        if self.closing:
            return True
        try:
            events = self.parser.receive(data)
        except codec.ParseError as exc:
            self._refuse(exc)
            return True
        self._handle(events)
        if self.parser.done and self.parser.buffered > codec.MAX_HEAD:
            return False  # pipelined requests beyond one head: wait for the current response
        exchange = self.exchange
        if exchange is not None and exchange.body_blocked:
            return False
        return True

    def _handle(self, events: list) -> None:
        # One list holds the events of one message (the parser stops at its end), so they all
        # go to the exchange current when it starts, or to the one its HEAD starts — even if
        # that exchange finished meanwhile (a refusal finishes before the request's END).
        current = self.exchange
        self._handling = True
        try:
            for kind, value in events:
                if kind == codec.DATA:
                    if current is not None:
                        current.request_data(value)
                elif kind == codec.HEAD:
                    current = self.exchange = Exchange(self, value)
                    current.start()
                elif current is not None:
                    current.request_end(value)
                if self.closing:
                    return
        finally:
            self._handling = False
        if self._advance:
            self._advance = False
            self._next_message()

    def eof_received(self) -> None:
        self.client_done = True
        try:
            self.parser.eof()
        except codec.ParseError:
            # The client stopped in the middle of a request (mid-body): nothing can be answered
            # usefully; end the upstream side and close ours.
            exchange = self.exchange
            if exchange is not None:
                exchange.downstream_gone("the client closed the connection in the middle of the request")
            self._close_now()
            return
        if self.exchange is None:
            self._finish_writing()

    def writable(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.downstream_writable()

    def closed(self, reason: str | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.downstream_gone(reason or "the client connection closed")

    # -- helpers for the exchange ----------------------------------------------------------------
    def write(self, data: bytes | memoryview) -> bool:
        return self.channel.write(data)

    def exchange_done(self, exchange: Exchange, keep_alive: bool) -> None:
        if self.exchange is not exchange:
            return
        self.exchange = None
        if not keep_alive or self.client_done:
            self._finish_writing()
            return
        if self._handling:
            self._advance = True  # after the events being handled (see _handle)
        else:
            self._next_message()

    def _next_message(self) -> None:
        if self.closing:
            return
        self.resume()
        try:
            events = self.parser.next_message()
        except codec.ParseError as exc:
            self._refuse(exc)
            return
        if events:
            self._handle(events)
        if not self.closing:
            self.channel.resume_reading()

    def pause(self) -> None:
        if not self.paused:
            self.paused = True
            self.channel.pause_reading()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self.channel.resume_reading()

    def _refuse(self, exc: codec.ParseError) -> None:
        """The client sent what HTTP/1.1 refuses: answer it (unless a response is under way) and close."""
        exchange = self.exchange
        if exchange is not None and exchange.response_started:
            exchange.downstream_gone(f"invalid request: {exc.reason}")
            self._close_now()
            return
        if exchange is not None:
            exchange.downstream_gone(f"invalid request: {exc.reason}")
            self.exchange = None
        body = exc.reason.encode("utf-8", "replace") + b"\n"
        answer = codec.encode_response(exc.status, body, [(b"content-type", b"text/plain")], close=True)
        head = self.parser.head
        record = RequestRecord(self.inputs.telemetry, self.source, head.method if head else b"-",
                               head.target if head else b"-", head.authority if head else b"", PROTOCOL_HTTP1)
        record.response_bytes = len(answer)
        self.channel.write(answer)
        record.finish(exc.status, flags=FLAG_DOWNSTREAM_PROTOCOL, detail="http1.codec_error", error=exc.reason)
        self._finish_writing()

    def _finish_writing(self) -> None:
        """End our side; the stream closes when the client ends theirs, or after LINGER."""
        if self.closing:
            return
        self.closing = True
        self.channel.write_eof()
        if not self.channel.done:
            self.channel.resume_reading()  # read (and drop) until the client's EOF
            self._linger = self.inputs.loop.call_later(LINGER, lambda: self.channel.abort("closed after linger"))

    def _close_now(self) -> None:
        self.closing = True
        self.channel.close()


def _origin_form(head: codec.Head) -> tuple[bytes, bytes]:
    """(target, authority) of a request; an absolute-form target gives both (RFC 9112 §3.2.2)."""
    target = head.target
    if target[:1] == b"/" or target == b"*":
        return target, head.authority
    lower = target[:8].lower()
    for scheme in (b"http://", b"https://"):
        if lower.startswith(scheme):
            rest = target[len(scheme):]
            cut = len(rest)
            for mark in (b"/", b"?"):
                at = rest.find(mark)
                if 0 <= at < cut:
                    cut = at
            authority, path = rest[:cut], rest[cut:]
            if path[:1] == b"?" or not path:
                path = b"/" + path
            return path, authority or head.authority
    raise codec.ParseError(400, "the request target is neither a path nor an absolute URI")


class Exchange:
    """One request through the waypoint and its response (the `upstream.Owner` of its connection)."""

    __slots__ = ("down", "head", "record", "proxy", "conn", "pending", "request_complete", "response_started",
                 "response_complete", "framing_out", "chunked_out", "keep_alive", "discard", "failed", "reused",
                 "body_sent", "mirrors", "timer", "body_blocked", "upstream_paused", "trailers", "_status",
                 "attempt", "replay", "try_timer", "wait_timer", "budget", "retry_slot", "last_failure")

    def __init__(self, down: Http1Downstream, head: codec.Head) -> None:
        self.down = down
        self.head = head
        self.record: RequestRecord | None = None
        self.proxy: Proxy | None = None
        self.conn: UpstreamConnection | None = None
        self.pending: bytearray | None = None
        self.request_complete = False
        self.response_started = False
        self.response_complete = False
        self.framing_out = codec.NO_BODY
        self.chunked_out = False
        self.keep_alive = head.keep_alive
        self.discard = False
        self.failed = False
        self.reused = False
        self.body_sent = False
        self.mirrors: list[Mirror] = []
        self.timer: Timer | None = None
        self.body_blocked = False
        self.upstream_paused = False
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self._status = 0
        self.attempt = 0  # retries so far
        self.replay: bytearray | None = None  # the body so far, while it may still be replayed
        self.try_timer: Timer | None = None  # the per-try timeout
        self.wait_timer: Timer | None = None  # a fault delay or a retry's backoff
        self.budget = None  # the backend cluster's retry budget, while this request counts in it
        self.retry_slot = False  # a retry of this request holds a place in the budget
        self.last_failure: tuple[int, str, str] | None = None

    # -- request ---------------------------------------------------------------------------------
    def start(self) -> None:
        down, head = self.down, self.head
        inputs = down.inputs
        try:
            target, authority = _origin_form(head)
        except codec.ParseError as exc:
            down._refuse(exc)
            return
        if not authority:
            # HTTP/1.0 may come without Host; the upstream still needs one: the dialled Service's name.
            service = inputs.pipeline.current().service_at(down.ctx.dest_ip)
            authority = (service.hostname if service is not None else down.ctx.destination).encode("ascii")
        headers = codec.hop_by_hop([pair for pair in head.headers if pair[0] != b"host" and pair[0] != b"expect"],
                                   head.connection)
        request = RequestHead(head.method, target, authority, headers, b"http", PROTOCOL_HTTP1)
        self.record = RequestRecord(inputs.telemetry, down.source, head.method, target, authority, PROTOCOL_HTTP1)
        if head.method == b"CONNECT":
            self._respond(Respond(405, b"CONNECT is not supported inside the mesh tunnel\n",
                                  [(b"content-type", b"text/plain")], detail="method_not_allowed"), NO_FLAGS)
            return
        outcome = inputs.pipeline.decide(down.ctx, request)
        self.record.trace = outcome.trace
        if type(outcome) is Respond:
            flags = NO_FLAGS
            if outcome.status == 403 and outcome.authz is not None:
                flags = FLAG_RBAC
            elif outcome.detail == "route_not_found":
                flags = FLAG_NO_ROUTE
            elif outcome.detail == "no_healthy_upstream":
                flags = FLAG_NO_HEALTHY_UPSTREAM
            elif outcome.detail == "fault_filter_abort":
                flags = FLAG_FAULT_ABORT
            if outcome.delay > 0:
                self.wait_timer = inputs.loop.call_later(outcome.delay, lambda: self._respond_late(outcome, flags))
                return
            self._respond(outcome, flags)
            return
        self.proxy = outcome
        if head.framing != codec.NO_BODY:
            self.pending = bytearray()
            if outcome.retry.enabled:
                self.replay = bytearray()
        budget = outcome.budget
        if budget is not None:
            budget.enter()
            self.budget = budget
        for mirror_head, endpoint in outcome.mirrors:
            self.mirrors.append(Mirror(inputs, mirror_head, endpoint, head.framing))
        if head.expect_continue:
            down.write(CONTINUE)
        fault = outcome.fault
        if fault is not None and fault.delay > 0:
            self.wait_timer = inputs.loop.call_later(fault.delay, self._forward)
            return
        self._forward()

    def _forward(self) -> None:
        """Start the request timeout and the first attempt (after a fault-injected delay, if any)."""
        self.wait_timer = None
        if self.failed or self.response_complete:
            return
        proxy = self.proxy
        if proxy.timeout:
            self.timer = self.down.inputs.loop.call_later(proxy.timeout, self._timed_out)
        self._begin_attempt()

    def _begin_attempt(self) -> None:
        per_try = self.proxy.per_try_timeout
        if per_try:
            self.try_timer = self.down.inputs.loop.call_later(per_try, self._try_timed_out)
        self._connect(fresh=False)

    def _connect(self, fresh: bool) -> None:
        proxy = self.proxy
        self.down.inputs.pool.acquire(proxy.endpoint, self._connected, fresh=fresh, lease=proxy.lease)

    def _connected(self, conn: UpstreamConnection | None, error: str | None, reused: bool) -> None:
        if self.failed or self.response_complete:
            if conn is not None:
                self.down.inputs.pool.release(conn)
            return
        if conn is None:
            self._attempt_failed(FAILED_CONNECT, 503, f"upstream connect error: {error}", FLAG_UPSTREAM_CONNECT)
            return
        self.conn = conn
        self.reused = reused
        proxy = self.proxy
        head = proxy.head
        conn.begin(self, head.method)
        framing = self.head.framing
        data = codec.encode_request_head(head.method, head.target, head.authority, head.headers, framing,
                                         self.head.length)
        if self.attempt:
            pending = self.replay  # a retry sends the whole body received so far
        else:
            pending, self.pending = self.pending, None
        if pending:
            if framing == codec.CHUNKED:
                for piece in codec.encode_chunk(pending):
                    data += piece
            else:
                data += pending
        if self.request_complete and framing == codec.CHUNKED:
            data += codec.encode_last_chunk(self.trailers)
        self.body_sent = bool(pending)
        if not conn.send(data):
            self._block_body()
        elif self.body_blocked:
            self.body_blocked = False
            self.down.resume()

    def request_data(self, data: memoryview) -> None:
        if self.record is not None:
            self.record.request_bytes += len(data)
        for mirror in self.mirrors:
            mirror.body(data)
        if self.discard or self.failed:
            return
        conn = self.conn
        replay = self.replay
        if replay is not None:
            if len(replay) + len(data) <= MAX_REPLAY:
                replay += data
            else:
                self.replay = None  # too large to replay: this request is not retried any more
                if conn is None and self.attempt:
                    self._give_up()  # a retry was waiting for its replay
                    return
        if conn is None:
            pending = self.pending
            if pending is None:
                return
            pending += data
            if len(pending) > MAX_PENDING:
                self._block_body()
            return
        self.body_sent = True
        if self.head.framing == codec.CHUNKED:
            ok = True
            for piece in codec.encode_chunk(data):
                ok = conn.send(piece)
        else:
            ok = conn.send(data)
        if not ok:
            self._block_body()

    def _block_body(self) -> None:
        self.body_blocked = True
        self.down.pause()

    def upstream_writable(self) -> None:
        if self.body_blocked:
            self.body_blocked = False
            self.down.resume()

    def request_end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        self.request_complete = True
        for mirror in self.mirrors:
            mirror.end(trailers)
        if self.discard or self.failed:
            if self.response_complete:
                self._done()
            return
        conn = self.conn
        if conn is None:
            if self.response_complete:  # the waypoint answered it (a body-less request): next one
                self._done()
                return
            self.trailers = trailers
            return
        if self.head.framing == codec.CHUNKED:
            conn.send(codec.encode_last_chunk(trailers))
        if self.response_complete:
            self._done()

    # -- response --------------------------------------------------------------------------------
    def response_head(self, rhead: codec.Head) -> None:
        if self.failed:
            return
        proxy = self.proxy
        if rhead.status >= 400 and retry_on_response(proxy.retry, rhead.status, None) and self._may_retry():
            self._retry_response(rhead.status)
            return
        self.response_started = True
        headers = codec.hop_by_hop(rhead.headers, rhead.connection)
        headers = response_headers_of(proxy, headers)
        framing = rhead.framing
        close = not self.keep_alive
        length = rhead.length
        if framing == codec.UNTIL_CLOSE:
            if self.head.version == b"HTTP/1.1":
                framing = codec.CHUNKED
            else:
                framing, close = codec.NO_BODY, True
                self.chunked_out = False
                self.keep_alive = False
        elif framing == codec.NO_BODY:
            declared = rhead.header(b"content-length")
            if declared is not None and (self.head.method == b"HEAD" or rhead.status == 304):
                headers.append((b"content-length", declared))
        self.framing_out = framing
        self.chunked_out = framing == codec.CHUNKED
        if close:
            self.keep_alive = False
        data = codec.encode_response_head(rhead.status, headers, framing, length, close=close, reason=rhead.reason)
        self.record.response_bytes += len(data)
        self._status = rhead.status
        if not self.down.write(data):
            self._pause_upstream()

    def response_data(self, data: memoryview) -> bool:
        if self.failed:
            return True
        self.record.response_bytes += len(data)
        down = self.down
        if self.chunked_out:
            ok = True
            for piece in codec.encode_chunk(data):
                ok = down.write(piece)
        else:
            ok = down.write(data)
        if not ok:
            self.upstream_paused = True
        return ok

    def _pause_upstream(self) -> None:
        if self.conn is not None and not self.upstream_paused:
            self.upstream_paused = True
            self.conn.pause_reading()

    def downstream_writable(self) -> None:
        if self.upstream_paused and self.conn is not None:
            self.upstream_paused = False
            self.conn.resume_reading()

    def response_end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        if self.failed:
            return
        if self.chunked_out:
            self.down.write(codec.encode_last_chunk(trailers))
        self.response_complete = True
        self._cancel_timer()
        proxy = self.proxy
        conn, self.conn = self.conn, None
        if conn is not None:
            if self.request_complete:
                self.down.inputs.pool.release(conn)
            else:
                # The upstream answered before the request body ended: the connection cannot
                # carry another request, and the client's connection ends after this answer.
                conn.close("answered before the request ended")
                self.keep_alive = False
                self.discard = True
        if proxy.lease is not None:
            proxy.lease.finish(self._status)
        self.record.finish(self._status, destination=Party(proxy.endpoint.workload, proxy.endpoint.identity),
                           service=proxy.service, upstream=str(proxy.endpoint), route=proxy.route)
        if self.request_complete or not self.keep_alive:
            self._done()

    def _done(self) -> None:
        self.down.exchange_done(self, self.keep_alive and self.request_complete)

    # -- failures --------------------------------------------------------------------------------
    def upstream_failed(self, reason: str, status: int) -> None:
        if self.failed or self.response_complete:
            return
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close(reason)
        if not self.response_started and self.reused and not self.body_sent and self.head.framing == codec.NO_BODY:
            # A kept-alive connection the server closed as we reused it: once more on a new one.
            self.reused = False
            self._connect(fresh=True)
            return
        if self.response_started:
            self.failed = True
            self._cancel_timer()
            self._record_failure(self._status, FLAG_UPSTREAM_RESET, reason)
            self.down._close_now()
            return
        flags = FLAG_UPSTREAM_PROTOCOL if status == 502 else FLAG_UPSTREAM_RESET
        self._attempt_failed(FAILED_RESET, status,
                             f"upstream connect error or disconnect/reset before headers: {reason}", flags)

    # -- retries ---------------------------------------------------------------------------------
    def _may_retry(self) -> bool:
        """Whether the attempt that just ended may be retried: attempts left, a replayable body,
        nothing sent to the client yet, and room in the retry budget (taken here if so)."""
        proxy = self.proxy
        policy = proxy.retry
        if self.attempt >= policy.attempts or self.response_started:
            return False
        if self.head.framing != codec.NO_BODY and self.replay is None:
            return False
        if self.budget is None:
            return True
        self.retry_slot = self.budget.next_retry(self.retry_slot)
        return self.retry_slot

    def _attempt_failed(self, failure: str, status: int, text: str, flags: str) -> None:
        """An attempt ended without a response head: retry it, or answer `status`."""
        if not (retry_on_failure(self.proxy.retry, failure) and self._may_retry()):
            self._fail_before_response(status, text, flags)
            return
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close(text)
        lease = self.proxy.lease
        if lease is not None:
            lease.finish(status if failure != FAILED_CONNECT else None, failure == FAILED_CONNECT)
        self.last_failure = (status, text, flags)
        self._schedule_retry()

    def _retry_response(self, status: int) -> None:
        """The response head has a retriable status: drop the response and try again."""
        conn, self.conn = self.conn, None
        if conn is not None:
            if self.request_complete:
                conn.owner = _Drain(self.down.inputs.pool, conn)  # read the rest, keep the connection
            else:
                conn.close("response replaced by a retry")
        lease = self.proxy.lease
        if lease is not None:
            lease.finish(status)
        self.last_failure = (status, f"upstream answered {status} and its retry could not be made", NO_FLAGS)
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        self.attempt += 1
        self.body_sent = False
        inputs = self.down.inputs
        delay = backoff_delay(self.proxy.retry, self.attempt, inputs.pipeline.rng)
        self.wait_timer = inputs.loop.call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self.wait_timer = None
        if self.failed or self.response_complete:
            return
        refusal = self.down.inputs.pipeline.retarget(self.proxy)
        if refusal is not None:
            self._fail_before_response(refusal.status, refusal.body.decode("utf-8", "replace"),
                                       FLAG_NO_HEALTHY_UPSTREAM)
            return
        self._begin_attempt()

    def _give_up(self) -> None:
        """A retry can no longer be made (its body outgrew MAX_REPLAY): answer the last failure."""
        if self.wait_timer is not None:
            self.wait_timer.cancel()
            self.wait_timer = None
        status, text, flags = self.last_failure or (503, "upstream retry could not replay the request", NO_FLAGS)
        self._fail_before_response(status, text, flags)

    def _try_timed_out(self) -> None:
        """The per-try timeout passed: retry (per policy) or 504 before the response head; after it,
        end both streams as the request timeout does."""
        self.try_timer = None
        if self.response_complete or self.failed:
            return
        if self.response_started:
            self._timed_out()
            return
        self._attempt_failed(FAILED_TIMEOUT, 504, "upstream request timeout", FLAG_TIMEOUT)

    def _fail_before_response(self, status: int, text: str, flags: str) -> None:
        self.failed = True
        self._cancel_timer()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close(text)
        if not self.request_complete:
            self.keep_alive = False
            self.discard = True
        answer = codec.encode_response(status, text.encode("utf-8", "replace") + b"\n",
                                       [(b"content-type", b"text/plain")], close=not self.keep_alive,
                                       head_only=self.head.method == b"HEAD")
        self.record.response_bytes += len(answer)
        self.down.write(answer)
        self._record_failure(status, flags, text)
        self.response_complete = True
        self.down.exchange_done(self, self.keep_alive and self.request_complete)

    def _record_failure(self, status: int, flags: str, error: str) -> None:
        proxy = self.proxy
        if proxy.lease is not None:  # the attempt ends: the balancer learns its outcome
            proxy.lease.finish(status, flags == FLAG_UPSTREAM_CONNECT)
        self.record.finish(status, destination=Party(proxy.endpoint.workload, proxy.endpoint.identity),
                           service=proxy.service, upstream=str(proxy.endpoint), route=proxy.route, flags=flags,
                           error=error)

    def _timed_out(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.response_complete or self.failed:
            return
        if self.response_started:
            self.failed = True
            conn, self.conn = self.conn, None
            if conn is not None:
                conn.close("request timeout")
            self._record_failure(self._status, FLAG_TIMEOUT, "request timeout")
            self.down._close_now()
            return
        self._fail_before_response(504, "upstream request timeout", FLAG_TIMEOUT)

    def _cancel_timer(self) -> None:
        """The exchange is over: its timers stop and it leaves the retry budget."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        if self.wait_timer is not None:
            self.wait_timer.cancel()
            self.wait_timer = None
        budget = self.budget
        if budget is not None:
            self.budget = None
            budget.leave()
            if self.retry_slot:
                self.retry_slot = False
                budget.retry_done()

    def downstream_gone(self, reason: str) -> None:
        """The client went away (or sent what cannot be parsed) before this exchange ended."""
        if self.response_complete and not self.failed:
            return
        already = self.failed
        self.failed = True
        self._cancel_timer()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close(reason)
        for mirror in self.mirrors:
            mirror.abort()
        if not already and self.record is not None:
            status = self._status if self.response_started else 0
            proxy = self.proxy
            if proxy is not None:
                if proxy.lease is not None:
                    proxy.lease.finish(None)  # not the endpoint's doing
                self.record.finish(status, destination=Party(proxy.endpoint.workload, proxy.endpoint.identity),
                                   service=proxy.service, upstream=str(proxy.endpoint), route=proxy.route,
                                   flags=FLAG_DOWNSTREAM_RESET, error=reason)
            else:
                self.record.finish(status, flags=FLAG_DOWNSTREAM_RESET, error=reason)

    # -- the waypoint's own answers --------------------------------------------------------------
    def _respond_late(self, outcome: Respond, flags: str) -> None:
        """A fault-injected abort after its delay (unless the client went away meanwhile)."""
        self.wait_timer = None
        if not self.failed:
            self._respond(outcome, flags)

    def _respond(self, outcome: Respond, flags: str) -> None:
        head = self.head
        if head.framing != codec.NO_BODY:
            if head.expect_continue:
                # The client waits for 100 before its body: it will not send it, so the
                # connection cannot be reused safely (it may send it anyway).
                self.keep_alive = False
            self.discard = True
        headers = list(outcome.headers)
        answer = codec.encode_response(outcome.status, outcome.body, headers, close=not self.keep_alive,
                                       head_only=head.method == b"HEAD")
        self.record.response_bytes += len(answer)
        self.response_started = self.response_complete = True
        self.down.write(answer)
        self.record.finish(outcome.status, service=outcome.service, route=outcome.route, flags=flags,
                           detail=outcome.detail)
        if self.request_complete or not self.keep_alive:
            self._done()
        # else: request_end (at once for a request without a body) finishes the exchange


class _Drain:
    """The rest of a response a retry replaced (an `upstream.Owner`): read and dropped, then the
    connection goes back to the pool; one with more than MAX_DRAIN bytes left is closed instead."""

    __slots__ = ("pool", "conn", "left")

    def __init__(self, pool: Http1Pool, conn: UpstreamConnection) -> None:
        self.pool = pool
        self.conn = conn
        self.left = MAX_DRAIN

    def response_head(self, head: codec.Head) -> None:
        pass

    def response_data(self, data: memoryview) -> bool:
        self.left -= len(data)
        if self.left < 0:
            self.conn.close("retried response too long to drain")
        return True

    def response_end(self, trailers: list) -> None:
        self.pool.release(self.conn)

    def upstream_failed(self, reason: str, status: int) -> None:
        pass

    def upstream_writable(self) -> None:
        pass


class Mirror:
    """A copy of a request to a mirror backend; its response is read and dropped (fire-and-forget)."""

    __slots__ = ("inputs", "head", "framing", "conn", "pending", "ended", "trailers", "dead")

    def __init__(self, inputs: Http1Inputs, head: RequestHead, endpoint, framing: int) -> None:
        self.inputs = inputs
        self.head = head
        self.framing = codec.CHUNKED if framing != codec.NO_BODY else codec.NO_BODY
        self.conn: UpstreamConnection | None = None
        self.pending: bytearray | None = bytearray()
        self.ended = False
        self.trailers: list = []
        self.dead = False
        inputs.pool.acquire(endpoint, self._connected)

    def _connected(self, conn: UpstreamConnection | None, error: str | None, reused: bool) -> None:
        if conn is None or self.dead:
            if conn is not None:
                self.inputs.pool.release(conn)
            self.dead = True
            return
        self.conn = conn
        conn.begin(self, self.head.method)
        head = self.head
        data = codec.encode_request_head(head.method, head.target, head.authority, head.headers, self.framing)
        pending, self.pending = self.pending, None
        if pending:
            data += b"".join(codec.encode_chunk(pending))
        if self.ended and self.framing == codec.CHUNKED:
            data += codec.encode_last_chunk(self.trailers)
        conn.send(data)

    def body(self, data: memoryview) -> None:
        if self.dead or self.framing == codec.NO_BODY:
            return
        if self.conn is None:
            self.pending += data
            if len(self.pending) > MAX_MIRROR_PENDING:
                self.abort()
            return
        for piece in codec.encode_chunk(data):
            if not self.conn.send(piece):
                self.abort()  # a mirror never slows the real request down
                return

    def end(self, trailers: list) -> None:
        self.ended = True
        self.trailers = trailers
        if self.conn is not None and not self.dead and self.framing == codec.CHUNKED:
            self.conn.send(codec.encode_last_chunk(trailers))

    def abort(self) -> None:
        self.dead = True
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close("mirror dropped")

    # -- upstream.Owner --------------------------------------------------------------------------
    def response_head(self, head: codec.Head) -> None:
        pass

    def response_data(self, data: memoryview) -> bool:
        return True

    def response_end(self, trailers: list) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            if self.ended or self.framing == codec.NO_BODY:
                self.inputs.pool.release(conn)
            else:
                conn.close("mirror answered early")

    def upstream_failed(self, reason: str, status: int) -> None:
        self.conn = None
        self.dead = True

    def upstream_writable(self) -> None:
        pass
