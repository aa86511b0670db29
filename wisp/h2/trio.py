"""One HTTP/2 connection on trio: wisp.h2's codec, a transport, and streams as trio byte streams.

The codec (`wisp.h2.connection`) is the protocol; this module is the thin shell that moves bytes.
Three tasks serve a connection: the reader feeds the codec and dispatches its events, the writer
alone waits on the socket (so the reader never blocks on a full send buffer, which could deadlock
two peers that both send), and the keepalive pings. Any task writes directly when the writer is
idle, which saves a pass through trio's scheduler per message. Bytes wait in the codec's `out`
until the kernel took them, so the codec's bound on unsent automatic answers (PING and SETTINGS
ACKs) holds against a peer that never reads. Stream senders wait only when too much is queued
(backpressure) or the peer's flow-control window is shut.

The transport is any object with `receive_some`, `send_all`, `close`, `peer_address()`,
`local_address()` and a non-blocking `socket` whose `send` may be tried directly (as
`wisp.hbone.tls.TlsStream`). Subclasses may set `closed_error` and `reset_error` to raise their
own exception types, and build requests and responses on `open_stream` and `send_headers`; the
config stream (`wisp.controlplane.client`) uses it as it is. HBONE's data path does not run here
but on the engine (`wisp.engine`).
"""

from __future__ import annotations

import itertools
import os
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
import trio

from . import frames
from .connection import Connection
from .errors import ConnectionClosed, H2Error, StreamReset
from .events import (
    ConnectionTerminated,
    DataReceived,
    GoAwayReceived,
    HeadersReceived,
    PingAcked,
    SettingsReceived,
    WindowUpdated,
)
from .events import StreamReset as StreamResetEvent
from .settings import Settings

log = structlog.get_logger("wisp.h2")

MiB = 1024 * 1024
READ_SIZE = 256 * 1024
# Bytes queued for the socket beyond which a stream sender waits for the writer.
_HIGH_WATER = 2 * MiB
# The most one step of a stream sender queues before it checks _HIGH_WATER again.
_CHUNK = 256 * 1024
# How long request handlers may run on after their connection failed.
_HANDLER_GRACE = 1.0


@dataclass(slots=True, frozen=True)
class H2Settings:
    """HTTP/2 parameters of one side of a connection, and its keepalive (ztunnel's values)."""

    stream_window: int = 4 * MiB
    connection_window: int = 16 * MiB
    max_frame_size: int = 1 * MiB
    max_concurrent_streams: int | None = None
    max_header_list_size: int = 16 * 1024
    ping_interval: float = 10.0
    ping_timeout: float = 20.0
    # How long a new connection may take to deliver the peer's first SETTINGS.
    settings_timeout: float = 10.0

    def codec_settings(self) -> Settings:
        return Settings(enable_push=0, initial_window_size=self.stream_window,
                        max_frame_size=self.max_frame_size, max_header_list_size=self.max_header_list_size,
                        max_concurrent_streams=self.max_concurrent_streams)


class H2Stream(trio.abc.HalfCloseableStream):
    """One HTTP/2 stream as bytes both ways, with half-close (send_eof ↔ END_STREAM)."""

    def __init__(self, conn: H2Connection, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self._chunks: deque[bytes] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._eof = False
        self._eof_sent = False
        self._error: Exception | None = None
        self._closed = False
        # Direct forwarding (see forward_to): the file descriptor data goes to on arrival, a
        # byte counter, and whether the reader of this stream is still sending a chunk it got.
        self._sink_fd = -1
        self._sink_count: Callable[[int], None] | None = None
        self._reader_busy = False
        # Client side: the response headers once they arrive.
        self.response_status: int | None = None
        self.response_headers: dict[str, str] = {}

    def forward_to(self, fd: int, count: Callable[[int], None]) -> None:
        """Write arriving data straight to the non-blocking socket `fd` from the connection's
        reader, when nothing is queued before it, instead of waking this stream's reader.

        `receive_some` then returns only what the socket would not take at once, for the caller
        to send with backpressure as usual; calling `receive_some` again means that chunk was
        sent, so direct writes may resume. `count(n)` is told of every byte written directly.
        EOF and errors still reach `receive_some`. It saves one pass through trio's scheduler
        per message on the proxy's hottest path (HBONE to the application's TCP socket).
        Call `stop_forwarding` before the socket is closed: its number could soon name another.
        """
        self._sink_fd = fd
        self._sink_count = count

    def stop_forwarding(self) -> None:
        self._sink_fd = -1
        self._sink_count = None

    # -- called by the connection --------------------------------------------------------------
    def _feed(self, data: bytes | memoryview) -> None:
        if self._sink_fd >= 0 and not self._chunks and not self._reader_busy and not self._closed:
            try:
                sent = os.write(self._sink_fd, data)
            except OSError:
                sent = 0  # full or failing: the stream's reader sends it and meets the error
            if sent:
                self._sink_count(sent)
                self.conn._consumed(self.stream_id, sent)
                if sent == len(data):
                    return
                data = data[sent:]
        self._chunks.append(bytes(data))  # the codec hands out views valid until its next receive
        self._lot.unpark_all()

    def _feed_eof(self) -> None:
        self._eof = True
        self._lot.unpark_all()

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self._lot.unpark_all()

    def _unconsumed(self) -> int:
        return sum(len(c) for c in self._chunks)

    # -- trio stream interface -----------------------------------------------------------------
    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._reader_busy = False
        blocked = False
        while not self._chunks:
            if self._closed:
                raise trio.ClosedResourceError("stream is closed")
            if self._eof:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return b""
            if self._error is not None:
                raise trio.BrokenResourceError(str(self._error)) from self._error
            await self._lot.park()
            blocked = True
        chunk = self._chunks.popleft()
        if max_bytes is not None and len(chunk) > max_bytes:
            self._chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self.conn._consumed(self.stream_id, len(chunk))
        self._reader_busy = True
        if not blocked:  # a schedule point either way, as in TlsStream.receive_some
            await trio.lowlevel.cancel_shielded_checkpoint()
        return chunk

    async def send_all(self, data) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        if self._eof_sent:
            raise trio.ClosedResourceError("stream already sent EOF")
        await self.conn._send_data(self, data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.conn._wait_window(self)

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._eof_sent or self._closed:
            return
        self._eof_sent = True
        self.conn._end_stream(self)

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Finish with the stream: reset it unless both directions already ended cleanly."""
        if self._closed:
            return
        self._closed = True
        self.conn._release(self)
        self._lot.unpark_all()

    @property
    def finished(self) -> bool:
        return self._eof and self._eof_sent


class H2Connection:
    """An HTTP/2 connection, client or server side, serving streams to trio tasks.

    `run()` serves it until it ends; requests from a client peer go to `on_request`, which runs
    in the connection's own nursery and so ends with it.
    """

    closed_error: type[Exception] = ConnectionClosed
    reset_error: type[Exception] = StreamReset
    _ids = itertools.count(1)

    def __init__(
        self,
        transport,
        *,
        client_side: bool,
        settings: H2Settings,
        on_request: Callable[[H2Stream, dict[str, str]], Awaitable[None]] | None = None,
    ) -> None:
        self.id = next(self._ids)
        self.tls = transport
        self.client_side = client_side
        self.settings = settings
        self.peer_address = transport.peer_address()
        self.local_address = transport.local_address()
        self._on_request = on_request
        self.streams: dict[int, H2Stream] = {}
        self._codec = Connection(client=client_side, local=settings.codec_settings(),
                                 connection_window=settings.connection_window)
        self._out = self._codec.out
        self._writing = False
        self._written = 0
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._written_lot = trio.lowlevel.ParkingLot()
        self._window_lot = trio.lowlevel.ParkingLot()
        self._ready = trio.Event()
        self._ping_acked: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self._handler_nursery: trio.Nursery | None = None
        self.failure: str | None = None
        self.goaway_received = False
        self.goaway_sent = False
        self.peer_max_streams: int = 100
        self.last_active = trio.current_time()

    # -- lifecycle -----------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve the connection; `started` once the peer's SETTINGS arrived. Closes the socket."""
        started = False
        try:
            # Request handlers live in their own nursery: when the connection fails their streams
            # fail with the reason, and they get a moment to notice and finish (log, close the
            # upstream) before they are cancelled.
            async with trio.open_nursery() as handlers:
                self._handler_nursery = handlers
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._codec.initiate()
                    self._flush()
                    nursery.start_soon(self._read_loop)
                    nursery.start_soon(self._write_loop)
                    with trio.move_on_after(self.settings.settings_timeout):
                        await self._ready.wait()
                    if not self._ready.is_set():
                        self._fail(
                            f"peer {self.peer_address[0]}:{self.peer_address[1]} sent no HTTP/2 "
                            f"SETTINGS within {self.settings.settings_timeout:g} s"
                        )
                    if self.failure is None:
                        task_status.started(self)
                        started = True
                        nursery.start_soon(self._keepalive)
                self._teardown(self.failure or "connection closed")
                handlers.cancel_scope.deadline = trio.current_time() + _HANDLER_GRACE
        finally:
            self._teardown(self.failure or "connection closed")
        if not started:
            raise self.closed_error(self.failure)

    def close(self, reason: str = "closed locally") -> None:
        """End the connection now: every stream fails, the socket closes."""
        self._fail(reason)

    @property
    def is_open(self) -> bool:
        return self.failure is None

    @property
    def accepting_streams(self) -> bool:
        """May a new stream be opened on this (client) connection?"""
        return self.failure is None and not self.goaway_received and not self.goaway_sent

    def shutdown(self, reason: str = "shutting down") -> None:
        """Graceful GOAWAY: streams already open continue, new ones are refused."""
        if self.goaway_sent or self.failure is not None:
            return
        self.goaway_sent = True
        self._codec.goaway(frames.NO_ERROR, reason.encode()[:256])
        self._flush()
        log.debug("goaway sent", conn=self.id, reason=reason)

    async def wait_flushed(self) -> None:
        """Until what was queued so far has been handed to the kernel (or the connection failed)."""
        target = self._written + len(self._out)
        while self._written < target and self.failure is None:
            await self._written_lot.park()

    # -- requests and responses ----------------------------------------------------------------
    def open_stream(self, headers: list[tuple]) -> H2Stream:
        """Send a request's headers and return its stream; the caller awaits `wait_response`."""
        if not self.accepting_streams:
            raise self.closed_error(self.failure or "connection is draining (GOAWAY)")
        try:
            stream_id = self._codec.open_stream(headers)
        except H2Error as exc:
            raise self.closed_error(str(exc)) from None
        stream = H2Stream(self, stream_id)
        self.streams[stream_id] = stream
        self._flush()
        return stream

    async def wait_response(self, stream: H2Stream) -> int:
        """The response's status once its (final) headers arrived."""
        while stream.response_status is None:
            if stream._error is not None:
                raise stream._error
            if stream._eof:
                raise self.closed_error(f"stream {stream.stream_id} ended without a response")
            await stream._lot.park()
        return stream.response_status

    def send_headers(self, stream: H2Stream, headers: list[tuple], *, end_stream: bool = False) -> None:
        """A response's headers (server), or trailers (end_stream=True)."""
        try:
            self._codec.send_headers(stream.stream_id, headers, end_stream=end_stream)
        except H2Error as exc:
            raise trio.BrokenResourceError(f"stream {stream.stream_id}: {exc}") from None
        if end_stream:
            stream._eof_sent = True
        self._flush()

    def send_now(self, stream: H2Stream, data: bytes, *, end_stream: bool = False) -> int:
        """Queue a short body (an error's reason) without waiting: what the flow-control windows
        do not allow now is cut off. Returns the bytes queued."""
        size = min(len(data), self._codec.send_window(stream.stream_id))
        try:
            self._codec.send_data(stream.stream_id, data[:size], end_stream=end_stream)
        except H2Error as exc:
            raise trio.BrokenResourceError(f"stream {stream.stream_id}: {exc}") from None
        if end_stream:
            stream._eof_sent = True
        self._flush()
        return size

    # -- internals: output ---------------------------------------------------------------------
    def _flush(self) -> None:
        out = self._out
        if not out:
            return
        if not self._writing and self.failure is None:
            # The writer is idle: write now from this task rather than waking it. What the
            # socket does not take stays in `out` for the writer, whose next write starts with
            # the same bytes, as OpenSSL wants of a retried write.
            try:
                sent = self.tls.socket.send(out)
            except (ssl.SSLError, OSError):
                sent = 0
            if sent:
                del out[:sent]
                self._written += sent
                if not out:
                    return
        self._writer_lot.unpark_all()

    async def _write_loop(self) -> None:
        tls = self.tls
        out = self._out
        while True:
            if not out:
                await self._writer_lot.park()
                continue
            # A copy: other tasks append to `out` while this write waits.
            batch = bytes(out)
            self._writing = True
            try:
                await tls.send_all(batch)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._fail(f"write failed: {exc}")
                return
            finally:
                self._writing = False
            del out[:len(batch)]
            self._written += len(batch)
            self._written_lot.unpark_all()

    async def _send_data(self, stream: H2Stream, data) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        codec = self._codec
        sid = stream.stream_id
        out = self._out
        blocked = False
        with memoryview(data) as view:
            while view:
                self._check_stream(stream)
                window = codec.send_window(sid)
                if window <= 0:
                    self._check_sendable(sid)
                    await self._window_lot.park()
                    blocked = True
                    continue
                size = min(window, len(view), _CHUNK)
                try:
                    codec.send_data(sid, view[:size])
                except H2Error as exc:
                    raise trio.BrokenResourceError(f"stream {sid}: {exc}") from None
                view = view[size:]
                self._flush()
                self.last_active = trio.current_time()
                while len(out) > _HIGH_WATER and self.failure is None:
                    await self._written_lot.park()
                    blocked = True
        if not blocked:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def _wait_window(self, stream: H2Stream) -> None:
        while True:
            self._check_stream(stream)
            if self._codec.send_window(stream.stream_id) > 0:
                break
            self._check_sendable(stream.stream_id)
            await self._window_lot.park()
        await trio.lowlevel.checkpoint()

    def _check_stream(self, stream: H2Stream) -> None:
        if stream._closed:
            raise trio.ClosedResourceError("stream is closed")
        if stream._error is not None:
            raise trio.BrokenResourceError(str(stream._error)) from stream._error

    def _check_sendable(self, sid: int) -> None:
        if self.failure is not None:
            raise trio.BrokenResourceError(self.failure)
        state = self._codec.stream_state(sid)
        if state not in ("open", "half-closed (remote)"):
            raise trio.BrokenResourceError(f"stream {sid} is {state}")

    def _end_stream(self, stream: H2Stream) -> None:
        try:
            self._codec.end_stream(stream.stream_id)
        except H2Error:
            return
        self._flush()
        self._maybe_forget(stream)

    def _consumed(self, stream_id: int, size: int) -> None:
        if size and self.failure is None:
            self._codec.consumed(stream_id, size)
            if self._out:
                self._flush()

    def _release(self, stream: H2Stream) -> None:
        """The user closed `stream`: give back its unread window and reset it if unfinished."""
        if self.failure is not None:
            self.streams.pop(stream.stream_id, None)
            return
        unread = stream._unconsumed()
        stream._chunks.clear()
        if unread:
            self._codec.consumed(stream.stream_id, unread)
        if not stream.finished and stream._error is None:
            self._codec.reset_stream(stream.stream_id, frames.CANCEL)
        self._flush()
        self.streams.pop(stream.stream_id, None)
        self.last_active = trio.current_time()

    def _maybe_forget(self, stream: H2Stream) -> None:
        if stream.finished and stream._closed:
            self.streams.pop(stream.stream_id, None)

    # -- internals: input ----------------------------------------------------------------------
    async def _read_loop(self) -> None:
        tls = self.tls
        receive = self._codec.receive
        while True:
            try:
                data = await tls.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._fail(f"read failed: {exc}")
                return
            if not data:
                self._fail("peer closed the connection")
                return
            for event in receive(data):
                if type(event) is ConnectionTerminated:
                    await self._protocol_error(event)
                    return
                self._dispatch(event)
            self._flush()

    def _dispatch(self, event) -> None:
        kind = type(event)
        if kind is DataReceived:
            stream = self.streams.get(event.stream_id)
            if stream is None or stream._closed:
                self._codec.consumed(event.stream_id, event.flow_controlled_length)
                return
            if event.data:
                stream._feed(event.data)
            if event.end_stream:
                stream._feed_eof()
                self._maybe_forget(stream)
        elif kind is WindowUpdated:
            self._window_lot.unpark_all()
        elif kind is HeadersReceived:
            stream = self.streams.get(event.stream_id)
            if stream is None:
                if not self.client_side:
                    self._on_request_received(event)
                return
            if self.client_side and stream.response_status is None:
                headers = dict(event.headers)
                try:
                    status = int(headers.get(":status", "0"))
                except ValueError:
                    status = 0
                if 100 <= status < 200:
                    return   # informational: the final response follows
                stream.response_headers = headers
                stream.response_status = status
                stream._lot.unpark_all()
            if event.end_stream:
                stream._feed_eof()
                self._maybe_forget(stream)
        elif kind is StreamResetEvent:
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                stream._fail(self.reset_error(event.stream_id, event.error_code))
            self._window_lot.unpark_all()
        elif kind is SettingsReceived:
            limit = event.changed.get(frames.SETTINGS_MAX_CONCURRENT_STREAMS)
            if limit is not None:
                self.peer_max_streams = limit
            self._window_lot.unpark_all()
            self._ready.set()
        elif kind is PingAcked:
            if self._ping_acked is not None:
                self._ping_acked.set()
        elif kind is GoAwayReceived:
            self._on_goaway(event)
        # SettingsAcked needs nothing from us; PINGs are answered by the codec.

    def _on_request_received(self, event: HeadersReceived) -> None:
        sid = event.stream_id
        if self._on_request is None:
            self._codec.reset_stream(sid, frames.REFUSED_STREAM)
            return
        stream = H2Stream(self, sid)
        self.streams[sid] = stream
        if event.end_stream:
            stream._feed_eof()
        self.last_active = trio.current_time()
        self._handler_nursery.start_soon(self._on_request, stream, dict(event.headers))

    def _on_goaway(self, event: GoAwayReceived) -> None:
        self.goaway_received = True
        reason = event.debug.decode("utf-8", "replace")
        if event.error_code != frames.NO_ERROR:
            self._fail(f"peer sent GOAWAY {frames.error_name(event.error_code)}"
                       + (f": {reason}" if reason else ""))
            return
        last = event.last_stream_id
        for sid, stream in list(self.streams.items()):
            if sid > last:
                self.streams.pop(sid)
                stream._fail(self.closed_error(f"stream {sid} not processed before GOAWAY"))
        log.debug("goaway received", conn=self.id, last_stream_id=last, reason=reason)

    async def _protocol_error(self, event: ConnectionTerminated) -> None:
        """The codec queued GOAWAY with the error: give the writer a moment, then close."""
        reason = f"HTTP/2 protocol error: {frames.error_name(event.error_code)}: {event.debug}"
        self._flush()
        with trio.move_on_after(1):
            await self.wait_flushed()
        self._fail(reason)

    async def _keepalive(self) -> None:
        counter = itertools.count(1)
        while True:
            await trio.sleep(self.settings.ping_interval)
            self._ping_acked = trio.Event()
            self._codec.ping(next(counter).to_bytes(8, "big"))
            self._flush()
            with trio.move_on_after(self.settings.ping_timeout):
                await self._ping_acked.wait()
            if not self._ping_acked.is_set():
                self._fail(f"no PING answer within {self.settings.ping_timeout:g} s")
                return

    def _fail(self, reason: str) -> None:
        if self.failure is not None:
            return
        self.failure = reason
        self._teardown(reason)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _teardown(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        self.tls.close()
        error = self.closed_error(reason)
        for stream in list(self.streams.values()):
            stream._fail(error)
        self.streams.clear()
        self._ready.set()
        for lot in (self._window_lot, self._written_lot, self._writer_lot):
            lot.unpark_all()
