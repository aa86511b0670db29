"""Upstream: which endpoint serves a request, and the stream to it.

Endpoint choice for requests is `waypoint.balance` (the app's `Balancer`: DestinationRule policy,
peak EWMA, outlier ejection, connection pools, locality; docs/load-balancing.md).
`choose_endpoint` is the plain choice tests and tools use without it: among the HEALTHY workloads
that list the backend Service (`WaypointConfig.endpoints`, keyed "ns/hostname" as
`Workload.services` is), the one with the fewest requests in flight (`inflight`, when given) of two
drawn at random, at its target port for the Service port (the workload's own mapping, else the
Service's). None when the Service has no such port or no healthy workload.

Streams (`Upstreams.open`): to an HBONE workload, a CONNECT through the waypoint's pool
(wisp.engine.pool) to `<pod ip>:15008` with authority `<pod ip>:<target port>`, presenting the
waypoint's own certificate and expecting the workload's identity (the destination ztunnel checks
the waypoint against its L4 policy); to a workload outside the mesh, plain TCP. Either way the
caller gets a splice end (`on_stream(end, None)`) or the reason it could not (`on_stream(None,
reason)`), later, on the loop.

HTTP/1.1 keep-alive reuse is `Http1Pool` (waypoint/http1.py): idle HTTP/1.1 connections per
endpoint over these streams.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable

import structlog

from wisp import sockets
from wisp.engine.hbone import StreamEnd
from wisp.engine.loop import Loop
from wisp.engine.pool import Pool, PoolKey
from wisp.engine.splice import TcpEnd
from wisp.engine.tls import Connect
from wisp.hbone.headers import connect_headers
from wisp.identity import SpiffeId
from wisp.model import Service

from .config import Endpoint, WaypointConfig, service_key, target_port

log = structlog.get_logger("waypoint.upstream")

HBONE_PORT = 15008
CONNECT_TIMEOUT = 10.0

OnStream = Callable[[object | None, str | None], None]


def choose_endpoint(config: WaypointConfig, service: Service, port: int, rng: random.Random,
                    inflight: dict[str, int] | None = None) -> Endpoint | None:
    candidates = config.endpoints.get(service_key(service), ())
    if not candidates:
        return None
    if len(candidates) == 1:
        picks = candidates
    else:
        first, second = rng.sample(candidates, 2)
        if inflight:
            a = inflight.get(first[0].addresses[0], 0)
            b = inflight.get(second[0].addresses[0], 0)
            picks = (second,) if b < a else (first,)
        else:
            picks = (first,)
    workload, ports = picks[0]
    target = target_port(service, ports, port)
    if target is None:
        return None
    cache = config.endpoint_cache
    key = (id(workload), target)
    endpoint = cache.get(key)
    if endpoint is None:
        identity = SpiffeId.parse(workload.identity())
        endpoint = cache[key] = Endpoint(workload.addresses[0], target, identity,
                                         workload.tunnel_protocol == "HBONE", workload)
    return endpoint


def _socket_factory(address: tuple[str, int], source_ip: str | None) -> socket.socket:
    return sockets.new_tcp_socket(address[0])


class Upstreams:
    """Opens streams to endpoints for every protocol shell; owns the waypoint's HBONE pool."""

    def __init__(self, loop: Loop, identity: SpiffeId, pool: Pool, *,
                 socket_factory: Callable[[tuple[str, int], str | None], socket.socket] = _socket_factory,
                 hbone_port: int = HBONE_PORT) -> None:
        self.loop = loop
        self.identity = identity
        self.pool = pool
        self._socket_factory = socket_factory
        self.hbone_port = hbone_port

    def open(self, endpoint: Endpoint, on_stream: OnStream) -> None:
        if endpoint.hbone:
            self._open_hbone(endpoint, on_stream)
        else:
            self._open_tcp(endpoint, on_stream)

    def _open_hbone(self, endpoint: Endpoint, on_stream: OnStream) -> None:
        expected = frozenset([endpoint.identity]) if endpoint.identity is not None else frozenset()
        key = PoolKey(self.identity, expected, (endpoint.address, self.hbone_port))
        headers = connect_headers(str(endpoint))

        def answered(stream: StreamEnd | None, error: str | None) -> None:
            on_stream(stream, None if stream is not None else (error or "HBONE stream refused"))

        self.pool.connect(key, headers, answered)

    def _open_tcp(self, endpoint: Endpoint, on_stream: OnStream) -> None:
        try:
            sock = self._socket_factory((endpoint.address, endpoint.port), None)
        except OSError as exc:
            reason = f"cannot reach {endpoint}: {exc.strerror or exc}"
            self.loop.call_soon(lambda: on_stream(None, reason))
            return
        Connect(self.loop, sock, (endpoint.address, endpoint.port), timeout=CONNECT_TIMEOUT,
                on_done=lambda s: on_stream(TcpEnd(self.loop, s, upstream=False), None),
                on_error=lambda reason: on_stream(None, reason))
