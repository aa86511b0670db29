"""The node agent's endpoint for the CNI plugin: HTTP on a unix socket.

`POST /v1/cni/add` {netns, pod_name, pod_namespace, pod_ips, container_id} → 200 with
`{"enrolled": true|false, ...}` once redirection is in place and ztunnel has the pod (or the pod
is not for the mesh); 400 for a malformed request; 503 `{"error"}` when enrolment could not
complete, so the plugin fails the ADD and the runtime retries. `GET /healthz/ready` → 200 after
start-up reconciliation. Served by hypercorn's trio worker with a small ASGI app: hypercorn is
already a dependency (the operator serves with it) and handles HTTP parsing and keep-alive.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from wisp.asgi import lifespan, read_body

from .enrolment import CniAddRequest
from .errors import CniAgentError

ADD_PATH = "/v1/cni/add"
READY_PATH = "/healthz/ready"
MAX_BODY = 64 * 1024

log = structlog.get_logger("cni.endpoint")

AddHandler = Callable[[CniAddRequest], Awaitable[dict[str, Any]]]


class BadRequest(ValueError):
    pass


def parse_add(body: bytes) -> CniAddRequest:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    fields = {}
    for name in ("netns", "pod_name", "pod_namespace"):
        value = data.get(name)
        if not isinstance(value, str) or not value:
            raise BadRequest(f"{name} must be a non-empty string")
        fields[name] = value
    container_id = data.get("container_id", "")
    if not isinstance(container_id, str):
        raise BadRequest("container_id must be a string")
    ips = data.get("pod_ips", [])
    if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
        raise BadRequest("pod_ips must be a list of strings")
    return CniAddRequest(fields["netns"], fields["pod_name"], fields["pod_namespace"], tuple(ips), container_id)


def make_app(add: AddHandler, ready: trio.Event):
    """The ASGI application."""

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == READY_PATH and method == "GET":
            if ready.is_set():
                await _respond(send, 200, {"ready": True})
            else:
                await _respond(send, 503, {"error": "node agent is starting"})
            return
        if path != ADD_PATH:
            await _respond(send, 404, {"error": f"no such endpoint: {method} {path}"})
            return
        if method != "POST":
            await _respond(send, 405, {"error": f"{path} takes POST"})
            return
        body = await read_body(receive, send, MAX_BODY, _respond)
        if body is None:
            return
        try:
            request = parse_add(body)
        except BadRequest as exc:
            log.warning("malformed CNI add request", error=str(exc))
            await _respond(send, 400, {"error": str(exc)})
            return
        try:
            result = await add(request)
        except CniAgentError as exc:
            log.warning("CNI add failed", pod=f"{request.pod_namespace}/{request.pod_name}", error=str(exc))
            await _respond(send, 503, {"error": str(exc)})
            return
        await _respond(send, 200, result)

    return app



async def _respond(send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode() + b"\n"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


async def serve_endpoint(path: str, add: AddHandler, ready: trio.Event, *,
                         task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; the socket file is replaced at start and removed at the end."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Path(path).unlink(missing_ok=True)
    config = Config()
    config.bind = [f"unix:{path}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    config.umask = 0o177
    log.info("CNI endpoint listening", path=path)
    try:
        await serve(make_app(add, ready), config, task_status=task_status)
    finally:
        Path(path).unlink(missing_ok=True)

