"""One HBONE connection: wisp.h2's HTTP/2 connection on trio, with CONNECT's side of it.

The HTTP/2 work (codec, reader/writer/keepalive tasks, streams as trio byte streams, flow
control, GOAWAY) lives in `wisp.h2.trio`; this module adds what HBONE means by it: the peer's
and our SPIFFE identities, the CONNECT answer (`respond`: a status and a short text reason),
HBONE's errors, and ztunnel's HTTP/2 settings for each side.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from wisp.h2.trio import H2Connection, H2Settings, H2Stream
from wisp.identity import SpiffeId

from .errors import ConnectionClosed, StreamReset

# A CONNECT tunnel is an HTTP/2 stream carrying bytes both ways, with half-close.
HboneStream = H2Stream

# ztunnel's values: 4 MiB stream and 16 MiB connection windows, 1 MiB frames; a server allows
# 200 concurrent streams and 64 KiB of request headers, a client 16 KiB of response headers.
CLIENT_SETTINGS = H2Settings()
SERVER_SETTINGS = H2Settings(max_concurrent_streams=200, max_header_list_size=64 * 1024)

__all__ = ["CLIENT_SETTINGS", "SERVER_SETTINGS", "H2Settings", "HboneConnection", "HboneStream"]


class HboneConnection(H2Connection):
    """An HTTP/2 connection carrying HBONE CONNECT streams, client or server side.

    `run()` serves it until it ends; requests from a client peer go to `on_request`, which runs
    in the connection's own nursery and so ends with it.
    """

    closed_error = ConnectionClosed
    reset_error = StreamReset

    def __init__(
        self,
        tls,
        *,
        client_side: bool,
        settings: H2Settings,
        peer_identity: SpiffeId | None,
        local_identity: SpiffeId | None = None,
        on_request: Callable[[HboneStream, dict[str, str]], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(tls, client_side=client_side, settings=settings, on_request=on_request)
        self.peer_identity = peer_identity
        self.local_identity = local_identity

    def respond(self, stream: HboneStream, status: int, body: bytes = b"") -> None:
        """Answer a CONNECT: 200 opens the tunnel; any other status ends the stream, with `body`
        (a short reason, cut to what the flow-control windows allow now) as text."""
        headers = [(b":status", str(status).encode())]
        if body:
            headers.append((b"content-type", b"text/plain; charset=utf-8"))
        end = status != 200 and not body
        self.send_headers(stream, headers, end_stream=end)
        if body:
            self.send_now(stream, body, end_stream=True)
        if status != 200:
            stream._eof_sent = True
