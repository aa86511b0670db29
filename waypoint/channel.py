"""A protocol attached to one splice end: how the HTTP shells read and write an HBONE stream.

The engine moves bytes between two ends (wisp.engine.splice): a `TcpEnd` or an HBONE `StreamEnd`
hands what it reads to `splice.peer_of(self).write(data)` and reports EOF, drain and failure to
its splice. A waypoint does not join two ends blindly: it parses what arrives. `Channel` stands
in for the splice of a single end and hands the end's events to a `Reader` (the protocol
object: an HTTP/1.1 connection, the protocol detector, an HTTP/2 connection):

- `data_received(data) -> bool`: bytes read from the end. `data` may be a view of the engine's
  shared read buffer, valid only during the call: the reader parses it or copies what it keeps.
  False asks the end to stop reading until `Channel.resume_reading()` (backpressure).
- `eof_received()`: the peer half-closed (TCP FIN, HTTP/2 END_STREAM).
- `writable()`: the end drained what `write` returned False for; writing may go on.
- `closed(reason)`: the end is gone — reset, failed, or closed by `abort`/`close` — once;
  `reason` is None for an orderly end (both directions finished).

Writing goes the other way: `write(data) -> bool` (False: over the end's high-water mark; wait
for `writable`), `write_eof()`, `abort(reason)` (RST), `close()` once both sides are done.
`handover(splice_end)` detaches the reader and joins the end to another end in a plain
`Splice` (TCP pass-through after protocol detection). Nothing here copies or logs per chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from wisp.engine.splice import End, Splice


class Reader(Protocol):
    def data_received(self, data: memoryview | bytes) -> bool: ...
    def eof_received(self) -> None: ...
    def writable(self) -> None: ...
    def closed(self, reason: str | None) -> None: ...


class _Inbox:
    """What the end sees as its splice peer: its writes are the reader's input."""

    __slots__ = ("channel",)

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def write(self, data: bytes) -> bool:
        reader = self.channel.reader
        return True if reader is None else reader.data_received(data)

    def write_eof(self) -> None:
        channel = self.channel
        channel.read_done = True
        if channel.reader is not None:
            channel.reader.eof_received()
        channel._maybe_finish()

    def resume_reading(self) -> None:  # the end drained its output: the reader may write again
        if self.channel.reader is not None:
            self.channel.reader.writable()

    def pause_reading(self) -> None:
        pass

    def abort(self, reason: str) -> None:
        pass

    def close(self) -> None:
        pass


class Channel:
    """One end and the reader of its bytes. `upstream`/`downstream` count bytes as a Splice does."""

    __slots__ = ("end", "reader", "upstream", "downstream", "error", "done", "read_done", "write_done",
                 "_inbox", "on_done")

    def __init__(self, end: End, reader: Reader | None = None) -> None:
        self.end = end
        self.reader = reader
        self.upstream = 0
        self.downstream = 0
        self.error: str | None = None
        self.done = False
        self.read_done = False
        self.write_done = False
        self.on_done: Callable[[Channel], None] | None = None
        self._inbox = _Inbox(self)
        end.splice = self  # type: ignore[assignment]  # the end only uses the Splice surface below

    def start(self) -> None:
        self.end.start()

    # -- the Splice surface the end calls ------------------------------------------------------
    def peer_of(self, end: End) -> _Inbox:
        return self._inbox

    def direction_done(self) -> None:
        """The end delivered our EOF."""
        self.write_done = True
        self._maybe_finish()

    def fail(self, reason: str) -> None:
        if self.done:
            return
        self.error = reason
        self.end.abort(reason)
        self._finish(reason)

    # -- the reader's side ---------------------------------------------------------------------
    def write(self, data: bytes | memoryview) -> bool:
        if self.done:
            return True
        return self.end.write(data)

    def write_eof(self) -> None:
        if not self.done:
            self.end.write_eof()

    def pause_reading(self) -> None:
        if not self.done:
            self.end.pause_reading()

    def resume_reading(self) -> None:
        if not self.done:
            self.end.resume_reading()

    def abort(self, reason: str) -> None:
        """Reset the end (RST / RST_STREAM); the reader hears `closed(reason)`."""
        self.fail(reason)

    def close(self) -> None:
        """Close the end now, orderly if both directions were done, else with a reset."""
        if self.done:
            return
        if self.read_done and self.write_done:
            self._finish(None)
        else:
            self.fail("closed")

    def handover(self, other: End, on_done: Callable[[Splice], None] | None = None) -> Splice:
        """Join our end to `other` in a plain Splice; the reader hears nothing more."""
        self.reader = None
        self.done = True
        splice = Splice(self.end, other, on_done=on_done)
        return splice

    def _maybe_finish(self) -> None:
        if self.read_done and self.write_done:
            self._finish(None)

    def _finish(self, reason: str | None) -> None:
        if self.done:
            return
        self.done = True
        self.end.close()
        self.end.splice = None
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.closed(reason)
        on_done, self.on_done = self.on_done, None
        if on_done is not None:
            on_done(self)
