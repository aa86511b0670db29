"""Errors the HTTP/2 codec raises to its own caller.

The codec (wisp.h2.connection) raises only on local misuse: a call the connection's state forbids;
a peer's misbehaviour never raises there, it becomes events. The trio shell (wisp.h2.trio) raises
ConnectionClosed and StreamReset to the tasks using its streams.
"""

from __future__ import annotations

from .frames import error_name


class H2Error(Exception):
    """Base of the errors wisp.h2 raises."""


class StreamLimitReached(H2Error):
    """The peer's SETTINGS_MAX_CONCURRENT_STREAMS is reached: open the stream elsewhere or later."""


class GoingAway(H2Error):
    """No new stream on this connection: GOAWAY was sent or received, or stream ids ran out."""


class StreamClosedError(H2Error):
    """The stream is unknown, closed, or its sending side has ended."""


class FlowControlError(H2Error):
    """More data than the send window allows; wait for WindowUpdated."""


class ConnectionClosed(H2Error):
    """The connection ended: a connection error, a GOAWAY with an error code, a missed keepalive,
    or the transport closed."""


class StreamReset(H2Error):
    """The stream was reset (RST_STREAM) before it finished."""

    def __init__(self, stream_id: int, error_code: int) -> None:
        self.stream_id = stream_id
        self.error_code = error_code
        super().__init__(f"stream {stream_id} was reset (HTTP/2 error {error_name(error_code)})")
