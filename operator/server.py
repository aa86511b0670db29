"""The control plane's HTTPS (HTTP/2) endpoint on 15012: CA, config stream, acks, readiness.

A plain ASGI application served by hypercorn on asyncio. Every route authenticates the caller
by its bearer credential; every refusal is a JSON `{"error": ...}` that says what to fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Protocol
from urllib.parse import parse_qs

import hypercorn.asyncio
import hypercorn.config
import structlog

from wisp.asgi import lifespan, read_body
from wisp.controlplane.protocol import ACK_PATH, CERTIFICATE_PATH, CONTENT_TYPE, PING, STREAM_PATH, encode_close
from wisp.identity import CertBundle

from .auth import ROLE_RUNTIME, Caller
from .ca_service import CaService
from .cluster import ClusterState
from .distributor import ROLE_WAYPOINT, ROLE_ZTUNNEL, Distributor

log = structlog.get_logger("wisp.operator.server")

MAX_BODY = 256 * 1024
DEFAULT_PING_INTERVAL = 10.0
DEFAULT_ACK_TIMEOUT = 30.0
# Unacknowledged messages a subscriber may have in flight, and bytes beyond the first of them:
# room for a burst of deltas while acks (which clients coalesce) catch up, but never more than
# one snapshot.
DEFAULT_WINDOW = 16
DEFAULT_WINDOW_BYTES = 1 << 20
# How long a duplex stream the control plane closes waits for the subscriber to end its side.
DEFAULT_CLOSE_GRACE = 5.0
# How long the last words of a stream may wait for a peer's HTTP/2 window.
_END_TIMEOUT = 1.0
_SEND_PIECE = 64 * 1024
SHUTDOWN_REASON = "the control plane is shutting down"


class Authenticator(Protocol):
    """Who presents an `Authorization` header: `LocalCredentials` answers at once,
    `KubeAuthenticator` (operator/kube_auth.py, TokenReview) with a coroutine."""

    def authenticate(self, authorization: str | None) -> Caller | None | Awaitable[Caller | None]: ...


class ControlPlaneApp:
    """ASGI app; `state` is the latest ClusterState the reconciler saw (for CA decisions)."""

    def __init__(
        self,
        ca: CaService,
        credentials: Authenticator,
        distributor: Distributor,
        state: Callable[[], ClusterState],
        *,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
        window: int = DEFAULT_WINDOW,
        window_bytes: int = DEFAULT_WINDOW_BYTES,
        close_grace: float = DEFAULT_CLOSE_GRACE,
        local_api=None,
    ) -> None:
        self.ca = ca
        self.credentials = credentials
        self.distributor = distributor
        self.state = state
        self.ping_interval = ping_interval
        self.ack_timeout = ack_timeout
        self.window = window
        self.window_bytes = window_bytes
        self.close_grace = close_grace
        # Local mode's stand-in for the Kubernetes API (operator/local_api.py), if any.
        self.local_api = local_api
        self.ready = True
        # Set when the process stops: every config stream says so and ends, so subscribers
        # reconnect (to another replica) at once instead of when their connection dies.
        self.closing = asyncio.Event()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/healthz/ready" and method == "GET":
            await _respond(send, 200 if self.ready else 503, b"ready\n" if self.ready else b"not ready\n",
                           content_type=b"text/plain")
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        caller = self.credentials.authenticate(headers.get("authorization"))
        if inspect.isawaitable(caller):
            # An unawaited coroutine is truthy: every caller would pass as a coroutine object.
            caller = await caller
        if caller is None:
            await _drain(receive, scope)
            await _json(send, 401, {"error": "missing or unknown bearer credential; node proxies "
                                             "use the token the control plane issued for them"})
            return
        if path.startswith("/v1/local/") and self.local_api is not None:

            async def read():
                return await read_body(receive, send, MAX_BODY, _json)

            async def respond(status, payload):
                if payload is None:
                    await _respond(send, status, b"")
                else:
                    await _json(send, status, payload)

            await self.local_api.handle(scope, receive, send, caller, read, respond)
            return
        route = {
            (CERTIFICATE_PATH, "POST"): self._certificate,
            (STREAM_PATH, "GET"): self._stream,
            (STREAM_PATH, "POST"): self._stream,
            (ACK_PATH, "POST"): self._ack,
            ("/debug/subscribers", "GET"): self._subscribers,
        }.get((path, method))
        if route is None:
            await _drain(receive, scope)
            await _json(send, 404, {"error": f"no route {method} {path}"})
            return
        await route(scope, receive, send, caller)

    async def _certificate(self, scope, receive, send, caller: Caller) -> None:
        body = await read_body(receive, send, MAX_BODY, _json)
        if body is None:
            return
        response = self.ca.sign(caller, body, self.state())
        if response.status != 200:
            log.warning("certificate refused", caller=caller.describe(), status=response.status,
                        reason=response.body.get("error"))
        await _respond(send, response.status, response.encode())

    async def _ack(self, scope, receive, send, caller: Caller) -> None:
        body = await read_body(receive, send, MAX_BODY, _json)
        if body is None:
            return
        try:
            subscriber, version, error = parse_ack(body, with_subscriber=True)
        except ValueError as exc:
            await _json(send, 400, {"error": str(exc)})
            return
        if not self.distributor.acked(subscriber, caller.view, version, error, caller):
            await _json(send, 404, {"error": f"no subscriber {subscriber!r} for {caller.describe()}"})
            return
        if error:
            log.warning("config rejected by subscriber", subscriber=subscriber, version=version, error=error)
        await _respond(send, 204, b"")

    async def _subscribers(self, scope, receive, send, caller: Caller) -> None:
        # Which nodes and waypoints exist and how current they are is the operator's business,
        # not a node proxy's: only the operator's own admin credential (the local runtime's)
        # reads it. On Kubernetes no caller holds that role; docs/identity.md says why.
        if caller.role != ROLE_RUNTIME:
            await _json(send, 403, {"error": f"{caller.describe()} may not read the subscriber table; "
                                             "only the operator's admin credential may"})
            return
        table = [
            {"id": s.id, "role": s.view.role, "node": s.view.node, "connected": s.connected,
             "owner": s.owner.describe() if isinstance(s.owner, Caller) else None,
             "sent_version": s.sent_version, "acked_version": s.acked_version, "last_error": s.last_error}
            for s in self.distributor.subscribers.values()
        ]
        await _json(send, 200, {"version": self.distributor.version, "subscribers": table})

    async def _stream(self, scope, receive, send, caller: Caller) -> None:
        """GET: the config stream, acks by separate POSTs. POST: the same stream, with the
        subscriber's acks as ndjson lines in the request body (full duplex, as xDS's stream)."""
        if caller.role not in (ROLE_ZTUNNEL, ROLE_WAYPOINT):
            await _drain(receive, scope)
            await _json(send, 403, {"error": f"{caller.describe()} does not subscribe to config"})
            return
        params = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        version = params.get("version", [None])[0]
        subscriber = params.get("subscriber", [None])[0] or f"{caller.role}-{secrets.token_hex(4)}"
        view = caller.view
        gateway = params.get("gateway", [None])[0]
        if gateway is not None:
            refusal = _gateway_refusal(caller, gateway)
            if refusal is not None:
                await _drain(receive, scope)
                await _json(send, 403 if caller.role == ROLE_WAYPOINT else 400, {"error": refusal})
                return
            view = replace(view, gateway=gateway)
        dist = self.distributor
        # Bound to the caller: an id another caller uses (say, another node's ztunnel) names a
        # different subscription, so this stream neither replaces nor squats that one.
        status = dist.connected(subscriber, view, caller)
        duplex = scope["method"] == "POST"
        log.info("subscriber connected", subscriber=subscriber, role=view.role, node=view.node,
                 resume_from=version, duplex=duplex)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", CONTENT_TYPE.encode()), (b"cache-control", b"no-store")]})

        def on_ack(line: bytes) -> None:
            _, acked, error = parse_ack(line, with_subscriber=False)
            dist.acked(subscriber, view, acked, error, caller)
            if error:
                log.warning("config rejected by subscriber", subscriber=subscriber, version=acked, error=error)

        watch = read_acks(receive, on_ack) if duplex else wait_disconnect(receive)
        try:
            # Until the client leaves (or, duplex, ends its acks) or the stream gives up on it
            # (or, duplex, on a bad ack), which returns why.
            reason = await first_of(watch, self._follow(send, dist, status, subscriber, view, version),
                                    self._until_closing())
            if reason is not None and duplex:
                await self._close_duplex(receive, send, subscriber, reason)
            # End the response explicitly: an ASGI app that returns mid-body leaves hypercorn's
            # HTTP/2 stream open on the client's side, which would wait for its read timeout.
            # A client that stopped reading may never take it; then the stream just goes.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(send({"type": "http.response.body", "body": b"", "more_body": False}),
                                       _END_TIMEOUT)
        finally:
            status.connected = False
            log.info("subscriber disconnected", subscriber=subscriber)

    async def _until_closing(self) -> str:
        await self.closing.wait()
        return SHUTDOWN_REASON

    async def _close_duplex(self, receive, send, subscriber: str, reason: str) -> None:
        """Tell the subscriber why its stream ends, and let it end its side first.

        hypercorn 0.18 fails the whole connection when request data arrives for a stream whose
        response has ended (pgjones/hypercorn#329), so the response ends only after the
        request body did, or after `close_grace` for a client that ignores the close.
        """
        try:
            await asyncio.wait_for(
                send({"type": "http.response.body", "body": encode_close(reason), "more_body": True}), _END_TIMEOUT)
            await asyncio.wait_for(_drain_until_end(receive), self.close_grace)
        except asyncio.TimeoutError:
            pass  # not reading, or not ending its side: the stream ends without it
        log.info("config stream closed", subscriber=subscriber, reason=reason)

    async def _follow(self, send, dist, status, subscriber, view, version) -> str:
        """Send what the subscriber lacks, within its window of unacknowledged messages, until
        it lets its oldest message go unacknowledged past the deadline or reports an error;
        returns why it stopped."""
        status.in_flight.clear()
        while True:
            # hypercorn buffers whatever we send regardless of the peer's HTTP/2 window, so the
            # ack window is the flow control.
            if not await dist.wait_for_room(status, self.window, self.window_bytes, self.ack_timeout):
                reason = status.last_error or f"no ack within {self.ack_timeout:g} s"
                log.warning("closing config stream", subscriber=subscriber, version=version, reason=reason)
                return reason
            message = dist.next_message(view, version)
            if message is not None:
                version, body = message
                # In pieces: hypercorn copies what it is given into the stream's buffer and
                # waits only after, so a 7 MB snapshot sent whole would sit there twice per
                # subscriber; a piece at a time, it holds one piece.
                for offset in range(0, len(body), _SEND_PIECE):
                    await send({"type": "http.response.body", "body": body[offset:offset + _SEND_PIECE],
                                "more_body": True})
                dist.sent(status, version, len(body))
                # Let go of it: a first sync is a snapshot of megabytes, and a stream holding its
                # last message would keep one per subscriber alive.
                message = body = None
                continue
            timeout = self.ping_interval
            deadline = dist.ack_deadline(status, self.ack_timeout)
            if deadline is not None:
                timeout = max(0.0, min(timeout, deadline - time.monotonic()))
            if not await dist.wait_for_change(version, timeout):
                deadline = dist.ack_deadline(status, self.ack_timeout)
                if deadline is not None and deadline <= time.monotonic():
                    reason = f"no ack within {self.ack_timeout:g} s"
                    log.warning("closing config stream", subscriber=subscriber, version=version, reason=reason)
                    return reason
                if timeout >= self.ping_interval:
                    await send({"type": "http.response.body", "body": PING, "more_body": True})

async def first_of(*coroutines):
    """Run the coroutines concurrently until one of them ends and return its result (or raise
    its exception); the rest are cancelled."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return next(iter(done)).result()


async def wait_disconnect(receive) -> None:
    """Until the client goes away (a streamed response's request has no body to read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def read_acks(receive, on_ack: Callable[[bytes], None]) -> str | None:
    """Each line of a duplex stream's request body goes to `on_ack`, until the client goes
    away or ends its body (it is leaving: None) or sends something that is not an ack (why)."""
    pending = b""
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            pending += message.get("body", b"")
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    on_ack(line)
            if len(pending) > MAX_BODY:
                raise ValueError(f"ack line over {MAX_BODY} bytes")
            if not message.get("more_body"):
                return None
    except ValueError as exc:
        return f"bad ack: {exc}"


async def _drain_until_end(receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body"):
            return


def _gateway_refusal(caller: Caller, gateway: str) -> str | None:
    """Why ``caller`` may not subscribe as the waypoint of Gateway ``gateway``, or None."""
    if caller.role != ROLE_WAYPOINT:
        return f"only waypoints name a gateway; {caller.describe()} does not"
    namespace, _, name = gateway.partition("/")
    if not namespace or not name or "/" in name:
        return f"gateway must be namespace/name, got {gateway!r}"
    if caller.identity is not None and caller.identity.namespace != namespace:
        # A waypoint runs in its Gateway's namespace; it may not read another namespace's config.
        return f"waypoint {caller.identity} may not subscribe as Gateway {gateway} of another namespace"
    return None


def parse_ack(body: bytes, *, with_subscriber: bool) -> tuple[str | None, str, str | None]:
    """(subscriber, version, error) of an ack; ValueError says what is wrong with it."""
    shape = "{subscriber, version, error}" if with_subscriber else "{version, error}"
    try:
        ack = json.loads(body)
        if not isinstance(ack, dict):
            raise TypeError(f"got {type(ack).__name__}")
        subscriber = ack["subscriber"] if with_subscriber else None
        version, error = ack["version"], ack.get("error")
        if (with_subscriber and not isinstance(subscriber, str)) or not isinstance(version, str):
            raise TypeError("subscriber and version must be strings" if with_subscriber
                            else "version must be a string")
        if error is not None and not isinstance(error, str):
            raise TypeError("error must be a string or null")
    except KeyError as exc:
        raise ValueError(f"ack must be {shape}: missing {exc}") from None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"ack must be {shape}: {exc}") from None
    return subscriber, version, error


async def _drain(receive, scope) -> None:
    """Consume a request body we will refuse: hypercorn fails the whole HTTP/2 connection if
    body data arrives for a stream that was already answered (pgjones/hypercorn#329).

    Not for a duplex config stream: its body is acks, which its client sends only once the
    stream is answered 200, so it would never end."""
    if scope["method"] in ("GET", "HEAD") or scope["path"] == STREAM_PATH:
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if message["type"] == "http.disconnect" or not message.get("more_body") or size > MAX_BODY:
            return


async def _respond(send, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
    headers = [(b"content-type", content_type)] if body else []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send, status: int, payload: dict) -> None:
    await _respond(send, status, json.dumps(payload).encode())


async def serve(
    app: ControlPlaneApp, sock: socket.socket, bundle: CertBundle, shutdown: asyncio.Event,
    *, unix_path: str | None = None,
) -> None:
    """Serve `app` over TLS (ALPN h2, http/1.1) on a bound, listening socket until `shutdown`.

    With `unix_path`, also serve plain HTTP on that unix socket (mode 0600): the local runtime and
    CLI live in the machine's own namespace, which has no route to the control plane's address.
    Callers still present bearer credentials there.
    """
    config = _InMemoryKeyConfig(bundle)
    # hypercorn closes the socket it serves; give it a duplicate so `sock` stays the caller's.
    config.bind = [f"fd://{os.dup(sock.fileno())}"]
    config.alpn_protocols = ["h2", "http/1.1"]
    if unix_path:
        if os.path.exists(unix_path):
            os.unlink(unix_path)
        config.insecure_bind = [f"unix:{unix_path}"]
        config.umask = 0o177
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    # Streams stay open for hours; only truly idle connections are closed. Acks are requests,
    # so hypercorn's default of recycling a connection after 1,000 of them would make every
    # subscriber on it reconnect at once.
    config.keep_alive_timeout = 120
    config.keep_alive_max_requests = 1 << 62

    async def stopping() -> None:
        await shutdown.wait()
        # Streams end themselves within hypercorn's graceful_timeout rather than being cut.
        app.closing.set()

    await hypercorn.asyncio.serve(app, config, shutdown_trigger=stopping)


# What certfile/keyfile say once the key lives only in the TLS context (hypercorn enables TLS
# when both are set, and reads them nowhere but in create_ssl_context, which we replace).
_LOADED_IN_MEMORY = "<loaded into the TLS context; no file>"


class _InMemoryKeyConfig(hypercorn.config.Config):
    """hypercorn's Config whose TLS context loads the serving key from a file that exists only
    for that moment: `ssl` loads keys only from files, and a file kept for the whole serve (as
    setting certfile/keyfile does) leaves the operator's key on tmpfs for its lifetime."""

    def __init__(self, bundle: CertBundle) -> None:
        super().__init__()
        self._bundle = bundle
        self.certfile = self.keyfile = _LOADED_IN_MEMORY

    def create_ssl_context(self):
        with self._bundle.pem_file() as pem:
            self.certfile = self.keyfile = pem
            try:
                return super().create_ssl_context()
            finally:
                self.certfile = self.keyfile = _LOADED_IN_MEMORY
