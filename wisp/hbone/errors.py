"""HBONE errors: one hierarchy, each message says what went wrong and with whom."""

from __future__ import annotations

from wisp.h2 import errors as h2_errors


class HboneError(Exception):
    """Base class for every HBONE failure."""


class TlsError(HboneError):
    """The mutual-TLS handshake failed or the peer closed it (bad certificate, no ALPN h2, not TLS)."""


class PeerIdentityError(HboneError):
    """The peer's certificate verified but its SPIFFE identity is not one we accept."""


class ConnectionClosed(HboneError, h2_errors.ConnectionClosed):
    """The HTTP/2 connection is gone: GOAWAY, reset, missed keepalive or a protocol error."""


class ConnectRefused(HboneError):
    """The server answered the CONNECT with a status other than 200."""

    def __init__(self, status: int, authority: str, reason: str = "") -> None:
        self.status = status
        self.authority = authority
        self.reason = reason
        detail = f": {reason}" if reason else ""
        super().__init__(f"CONNECT {authority} refused with status {status}{detail}")


class StreamReset(HboneError, h2_errors.StreamReset):
    """The peer reset the stream (RST_STREAM) before it finished."""

    def __init__(self, stream_id: int, error_code: int) -> None:
        self.stream_id = stream_id
        self.error_code = error_code
        Exception.__init__(self, f"stream {stream_id} reset by peer (HTTP/2 error code {error_code})")
