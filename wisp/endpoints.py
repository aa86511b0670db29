"""Small HTTP endpoints of the proxies: readiness (15021), metrics (15020), ztunnel's admin (15000).

HTTP/1.1 with h11 on trio, one request per connection: polled by kubelet and Prometheus and read
by people, never on the data path. A process passes `serve_http` a listening socket and a
`handler(method, path)` that answers (status, content type, body); ztunnel/admin.py and
waypoint/endpoints.py hold the handlers.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import h11
import structlog
import trio

from wisp import sockets

log = structlog.get_logger("wisp.endpoints")

Response = tuple[int, str, bytes]
Handler = Callable[[str, str], Awaitable[Response]]

_MAX_REQUEST = 16 * 1024
_TIMEOUT = 10.0
_REASONS = {200: b"OK", 404: b"Not Found", 405: b"Method Not Allowed", 500: b"Internal Server Error",
            503: b"Service Unavailable"}


async def serve_http(sock: socket.socket, handler: Handler, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve `handler(method, path)` on a listening socket until cancelled."""
    async with trio.open_nursery() as nursery:
        task_status.started()
        try:
            while True:
                conn, _ = await sockets.accept(sock)
                nursery.start_soon(_serve_one, conn, handler)
        finally:
            sockets.close(sock)


async def _serve_one(conn: socket.socket, handler: Handler) -> None:
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
    h11c = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST)
    try:
        with trio.move_on_after(_TIMEOUT):
            request = None
            while True:
                event = h11c.next_event()
                if event is h11.NEED_DATA:
                    h11c.receive_data(await stream.receive_some(_MAX_REQUEST))
                    continue
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return
            if request is None:
                return
            method = request.method.decode("ascii", "replace")
            path = request.target.decode("ascii", "replace").split("?", 1)[0]
            try:
                status, content_type, body = await handler(method, path)
            except Exception:
                log.exception("endpoint handler failed", path=path)
                status, content_type, body = 500, "text/plain", b"internal error\n"
            headers = [("content-type", content_type), ("content-length", str(len(body))), ("connection", "close")]
            data = h11c.send(h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b"")))
            data += h11c.send(h11.Data(data=body)) if body and method != "HEAD" else b""
            data += h11c.send(h11.EndOfMessage())
            await stream.send_all(data)
    except h11.RemoteProtocolError as exc:
        with trio.move_on_after(1):
            await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
        log.debug("bad endpoint request", error=str(exc))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await stream.aclose()
