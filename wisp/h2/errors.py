"""Errors the HTTP/2 codec raises to its own caller.

Only local misuse raises: calling a method the connection's state forbids. A peer's misbehaviour
never raises; it becomes events (see wisp.h2.connection).
"""

from __future__ import annotations


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


class ConnectionClosedError(H2Error):
    """The connection ended (a connection error or a GOAWAY with an error code)."""
