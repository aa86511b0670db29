"""One HBONE HTTP/2 connection: frames in and out, CONNECT streams as trio byte streams.

h2 is the protocol state machine; this module is the thin shell that moves bytes. Three tasks
serve a connection: the reader feeds h2 and dispatches events, the writer alone writes to the
socket (so the reader never blocks on a full send buffer, which could deadlock two peers that
both send), and the keepalive pings. Stream senders queue frames and wait only when too much is
queued (backpressure) or the peer's flow-control window is shut.
"""

from __future__ import annotations

import itertools
import os
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
import structlog
import trio
from hyperframe.frame import GoAwayFrame

from wisp.identity import SpiffeId

from .errors import ConnectionClosed, StreamReset
from .tls import READ_SIZE, TlsStream

log = structlog.get_logger("wisp.hbone")

MiB = 1024 * 1024
# Bytes queued for the socket beyond which a stream sender waits for the writer.
_HIGH_WATER = 2 * MiB
# How long request handlers may run on after their connection failed.
_HANDLER_GRACE = 1.0


@dataclass(slots=True, frozen=True)
class H2Settings:
    """HTTP/2 parameters of one side of an HBONE connection (ztunnel's values by default)."""

    stream_window: int = 4 * MiB
    connection_window: int = 16 * MiB
    max_frame_size: int = 1 * MiB
    max_concurrent_streams: int | None = None
    max_header_list_size: int = 16 * 1024
    ping_interval: float = 10.0
    ping_timeout: float = 20.0
    # How long a new connection may take to deliver the peer's first SETTINGS.
    settings_timeout: float = 10.0


CLIENT_SETTINGS = H2Settings()
SERVER_SETTINGS = H2Settings(max_concurrent_streams=200, max_header_list_size=64 * 1024)


_hex_all_then_truncate = hyperframe.frame._raw_data_repr


def _raw_data_repr(data) -> str:
    """hyperframe's frame repr, computed from the first 11 bytes instead of the whole payload.

    h2 formats `repr(frame)` for a trace log on every received frame even when nothing logs it,
    and hyperframe hex-encodes the entire DATA payload before keeping 20 characters: measured as
    half of an HBONE server's CPU in bulk transfer (2.8 ms per 1 MiB frame). The output is the
    same; tests/test_hbone_internals.py checks it against the original.
    """
    if not data:
        return "None"
    text = bytes(data[:11]).hex()
    return "<hex:" + (text[:20] + "..." if len(text) > 20 else text) + ">"


hyperframe.frame._raw_data_repr = _raw_data_repr


class _H2Connection(h2.connection.H2Connection):
    """h2's connection with graceful GOAWAY in both directions.

    h2 moves to CLOSED on any GOAWAY and then refuses to send, which forbids RFC 9113 §6.8's
    graceful shutdown: streams at or below the GOAWAY's last stream id may still finish. Here a
    NO_ERROR GOAWAY only reports ConnectionTerminated (received) or queues the frame (sent);
    the owner stops opening or accepting new streams. GOAWAY with an error code keeps h2's
    behaviour.
    """

    def _receive_goaway_frame(self, frame):  # noqa: ANN001 - h2's private hook
        if frame.error_code != h2.errors.ErrorCodes.NO_ERROR:
            return super()._receive_goaway_frame(frame)
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors.ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def send_graceful_goaway(self, last_stream_id: int, reason: bytes = b"") -> None:
        frame = GoAwayFrame(stream_id=0, last_stream_id=last_stream_id, error_code=0,
                            additional_data=reason)
        self._prepare_for_sending([frame])


class HboneStream(trio.abc.HalfCloseableStream):
    """One CONNECT tunnel: bytes both ways, with half-close (send_eof ↔ END_STREAM)."""

    def __init__(self, conn: HboneConnection, stream_id: int) -> None:
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
    def _feed(self, data: bytes) -> None:
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
        self._chunks.append(data)
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


class HboneConnection:
    """An HTTP/2 connection carrying HBONE CONNECT streams, client or server side.

    `run()` serves it until it ends; requests from a client peer go to `on_request`, which runs
    in the connection's own nursery and so ends with it.
    """

    _ids = itertools.count(1)

    def __init__(
        self,
        tls: TlsStream,
        *,
        client_side: bool,
        settings: H2Settings,
        peer_identity: SpiffeId | None,
        local_identity: SpiffeId | None = None,
        on_request: Callable[[HboneStream, dict[str, str]], Awaitable[None]] | None = None,
    ) -> None:
        self.id = next(self._ids)
        self.tls = tls
        self.client_side = client_side
        self.settings = settings
        self.peer_identity = peer_identity
        self.local_identity = local_identity
        self.peer_address = tls.peer_address()
        self.local_address = tls.local_address()
        self._on_request = on_request
        self.streams: dict[int, HboneStream] = {}
        self._h2 = _H2Connection(
            h2.config.H2Configuration(client_side=client_side, header_encoding=None,
                                      validate_inbound_headers=True)
        )
        initial = {
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: settings.stream_window,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: settings.max_frame_size,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
        }
        if settings.max_concurrent_streams is not None:
            initial[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = settings.max_concurrent_streams
        self._h2.local_settings = h2.settings.Settings(client=client_side, initial_values=initial)
        # h2 latches its inbound frame limit when a read starts, so a SETTINGS ACK and a large
        # DATA frame in one read would trip it. We advertise this size anyway; accept it now.
        self._h2.max_inbound_frame_size = settings.max_frame_size
        # Output: frames h2 produced, waiting for the writer task.
        self._outbox: list[bytes] = []
        self._writing = False
        self._queued = 0
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
        self._goaway_last_stream_id: int | None = None
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
                    self._h2.initiate_connection()
                    extra = self.settings.connection_window - 65535
                    if extra > 0:
                        self._h2.increment_flow_control_window(extra)
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
            raise ConnectionClosed(self.failure)

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
        """Graceful GOAWAY: streams already open continue, no new ones are accepted."""
        if self.goaway_sent or self.failure is not None:
            return
        self.goaway_sent = True
        self._goaway_last_stream_id = self._h2.highest_inbound_stream_id
        self._h2.send_graceful_goaway(self._goaway_last_stream_id, reason.encode()[:256])
        self._flush()
        log.debug("goaway sent", conn=self.id, reason=reason)

    # -- client side ---------------------------------------------------------------------------
    def open_stream(self, headers: list[tuple[bytes, bytes]]) -> HboneStream:
        """Send a CONNECT request and return the stream; the caller awaits `wait_response`."""
        if not self.accepting_streams:
            raise ConnectionClosed(self.failure or "connection is draining (GOAWAY)")
        stream_id = self._h2.get_next_available_stream_id()
        stream = HboneStream(self, stream_id)
        self.streams[stream_id] = stream
        self._h2.send_headers(stream_id, headers, end_stream=False)
        self._flush()
        return stream

    async def wait_flushed(self) -> None:
        """Until what was queued so far has been handed to the kernel (or the connection failed)."""
        target = self._queued
        while self._written < target and self.failure is None:
            await self._written_lot.park()

    async def wait_response(self, stream: HboneStream) -> int:
        while stream.response_status is None:
            if stream._error is not None:
                raise stream._error
            if stream._eof:
                raise ConnectionClosed(f"stream {stream.stream_id} ended without a response")
            await stream._lot.park()
        return stream.response_status

    # -- server side ---------------------------------------------------------------------------
    def respond(self, stream: HboneStream, status: int, body: bytes = b"") -> None:
        headers = [(b":status", str(status).encode())]
        if body:
            headers.append((b"content-type", b"text/plain; charset=utf-8"))
        # A refusal ends the stream; a 200 opens the tunnel.
        end = status != 200 and not body
        self._h2.send_headers(stream.stream_id, headers, end_stream=end)
        if body:
            self._h2.send_data(stream.stream_id, body[: self._h2.max_outbound_frame_size], end_stream=True)
        if status != 200:
            stream._eof_sent = True
        self._flush()

    # -- internals: output ---------------------------------------------------------------------
    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if not data:
            return
        self._queued += len(data)
        if not self._outbox and not self._writing and self.failure is None:
            # The writer is idle: write now from this task rather than waking it, which saves a
            # pass through trio's scheduler per message. A send the socket cannot take whole
            # (or at all) goes to the writer, which retries it: OpenSSL wants a retried write
            # to start with the same bytes, and the writer's next batch does.
            try:
                sent = self.tls.socket.send(data)
            except (ssl.SSLError, OSError):
                sent = 0
            self._written += sent
            if sent == len(data):
                return
            data = data[sent:]
        self._outbox.append(data)
        self._writer_lot.unpark_all()

    async def _write_loop(self) -> None:
        tls = self.tls
        while True:
            if not self._outbox:
                await self._writer_lot.park()
                continue
            batch = self._outbox[0] if len(self._outbox) == 1 else b"".join(self._outbox)
            self._outbox.clear()
            self._writing = True
            try:
                await tls.send_all(batch)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._fail(f"write failed: {exc}")
                return
            finally:
                self._writing = False
            self._written += len(batch)
            self._written_lot.unpark_all()

    async def _send_data(self, stream: HboneStream, data) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        h2c = self._h2
        sid = stream.stream_id
        blocked = False
        with memoryview(data) as view:
            while view:
                self._check_stream(stream)
                try:
                    window = h2c.local_flow_control_window(sid)
                except h2.exceptions.StreamClosedError:
                    raise trio.BrokenResourceError(f"stream {sid} is closed") from None
                if window <= 0:
                    await self._window_lot.park()
                    blocked = True
                    continue
                size = min(window, h2c.max_outbound_frame_size, len(view))
                try:
                    h2c.send_data(sid, view[:size])
                except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as exc:
                    raise trio.BrokenResourceError(f"stream {sid}: {exc}") from None
                view = view[size:]
                self._flush()
                self.last_active = trio.current_time()
                while self._queued - self._written > _HIGH_WATER and self.failure is None:
                    await self._written_lot.park()
                    blocked = True
        if not blocked:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def _wait_window(self, stream: HboneStream) -> None:
        while True:
            self._check_stream(stream)
            try:
                if self._h2.local_flow_control_window(stream.stream_id) > 0:
                    break
            except h2.exceptions.StreamClosedError:
                raise trio.BrokenResourceError(f"stream {stream.stream_id} is closed") from None
            await self._window_lot.park()
        await trio.lowlevel.checkpoint()

    def _check_stream(self, stream: HboneStream) -> None:
        if stream._closed:
            raise trio.ClosedResourceError("stream is closed")
        if stream._error is not None:
            raise trio.BrokenResourceError(str(stream._error)) from stream._error

    def _end_stream(self, stream: HboneStream) -> None:
        try:
            self._h2.end_stream(stream.stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self._flush()
        self._maybe_forget(stream)

    def _consumed(self, stream_id: int, size: int) -> None:
        if size and self.failure is None:
            try:
                self._h2.acknowledge_received_data(size, stream_id)
            except h2.exceptions.ProtocolError:
                return
            self._flush()

    def _release(self, stream: HboneStream) -> None:
        """The user closed `stream`: give back its unread window and reset it if unfinished."""
        if self.failure is not None:
            self.streams.pop(stream.stream_id, None)
            return
        unread = stream._unconsumed()
        stream._chunks.clear()
        if unread:
            self._consumed(stream.stream_id, unread)
        if not stream.finished and stream._error is None:
            try:
                self._h2.reset_stream(stream.stream_id, h2.errors.ErrorCodes.CANCEL)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass
            self._flush()
        self.streams.pop(stream.stream_id, None)
        self.last_active = trio.current_time()

    def _maybe_forget(self, stream: HboneStream) -> None:
        if stream.finished and stream._closed:
            self.streams.pop(stream.stream_id, None)

    # -- internals: input ----------------------------------------------------------------------
    async def _read_loop(self) -> None:
        tls = self.tls
        h2c = self._h2
        while True:
            try:
                data = await tls.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._fail(f"read failed: {exc}")
                return
            if not data:
                self._fail("peer closed the connection")
                return
            try:
                events = h2c.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                await self._protocol_error(exc)
                return
            for event in events:
                self._dispatch(event)
            self._flush()

    def _dispatch(self, event: h2.events.Event) -> None:
        kind = type(event)
        if kind is h2.events.DataReceived:
            stream = self.streams.get(event.stream_id)
            padding = event.flow_controlled_length - len(event.data)
            if stream is None or stream._closed:
                self._consumed(event.stream_id, event.flow_controlled_length)
                return
            if padding:
                self._consumed(event.stream_id, padding)
            if event.data:
                stream._feed(event.data)
            if event.stream_ended is not None:
                stream._feed_eof()
                self._maybe_forget(stream)
        elif kind is h2.events.WindowUpdated:
            self._window_lot.unpark_all()
        elif kind is h2.events.StreamEnded:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._feed_eof()
                self._maybe_forget(stream)
        elif kind is h2.events.RequestReceived:
            self._on_request_received(event)
        elif kind is h2.events.ResponseReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                headers = _decode_headers(event.headers)
                stream.response_headers = headers
                try:
                    stream.response_status = int(headers.get(":status", "0"))
                except ValueError:
                    stream.response_status = 0
                if event.stream_ended is not None:
                    stream._feed_eof()
                stream._lot.unpark_all()
        elif kind is h2.events.StreamReset:
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                stream._fail(StreamReset(event.stream_id, int(event.error_code)))
            self._window_lot.unpark_all()
        elif kind is h2.events.RemoteSettingsChanged:
            changed = event.changed_settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
            if changed is not None:
                self.peer_max_streams = changed.new_value
            self._window_lot.unpark_all()
            self._ready.set()
        elif kind is h2.events.PingAckReceived:
            if self._ping_acked is not None:
                self._ping_acked.set()
        elif kind is h2.events.ConnectionTerminated:
            self._on_goaway(event)
        # SettingsAcknowledged, PingReceived (h2 answers), PriorityUpdated, TrailersReceived and
        # informational responses need nothing from us.

    def _on_request_received(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        if self._on_request is None or (
            self._goaway_last_stream_id is not None and sid > self._goaway_last_stream_id
        ):
            self._h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        stream = HboneStream(self, sid)
        self.streams[sid] = stream
        if event.stream_ended is not None:
            stream._feed_eof()
        self.last_active = trio.current_time()
        self._handler_nursery.start_soon(self._on_request, stream, _decode_headers(event.headers))

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self.goaway_received = True
        reason = (event.additional_data or b"").decode("utf-8", "replace")
        if event.error_code != h2.errors.ErrorCodes.NO_ERROR:
            code = getattr(event.error_code, "name", event.error_code)
            self._fail(f"peer sent GOAWAY {code}" + (f": {reason}" if reason else ""))
            return
        last = event.last_stream_id or 0
        for sid, stream in list(self.streams.items()):
            if sid > last:
                self.streams.pop(sid)
                stream._fail(ConnectionClosed(f"stream {sid} not processed before GOAWAY"))
        log.debug("goaway received", conn=self.id, last_stream_id=last, reason=reason)

    async def _protocol_error(self, exc: h2.exceptions.ProtocolError) -> None:
        """Tell the peer why (GOAWAY with the error), give the writer a moment, then close."""
        code = getattr(exc, "error_code", h2.errors.ErrorCodes.PROTOCOL_ERROR)
        reason = f"HTTP/2 protocol error: {exc}"
        try:
            self._h2.close_connection(error_code=code, additional_data=reason.encode()[:256])
            self._flush()
        except h2.exceptions.ProtocolError:
            pass
        with trio.move_on_after(1):
            await self.wait_flushed()
        self._fail(reason)

    async def _keepalive(self) -> None:
        counter = itertools.count(1)
        while True:
            await trio.sleep(self.settings.ping_interval)
            self._ping_acked = trio.Event()
            self._h2.ping(next(counter).to_bytes(8, "big"))
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
        error = ConnectionClosed(reason)
        for stream in list(self.streams.values()):
            stream._fail(error)
        self.streams.clear()
        self._ready.set()
        for lot in (self._window_lot, self._written_lot, self._writer_lot):
            lot.unpark_all()


def _decode_headers(headers) -> dict[str, str]:
    return {
        (k.decode("latin-1") if isinstance(k, bytes) else k): (v.decode("latin-1") if isinstance(v, bytes) else v)
        for k, v in headers
    }

