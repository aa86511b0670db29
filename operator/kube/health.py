"""Health endpoints for the operator on Kubernetes: ``/healthz`` (alive) and ``/readyz`` (synced).

A deliberately small HTTP/1.1 server on its own port (kubelet probes it in plain HTTP, as
istiod's readiness port 8080): ``/healthz`` answers 200 while the event loop runs,
``/readyz`` 200 once ``ready()`` is true (every kind listed and a first reconciliation
published) and 503 before. Anything else is 404. One request per connection.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import structlog

log = structlog.get_logger("wisp.operator.kube.health")

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HealthServer:
    def __init__(self, ready: Callable[[], bool]) -> None:
        self.ready = ready

    async def serve(self, sock: socket.socket) -> None:
        server = await asyncio.start_server(self._handle, sock=sock)
        async with server:
            await server.serve_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while True:  # drain the headers
                line = await asyncio.wait_for(reader.readline(), 5)
                if line in (b"\r\n", b"\n", b""):
                    break
            parts = request.decode("latin-1").split()
            method, path = (parts[0], parts[1].split("?", 1)[0]) if len(parts) >= 2 else ("", "")
            if method not in ("GET", "HEAD"):
                status = 405 if method else 404
            elif path == "/healthz":
                status = 200
            elif path == "/readyz":
                status = 200 if self.ready() else 503
            else:
                status = 404
            body = b"ok\n" if status == 200 else (_REASONS[status].lower() + "\n").encode()
            head = "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (
                status, _REASONS[status], len(body))
            writer.write(head.encode() + (body if method != "HEAD" else b""))
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
