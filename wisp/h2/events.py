"""What `Connection.receive` reports: one small slots object per protocol event.

Stream events carry `stream_id`; connection events do not. A shell dispatches on `type(event)`.
Events a shell never needs to act on (PINGs from the peer, PRIORITY, SETTINGS it need not read)
are answered or dropped inside the codec and produce nothing, or only an informational event.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class HeadersReceived:
    """A header block: a request on a server, a response (1xx, final) or trailers on a client,
    trailers on a server. Names and values are latin-1 decoded, so every byte survives."""

    stream_id: int
    headers: list[tuple[str, str]]
    end_stream: bool


@dataclass(slots=True)
class DataReceived:
    """DATA for a stream. `data` is the payload without padding; `flow_controlled_length` counts
    the whole frame payload (padding included) against the windows. The codec returns the
    padding to the peer itself: the application calls `Connection.consumed(stream_id, n)` for
    the bytes of `data` it has finished with (extra is ignored, so passing
    `flow_controlled_length` is also safe).

    `data` may be a memoryview of the buffer passed to `receive`, valid until the next
    `receive` call (copy it to keep it), and one frame may arrive as several events."""

    stream_id: int
    data: bytes | memoryview
    flow_controlled_length: int
    end_stream: bool


@dataclass(slots=True)
class StreamReset:
    """A stream ended abnormally. remote=True: the peer sent RST_STREAM, or a GOAWAY showed the
    peer never processed it (REFUSED_STREAM). remote=False: the codec reset it (a stream error
    by the peer, or REFUSED_STREAM at the local stream limit or after our GOAWAY)."""

    stream_id: int
    error_code: int
    remote: bool


@dataclass(slots=True)
class WindowUpdated:
    """The send window of `stream_id` (0: the connection) grew; blocked senders may have room."""

    stream_id: int


@dataclass(slots=True)
class SettingsReceived:
    """The peer's SETTINGS were applied (and acknowledged); `changed` maps identifier → value."""

    changed: dict[int, int]


@dataclass(slots=True)
class SettingsAcked:
    """The peer acknowledged our SETTINGS."""


@dataclass(slots=True)
class PingAcked:
    """The answer to one of our PINGs."""

    opaque: bytes


@dataclass(slots=True)
class GoAwayReceived:
    """The peer will accept no stream above `last_stream_id`; ours above it were reported as
    StreamReset(REFUSED_STREAM, remote=True) right after this event. An error code other than
    NO_ERROR means the peer is closing the connection."""

    error_code: int
    last_stream_id: int
    debug: bytes


@dataclass(slots=True)
class ConnectionTerminated:
    """The codec found a connection error, queued GOAWAY in `out` and stopped reading: flush `out`,
    then close the transport."""

    error_code: int
    debug: str


Event = (
    HeadersReceived | DataReceived | StreamReset | WindowUpdated | SettingsReceived | SettingsAcked
    | PingAcked | GoAwayReceived | ConnectionTerminated
)
