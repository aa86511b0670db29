"""The node agent's endpoint for the CNI plugin: HTTP on a unix socket.

`POST /v1/cni/add` {netns, pod_name, pod_namespace, pod_ips, container_id} → 200 with
`{"enrolled": true|false, ...}` once redirection is in place and ztunnel has the pod (or the pod
is not for the mesh); 400 for a malformed request; 503 `{"error"}` when enrolment could not
complete, so the plugin fails the ADD and the runtime retries. `GET /healthz/ready` → 200 after
start-up reconciliation. A small ASGI app on hypercorn's trio connection handler: hypercorn is
already a dependency (the operator serves with it) and handles HTTP parsing and keep-alive. The
accept loop is ours, so that each peer's credentials are checked first (wisp/peercred.py): only
root, or the agent's own uid, may ask (anyone else could have any netns enrolled or probed); a
refused peer is logged and closed.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
import trio
from hypercorn.config import Config
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

from wisp import peercred
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
    config = Config()
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # Only root (the CNI plugin, run by kubelet) may ask: anyone else could probe any netns.
    # hypercorn's own server loop accepts everyone, so its per-connection handler is given
    # connections from a listener that checks each peer first.
    listener = peercred.PeerCheckedListener(peercred.listen_unix(path), peercred.privileged_uids(),
                                            what="CNI endpoint")
    handler = partial(TCPServer, wrap_app(make_app(add, ready), config.wsgi_max_body_size, "asgi"), config,
                      WorkerContext(None), ConnectionState({}))
    log.info("CNI endpoint listening", path=path)
    try:
        async with trio.open_nursery() as connections:
            task_status.started()
            await trio.serve_listeners(handler, [listener], handler_nursery=connections)
    finally:
        with trio.CancelScope(shield=True):
            await listener.aclose()
        Path(path).unlink(missing_ok=True)
