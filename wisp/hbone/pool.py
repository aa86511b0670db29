"""A pool of HBONE connections, keyed as ztunnel keys it.

Key = (source identity, expected destination identities, destination address, source IP). A
connection carries at most min(100, peer MAX_CONCURRENT_STREAMS) streams; one dial at a time per
key; connections that saw GOAWAY or an error leave the pool; idle ones are closed after a while.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
import trio

from wisp.identity import CertBundle, SpiffeId

from .client import SocketFactory, default_socket_factory, dial, open_stream
from .connection import CLIENT_SETTINGS, H2Settings, HboneConnection, HboneStream
from .tls import ContextCache

log = structlog.get_logger("wisp.hbone.pool")

DEFAULT_MAX_STREAMS = 100
DEFAULT_IDLE_TIMEOUT = 300.0


@dataclass(slots=True, frozen=True)
class PoolKey:
    src_identity: SpiffeId
    dst_identities: frozenset[SpiffeId]
    dst: tuple[str, int]
    src_ip: str | None = None


class HbonePool:
    """Use as `async with HbonePool(certs) as pool: stream = await pool.connect(key, headers)`."""

    def __init__(
        self,
        certs: Callable[[SpiffeId], Awaitable[CertBundle]],
        *,
        max_streams: int = DEFAULT_MAX_STREAMS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        socket_factory: SocketFactory = default_socket_factory,
        settings: H2Settings = CLIENT_SETTINGS,
        connect_timeout: float = 10.0,
    ) -> None:
        self._certs = certs
        self.max_streams = max_streams
        self.idle_timeout = idle_timeout
        self._socket_factory = socket_factory
        self._settings = settings
        self._connect_timeout = connect_timeout
        self._contexts = ContextCache()
        self._conns: dict[PoolKey, list[HboneConnection]] = {}
        self._dial_locks: dict[PoolKey, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None
        self.dials = 0

    async def __aenter__(self) -> HbonePool:
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        self._nursery.start_soon(self._evict_loop)
        return self

    async def __aexit__(self, *exc_info) -> bool | None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        return await self._nursery_manager.__aexit__(*exc_info)

    def connections(self, key: PoolKey | None = None) -> list[HboneConnection]:
        if key is not None:
            return list(self._conns.get(key, ()))
        return [c for conns in self._conns.values() for c in conns]

    async def connect(
        self, key: PoolKey, headers: list[tuple[bytes, bytes]], *, timeout: float = 10.0
    ) -> HboneStream:
        """A CONNECT stream to `key.dst`, reusing a pooled connection when one has room."""
        conn = self._available(key)
        if conn is None:
            lock = self._dial_locks.setdefault(key, trio.Lock())
            async with lock:
                conn = self._available(key)
                if conn is None:
                    conn = await self._dial(key)
        return await open_stream(conn, headers, timeout=timeout)

    def _available(self, key: PoolKey) -> HboneConnection | None:
        for conn in self._conns.get(key, ()):
            if conn.accepting_streams and len(conn.streams) < min(self.max_streams, conn.peer_max_streams):
                return conn
        return None

    async def _dial(self, key: PoolKey) -> HboneConnection:
        assert self._nursery is not None, "use HbonePool as an async context manager"
        bundle = await self._certs(key.src_identity)
        conn = await dial(
            self._nursery, key.dst, bundle=bundle, expected_identities=key.dst_identities,
            source_ip=key.src_ip, socket_factory=self._socket_factory, settings=self._settings,
            contexts=self._contexts, timeout=self._connect_timeout,
        )
        self.dials += 1
        self._conns.setdefault(key, []).append(conn)
        return conn

    def close_to(self, host: str, reason: str = "destination went away") -> int:
        """Close every pooled connection to `host` (any port); returns how many.

        For when the control plane says the workload at that address is gone or replaced: a
        peer whose namespace vanished never resets its connections, and streams opened on them
        would hang until keepalive notices.
        """
        closed = 0
        for key, conns in list(self._conns.items()):
            if key.dst[0] != host:
                continue
            for conn in conns:
                conn.close(reason)
                closed += 1
            del self._conns[key]
            self._dial_locks.pop(key, None)
        return closed

    async def _evict_loop(self) -> None:
        interval = max(0.05, min(self.idle_timeout / 4, 5.0))
        while True:
            await trio.sleep(interval)
            self.evict()

    def evict(self) -> None:
        """Drop failed connections, close drained GOAWAY'd ones and ones idle too long."""
        now = trio.current_time()
        for key, conns in list(self._conns.items()):
            keep = []
            for conn in conns:
                if not conn.is_open:
                    continue
                if not conn.streams and (
                    conn.goaway_received or now - conn.last_active >= self.idle_timeout
                ):
                    conn.close("idle" if not conn.goaway_received else "drained after GOAWAY")
                    continue
                keep.append(conn)
            if keep:
                self._conns[key] = keep
            else:
                del self._conns[key]
                self._dial_locks.pop(key, None)
