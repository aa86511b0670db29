"""The waypoint's small HTTP endpoints: readiness (15021 `/healthz/ready`), metrics (15020).

The handlers; wisp.endpoints serves them, as it serves ztunnel's (ztunnel/admin.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from wisp.endpoints import Handler, Response, serve_http
from wisp.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

__all__ = ["Handler", "Response", "metrics_handler", "readiness_handler", "serve_http"]


def readiness_handler(pending: Callable[[], list[str]]) -> Handler:
    """/healthz/ready: 200 when `pending()` is empty, else 503 naming what is pending."""
    async def handle(method: str, path: str) -> Response:
        if path != "/healthz/ready":
            return 404, "text/plain", b"not found\n"
        waiting = pending()
        if waiting:
            return 503, "text/plain", f"not ready, pending: {', '.join(waiting)}\n".encode()
        return 200, "text/plain", b"ready\n"
    return handle


def metrics_handler(render: Callable[[], Awaitable[bytes]]) -> Handler:
    """/stats/prometheus (Istio's path on 15020) and /metrics."""
    async def handle(method: str, path: str) -> Response:
        if path not in ("/stats/prometheus", "/metrics"):
            return 404, "text/plain", b"not found\n"
        return 200, METRICS_CONTENT_TYPE, await render()
    return handle
