"""The HBONE server in the loop: accept on 15008, mutual TLS, then CONNECT requests.

Checks what every HBONE endpoint checks (TLS 1.3, ALPN h2, a client certificate from our roots
in our trust domain); a refused peer is told why in a GOAWAY (INADEQUATE_SECURITY) and closed.
An accepted connection gets its TLS state only once its first bytes arrive, and has
HANDSHAKE_TIMEOUT from its accept to finish the handshake.
Every CONNECT that passes the codec and the authority syntax goes to `on_request`, which
answers it (`accept` / `reject`) now or later.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable

import structlog

from wisp import sockets
from wisp.h2 import frames
from wisp.hbone.peers import check_client

from .accept import DEFAULT_PER_SOURCE, Acceptor
from .hbone import ConnectRequest, HboneConnection, ServerConnection
from .loop import READ, Loop
from .tls import Handshake

log = structlog.get_logger("wisp.engine.server")

HANDSHAKE_TIMEOUT = 10.0


class HboneServer:
    """Serves HBONE on one listening socket with the certificate `context()` returns."""

    def __init__(self, loop: Loop, sock: socket.socket, context: Callable[[], ssl.SSLContext | None], *,
                 on_request: Callable[[ConnectRequest], None], trust_domain: str,
                 name: str = "hbone",
                 fetch_certificate: Callable[[Callable[[], None]], None] | None = None,
                 per_source: int = DEFAULT_PER_SOURCE) -> None:
        self.loop = loop
        self.context = context
        # Called when `context()` has no certificate yet: fetches it, then calls its argument.
        self.fetch_certificate = fetch_certificate
        self.on_request = on_request
        self.trust_domain = trust_domain
        self.connections: set[ServerConnection] = set()
        self.stats: Counter[str] = Counter()
        self.rejections: deque[tuple[tuple[str, int], str]] = deque(maxlen=256)
        self.draining = False
        self.closed = False
        self.acceptor = Acceptor(loop, sock, self._accepted, name=name, per_source=per_source)

    def _accepted(self, raw: socket.socket, peer: tuple[str, int], release: Callable[[], None]) -> None:
        self.stats["connections_accepted"] += 1
        sockets.tune(raw)
        ctx = self.context()
        if ctx is None:
            if self.fetch_certificate is not None:
                self.fetch_certificate(lambda: self._with_certificate(raw, peer, release))
                return
            raw.close()
            release()
            self._reject(peer, "no server certificate for this listener yet")
            return
        self._handshake(raw, peer, release, ctx)

    def _with_certificate(self, raw: socket.socket, peer: tuple[str, int], release: Callable[[], None]) -> None:
        if self.closed:  # the pod went away while its certificate was being fetched
            raw.close()
            release()
            return
        ctx = self.context()
        if ctx is None:
            raw.close()
            release()
            self._reject(peer, "no server certificate for this listener")
            return
        self._handshake(raw, peer, release, ctx)

    def _handshake(self, raw: socket.socket, peer: tuple[str, int], release: Callable[[], None],
                   ctx: ssl.SSLContext) -> None:

        def failed(reason: str) -> None:
            release()
            self._reject(peer, reason)

        def hello(timeout: float) -> None:
            Handshake(self.loop, raw, ctx, server_side=True, timeout=timeout,
                      on_done=lambda h: self._handshaken(h, release), on_error=failed)

        _AwaitingHello(self.loop, raw, HANDSHAKE_TIMEOUT, hello, failed)

    def _handshaken(self, handshake: Handshake, release: Callable[[], None]) -> None:
        transport = handshake.transport
        peer = handshake.peer
        if transport.tls.selected_alpn_protocol() != "h2":
            transport.close()
            release()
            self._reject(peer, "the client did not negotiate ALPN h2")
            return
        peer_identity, problem = check_client(transport.tls, self.trust_domain)
        if problem is not None:
            self._refuse(handshake, release, problem)
            return

        def closed(conn: HboneConnection) -> None:
            self.connections.discard(conn)
            release()

        conn = ServerConnection(self.loop, transport, on_request=self._request, local=handshake.local, peer=peer,
                                peer_identity=peer_identity, on_closed=closed)
        self.connections.add(conn)
        if self.draining:  # accepted before the listener closed: its first streams are served
            conn.goaway(debug="server draining", graceful=True)

    def _request(self, request: ConnectRequest) -> None:
        self.stats["streams"] += 1
        self.on_request(request)

    def _refuse(self, handshake: Handshake, release: Callable[[], None], reason: str) -> None:
        """Tell a peer we will not serve why, in a GOAWAY, then close."""
        self._reject(handshake.peer, reason)
        conn = ServerConnection(self.loop, handshake.transport, on_request=lambda r: None, local=handshake.local,
                                peer=handshake.peer, peer_identity=None,
                                on_closed=lambda c: release())
        conn.codec.goaway(frames.INADEQUATE_SECURITY, reason.encode()[:512])
        conn.close(reason)

    def _reject(self, peer: tuple[str, int], reason: str) -> None:
        self.stats["connections_rejected"] += 1
        self.rejections.append((peer, reason))
        log.warning("hbone connection rejected", peer=f"{peer[0]}:{peer[1]}", reason=reason)

    def drain(self) -> None:
        """Stop accepting and send GOAWAY on every connection; streams in flight go on, and so do
        streams the peer opened before it saw the GOAWAY (a draining ztunnel refuses no stream)."""
        self.draining = True
        self.acceptor.close()
        for conn in list(self.connections):
            conn.goaway(debug="server draining", graceful=True)

    @property
    def open_streams(self) -> int:
        return sum(len(c.streams) for c in self.connections)

    def close(self, reason: str = "server closed") -> None:
        self.closed = True
        self.acceptor.close()
        for conn in list(self.connections):
            conn.close(reason)


class _AwaitingHello:
    """An accepted connection until its first bytes arrive, holding no TLS state: an SSL object
    and the buffers OpenSSL gives it on the first read cost ~45 KB, which idle connections (free
    to whoever opens them) would otherwise hold for the whole handshake timeout."""

    __slots__ = ("loop", "raw", "fd", "deadline", "then", "on_error", "timer", "waiting")

    def __init__(self, loop: Loop, raw: socket.socket, timeout: float, then: Callable[[float], None],
                 on_error: Callable[[str], None]) -> None:
        self.loop = loop
        self.raw = raw
        self.fd = raw.fileno()
        self.deadline = time.monotonic() + timeout
        self.then = then  # then(seconds left for the handshake)
        self.on_error = on_error
        self.waiting = True
        self.timer = loop.call_later(timeout, lambda: self.abort(f"no TLS handshake within {timeout:g} s"))
        loop.register(self.fd, self, READ)

    def on_readable(self) -> None:
        if self.waiting:
            self.waiting = False
            self.timer.cancel()
            self.loop.unregister(self.fd)
            self.then(max(0.0, self.deadline - time.monotonic()))

    def on_writable(self) -> None:
        pass

    def abort(self, reason: str) -> None:
        if self.waiting:
            self.waiting = False
            self.timer.cancel()
            self.loop.unregister(self.fd)
            self.raw.close()
            self.on_error(reason)
