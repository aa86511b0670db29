"""ztunnel's small HTTP endpoints: readiness (15021), metrics (15020), admin (15000, localhost).

HTTP/1.1 with h11, one request per connection: these are polled by kubelet and Prometheus and
read by people, never on the data path.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable
import h11
import structlog
import trio

from wisp import sockets

from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics

log = structlog.get_logger("ztunnel.admin")

Response = tuple[int, str, bytes]
Handler = Callable[[str, str], Awaitable[Response]]

_MAX_REQUEST = 16 * 1024
_TIMEOUT = 10.0
_REASONS = {200: b"OK", 404: b"Not Found", 405: b"Method Not Allowed", 500: b"Internal Server Error"}


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
                    data = await stream.receive_some(_MAX_REQUEST)
                    h11c.receive_data(data)
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
                log.exception("admin handler failed", path=path)
                status, content_type, body = 500, "text/plain", b"internal error\n"
            headers = [("content-type", content_type), ("content-length", str(len(body))),
                       ("connection", "close")]
            data = h11c.send(h11.Response(status_code=status, headers=headers,
                                          reason=_REASONS.get(status, b"")))
            data += h11c.send(h11.Data(data=body)) if body and method != "HEAD" else b""
            data += h11c.send(h11.EndOfMessage())
            await stream.send_all(data)
    except h11.RemoteProtocolError as exc:
        with trio.move_on_after(1):
            await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
        log.debug("bad admin request", error=str(exc))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await stream.aclose()


# -- the endpoints ---------------------------------------------------------------------------------
# Each gets only what it answers from; the process assembles them (app.py).
Pending = Callable[[], Awaitable[list[str]]]


def readiness_handler(pending: Pending) -> Handler:
    """/healthz/ready: 200 when `pending()` is empty, else 500 naming what is pending."""
    async def handle(method: str, path: str) -> Response:
        if path != "/healthz/ready":
            return 404, "text/plain", b"not found\n"
        waiting = await pending()
        if waiting:
            return 500, "text/plain", f"not ready, pending: {', '.join(waiting)}\n".encode()
        return 200, "text/plain", b"ready\n"
    return handle


def metrics_handler(metrics: Metrics, workers_dir: Callable[[], str | None]) -> Handler:
    """/metrics: this process's counters, and the workers' in `workers_dir()` if any (each
    worker is asked to write its counters first; files are read in a thread)."""
    async def handle(method: str, path: str) -> Response:
        if path not in ("/metrics", "/stats/prometheus"):
            return 404, "text/plain", b"not found\n"
        metrics.flush()
        return 200, METRICS_CONTENT_TYPE, await metrics.scrape(workers_dir())
    return handle


def admin_handler(config_dump: Callable[[], Awaitable[dict]], pending: Pending,
                  shutdown: Callable[[], None]) -> Handler:
    """/config_dump, /healthz/ready and POST /quitquitquit (localhost only)."""
    ready = readiness_handler(pending)

    async def handle(method: str, path: str) -> Response:
        if path == "/config_dump":
            body = json.dumps(await config_dump(), indent=2, sort_keys=True).encode() + b"\n"
            return 200, "application/json", body
        if path == "/healthz/ready":
            return await ready(method, path)
        if path == "/quitquitquit":
            if method != "POST":
                return 405, "text/plain", b"use POST\n"
            shutdown()
            return 200, "text/plain", b"draining\n"
        return 404, "text/plain", b"endpoints: /config_dump /healthz/ready /quitquitquit\n"
    return handle
