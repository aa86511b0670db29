"""One HTTP/2 connection (RFC 9113) as a sans-IO state machine: bytes in, events and bytes out.

Contract with the shell that owns the socket:
- `receive(data)` parses every complete frame in `data` (plus what an earlier call left over)
  and returns events; it keeps at most one incomplete frame. It never raises because of what the
  peer sent: a connection error queues GOAWAY, appends `ConnectionTerminated` and ignores all later
  input; a stream error queues RST_STREAM and appends `StreamReset(remote=False)`.
- `out` is a bytearray of frames to send. Only the codec appends to it; the shell writes from its
  front and deletes what was written (`del conn.out[:n]`). The codec counts its own appends to
  know which of its automatic answers (PING ACK, SETTINGS ACK, RST_STREAM) still wait unsent.
- Calls the state forbids raise a wisp.h2.errors exception (local misuse only).

What a hostile peer cannot do: make a header block buffer beyond `header_block_limit` (checked on
each frame header, before its payload is buffered); open more streams than the local
MAX_CONCURRENT_STREAMS (the extra ones are refused with REFUSED_STREAM, the connection lives on);
reset streams faster than `max_resets_per_window` per `reset_window` seconds (GOAWAY
ENHANCE_YOUR_CALM); keep more than `max_queued_control_frames` automatic answers waiting in `out`
by not reading (ENHANCE_YOUR_CALM); make a stream it reset produce a HeadersReceived later. When a
stream is opened and reset by the peer within one `receive` call, the application sees neither.

Hot path: one struct unpack per frame header, DATA inline in the receive loop, small integer
states, no per-frame objects besides the event. Payloads are handed out as memoryviews of the
buffer given to `receive` (no copy), valid until the next `receive` call: a shell that keeps one
longer copies it (a shell that reuses its read buffer must). A DATA frame that arrives in pieces
is handed out piece by piece as it arrives (END_STREAM with the last piece), not kept until
whole: bulk transfers send frames larger than a read. Padded frames are still kept whole.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

import hpack
from hpack.exceptions import OversizedHeaderListError

from . import frames
from . import headers as fields
from .errors import (
    ConnectionClosed,
    FlowControlError,
    GoingAway,
    H2Error,
    StreamClosedError,
    StreamLimitReached,
)
from .events import (
    ConnectionTerminated,
    DataReceived,
    GoAwayReceived,
    HeadersReceived,
    PingAcked,
    SettingsAcked,
    SettingsReceived,
    StreamReset,
    WindowUpdated,
)
from .frames import (
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    ENHANCE_YOUR_CALM,
    FLAG_ACK,
    FLAG_END_HEADERS,
    FLAG_END_STREAM,
    FLAG_PADDED,
    FLAG_PRIORITY,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    HEADERS,
    MAX_STREAM_ID,
    MAX_WINDOW,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    SETTINGS,
    STREAM_CLOSED,
)
from .settings import Settings, check

# Stream states (§5.1). Bit 0 set: our sending side has ended; value >= 2: the peer's has.
OPEN = 0
HALF_CLOSED_LOCAL = 1
HALF_CLOSED_REMOTE = 2
CLOSED = 3
_STATE_NAMES = ("open", "half-closed (local)", "half-closed (remote)", "closed")

# How a closed stream ended, remembered to answer late frames as §5.1 says.
_ENDED = 0      # both END_STREAMs: the peer sending more is a connection error STREAM_CLOSED
_SENT_RST = 1   # we reset it: ignore what the peer had in flight
_RECV_RST = 2   # the peer reset it: anything but PRIORITY is a stream error STREAM_CLOSED
_CLOSED_MEMORY = 1024

_unpack_header = frames.unpack_header
_U32 = frames._U32.unpack_from
_U32x2 = frames._U32x2.unpack_from
_SETTING = frames._SETTING.unpack_from
_append_rst = frames.append_rst_stream
_append_window_update = frames.append_window_update


class _ConnectionError(Exception):
    """Raised inside `receive` to stop at a connection error; never leaves this module."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class _Stream:
    __slots__ = ("id", "state", "local", "send_window", "recv_window", "unacked", "pending", "final")

    def __init__(self, sid: int, state: int, local: bool, send_window: int, recv_window: int) -> None:
        self.id = sid
        self.state = state
        self.local = local
        self.send_window = send_window   # what we may still send
        self.recv_window = recv_window   # what the peer may still send
        self.unacked = 0                 # consumed, not yet returned by WINDOW_UPDATE
        self.pending = 0                 # delivered to the application, not yet consumed
        self.final = not local           # a final response (client) / the request (server) arrived


class Connection:
    """The HTTP/2 state of one connection, client or server side."""

    def __init__(
        self,
        *,
        client: bool,
        local: Settings | None = None,
        connection_window: int = frames.DEFAULT_WINDOW,
        header_block_limit: int = 64 * 1024,
        max_resets_per_window: int = 200,
        reset_window: float = 1.0,
        max_queued_control_frames: int = 1000,
        huffman: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not frames.DEFAULT_WINDOW <= connection_window <= MAX_WINDOW:
            raise ValueError(f"connection window {connection_window} is outside 65535..2^31-1")
        self.client = client
        self.local = local if local is not None else Settings()
        # RFC initial values until the peer's SETTINGS say otherwise (push on, no limits).
        self.peer = Settings(enable_push=1)
        self.out = bytearray()
        self._inbuf = bytearray()
        # A DATA frame whose payload is still arriving: its stream, bytes to come, END_STREAM.
        self._data_sid = 0
        self._data_left = 0
        self._data_end = False
        self._streams: dict[int, _Stream] = {}
        self._closed: dict[int, int] = {}
        self._encoder = hpack.Encoder()
        # hpack Huffman-codes byte by byte in Python: 41 µs to encode Istio's CONNECT headers
        # with it, 17 µs without, and 31 µs against 12 µs to decode (bench/hbone/codec.py).
        # Plain literals cost ~35 bytes more per CONNECT; every peer must decode both forms.
        self._huffman = huffman
        self._decoder = hpack.Decoder(max_header_list_size=self.local.max_header_list_size or 64 * 1024)
        # Until our SETTINGS are acknowledged the peer may still use the defaults (§6.9.2, §4.3.1).
        self._decoder.max_allowed_table_size = max(4096, self.local.header_table_size)
        self._recv_initial = max(frames.DEFAULT_WINDOW, self.local.initial_window_size)
        self._stream_threshold = max(1, self.local.initial_window_size // 2)
        self._conn_window = connection_window
        self._conn_recv = connection_window
        self._conn_unacked = 0
        self._conn_threshold = connection_window // 2
        self._conn_send = frames.DEFAULT_WINDOW
        self._max_inbound = self.local.max_frame_size
        self._header_block_limit = header_block_limit
        self._next_local_id = 1 if client else 2
        self._last_peer_id = 0
        self._active_local = 0
        self._active_peer = 0
        self._cont_sid = 0
        self._cont_block = bytearray()
        self._cont_end_stream = False
        self._cont_self_dependent = False
        self._need_preface = not client
        self._need_settings = True
        self._settings_unacked = 0
        self._initiated = False
        self._terminated = False
        self.goaway_sent = False
        self.goaway_received = False
        self.goaway_last_stream_id: int | None = None    # from the peer's GOAWAY
        self._goaway_sent_last: int | None = None
        # Rapid-reset bound: a token bucket of `max_resets_per_window` refilled over `reset_window`.
        self._reset_limit = max_resets_per_window
        self._reset_rate = max_resets_per_window / reset_window
        self._reset_tokens = float(max_resets_per_window)
        self._clock = clock
        self._reset_stamp = clock()
        # Automatic answers still in `out`: their end offsets, counted in bytes ever appended.
        self._max_control = max_queued_control_frames
        self._control_ends: deque[int] = deque()
        self._appended = 0
        self._written_at_entry = 0
        self._events: list = []
        self._batch_new: dict[int, HeadersReceived] = {}
        self._hidden: set[int] | None = None
        self._handlers = {
            frames.HEADERS: self._on_headers,
            frames.PRIORITY: self._on_priority,
            frames.RST_STREAM: self._on_rst_stream,
            frames.SETTINGS: self._on_settings,
            frames.PUSH_PROMISE: self._on_push_promise,
            frames.PING: self._on_ping,
            frames.GOAWAY: self._on_goaway,
            frames.WINDOW_UPDATE: self._on_window_update,
            frames.CONTINUATION: self._on_continuation,
        }

    # -- state ---------------------------------------------------------------------------------
    @property
    def open_streams(self) -> int:
        """Streams open or half-closed, both directions (what MAX_CONCURRENT_STREAMS counts)."""
        return self._active_local + self._active_peer

    @property
    def local_open_streams(self) -> int:
        """Streams we opened that are still open or half-closed (limited by the peer's setting)."""
        return self._active_local

    @property
    def peer_settings(self) -> Settings:
        return self.peer

    @property
    def local_settings(self) -> Settings:
        return self.local

    @property
    def is_closed(self) -> bool:
        """A connection error happened or we sent GOAWAY with an error: nothing more to do."""
        return self._terminated

    @property
    def last_peer_stream_id(self) -> int:
        """The highest stream id the peer opened (what our GOAWAY names by default)."""
        return self._last_peer_id

    @property
    def last_local_stream_id(self) -> int:
        """The highest stream id we opened (0: none)."""
        return max(0, self._next_local_id - 2)

    def stream_state(self, stream_id: int) -> str:
        """'idle', 'open', 'half-closed (local)', 'half-closed (remote)' or 'closed'."""
        s = self._streams.get(stream_id)
        if s is not None:
            return _STATE_NAMES[s.state]
        return "idle" if self._is_idle(stream_id) else "closed"

    def send_window(self, stream_id: int) -> int:
        """How many DATA bytes `stream_id` may send now: min(stream, connection) window, >= 0."""
        s = self._streams.get(stream_id)
        if s is None or s.state & 1:
            return 0
        w = s.send_window if s.send_window < self._conn_send else self._conn_send
        return w if w > 0 else 0

    # -- sending -------------------------------------------------------------------------------
    def initiate(self) -> None:
        """Queue our connection preface: (client: the magic,) SETTINGS, and the connection window.
        `receive` calls it if the shell did not, so our SETTINGS always lead (§3.4)."""
        if self._initiated:
            return
        self._initiated = True
        out = self.out
        n0 = len(out)
        if self.client:
            out += frames.PREFACE
        frames.append_settings(out, self.local.to_wire())
        self._settings_unacked += 1
        extra = self._conn_window - frames.DEFAULT_WINDOW
        if extra > 0:
            _append_window_update(out, 0, extra)
        self._appended += len(out) - n0

    def increase_connection_window(self, n: int) -> None:
        """Let the peer send `n` more bytes on the connection, now and after each refill
        (the same as a larger `connection_window` at construction)."""
        if n <= 0 or self._conn_window + n > MAX_WINDOW:
            raise ValueError(f"connection window increment {n} must be > 0 and keep it within 2^31-1")
        self._check_usable()
        self._conn_window += n
        self._conn_threshold = self._conn_window // 2
        self._conn_recv += n
        out = self.out
        n0 = len(out)
        _append_window_update(out, 0, n)
        self._appended += len(out) - n0

    def open_stream(self, headers: Iterable[tuple], *, end_stream: bool = False) -> int:
        """Open a stream with a request (client only); returns its id.

        `headers` are (name, value) pairs, str (latin-1) or bytes, pseudo-headers first; a
        third item True sends that field never-indexed (for values unique to one request)."""
        self._check_usable()
        if not self.client:
            raise H2Error("only a client opens streams (server push is disabled)")
        if self.goaway_received or self.goaway_sent:
            raise GoingAway("GOAWAY was " + ("received" if self.goaway_received else "sent")
                            + ": open the stream on a new connection")
        limit = self.peer.max_concurrent_streams
        if limit is not None and self._active_local >= limit:
            raise StreamLimitReached(f"the peer allows {limit} concurrent streams and all are open")
        sid = self._next_local_id
        if sid > MAX_STREAM_ID:
            raise GoingAway("stream identifiers are exhausted: open a new connection")
        self._next_local_id = sid + 2
        s = _Stream(sid, HALF_CLOSED_LOCAL if end_stream else OPEN, True,
                    self.peer.initial_window_size, self._recv_initial)
        self._streams[sid] = s
        self._active_local += 1
        out = self.out
        n0 = len(out)
        self._emit_headers(sid, headers, end_stream)
        self._appended += len(out) - n0
        return sid

    def send_headers(self, stream_id: int, headers: Iterable[tuple], *,
                     end_stream: bool = False) -> None:
        """A response (server), or trailers (either side; then end_stream=True)."""
        self._check_usable()
        s = self._sending_stream(stream_id)
        out = self.out
        n0 = len(out)
        self._emit_headers(stream_id, headers, end_stream)
        self._appended += len(out) - n0
        if end_stream:
            self._sent_end(s)

    def send_data(self, stream_id: int, data, *, end_stream: bool = False) -> None:
        """Queue `data` (at most `send_window(stream_id)` bytes), split at the peer's frame size."""
        if self._terminated:
            raise ConnectionClosed("the HTTP/2 connection is closed")
        s = self._streams.get(stream_id)
        if s is None or s.state & 1:
            raise StreamClosedError(f"stream {stream_id} cannot send: {self.stream_state(stream_id)}")
        n = len(data)
        if n > s.send_window or n > self._conn_send:
            raise FlowControlError(
                f"{n} bytes exceed stream {stream_id}'s send window ({self.send_window(stream_id)})")
        s.send_window -= n
        self._conn_send -= n
        out = self.out
        n0 = len(out)
        size = self.peer.max_frame_size
        flags = FLAG_END_STREAM if end_stream else 0
        if n <= size:
            out += frames._pack_header(n >> 8, n & 0xFF, DATA, flags, stream_id)
            if n:
                out += data
        else:
            view = memoryview(data)
            for offset in range(0, n, size):
                piece = view[offset:offset + size]
                k = len(piece)
                last = flags if offset + k >= n else 0
                out += frames._pack_header(k >> 8, k & 0xFF, DATA, last, stream_id)
                out += piece
        self._appended += len(out) - n0
        if end_stream:
            self._sent_end(s)

    def data_frame_header(self, stream_id: int, n: int) -> bytes:
        """The header of one DATA frame of `n` bytes that the caller sends itself, right behind it.

        For a caller that holds the payload in a buffer with room for the header in front, so
        header and payload go out in one TLS write without being copied into `out`. Accounts
        the windows as `send_data` does; `out` must be empty (frames must not be reordered),
        and `n` at most `send_window(stream_id)` and the peer's frame size."""
        if self._terminated:
            raise ConnectionClosed("the HTTP/2 connection is closed")
        s = self._streams.get(stream_id)
        if s is None or s.state & 1:
            raise StreamClosedError(f"stream {stream_id} cannot send: {self.stream_state(stream_id)}")
        if self.out:
            raise H2Error("data_frame_header with frames still queued in `out`")
        if n > s.send_window or n > self._conn_send or n > self.peer.max_frame_size:
            raise FlowControlError(
                f"{n} bytes exceed stream {stream_id}'s send window ({self.send_window(stream_id)})"
                f" or the peer's frame size ({self.peer.max_frame_size})")
        s.send_window -= n
        self._conn_send -= n
        return frames._pack_header(n >> 8, n & 0xFF, DATA, 0, stream_id)

    def end_stream(self, stream_id: int) -> None:
        """End our side of the stream (an empty DATA frame with END_STREAM)."""
        self.send_data(stream_id, b"", end_stream=True)

    def reset_stream(self, stream_id: int, error_code: int = CANCEL) -> None:
        """Reset a stream that is not closed yet; a closed or unknown one is left alone."""
        if self._terminated:
            return
        s = self._streams.get(stream_id)
        if s is None or s.state == CLOSED:
            return
        out = self.out
        n0 = len(out)
        _append_rst(out, stream_id, error_code)
        self._close(s, _SENT_RST)
        self._appended += len(out) - n0

    def consumed(self, stream_id: int, n: int) -> None:
        """The application is done with `n` bytes of `stream_id`'s DATA: return them to the peer
        (WINDOW_UPDATE for the stream and the connection once half a window has been consumed).

        `n` is clamped to what the stream delivered and was not consumed yet, so counting
        `flow_controlled_length` (padding included) is safe. Unknown streams, stream 0 and streams
        already reset are ignored: `reset_stream` returns everything a stream still held."""
        s = self._streams.get(stream_id)
        if s is None or n <= 0 or self._terminated:
            return
        if n > s.pending:
            n = s.pending
            if not n:
                return
        s.pending -= n
        out = self.out
        n0 = len(out)
        self._credit(s, n)
        if s.state == CLOSED and not s.pending:
            self._forget(s, _ENDED)
        self._appended += len(out) - n0

    def ping(self, opaque: bytes) -> None:
        """Send a PING; its answer arrives as PingAcked(opaque)."""
        if len(opaque) != 8:
            raise ValueError(f"PING opaque data is 8 bytes, got {len(opaque)}")
        self._check_usable()
        out = self.out
        n0 = len(out)
        frames.append_ping(out, bytes(opaque))
        self._appended += len(out) - n0

    def goaway(self, error_code: int = NO_ERROR, debug: bytes = b"", last_stream_id: int | None = None) -> None:
        """Send GOAWAY. NO_ERROR: streams up to `last_stream_id` (default: the last the peer
        opened) continue, later ones are refused. An error code ends the connection."""
        if self._terminated:
            return
        last = self._last_peer_id if last_stream_id is None else last_stream_id
        if self._goaway_sent_last is not None and last > self._goaway_sent_last:
            last = self._goaway_sent_last   # §6.8: the last stream id never grows
        out = self.out
        n0 = len(out)
        frames.append_goaway(out, last, error_code, bytes(debug))
        self._appended += len(out) - n0
        self.goaway_sent = True
        self._goaway_sent_last = last
        if error_code != NO_ERROR:
            self._terminated = True

    # -- receiving -----------------------------------------------------------------------------
    def receive(self, data) -> list:
        """Feed bytes from the peer; returns the events they caused (see the module docstring)."""
        if self._terminated or not data:
            return []
        if not self._initiated:
            self.initiate()
        events = self._events = []
        out = self.out
        n0 = len(out)
        self._written_at_entry = self._appended - n0
        inbuf = self._inbuf
        if inbuf:
            inbuf += data
            buf = inbuf
        else:
            buf = data
        # Payloads are views of the caller's buffer, except out of our own buffer, which is
        # trimmed below: those are copied.
        copy = buf is inbuf
        end = len(buf)
        pos = 0
        view = memoryview(buf)
        if view.itemsize != 1 or view.ndim != 1:
            view = view.cast("B")
        streams = self._streams
        try:
            avail = end
            if self._data_left:
                pos = self._data_more(view, end, copy)
            if self._need_preface:
                pos = self._preface(view, end)
                if pos < 0:
                    pos = avail = 0   # keep the partial magic, parse nothing yet
            maxf = self._max_inbound
            while avail - pos >= 9:
                hi, lo, ftype, flags, sid = _unpack_header(view, pos)
                length = hi << 8 | lo
                sid &= MAX_STREAM_ID
                if length > maxf:
                    raise _ConnectionError(FRAME_SIZE_ERROR,
                                           f"frame of {length} bytes exceeds SETTINGS_MAX_FRAME_SIZE {maxf}")
                if self._cont_sid:
                    if ftype != CONTINUATION or sid != self._cont_sid:
                        raise _ConnectionError(PROTOCOL_ERROR,
                                               "header block interrupted before END_HEADERS")
                    if len(self._cont_block) + length > self._header_block_limit:
                        raise _ConnectionError(ENHANCE_YOUR_CALM,
                                               f"header block exceeds {self._header_block_limit} bytes")
                elif ftype == HEADERS and length > self._header_block_limit:
                    raise _ConnectionError(ENHANCE_YOUR_CALM,
                                           f"header block exceeds {self._header_block_limit} bytes")
                start = pos + 9
                stop = start + length
                if stop > end:
                    if ftype == DATA and not flags & FLAG_PADDED and not self._need_settings:
                        # Hand out what has arrived and stream the rest in later calls, rather
                        # than keep the frame (bulk sends 256 KiB frames) to copy it whole.
                        pos = self._data_start(view, start, end, length, flags, sid, copy)
                    break
                pos = stop
                if self._need_settings:
                    if ftype != SETTINGS or flags & FLAG_ACK:
                        raise _ConnectionError(PROTOCOL_ERROR, "the peer's first frame was not SETTINGS")
                    self._need_settings = False
                if ftype == DATA:
                    # Inline: this is most frames on an HBONE connection.
                    if not sid:
                        raise _ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
                    if length > self._conn_recv:
                        raise _ConnectionError(FLOW_CONTROL_ERROR,
                                               "DATA beyond the connection's flow-control window")
                    self._conn_recv -= length
                    s = streams.get(sid)
                    if s is None or s.state > HALF_CLOSED_LOCAL:
                        self._data_not_receiving(sid, s, length)
                        continue
                    if flags & FLAG_PADDED:
                        if not length or view[start] >= length:
                            raise _ConnectionError(PROTOCOL_ERROR, "DATA padding fills the frame")
                        a, b = start + 1, stop - view[start]
                    else:
                        a, b = start, stop
                    if length > s.recv_window:
                        self._credit_connection(length)
                        self._stream_error(s, FLOW_CONTROL_ERROR)
                        continue
                    s.recv_window -= length
                    n = b - a
                    s.pending += n
                    if n != length:
                        self._credit(s, length - n)
                    if flags & FLAG_END_STREAM:
                        events.append(DataReceived(sid, bytes(view[a:b]) if copy else view[a:b], length, True))
                        self._recv_end(s)
                    else:
                        events.append(DataReceived(sid, bytes(view[a:b]) if copy else view[a:b], length, False))
                    continue
                handler = self._handlers.get(ftype)
                if handler is not None:
                    handler(view, start, stop, flags, sid)
                # Unknown frame types are ignored (§4.1, §5.5).
        except _ConnectionError as exc:
            self._terminate(exc.code, exc.reason)
            pos = end
        finally:
            rest = bytes(view[pos:end]) if pos < end and buf is not inbuf else None
            view.release()
        if buf is inbuf:
            del inbuf[:pos]
        elif rest is not None:
            inbuf += rest
        self._appended += len(out) - n0
        if self._batch_new:
            self._batch_new.clear()
        if self._hidden is not None:
            hidden = self._hidden
            self._hidden = None
            events = [e for e in events if getattr(e, "stream_id", 0) not in hidden]
        return events

    def _data_start(self, view: memoryview, start: int, end: int, length: int, flags: int, sid: int,
                    copy: bool) -> int:
        """A DATA frame (unpadded) of which only the first `end - start` payload bytes are here:
        the same checks as a whole frame, the window charged for all of it, the bytes present
        handed out; returns where parsing stopped (`end`)."""
        if not sid:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        if length > self._conn_recv:
            raise _ConnectionError(FLOW_CONTROL_ERROR, "DATA beyond the connection's flow-control window")
        self._conn_recv -= length
        self._data_sid, self._data_left, self._data_end = sid, length, bool(flags & FLAG_END_STREAM)
        s = self._streams.get(sid)
        if s is None or s.state > HALF_CLOSED_LOCAL:
            self._data_sid = 0  # its bytes are returned to the connection as they arrive
            self._data_not_receiving(sid, s, 0)
        elif length > s.recv_window:
            self._data_sid = 0
            self._stream_error(s, FLOW_CONTROL_ERROR)
        else:
            s.recv_window -= length
        self._data_more(view[start:end], end - start, copy)
        return end

    def _data_more(self, view: memoryview, end: int, copy: bool) -> int:
        """The next bytes of the DATA frame being streamed, from the front of `view`: handed to
        its stream (END_STREAM with the last), or returned to the connection if the stream is
        gone; returns how many were taken."""
        n = min(self._data_left, end)
        left = self._data_left = self._data_left - n
        s = self._streams.get(self._data_sid) if self._data_sid else None
        if s is None or s.state > HALF_CLOSED_LOCAL:
            self._credit_connection(n)
            return n
        last = not left and self._data_end
        if n or last:
            s.pending += n
            self._events.append(DataReceived(s.id, bytes(view[:n]) if copy else view[:n], n, last))
        if last:
            self._recv_end(s)
        return n

    def _preface(self, view: memoryview, end: int) -> int:
        """Check the client's magic: where frames start, or -1 while it is incomplete."""
        size = len(frames.PREFACE)
        if not frames.PREFACE.startswith(bytes(view[: min(end, size)])):
            raise _ConnectionError(PROTOCOL_ERROR, "invalid HTTP/2 connection preface")
        if end < size:
            return -1
        self._need_preface = False
        return size

    # -- frame handlers ------------------------------------------------------------------------
    def _data_not_receiving(self, sid: int, s: _Stream | None, length: int) -> None:
        """DATA for a stream whose peer side has ended, or that we do not know."""
        self._credit_connection(length)
        if s is not None:
            if s.state == CLOSED:
                raise _ConnectionError(STREAM_CLOSED, f"DATA on stream {sid} after END_STREAM")
            self._stream_error(s, STREAM_CLOSED)
            return
        if self._is_idle(sid):
            raise _ConnectionError(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
        self._late_frame(sid, "DATA")

    def _late_frame(self, sid: int, what: str) -> None:
        """A DATA or HEADERS frame for a stream that is closed and forgotten by the state."""
        how = self._closed.get(sid)
        if how == _SENT_RST:
            return
        if how == _ENDED:
            raise _ConnectionError(STREAM_CLOSED, f"{what} on stream {sid} after END_STREAM")
        self._control(_append_rst, sid, STREAM_CLOSED)

    def _on_headers(self, view: memoryview, start: int, stop: int, flags: int, sid: int) -> None:
        if not sid:
            raise _ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        a, b = start, stop
        pad = 0
        if flags & FLAG_PADDED:
            if a >= b:
                raise _ConnectionError(PROTOCOL_ERROR, "HEADERS too short for its padding")
            pad = view[a]
            a += 1
        self_dependent = False
        if flags & FLAG_PRIORITY:
            if b - a < 5:
                raise _ConnectionError(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            self_dependent = _U32(view, a)[0] & MAX_STREAM_ID == sid
            a += 5
        if pad > b - a:
            raise _ConnectionError(PROTOCOL_ERROR, "HEADERS padding exceeds the frame")
        b -= pad
        end_stream = bool(flags & FLAG_END_STREAM)
        if flags & FLAG_END_HEADERS:
            self._header_block(sid, bytes(view[a:b]), end_stream, self_dependent)
        else:
            self._cont_sid = sid
            self._cont_block = bytearray(view[a:b])
            self._cont_end_stream = end_stream
            self._cont_self_dependent = self_dependent

    def _on_continuation(self, view: memoryview, start: int, stop: int, flags: int, sid: int) -> None:
        if not self._cont_sid:
            raise _ConnectionError(PROTOCOL_ERROR, f"CONTINUATION on stream {sid} without HEADERS")
        self._cont_block += view[start:stop]
        if flags & FLAG_END_HEADERS:
            block = bytes(self._cont_block)
            self._cont_sid = 0
            self._cont_block = bytearray()
            self._header_block(sid, block, self._cont_end_stream, self._cont_self_dependent)

    def _header_block(self, sid: int, block: bytes, end_stream: bool, self_dependent: bool) -> None:
        # Every block is decoded, even for a stream we will ignore: HPACK's table is shared.
        try:
            decoded = self._decoder.decode(block, raw=True)
        except OversizedHeaderListError:
            raise _ConnectionError(
                ENHANCE_YOUR_CALM, f"header list exceeds {self._decoder.max_header_list_size} bytes"
            ) from None
        except Exception as exc:  # noqa: BLE001 - hpack parses hostile bytes; any failure is the peer's
            raise _ConnectionError(COMPRESSION_ERROR, f"malformed HPACK block: {exc}") from None
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in decoded]
        s = self._streams.get(sid)
        if s is None:
            self._new_stream_headers(sid, headers, end_stream, self_dependent)
            return
        if s.state >= HALF_CLOSED_REMOTE:
            if s.state == CLOSED:
                raise _ConnectionError(STREAM_CLOSED, f"HEADERS on stream {sid} after END_STREAM")
            self._stream_error(s, STREAM_CLOSED)
            return
        if self_dependent:
            self._stream_error(s, PROTOCOL_ERROR)
            return
        if s.final:
            kind = fields.TRAILERS
            if not end_stream:
                self._stream_error(s, PROTOCOL_ERROR)   # §8.1: trailers end the stream
                return
        else:
            kind = fields.RESPONSE
        if fields.problem(headers, kind) is not None:
            self._stream_error(s, PROTOCOL_ERROR)
            return
        if kind == fields.RESPONSE:
            if headers[0][1][0] == "1":
                if end_stream:   # §8.1: an informational response cannot end the stream
                    self._stream_error(s, PROTOCOL_ERROR)
                    return
            else:
                s.final = True
        self._events.append(HeadersReceived(sid, headers, end_stream))
        if end_stream:
            self._recv_end(s)

    def _new_stream_headers(self, sid: int, headers: list[tuple[str, str]], end_stream: bool,
                            self_dependent: bool) -> None:
        local_id = (sid & 1) == (1 if self.client else 0)
        if local_id:
            if sid >= self._next_local_id:
                raise _ConnectionError(PROTOCOL_ERROR, f"HEADERS on stream {sid}, which we never opened")
            self._late_frame(sid, "HEADERS")
            return
        if sid <= self._last_peer_id:
            self._late_frame(sid, "HEADERS")
            return
        if self.client:
            raise _ConnectionError(PROTOCOL_ERROR, f"server opened stream {sid} (push is disabled)")
        self._last_peer_id = sid
        if self._goaway_sent_last is not None and sid > self._goaway_sent_last:
            self._refuse(sid, REFUSED_STREAM)
            return
        limit = self.local.max_concurrent_streams
        if limit is not None and self._active_peer >= limit:
            self._refuse(sid, REFUSED_STREAM)
            self._count_reset()
            return
        if self_dependent or fields.problem(headers, fields.REQUEST) is not None:
            self._refuse(sid, PROTOCOL_ERROR)
            self._count_reset()
            return
        s = _Stream(sid, HALF_CLOSED_REMOTE if end_stream else OPEN, False,
                    self.peer.initial_window_size, self._recv_initial)
        self._streams[sid] = s
        self._active_peer += 1
        event = HeadersReceived(sid, headers, end_stream)
        self._events.append(event)
        self._batch_new[sid] = event

    def _on_priority(self, view: memoryview, start: int, stop: int, flags: int, sid: int) -> None:
        # Deprecated by RFC 9113 and ignored, but still checked (§6.3); these are stream errors
        # that §5.4.1 lets us treat as connection errors, which spares resetting idle streams.
        if not sid:
            raise _ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0")
        if stop - start != 5:
            raise _ConnectionError(FRAME_SIZE_ERROR, f"PRIORITY of {stop - start} bytes")
        if _U32(view, start)[0] & MAX_STREAM_ID == sid:
            raise _ConnectionError(PROTOCOL_ERROR, f"stream {sid} depends on itself")

    def _on_rst_stream(self, view: memoryview, start: int, stop: int, flags: int, sid: int) -> None:
        if stop - start != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, f"RST_STREAM of {stop - start} bytes")
        if not sid:
            raise _ConnectionError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        s = self._streams.get(sid)
        if s is None or s.state == CLOSED:
            if s is None and self._is_idle(sid):
                raise _ConnectionError(PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
            return
        code = _U32(view, start)[0]
        self._close(s, _RECV_RST)
        if s.local:
            self._events.append(StreamReset(sid, code, True))
            return
        if sid in self._batch_new:
            # Opened and reset within this read: the application never hears of it.
            if self._hidden is None:
                self._hidden = set()
            self._hidden.add(sid)
        else:
            self._events.append(StreamReset(sid, code, True))
        self._count_reset()

    def _on_settings(self, view: memoryview, start: int, stop: int, flags: int, sid: int) -> None:
        if sid:
            raise _ConnectionError(PROTOCOL_ERROR, f"SETTINGS on stream {sid}")
        if flags & FLAG_ACK:
            if stop != start:
                raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            if self._settings_unacked:
                self._settings_unacked -= 1
                self._local_settings_acked()
                self._events.append(SettingsAcked())
            return
        if (stop - start) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, f"SETTINGS of {stop - start} bytes")
        changed: dict[int, int] = {}
        peer = self.peer
        for offset in range(start, stop, 6):
            ident, value = _SETTING(view, offset)
            problem = check(ident, value)
            if problem is not None:
                raise _ConnectionError(*problem)
            if ident == frames.SETTINGS_ENABLE_PUSH and value and self.client:
                raise _ConnectionError(PROTOCOL_ERROR, "server sent SETTINGS_ENABLE_PUSH 1")
            if ident == frames.SETTINGS_INITIAL_WINDOW_SIZE:
                delta = value - peer.initial_window_size
                for s in self._streams.values():
                    s.send_window += delta
                    if s.send_window > MAX_WINDOW:
                        raise _ConnectionError(FLOW_CONTROL_ERROR,
                                               f"SETTINGS_INITIAL_WINDOW_SIZE overflows stream {s.id}'s window")
            elif ident == frames.SETTINGS_HEADER_TABLE_SIZE:
                # We may use less than the peer allows; more than 4 KiB buys an HBONE peer nothing.
                size = min(value, 4096)
                if size != self._encoder.header_table_size:
                    self._encoder.header_table_size = size
            peer.set(ident, value)
            changed[ident] = value
        self._control(frames.append_settings, None, ack=True)
        self._events.append(SettingsReceived(changed))

    def _local_settings_acked(self) -> None:
        self._decoder.max_allowed_table_size = self.local.header_table_size
        initial = self.local.initial_window_size
        if initial < self._recv_initial:
            delta = initial - self._recv_initial
            for s in self._streams.values():
                s.recv_window += delta
            self._recv_initial = initial

    def _on_push_promise(self, view: memoryview, start: int, stop: int, flags: int, sid: int) -> None:
        raise _ConnectionError(PROTOCOL_ERROR, "PUSH_PROMISE although SETTINGS_ENABLE_PUSH is 0")

    def _on_ping(self, view: memoryview, start: int, stop: int, flags: int, sid: int) -> None:
        if sid:
            raise _ConnectionError(PROTOCOL_ERROR, f"PING on stream {sid}")
        if stop - start != 8:
            raise _ConnectionError(FRAME_SIZE_ERROR, f"PING of {stop - start} bytes")
        opaque = bytes(view[start:stop])
        if flags & FLAG_ACK:
            self._events.append(PingAcked(opaque))
        else:
            self._control(frames.append_ping, opaque, ack=True)

    def _on_goaway(self, view: memoryview, start: int, stop: int, flags: int, sid: int) -> None:
        if sid:
            raise _ConnectionError(PROTOCOL_ERROR, f"GOAWAY on stream {sid}")
        if stop - start < 8:
            raise _ConnectionError(FRAME_SIZE_ERROR, f"GOAWAY of {stop - start} bytes")
        last, code = _U32x2(view, start)
        last &= MAX_STREAM_ID
        if self.goaway_last_stream_id is not None and last > self.goaway_last_stream_id:
            last = self.goaway_last_stream_id
        self.goaway_received = True
        self.goaway_last_stream_id = last
        self._events.append(GoAwayReceived(code, last, bytes(view[start + 8:stop])))
        for s in [s for s in self._streams.values() if s.local and s.id > last and s.state != CLOSED]:
            self._close(s, _RECV_RST)
            self._events.append(StreamReset(s.id, REFUSED_STREAM, True))

    def _on_window_update(self, view: memoryview, start: int, stop: int, flags: int, sid: int) -> None:
        if stop - start != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, f"WINDOW_UPDATE of {stop - start} bytes")
        increment = _U32(view, start)[0] & MAX_WINDOW
        if not sid:
            if not increment:
                raise _ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0 for the connection")
            self._conn_send += increment
            if self._conn_send > MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "connection send window exceeds 2^31-1")
            self._events.append(WindowUpdated(0))
            return
        s = self._streams.get(sid)
        if s is None or s.state == CLOSED:
            if s is None and self._is_idle(sid):
                raise _ConnectionError(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
            return   # §5.1: allowed for a while after a stream closes
        if not increment:
            self._stream_error(s, PROTOCOL_ERROR)
            return
        s.send_window += increment
        if s.send_window > MAX_WINDOW:
            self._stream_error(s, FLOW_CONTROL_ERROR)
            return
        if not s.state & 1:
            self._events.append(WindowUpdated(sid))

    # -- helpers -------------------------------------------------------------------------------
    def _is_idle(self, sid: int) -> bool:
        if (sid & 1) == (1 if self.client else 0):
            return sid >= self._next_local_id
        return sid > self._last_peer_id

    def _emit_headers(self, sid: int, headers: Iterable, end_stream: bool) -> None:
        fields = []
        for field in headers:
            name, value = field[0], field[1]
            if type(name) is not bytes:
                name = name.encode("latin-1")
            if type(value) is not bytes:
                value = value.encode("latin-1")
            # A third item True: never indexed (a value unique to this request only evicts
            # useful entries from both HPACK tables).
            fields.append((name, value, field[2]) if len(field) > 2 else (name, value))
        block = self._encoder.encode(fields, huffman=self._huffman)
        frames.append_header_block(self.out, sid, block, end_stream=end_stream,
                                   max_frame_size=self.peer.max_frame_size)

    def _sending_stream(self, stream_id: int) -> _Stream:
        s = self._streams.get(stream_id)
        if s is None or s.state & 1:
            raise StreamClosedError(f"stream {stream_id} cannot send: {self.stream_state(stream_id)}")
        return s

    def _check_usable(self) -> None:
        if self._terminated:
            raise ConnectionClosed("the HTTP/2 connection is closed")

    def _recv_end(self, s: _Stream) -> None:
        if s.state == OPEN:
            s.state = HALF_CLOSED_REMOTE
        else:
            self._close(s, _ENDED)

    def _sent_end(self, s: _Stream) -> None:
        if s.state == OPEN:
            s.state = HALF_CLOSED_LOCAL
        else:
            self._close(s, _ENDED)

    def _close(self, s: _Stream, how: int) -> None:
        if s.state != CLOSED:
            s.state = CLOSED
            if s.local:
                self._active_local -= 1
            else:
                self._active_peer -= 1
        if how == _ENDED and s.pending:
            return   # kept until the application consumed what it was handed
        if s.pending:
            # Reset: the application drops what it holds, so the connection gets it back now.
            self._credit_connection(s.pending)
            s.pending = 0
        self._forget(s, how)

    def _forget(self, s: _Stream, how: int) -> None:
        del self._streams[s.id]
        closed = self._closed
        closed[s.id] = how
        if len(closed) > _CLOSED_MEMORY:
            del closed[next(iter(closed))]

    def _credit(self, s: _Stream, n: int) -> None:
        """`n` bytes of `s` may be sent again: WINDOW_UPDATE once half a window is owed."""
        if s.state <= HALF_CLOSED_LOCAL:   # nobody needs window for a stream the peer ended
            u = s.unacked + n
            if u >= self._stream_threshold:
                _append_window_update(self.out, s.id, u)
                s.recv_window += u
                u = 0
            s.unacked = u
        self._credit_connection(n)

    def _credit_connection(self, n: int) -> None:
        u = self._conn_unacked + n
        if u >= self._conn_threshold:
            _append_window_update(self.out, 0, u)
            self._conn_recv += u
            u = 0
        self._conn_unacked = u

    def _stream_error(self, s: _Stream, code: int) -> None:
        self._control(_append_rst, s.id, code)
        self._close(s, _SENT_RST)
        self._events.append(StreamReset(s.id, code, False))
        if not s.local:
            self._count_reset()

    def _refuse(self, sid: int, code: int) -> None:
        """Reset a peer's stream that never became active."""
        self._control(_append_rst, sid, code)
        closed = self._closed
        closed[sid] = _SENT_RST
        if len(closed) > _CLOSED_MEMORY:
            del closed[next(iter(closed))]
        self._events.append(StreamReset(sid, code, False))

    def _control(self, build: Callable, *args, **kwargs) -> None:
        """Queue an automatic answer, unless too many earlier ones still wait unsent."""
        ends = self._control_ends
        written = self._written_at_entry
        while ends and ends[0] <= written:
            ends.popleft()
        if len(ends) >= self._max_control:
            raise _ConnectionError(
                ENHANCE_YOUR_CALM, f"{len(ends)} answers to PING/SETTINGS/errors wait unread by the peer")
        build(self.out, *args, **kwargs)
        ends.append(written + len(self.out))

    def _count_reset(self) -> None:
        now = self._clock()
        tokens = self._reset_tokens + (now - self._reset_stamp) * self._reset_rate
        if tokens > self._reset_limit:
            tokens = self._reset_limit
        self._reset_stamp = now
        tokens -= 1
        if tokens < 0:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "too many stream resets (rapid reset)")
        self._reset_tokens = tokens

    def _terminate(self, code: int, reason: str) -> None:
        frames.append_goaway(self.out, self._last_peer_id, code, reason.encode("utf-8", "replace")[:256])
        self._terminated = True
        self.goaway_sent = True
        self._goaway_sent_last = self._last_peer_id
        self._cont_sid = 0
        self._cont_block = bytearray()
        self._events.append(ConnectionTerminated(code, reason))
