"""HBONE server: mutual TLS on 15008, HTTP/2 CONNECT streams handed to a handler.

The server checks what every HBONE endpoint checks (TLS 1.3, ALPN h2, a client certificate from
our roots in our trust domain, method CONNECT, a parsable `ip:port` authority); the handler decides
the rest (200, 401, 503 …) and, on success, gets the tunnel as a byte stream. A bad peer is
answered and logged, and touches nothing but its own connection.
"""

from __future__ import annotations

import socket
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
import trio

from wisp import sockets
from wisp.h2 import frames
from wisp.h2.connection import Connection
from wisp.identity import CertBundle, SpiffeId, VerificationError, spiffe_id_of

from .connection import SERVER_SETTINGS, H2Settings, HboneConnection, HboneStream
from .errors import ConnectionClosed, TlsError
from .headers import Authority, InvalidAuthority, forwarded_host, parse_authority, parse_baggage
from .tls import ContextCache, TlsStream

log = structlog.get_logger("wisp.hbone.server")

CertProvider = Callable[[], Awaitable[CertBundle]]


@dataclass(slots=True)
class ConnectRequest:
    """One CONNECT request, waiting for the handler's answer."""

    stream: HboneStream
    authority: Authority
    headers: dict[str, str]
    peer_identity: SpiffeId
    peer_address: tuple[str, int]
    local_address: tuple[str, int]
    local_identity: SpiffeId | None
    status: int | None = field(default=None)

    @property
    def responded(self) -> bool:
        return self.status is not None

    @property
    def baggage(self) -> dict[str, str]:
        return parse_baggage(self.headers.get("baggage", ""))

    @property
    def forwarded_host(self) -> str | None:
        return forwarded_host(self.headers.get("forwarded", ""))

    @property
    def traceparent(self) -> str | None:
        return self.headers.get("traceparent")

    def accept(self) -> HboneStream:
        """Answer 200; the returned stream carries the tunnelled bytes."""
        self._respond(200, "")
        return self.stream

    def reject(self, status: int, reason: str) -> None:
        """Answer `status` with `reason` as a short text body (the client surfaces it)."""
        if not 400 <= status <= 599:
            raise ValueError(f"reject needs a 4xx/5xx status, got {status}")
        self._respond(status, reason)

    def _respond(self, status: int, reason: str) -> None:
        if self.status is not None:
            raise RuntimeError(f"CONNECT {self.authority} was already answered with {self.status}")
        self.status = status
        self.stream.conn.respond(self.stream, status, reason.encode() if reason else b"")


Handler = Callable[[ConnectRequest], Awaitable[None]]


class HboneServer:
    """Serves HBONE on any number of listeners; use as `async with HboneServer(handler) as s`."""

    def __init__(
        self,
        handler: Handler,
        *,
        trust_domain: str = "cluster.local",
        settings: H2Settings = SERVER_SETTINGS,
        handshake_timeout: float = 10.0,
        contexts: ContextCache | None = None,
    ) -> None:
        self._handler = handler
        self.trust_domain = trust_domain
        self.settings = settings
        self.handshake_timeout = handshake_timeout
        self._contexts = contexts or ContextCache()
        self.connections: set[HboneConnection] = set()
        self.stats: Counter[str] = Counter()
        self.rejections: deque[tuple[tuple[str, int], str]] = deque(maxlen=256)
        self._nursery: trio.Nursery | None = None
        self._listeners: list[trio.CancelScope] = []
        self._draining = False

    async def __aenter__(self) -> HboneServer:
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        return self

    async def __aexit__(self, *exc_info) -> bool | None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        return await self._nursery_manager.__aexit__(*exc_info)

    async def listen(self, sock: socket.socket, certs: CertProvider) -> None:
        """Start serving a listening socket (non-blocking); `certs` gives its current bundle."""
        assert self._nursery is not None, "use HboneServer as an async context manager"
        await self._nursery.start(self._accept_loop, sock, certs)

    async def _accept_loop(self, sock: socket.socket, certs: CertProvider, *, task_status) -> None:
        with trio.CancelScope() as scope:
            self._listeners.append(scope)
            task_status.started()
            try:
                while True:
                    conn, peer = await sockets.accept(sock)
                    sockets.tune(conn)
                    self._nursery.start_soon(self._serve_connection, conn, peer, certs)
            finally:
                sockets.close(sock)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, GOAWAY every connection, wait up to `timeout` for streams to end."""
        self._draining = True
        for scope in self._listeners:
            scope.cancel()
        for conn in list(self.connections):
            conn.shutdown("server draining")
        with trio.move_on_after(timeout):
            while any(c.streams for c in self.connections):
                await trio.sleep(0.05)
        for conn in list(self.connections):
            conn.close("server drained")
        # Let each connection's task see its end and leave the set.
        with trio.move_on_after(1):
            while self.connections:
                await trio.sleep(0.01)

    def _reject(self, peer: tuple[str, int], reason: str) -> None:
        self.stats["connections_rejected"] += 1
        self.rejections.append((peer, reason))
        log.warning("hbone connection rejected", peer=f"{peer[0]}:{peer[1]}", reason=reason)

    async def _serve_connection(self, raw: socket.socket, peer: tuple[str, int], certs: CertProvider) -> None:
        self.stats["connections_accepted"] += 1
        try:
            await self._serve_connection_checked(raw, peer, certs)
        except Exception:
            # A bug must cost one connection, never the server and its other peers.
            raw.close()
            log.exception("hbone connection failed unexpectedly", peer=f"{peer[0]}:{peer[1]}")

    async def _serve_connection_checked(
        self, raw: socket.socket, peer: tuple[str, int], certs: CertProvider
    ) -> None:
        try:
            with trio.fail_after(self.handshake_timeout):
                try:
                    bundle = await certs()
                    ctx = self._contexts.get(bundle, server_side=True)
                except (trio.TooSlowError, trio.Cancelled):
                    raise
                except Exception as exc:
                    # No certificate (yet) for this listener: refuse this peer, keep serving.
                    raw.close()
                    self._reject(peer, f"no server certificate for this listener: {exc}")
                    return
                tls = await TlsStream.handshake(raw, ctx, server_side=True)
        except TlsError as exc:
            self._reject(peer, str(exc))
            return
        except trio.TooSlowError:
            raw.close()
            self._reject(peer, f"TLS handshake not finished within {self.handshake_timeout:g} s")
            return
        if tls.alpn_protocol() != "h2":
            tls.close()
            self._reject(peer, "the client did not negotiate ALPN h2")
            return
        try:
            peer_identity = spiffe_id_of(tls.peer_certificate())
        except VerificationError as exc:
            await self._refuse(tls, peer, f"client certificate: {exc}")
            return
        if peer_identity.trust_domain != self.trust_domain:
            await self._refuse(
                tls, peer,
                f"client identity {peer_identity} is not in trust domain {self.trust_domain!r}",
            )
            return
        conn = HboneConnection(
            tls, client_side=False, settings=self.settings, peer_identity=peer_identity,
            local_identity=bundle.identity, on_request=self._serve_stream,
        )
        if self._draining:
            conn.shutdown("server draining")
        self.connections.add(conn)
        try:
            await conn.run()
        except ConnectionClosed as exc:
            self._reject(peer, str(exc))
        finally:
            self.connections.discard(conn)
        if conn.failure and not conn.failure.startswith(("peer closed", "server drained")):
            log.info("hbone connection ended", peer=f"{peer[0]}:{peer[1]}", reason=conn.failure)

    async def _refuse(self, tls: TlsStream, peer: tuple[str, int], reason: str) -> None:
        """Answer a peer we will not serve with an HTTP/2 GOAWAY that says why, then close."""
        self._reject(peer, reason)
        codec = Connection(client=False)
        codec.initiate()
        codec.goaway(frames.INADEQUATE_SECURITY, reason.encode()[:512])
        with trio.move_on_after(1):
            try:
                await tls.send_all(bytes(codec.out))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        tls.close()

    async def _serve_stream(self, stream: HboneStream, headers: dict[str, str]) -> None:
        conn = stream.conn
        self.stats["streams"] += 1
        try:
            method = headers.get(":method")
            if method != "CONNECT":
                self.stats["streams_rejected"] += 1
                conn.respond(stream, 400, f"method {method} is not allowed; HBONE accepts only CONNECT".encode())
                return
            try:
                authority = parse_authority(headers.get(":authority", ""))
            except InvalidAuthority as exc:
                self.stats["streams_rejected"] += 1
                conn.respond(stream, 400, str(exc).encode())
                return
            request = ConnectRequest(
                stream, authority, headers, conn.peer_identity, conn.peer_address,
                conn.local_address, conn.local_identity,
            )
            try:
                await self._handler(request)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # The peer or the upstream went away mid-stream: an ordinary end for a tunnel.
                log.debug("hbone stream broken", authority=str(authority), reason=str(exc))
                return
            except Exception:
                log.exception("hbone handler failed", authority=str(authority))
                if not request.responded:
                    request.reject(503, "internal error while handling the request")
                return
            if not request.responded:
                request.reject(503, "no upstream handled the request")
            if request.status != 200:
                self.stats["streams_rejected"] += 1
        finally:
            stream.close()
