"""ztunnel's small HTTP endpoints: readiness (15021), metrics (15020), admin (15000, localhost).

The handlers; wisp.endpoints serves them (HTTP/1.1, one request per connection, never on the
data path).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from wisp.endpoints import Handler, Response, serve_http

from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics

__all__ = ["Handler", "Response", "admin_handler", "metrics_handler", "readiness_handler", "serve_http"]


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
                  shutdown: Callable[[], None], handoff: Callable[[], None]) -> Handler:
    """/config_dump, /healthz/ready, POST /quitquitquit (drain, then exit) and POST /handoff (the
    same, letting go of the HTTP ports at once for the ztunnel replacing this one); localhost only."""
    ready = readiness_handler(pending)
    actions = {"/quitquitquit": shutdown, "/handoff": handoff}

    async def handle(method: str, path: str) -> Response:
        if path == "/config_dump":
            body = json.dumps(await config_dump(), indent=2, sort_keys=True).encode() + b"\n"
            return 200, "application/json", body
        if path == "/healthz/ready":
            return await ready(method, path)
        action = actions.get(path)
        if action is not None:
            if method != "POST":
                return 405, "text/plain", b"use POST\n"
            action()
            return 200, "text/plain", b"draining\n"
        return 404, "text/plain", b"endpoints: /config_dump /healthz/ready /quitquitquit /handoff\n"
    return handle
