"""Outbound (15001): taking a pod's captured connection where the state routes it.

The decision is one call, `ProxyState.route` (reference §3). This is what follows it, in the
engine's loop: HBONE through the pod's pool (sockets made in the source pod's netns), plain TCP
for NONE destinations and passthrough, then splice. Nothing here awaits; a connection that
cannot be made is reset and counted with the CONNECT flag, and so is one refused because its
destination is bound to a waypoint that cannot take it (fail closed: never sent direct).
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import structlog

from wisp import sockets
from wisp.engine.hbone import StreamEnd
from wisp.engine.pool import PoolKey
from wisp.engine.splice import Splice, TcpEnd
from wisp.hbone.headers import connect_headers
from wisp.model import Workload
from wisp.sockets import format_address

from ..metrics import FLAG_CONNECT, MUTUAL_TLS, UNKNOWN, ConnectionRecord, Peer
from ..state.proxy_state import HBONE, NoHealthyEndpoint, Route, SelfCall, WaypointUnavailable
from . import listeners
from .inputs import PodContext, ProxyInputs

log = structlog.get_logger("ztunnel.outbound")


def baggage_of(workload: Workload | None) -> dict[str, str | None]:
    if workload is None:
        return {}
    kind = workload.workload_type or "pod"
    return {
        "k8s.cluster.name": workload.cluster_id or None,
        "k8s.namespace.name": workload.namespace,
        f"k8s.{kind}.name": workload.workload_name or workload.name,
        "service.name": workload.canonical_name or None,
        "service.version": workload.canonical_revision or None,
    }


def serve(inputs: ProxyInputs, pod: PodContext, sock: socket.socket, peer: tuple[str, int],
          release: Callable[[], None]) -> None:
    """Handle one connection captured on the pod's 15001."""
    dst = sockets.original_dst(sock)
    state = inputs.state.state
    source = pod.workload(state)
    try:
        route = state.route(source, dst)
    except WaypointUnavailable as exc:
        log.warning("outbound connection refused: waypoint unavailable", src=format_address(*peer),
                    dst=format_address(*dst), error=str(exc))
        ConnectionRecord(
            inputs.metrics, direction="outbound", source=Peer(source, pod.identity, peer[0]),
            destination=Peer(exc.workload), service=exc.service, security=MUTUAL_TLS,
            src_addr=format_address(*peer), dst_addr=format_address(*dst),
        ).close(FLAG_CONNECT, str(exc))
        sockets.reset(sock)
        release()
        return
    except (SelfCall, NoHealthyEndpoint) as exc:
        log.warning("outbound connection refused", src=format_address(*peer), dst=format_address(*dst),
                    error=str(exc))
        sockets.reset(sock)
        release()
        return
    record = ConnectionRecord(
        inputs.metrics, direction="outbound",
        source=Peer(source, pod.identity, peer[0]),
        destination=Peer(route.workload, route.destination_identity),
        service=route.service, security=MUTUAL_TLS if route.kind == HBONE else UNKNOWN,
        src_addr=format_address(*peer), dst_addr=format_address(*dst),
        hbone_addr=route.authority if route.kind == HBONE else None,
    )
    loop = inputs.engine.loop
    client = TcpEnd(loop, sock, upstream=True)

    def failed(error: str) -> None:
        log.warning("outbound connect failed", src=format_address(*peer), dst=format_address(*dst),
                    via=route.kind, target=format_address(*route.target), error=error)
        record.close(FLAG_CONNECT, error)
        sockets.reset(sock)
        release()

    def connected(upstream: StreamEnd | TcpEnd) -> None:
        tracked = None

        def done(splice: Splice) -> None:
            inputs.tracker.remove(tracked)
            record.close()
            release()

        splice = Splice(client, upstream, on_done=done)
        record.transfer = splice
        tracked = inputs.tracker.add(splice, owner=pod)
        splice.start()

    if route.kind == HBONE:
        _connect_hbone(pod, route, peer, source, connected, failed)
    else:
        _connect_tcp(inputs, pod, route, connected, failed)


def _connect_hbone(pod: PodContext, route: Route, peer: tuple[str, int], source: Workload | None,
                   connected: Callable[[StreamEnd], None], failed: Callable[[str], None]) -> None:
    headers = connect_headers(
        route.authority, baggage_values=baggage_of(source), client=peer,
        service_host=route.service.hostname if route.service else None,
    )
    key = PoolKey(pod.identity, route.identities, route.target, peer[0])

    def answered(stream: StreamEnd | None, error: str | None) -> None:
        if stream is None:
            failed(error or "HBONE stream refused")
        else:
            connected(stream)

    assert pod.pool is not None, "a pod's handlers run only while its pool is open"
    pod.pool.connect(key, headers, answered)


def _connect_tcp(inputs: ProxyInputs, pod: PodContext, route: Route,
                 connected: Callable[[TcpEnd], None], failed: Callable[[str], None]) -> None:
    loop = inputs.engine.loop
    listeners.connect_in_pod(loop, pod.netns_fd, route.target, on_error=failed,
                             on_done=lambda s: connected(TcpEnd(loop, s, upstream=False)))
