"""HBONE in the loop: HTTP/2 CONNECT streams over one mutual-TLS connection, as splice ends.

`HboneConnection` runs on a `TlsTransport` (wisp.engine.tls): one receive takes what the kernel
holds, every complete TLS record goes to the sans-IO codec (wisp.h2), its events to the streams,
and the connection is flushed once at the end of the loop pass: the frames of all its streams
are encrypted together and leave with one send. A stream is a
`StreamEnd`: bytes it is given become DATA within the peer's window (the rest waits for
WINDOW_UPDATE), bytes it receives go to its peer end at once, and the window is returned
(`consumed`) only when that end took them — HTTP/2 flow control is the backpressure.

Settings are Istio's (reference §2): stream window 4 MiB, connection window 16 MiB, max frame
1 MiB, header lists 16 KiB (client) / 64 KiB (server), server streams ≤ 200, PING every 10 s and
no answer in 20 s kills the connection, GOAWAY on drain.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from wisp.h2 import frames
from wisp.h2.connection import Connection as H2
from wisp.h2.events import (
    ConnectionTerminated,
    DataReceived,
    GoAwayReceived,
    HeadersReceived,
    PingAcked,
    StreamReset,
    WindowUpdated,
)
from wisp.h2.settings import Settings
from wisp.hbone.headers import Authority, InvalidAuthority, forwarded_host, parse_authority, parse_baggage
from wisp.hbone.tls import describe_ssl_error
from wisp.identity import SpiffeId

from .loop import READ, WRITE, Loop, Timer
from .splice import HEADROOM, HIGH_WATER, READ_BUFFER, Splice
from .tls import TlsTransport

log = structlog.get_logger("wisp.engine.hbone")

MiB = 1024 * 1024
READ_SIZE = 256 * 1024
# Parse what was decrypted once this much is buffered, even if OpenSSL has more records ready.
_MAX_RECORD = 16 * 1024
_PARSE_AT = READ_SIZE - _MAX_RECORD
# The most a TLS 1.3 record takes on the wire (RFC 8446 §5.2: 2^14 + 256 bytes after the 5-byte
# header): with fewer bytes in the incoming BIO, the next record may be incomplete.
_RECORD_WIRE = 5 + 16 * 1024 + 256
# One plaintext buffer for every connection of the process: a pass reads and parses one
# connection at a time, and the codec copies what it keeps, so 256 KiB per connection would be waste.
_READ_VIEW = memoryview(bytearray(READ_SIZE))
# A TCP end's read at least this large is encrypted at once as one DATA frame built in the read
# buffer's headroom (`HboneConnection.send_framed`), with no copy of the payload into the codec.
# Smaller ones (requests, responses) are queued in the codec and encrypted together at the flush.
DIRECT_MIN = 16 * 1024
_FRAME_AT = HEADROOM - frames.FRAME_HEADER_SIZE
_FRAME_VIEW = memoryview(READ_BUFFER)
PING_INTERVAL = 10.0
PING_TIMEOUT = 20.0


def client_settings() -> Settings:
    return Settings(initial_window_size=4 * MiB, max_frame_size=1 * MiB, max_header_list_size=16 * 1024)


def server_settings() -> Settings:
    return Settings(initial_window_size=4 * MiB, max_frame_size=1 * MiB, max_header_list_size=64 * 1024,
                    max_concurrent_streams=200)


CONNECTION_WINDOW = 16 * MiB


class StreamEnd:
    """One CONNECT stream as an end of a splice."""

    __slots__ = ("conn", "stream_id", "splice", "upstream", "_pending", "_eof_pending", "_write_done",
                 "_read_done", "_paused", "_withheld", "_closed", "_early", "on_response", "status",
                 "_body")

    def __init__(self, conn: HboneConnection, stream_id: int, *, upstream: bool) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.splice: Splice | None = None
        # True: bytes that arrive on this stream travel client → server (an inbound tunnel).
        self.upstream = upstream
        self._pending: bytearray | None = None
        self._eof_pending = False
        self._write_done = False
        self._read_done = False
        self._paused = False
        self._withheld = 0
        self._closed = False
        self._early: list[tuple[bytes, int, bool]] | None = None
        self.on_response: Callable[[StreamEnd, int, str], None] | None = None
        self.status: int | None = None
        self._body: bytearray | None = None

    @property
    def closed(self) -> bool:
        """Reset, aborted or finished: nothing more will cross this stream."""
        return self._closed

    # -- the splice's side ---------------------------------------------------------------
    def start(self) -> None:
        early, self._early = self._early, None
        if early:
            for data, flow, end in early:
                self.received(data, flow, end)

    def write(self, data: bytes) -> bool:
        """Bytes for the peer: sent within the window now, the rest when it opens."""
        if self._closed or self._write_done:
            return True
        conn = self.conn
        if self._pending is not None:
            self._pending += data
            return False
        codec = conn.codec
        window = codec.send_window(self.stream_id)
        size = len(data)
        if window >= size:
            if (size >= DIRECT_MIN and type(data) is memoryview and data.obj is READ_BUFFER
                    and not codec.out and size <= codec.peer.max_frame_size and conn.send_framed(self.stream_id, size)):
                return True
            codec.send_data(self.stream_id, data)
            conn.dirty()
            if len(codec.out) > HIGH_WATER:
                conn.paused_writers.add(self)
                return False
            return True
        if window > 0:
            view = memoryview(data)
            codec.send_data(self.stream_id, view[:window])
            self._pending = bytearray(view[window:])
            conn.dirty()
        else:
            self._pending = bytearray(data)
        conn.blocked.add(self)
        return False

    def window_opened(self) -> None:
        pending = self._pending
        if pending is None or self._closed:
            return
        codec = self.conn.codec
        window = codec.send_window(self.stream_id)
        if window <= 0:
            return
        if window < len(pending):
            codec.send_data(self.stream_id, bytes(pending[:window]))
            del pending[:window]
            self.conn.dirty()
            return
        codec.send_data(self.stream_id, pending)
        self._pending = None
        self.conn.blocked.discard(self)
        self.conn.dirty()
        if self._eof_pending:
            self._end()
        if self.splice is not None:
            self.splice.peer_of(self).resume_reading()

    def write_eof(self) -> None:
        if self._closed or self._write_done:
            return
        if self._pending is not None:
            self._eof_pending = True
        else:
            self._end()

    def _end(self) -> None:
        self._eof_pending = False
        self._write_done = True
        self.conn.codec.end_stream(self.stream_id)
        self.conn.dirty()
        self._maybe_forget()
        if self.splice is not None:
            self.splice.direction_done()

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False
        if self._withheld and not self._closed:
            self.conn.codec.consumed(self.stream_id, self._withheld)
            self._withheld = 0
            self.conn.dirty()

    # -- the connection's side -----------------------------------------------------------
    def received(self, data: bytes, flow: int, end: bool) -> None:
        splice = self.splice
        if splice is None:
            if self.on_response is not None:  # a refusal's body, before any splice
                self._collect_body(data, flow, end)
                return
            if self._early is None:
                self._early = []
            self._early.append((bytes(data), flow, end))  # data is a view of the read buffer
            return
        if self._closed:
            return
        if data:
            if self.upstream:
                splice.upstream += len(data)
            else:
                splice.downstream += len(data)
            peer = splice.peer_of(self)
            if peer.write(data) and not self._paused:
                if flow:
                    self.conn.codec.consumed(self.stream_id, flow)
                    self.conn.dirty()
            else:
                self._paused = True
                self._withheld += flow
        elif flow:
            self.conn.codec.consumed(self.stream_id, flow)
        if end and not self._read_done:
            self._read_done = True
            self._maybe_forget()
            splice.peer_of(self).write_eof()

    def _collect_body(self, data: bytes, flow: int, end: bool) -> None:
        if self._body is None:
            self._body = bytearray()
        if len(self._body) < 1024:
            self._body += data[: 1024 - len(self._body)]
        if flow:
            self.conn.codec.consumed(self.stream_id, flow)
        if end:
            self._respond()

    def response(self, status: int, end: bool) -> None:
        self.status = status
        if status == 200 or end:
            self._respond()
        # else: the reason follows as a body

    def _respond(self) -> None:
        callback, self.on_response = self.on_response, None
        if callback is not None:
            reason = bytes(self._body or b"").decode("utf-8", "replace")
            callback(self, self.status or 0, reason)

    def reset_by_peer(self, error_code: int) -> None:
        if self._closed:
            return
        self._closed = True
        self._forget()
        if self.on_response is not None:
            callback, self.on_response = self.on_response, None
            callback(self, 0, f"stream reset by peer (HTTP/2 error code {error_code})")
        elif self.splice is not None:
            self.splice.fail(f"stream reset by peer (HTTP/2 error code {error_code})")

    def connection_lost(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        if self.on_response is not None:
            callback, self.on_response = self.on_response, None
            callback(self, 0, reason)
        elif self.splice is not None:
            self.splice.fail(reason)

    # -- ending ---------------------------------------------------------------------------
    def _maybe_forget(self) -> None:
        if self._read_done and self._write_done:
            self._forget()

    def _forget(self) -> None:
        conn = self.conn
        conn.streams.pop(self.stream_id, None)
        conn.blocked.discard(self)
        conn.paused_writers.discard(self)
        conn.stream_closed()

    def abort(self, reason: str) -> None:
        """RST_STREAM (CANCEL): how a tunnel ends when the other side failed."""
        if self._closed:
            return
        self._closed = True
        self._pending = None
        if not (self._read_done and self._write_done):
            self.conn.codec.reset_stream(self.stream_id, frames.CANCEL)
            self.conn.dirty()
        self._forget()

    def close(self) -> None:
        if self._closed:
            return
        if not (self._read_done and self._write_done):
            self.abort("closed")
            return
        self._closed = True
        self._forget()


class HboneConnection:
    """One TLS connection carrying HTTP/2 CONNECT streams, served by the loop."""

    def __init__(self, loop: Loop, transport: TlsTransport, *, client: bool, local: tuple[str, int],
                 peer: tuple[str, int], peer_identity: SpiffeId | None,
                 on_closed: Callable[[HboneConnection], None] | None = None) -> None:
        self.loop = loop
        self.transport = transport
        self.sock = transport.sock
        self.fd = transport.fd
        self.client = client
        self.local_address = local
        self.peer_address = peer
        self.peer_identity = peer_identity
        # Bound once: OpenSSL returns one 16 KiB record per read, 64 calls per MiB.
        self._tls_read = transport.tls.read
        self._incoming = transport.incoming
        self.codec = H2(client=client, local=client_settings() if client else server_settings(),
                        connection_window=CONNECTION_WINDOW)
        self.codec.initiate()
        self.streams: dict[int, StreamEnd] = {}
        self.blocked: set[StreamEnd] = set()
        self.paused_writers: set[StreamEnd] = set()
        self.closed = False
        self.failure: str | None = None
        self.goaway_received = False
        self.last_active = time.monotonic()
        self.on_closed = on_closed
        self._dirty = False
        self._want_write = False
        self._ping_sent: float | None = None
        self._received = False
        self._keepalive: Timer | None = loop.call_later(PING_INTERVAL, self._tick)
        loop.register(self.fd, self, READ)
        if self._incoming.pending:
            # The peer's first records came with the end of the handshake: the kernel will not
            # say so again. Read them once whoever made this connection has taken it.
            loop.call_soon(self._decrypt)
        self.dirty()

    # -- reading --------------------------------------------------------------------------
    def on_readable(self) -> None:
        try:
            received = self.transport.receive()
        except OSError as exc:
            self._fail(f"connection lost: {exc.strerror or exc}")
            return
        if received is not None:
            self._decrypt()

    def _decrypt(self) -> None:
        """Every complete record in the incoming BIO to the codec, in batches of ≤ READ_SIZE."""
        if self.closed:
            return
        transport = self.transport
        read = self._tls_read
        incoming = self._incoming
        view = _READ_VIEW
        filled = 0
        ended = False
        while True:
            if incoming.pending < _RECORD_WIRE and transport.backlog:
                transport.feed()  # what was received enters the BIO a piece at a time
            space = READ_SIZE - filled
            try:
                n = read(space, view[filled:])
            except ssl.SSLWantReadError:
                if transport.backlog:
                    transport.feed()
                    continue
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                # Close-notify, or the TCP connection ended without it (a "ragged EOF"), which
                # ends the connection too.
                n = 0
            except ssl.SSLError as exc:
                self._fail(f"TLS error: {describe_ssl_error(exc)}")
                return
            if n == 0:
                ended = True
                break
            filled += n
            if filled >= _PARSE_AT:
                self._receive(view[:filled])
                if self.closed:
                    return
                filled = 0
            elif n < space and not incoming.pending and not transport.backlog and not incoming.eof:
                # The record was read whole and nothing follows it: another read would only
                # raise SSLWantReadError. (At EOF it ends the connection.)
                break
        if filled:
            self._receive(view[:filled])
        if self.closed:
            return
        if ended:
            self._fail("peer closed the connection")
        elif transport.outgoing.pending:
            self.dirty()  # OpenSSL answered something itself (a TLS 1.3 KeyUpdate)

    def _receive(self, data: memoryview) -> None:
        self._received = True
        events = self.codec.receive(data)
        if self.codec.is_closed:
            # The peer broke the protocol somewhere in this read (found by fuzzing: a CONNECT
            # followed by a bad frame in one read). The codec has queued GOAWAY and refuses to
            # send anything else, so no stream of this read can be answered: answering the
            # CONNECT raised ConnectionClosed, and the loop aborted the connection with an
            # "internal error" traceback instead of sending the GOAWAY. Fail it now, flushed.
            reason = next((e.debug for e in reversed(events) if type(e) is ConnectionTerminated), "")
            self._fail(f"HTTP/2 protocol error: {reason or 'the connection is closed'}", flush=True)
            return
        streams = self.streams
        for event in events:
            kind = type(event)
            if kind is DataReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.received(event.data, event.flow_controlled_length, event.end_stream)
            elif kind is HeadersReceived:
                self.on_headers(event)
            elif kind is WindowUpdated:
                if event.stream_id == 0:
                    for stream in list(self.blocked):
                        stream.window_opened()
                else:
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        stream.window_opened()
            elif kind is StreamReset:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.reset_by_peer(event.error_code)
            elif kind is PingAcked:
                self._ping_sent = None
            elif kind is GoAwayReceived:
                self.on_goaway(event)
            elif kind is ConnectionTerminated:
                self._fail(f"HTTP/2 protocol error: {event.debug}", flush=True)
                return
            if self.closed:
                return
        if self.codec.out:
            self.dirty()

    def on_headers(self, event: HeadersReceived) -> None:
        raise NotImplementedError

    def on_goaway(self, event: GoAwayReceived) -> None:
        self.goaway_received = True
        # The debug text says why (a server refusing our identity says so there): pass it on.
        why = bytes(event.debug).decode("utf-8", "replace")
        detail = f": {why}" if why else ""
        # last_stream_id counts streams the GOAWAY's receiver opened (RFC 9113 §6.8): only a
        # client's own streams can be refused by it; a client's GOAWAY leaves a server's be.
        if self.client:
            for stream_id, stream in list(self.streams.items()):
                if stream_id > event.last_stream_id:
                    stream.connection_lost(f"refused by GOAWAY (HTTP/2 error code {event.error_code}){detail}")
        if event.error_code != frames.NO_ERROR:
            self._fail(f"peer sent GOAWAY with HTTP/2 error code {event.error_code}{detail}")

    # -- writing --------------------------------------------------------------------------
    def dirty(self) -> None:
        if not self._dirty and not self.closed:
            self._dirty = True
            self.loop.mark_dirty(self)

    def flush(self) -> None:
        """Encrypt what the codec queued and send it with whatever else OpenSSL produced.

        Nothing more is encrypted while the kernel has not taken earlier records (`blocked`):
        the codec's buffer then grows, and its high-water mark pauses the streams' writers."""
        self._dirty = False
        if self.closed or self._want_write:
            return
        transport = self.transport
        out = self.codec.out
        try:
            if transport.blocked and not transport.send():
                self._set_want_write(True)
                return
            if out:
                transport.encrypt(out)
                out.clear()
            # (Nothing queued: marked dirty, but the codec had nothing to say yet.)
            if (transport.queue or transport.outgoing.pending) and not transport.send():
                self._set_want_write(True)
                return
        except OSError as exc:  # ssl.SSLError is one
            self._fail(f"connection lost: {exc.strerror or exc}")
            return
        if self.paused_writers:
            resumed, self.paused_writers = self.paused_writers, set()
            for stream in resumed:
                if stream.splice is not None:
                    stream.splice.peer_of(stream).resume_reading()

    def send_framed(self, stream_id: int, size: int) -> bool:
        """Encrypt READ_BUFFER's payload of `size` bytes (a TCP end's read) as one DATA frame now.

        The frame header goes into the headroom in front of it, so header and payload are one
        TLS write and the payload is never copied into `codec.out`; the records leave with this
        pass's flush. The caller checked that `out` is empty (so frames stay in order) and the
        window and frame size allow it. False: nothing done, as the kernel has not taken earlier
        records yet; the caller queues it as usual, and the codec's buffer is the backpressure."""
        if self.closed or self.transport.blocked:
            return False
        header = self.codec.data_frame_header(stream_id, size)
        start = _FRAME_AT
        READ_BUFFER[start:HEADROOM] = header
        try:
            self.transport.encrypt(_FRAME_VIEW[start:HEADROOM + size])
        except ssl.SSLError as exc:
            self._fail(f"TLS error: {describe_ssl_error(exc)}")
            return True
        self.dirty()
        return True

    def on_writable(self) -> None:
        self._set_want_write(False)
        self.flush()

    def _set_want_write(self, want: bool) -> None:
        if want != self._want_write and not self.closed:
            self._want_write = want
            self.loop.want(self.fd, READ | WRITE if want else READ)

    # -- keepalive, ending ----------------------------------------------------------------
    def _tick(self) -> None:
        if self.closed:
            return
        now = time.monotonic()
        if self._ping_sent is not None and now - self._ping_sent > PING_TIMEOUT:
            self._fail(f"no PING answer within {PING_TIMEOUT:g} s")
            return
        if self._ping_sent is None and not self._received:
            self._ping_sent = now
            self.codec.ping(b"wispping")
            self.dirty()
        self._received = False
        self._keepalive = self.loop.call_later(PING_INTERVAL, self._tick)

    @property
    def accepting_streams(self) -> bool:
        return not (self.closed or self.goaway_received or self.codec.goaway_sent)

    def stream_closed(self) -> None:
        if not self.streams:
            self.last_active = time.monotonic()

    def goaway(self, error_code: int = frames.NO_ERROR, debug: str = "", *, graceful: bool = False) -> None:
        """Tell the peer no new streams will be served; streams in flight go on.

        `graceful`: last stream id 2^31-1 (RFC 9113 §6.8), so a stream the peer opened while the
        GOAWAY was on its way is still served rather than refused; the peer opens no more."""
        if self.closed or self.codec.goaway_sent:
            return
        self.codec.goaway(error_code, debug.encode()[:512], frames.MAX_STREAM_ID if graceful else None)
        self.dirty()

    def close(self, reason: str) -> None:
        """GOAWAY then close, ending any stream still open."""
        if self.closed:
            return
        if not self.codec.goaway_sent:
            self.codec.goaway(frames.NO_ERROR, reason.encode()[:512])
        self._fail(reason, flush=True)

    def abort(self, reason: str) -> None:
        self._fail(reason)

    def _fail(self, reason: str, *, flush: bool = False) -> None:
        if self.closed:
            return
        if flush:
            # Best effort, after whatever the kernel has not taken yet: the peer should see why.
            try:
                if self.codec.out:
                    self.transport.encrypt(self.codec.out)
                self.transport.send()
            except OSError:
                pass
        self.closed = True
        self.failure = reason
        if self._keepalive is not None:
            self._keepalive.cancel()
        for stream in list(self.streams.values()):
            stream.connection_lost(f"HBONE connection failed: {reason}")
        self.streams.clear()
        self.blocked.clear()
        self.paused_writers.clear()
        self.loop.unregister(self.fd)
        try:
            self.transport.close()
        except OSError:
            pass
        if self.on_closed is not None:
            self.on_closed(self)


class ClientConnection(HboneConnection):
    """The dialling side: opens CONNECT streams."""

    def __init__(self, loop: Loop, transport: TlsTransport, **kwargs) -> None:
        super().__init__(loop, transport, client=True, **kwargs)

    def has_room(self, max_streams: int) -> bool:
        peer_max = self.codec.peer_settings.max_concurrent_streams
        limit = max_streams if peer_max is None else min(max_streams, peer_max)
        return self.accepting_streams and len(self.streams) < limit

    def open_stream(self, headers: list[tuple[bytes, bytes]],
                    on_response: Callable[[StreamEnd, int, str], None]) -> StreamEnd:
        stream_id = self.codec.open_stream(headers)
        stream = StreamEnd(self, stream_id, upstream=False)
        stream.on_response = on_response
        self.streams[stream_id] = stream
        self.dirty()
        return stream

    def on_headers(self, event: HeadersReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None or stream.status is not None:
            return  # trailers, or a stream we already gave up on
        status = 0
        for name, value in event.headers:
            if name == ":status":
                status = int(value) if value.isascii() and value.isdigit() else 0
                break
        stream.response(status, event.end_stream)


@dataclass(slots=True)
class ConnectRequest:
    """One CONNECT request waiting for an answer (synchronous: `accept` or `reject`)."""

    conn: ServerConnection
    stream: StreamEnd
    authority: Authority
    headers: dict[str, str]
    status: int | None = field(default=None)

    @property
    def peer_identity(self) -> SpiffeId | None:
        return self.conn.peer_identity

    @property
    def peer_address(self) -> tuple[str, int]:
        return self.conn.peer_address

    @property
    def local_address(self) -> tuple[str, int]:
        return self.conn.local_address

    @property
    def responded(self) -> bool:
        return self.status is not None

    @property
    def baggage(self) -> dict[str, str]:
        return parse_baggage(self.headers.get("baggage", ""))

    @property
    def forwarded_host(self) -> str | None:
        return forwarded_host(self.headers.get("forwarded", ""))

    def accept(self) -> StreamEnd:
        """Answer 200; the stream then carries the tunnelled bytes (splice it)."""
        self._respond(200, "")
        return self.stream

    def reject(self, status: int, reason: str) -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"reject needs a 4xx/5xx status, got {status}")
        self._respond(status, reason)

    def _respond(self, status: int, reason: str) -> None:
        if self.status is not None:
            raise RuntimeError(f"CONNECT {self.authority} was already answered with {self.status}")
        self.status = status
        self.conn.respond(self.stream, status, reason)


class ServerConnection(HboneConnection):
    """The accepting side: CONNECT requests are checked and handed to `on_request`."""

    def __init__(self, loop: Loop, transport: TlsTransport, *,
                 on_request: Callable[[ConnectRequest], None], **kwargs) -> None:
        self.on_request = on_request
        self._last_request_id = 0
        super().__init__(loop, transport, client=False, **kwargs)

    def on_headers(self, event: HeadersReceived) -> None:
        # Trailers on a tunnel: nothing to do with them. The stream may already be forgotten (a
        # refused CONNECT, or both sides ended): answering such trailers as a new request wrote
        # on a closed stream and cost the whole connection (found by fuzzing). The codec opens
        # peer streams in increasing order only, so a new request has a higher id than any before.
        if event.stream_id in self.streams or event.stream_id <= self._last_request_id:
            return
        self._last_request_id = event.stream_id
        stream = StreamEnd(self, event.stream_id, upstream=True)
        self.streams[event.stream_id] = stream
        headers = dict(event.headers)
        method = headers.get(":method")
        if method != "CONNECT":
            self.respond(stream, 400, f"method {method} is not allowed; HBONE accepts only CONNECT")
            return
        try:
            authority = parse_authority(headers.get(":authority", ""))
        except InvalidAuthority as exc:
            self.respond(stream, 400, str(exc))
            return
        request = ConnectRequest(self, stream, authority, headers)
        try:
            self.on_request(request)
        except Exception:
            log.exception("hbone request handler failed", authority=str(authority))
            if not request.responded:
                request.reject(503, "internal error while handling the request")

    def respond(self, stream: StreamEnd, status: int, reason: str) -> None:
        if stream._closed:
            return
        if self.codec.stream_state(stream.stream_id) == "closed":
            # The codec reset this stream later in the same read (a stream error, e.g. a second
            # HEADERS without END_STREAM; found by fuzzing): nothing can be sent on it, and the
            # StreamReset event that follows ends it here.
            return
        headers: list[tuple[bytes, bytes]] = [(b":status", str(status).encode())]
        body = reason.encode()
        if status != 200 and body:
            headers.append((b"content-type", b"text/plain; charset=utf-8"))
        self.codec.send_headers(stream.stream_id, headers, end_stream=status != 200 and not body)
        if status != 200:
            if body:
                window = self.codec.send_window(stream.stream_id)
                self.codec.send_data(stream.stream_id, body[:max(0, window)], end_stream=True)
            stream._closed = True
            stream._forget()
        self.dirty()
