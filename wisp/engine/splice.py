"""Two ends joined: bytes read from one are written to the other, both ways, with half-close.

An end is a TCP socket (`TcpEnd`) or an HBONE stream (wisp.engine.hbone.StreamEnd); both offer
the same small surface: `write(data) -> bool` (False: over the high-water mark, the writer's peer
should stop reading; `data` may be a view of a shared read buffer, so a writer sends or copies
it before returning and never keeps it), `write_eof()`, `pause_reading()`/`resume_reading()`, `abort(reason)` and
`close()`. EOF read on one end becomes `write_eof` on the other (TCP shutdown(WR) ↔ END_STREAM)
and the other direction goes on; the splice ends when both directions are done or at the first
error, which aborts both ends. Backpressure is per direction: a writer over its high-water mark
pauses its peer's reading until it drains below the low-water mark.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable
from typing import Protocol

from .loop import READ, WRITE, Loop

CHUNK = 256 * 1024
# One read buffer for every TCP end of the process: `recv(CHUNK)` would allocate (and shrink) a
# 256 KiB object per read, and glibc keeps such blocks on its heap once bulk transfers made
# them common. Ends read one at a time within a pass, and a writer copies what it keeps.
# A TCP end reads behind HEADROOM free bytes and hands its peer `PAYLOAD[:n]`, nothing else of
# READ_BUFFER: an HBONE stream may write an HTTP/2 frame header into the headroom and send
# header and payload in one TLS write, without copying the payload (wisp.engine.hbone).
HEADROOM = 9
READ_BUFFER = bytearray(HEADROOM + CHUNK)
_PAYLOAD = memoryview(READ_BUFFER)[HEADROOM:]
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024
_LINGER_RST = struct.pack("ii", 1, 0)


class End(Protocol):
    splice: Splice | None

    def write(self, data: bytes) -> bool: ...
    def write_eof(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def start(self) -> None: ...
    def abort(self, reason: str) -> None: ...
    def close(self) -> None: ...


class Splice:
    """The two ends of one proxied connection and the bytes it moved.

    `upstream` counts client → server bytes (Istio's "received" from the client), `downstream`
    server → client. `on_done(splice)` runs once, after both ends are closed; `error` says why
    it ended early, if it did.
    """

    __slots__ = ("client", "server", "upstream", "downstream", "error", "_open_directions", "on_done",
                 "done")

    def __init__(self, client: End, server: End, on_done: Callable[[Splice], None] | None = None) -> None:
        self.client = client
        self.server = server
        self.upstream = 0
        self.downstream = 0
        self.error: str | None = None
        self._open_directions = 2
        self.on_done = on_done
        self.done = False
        client.splice = self
        server.splice = self

    def start(self) -> None:
        self.client.start()
        self.server.start()

    def peer_of(self, end: End) -> End:
        return self.server if end is self.client else self.client

    def direction_done(self) -> None:
        """A writing end delivered its EOF: one direction is over."""
        self._open_directions -= 1
        if self._open_directions == 0:
            self._finish()

    def fail(self, reason: str) -> None:
        """End both directions now: the first error wins and both ends are aborted."""
        if self.done:
            return
        if self.error is None:
            self.error = reason
        self.client.abort(reason)
        self.server.abort(reason)
        self._finish()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        client, server = self.client, self.server
        client.close()
        server.close()
        # A finished connection is freed by reference counting, not left in cycles for the
        # garbage collector: closed ends get no more events (the loop skips unregistered fds,
        # a stream is gone from its connection), so their back-references can go, and the
        # callback runs once (ztunnel's holds its record and tracker entry, which hold us).
        client.splice = server.splice = None
        on_done, self.on_done = self.on_done, None
        if on_done is not None:
            on_done(self)


class TcpEnd:
    """A connected, non-blocking TCP socket as one end of a splice."""

    __slots__ = ("loop", "sock", "fd", "splice", "upstream", "_buffer", "_eof_pending", "_reading",
                 "_read_done", "_write_done", "_paused", "_closed", "_interest", "_peer_paused")

    def __init__(self, loop: Loop, sock: socket.socket, *, upstream: bool) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.splice: Splice | None = None
        # True: bytes read here travel client → server (this is the client's socket).
        self.upstream = upstream
        self._buffer: bytearray | None = None
        self._eof_pending = False
        self._read_done = False
        self._write_done = False
        self._paused = False
        self._closed = False
        self._interest = 0
        self._peer_paused = False

    # -- reading --------------------------------------------------------------------------
    def start(self) -> None:
        self.loop.register(self.fd, self, 0)
        self._update()

    def _update(self) -> None:
        if self._closed:
            return
        events = (READ if not (self._read_done or self._paused) else 0) | (WRITE if self._buffer else 0)
        if events != self._interest:
            self._interest = events
            self.loop.want(self.fd, events)

    def on_readable(self) -> None:
        if self._read_done or self._paused:
            return
        try:
            size = self.sock.recv_into(_PAYLOAD)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        splice = self.splice
        peer = splice.peer_of(self)
        if not size:
            self._read_done = True
            self._update()
            peer.write_eof()  # the direction is done once the peer has written its EOF
            return
        if self.upstream:
            splice.upstream += size
        else:
            splice.downstream += size
        # The peer sends or copies what it is given before returning (see module docstring).
        if not peer.write(_PAYLOAD[:size]):
            self.pause_reading()

    def pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            self._update()

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self._update()

    # -- writing --------------------------------------------------------------------------
    def write(self, data: bytes) -> bool:
        if self._closed or self._write_done:
            return True
        if self._buffer:
            self._buffer += data
            # Sticky until the buffer drains below the low-water mark: a peer once paused
            # stays paused until on_writable resumes it.
            if len(self._buffer) > HIGH_WATER:
                self._peer_paused = True
            return not self._peer_paused
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._fail(exc)
            return True
        if sent == len(data):
            return True
        self._buffer = bytearray(memoryview(data)[sent:])
        self._update()
        if len(self._buffer) > HIGH_WATER:
            self._peer_paused = True
        return not self._peer_paused

    def on_writable(self) -> None:
        buffer = self._buffer
        if not buffer:
            self._update()
            return
        try:
            sent = self.sock.send(buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        del buffer[:sent]
        if buffer:
            if self._peer_paused and len(buffer) < LOW_WATER:
                self._peer_paused = False
                self.splice.peer_of(self).resume_reading()
            return
        self._buffer = None
        self._update()
        if self._peer_paused:
            self._peer_paused = False
            self.splice.peer_of(self).resume_reading()
        if self._eof_pending:
            self._shutdown_write()

    def write_eof(self) -> None:
        if self._write_done or self._closed:
            return
        if self._buffer:
            self._eof_pending = True
        else:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        self._eof_pending = False
        self._write_done = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                self._fail(exc)
                return
        self.splice.direction_done()

    # -- ending ---------------------------------------------------------------------------
    def _fail(self, exc: OSError) -> None:
        if self.splice is not None:
            self.splice.fail(exc.strerror or str(exc) or type(exc).__name__)
        else:
            self.abort(str(exc))

    def abort(self, reason: str) -> None:
        """Close with RST (SO_LINGER 0) rather than FIN: how a failed or denied connection ends."""
        if self._closed:
            return
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._buffer = None
        self.loop.unregister(self.fd)
        self.sock.close()
