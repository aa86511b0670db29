"""The HBONE connection pool in the loop, keyed as ztunnel keys it (wisp.hbone.peers.PoolKey).

Key = (source identity, expected destination identities, destination address, source IP). A
connection carries at most min(100, peer MAX_CONCURRENT_STREAMS) streams; while a dial for a key
is under way, further requests for that key wait for it rather than dialling again (one dial per
key); connections that saw GOAWAY or failed leave the pool; idle ones close after a while.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable

import structlog

from wisp.hbone.peers import PoolKey, check_peer, spiffe_ids_of_tls
from wisp.identity import SpiffeId

from .hbone import ClientConnection, HboneConnection, StreamEnd
from .loop import Loop
from .tls import Connect, Handshake

log = structlog.get_logger("wisp.engine.pool")

DEFAULT_MAX_STREAMS = 100
DEFAULT_IDLE_TIMEOUT = 300.0

# The pool asks for a client context for an identity; None means its certificate is not there
# yet, and `on_missing_certificate(identity, retry)` gets it (asynchronously) and calls retry().
ContextSource = Callable[[SpiffeId], ssl.SSLContext | None]
SocketFactory = Callable[[tuple[str, int], str | None], socket.socket]
OnStream = Callable[[StreamEnd | None, str | None], None]


class _Dial:
    """A dial under way for one key, and the requests waiting for it."""

    __slots__ = ("waiters",)

    def __init__(self) -> None:
        self.waiters: list[tuple[list[tuple[bytes, bytes]], OnStream]] = []


class Pool:
    def __init__(self, loop: Loop, contexts: ContextSource, socket_factory: SocketFactory, *,
                 on_missing_certificate: Callable[[SpiffeId, Callable[[], None]], None] | None = None,
                 max_streams: int = DEFAULT_MAX_STREAMS, idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 connect_timeout: float = 10.0) -> None:
        self.loop = loop
        self._contexts = contexts
        self._socket_factory = socket_factory
        self._on_missing_certificate = on_missing_certificate
        self.max_streams = max_streams
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self._conns: dict[PoolKey, list[ClientConnection]] = {}
        self._dials: dict[PoolKey, _Dial] = {}
        self.dials = 0
        self.closed = False
        self._evictor = loop.call_later(min(5.0, max(0.05, idle_timeout / 4)), self._evict_tick)

    def connections(self, key: PoolKey | None = None) -> list[ClientConnection]:
        if key is not None:
            return list(self._conns.get(key, ()))
        return [c for conns in self._conns.values() for c in conns]

    def connect(self, key: PoolKey, headers: list[tuple[bytes, bytes]], on_stream: OnStream) -> None:
        """Open a CONNECT stream to `key.dst`; `on_stream(stream, None)` once the peer answered
        200, else `on_stream(None, reason)`."""
        if self.closed:
            on_stream(None, "the pod's proxy is stopping")
            return
        conn = self._available(key)
        if conn is not None:
            _open(conn, headers, on_stream)
            return
        dial = self._dials.get(key)
        if dial is None:
            dial = self._dials[key] = _Dial()
            dial.waiters.append((headers, on_stream))
            self._dial(key, dial)
        else:
            dial.waiters.append((headers, on_stream))

    def _available(self, key: PoolKey) -> ClientConnection | None:
        for conn in self._conns.get(key, ()):
            if conn.has_room(self.max_streams):
                return conn
        return None

    def _dial(self, key: PoolKey, dial: _Dial) -> None:
        ctx = self._contexts(key.src_identity)
        if ctx is None:
            if self._on_missing_certificate is None:
                self._dial_failed(key, dial, f"no certificate for {key.src_identity}")
                return

            def retry() -> None:
                if self.closed:
                    self._dial_failed(key, dial, "the pod's proxy is stopping")
                elif self._contexts(key.src_identity) is None:
                    self._dial_failed(key, dial, f"no certificate for {key.src_identity}")
                else:
                    self._dial(key, dial)

            self._on_missing_certificate(key.src_identity, retry)
            return
        where = f"{key.dst[0]}:{key.dst[1]}"
        try:
            sock = self._socket_factory(key.dst, key.src_ip)
        except OSError as exc:
            self._dial_failed(key, dial, f"cannot reach HBONE peer {where}: {exc.strerror or exc}")
            return
        deadline = time.monotonic() + self.connect_timeout

        def connected(raw: socket.socket) -> None:
            Handshake(self.loop, raw, ctx, server_side=False, timeout=max(0.1, deadline - time.monotonic()),
                      on_done=handshaken, on_error=lambda reason: self._dial_failed(key, dial, f"HBONE peer {where}: {reason}"))

        def handshaken(handshake: Handshake) -> None:
            transport = handshake.transport
            problem = check_peer(transport.tls, where, key.dst_identities)
            if problem is not None:
                transport.close()
                self._dial_failed(key, dial, problem)
                return
            presented = spiffe_ids_of_tls(transport.tls)
            conn = ClientConnection(
                self.loop, transport, local=handshake.local, peer=handshake.peer,
                peer_identity=presented[0] if presented else None,
                on_closed=lambda c: self._forget(key, c),
            )
            self.dials += 1
            if self.closed:
                conn.close("the pod's proxy is stopping")
            self._conns.setdefault(key, []).append(conn)
            self._dials.pop(key, None)
            for headers, on_stream in dial.waiters:
                target = conn if conn.has_room(self.max_streams) else self._available(key)
                if target is None:
                    self.connect(key, headers, on_stream)
                else:
                    _open(target, headers, on_stream)

        Connect(self.loop, sock, key.dst, timeout=self.connect_timeout, on_done=connected,
                on_error=lambda reason: self._dial_failed(key, dial, f"cannot reach HBONE peer {where}: {reason}"))

    def _dial_failed(self, key: PoolKey, dial: _Dial, reason: str) -> None:
        if self._dials.get(key) is dial:
            del self._dials[key]
        waiters, dial.waiters = dial.waiters, []
        for _, on_stream in waiters:
            on_stream(None, reason)

    def _forget(self, key: PoolKey, conn: HboneConnection) -> None:
        conns = self._conns.get(key)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._conns[key]

    def close_to(self, host: str, reason: str = "destination went away") -> int:
        """Close every pooled connection to `host` (any port); returns how many."""
        closed = 0
        for key, conns in list(self._conns.items()):
            if key.dst[0] != host:
                continue
            for conn in list(conns):
                conn.close(reason)
                closed += 1
            self._conns.pop(key, None)
        return closed

    def _evict_tick(self) -> None:
        if self.closed:
            return
        self.evict()
        self._evictor = self.loop.call_later(min(5.0, max(0.05, self.idle_timeout / 4)), self._evict_tick)

    def evict(self) -> None:
        """Close drained GOAWAY'd connections and ones idle too long."""
        now = time.monotonic()
        for conns in list(self._conns.values()):
            for conn in list(conns):
                if not conn.streams and (conn.goaway_received or now - conn.last_active >= self.idle_timeout):
                    conn.close("drained after GOAWAY" if conn.goaway_received else "idle")

    def close(self, reason: str = "pool closed") -> None:
        self.closed = True
        self._evictor.cancel()
        for conns in list(self._conns.values()):
            for conn in list(conns):
                conn.close(reason)
        self._conns.clear()
        for key, dial in list(self._dials.items()):
            self._dial_failed(key, dial, reason)


def _open(conn: ClientConnection, headers: list[tuple[bytes, bytes]], on_stream: OnStream) -> None:
    def answered(stream: StreamEnd, status: int, reason: str) -> None:
        if status == 200:
            on_stream(stream, None)
            return
        if status:
            stream.abort("refused")
            detail = f": {reason}" if reason else ""
            on_stream(None, f"CONNECT refused with status {status}{detail}")
        else:
            on_stream(None, reason)

    try:
        conn.open_stream(headers, answered)
    except Exception as exc:  # the codec refused: stream limit or GOAWAY raced us
        on_stream(None, f"cannot open a stream: {exc}")
