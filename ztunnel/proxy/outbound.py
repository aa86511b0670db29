"""Outbound (15001): taking a pod's captured connection where the state routes it.

The decision is one call, `ProxyState.route` (reference §3). This is the I/O around it: HBONE
through the pod's pool (sockets made in the source pod's netns), plain TCP for NONE
destinations and passthrough, then splice.
"""

from __future__ import annotations

import socket

import structlog
import trio

from wisp import sockets
from wisp.hbone import HboneError, PoolKey, connect_headers
from wisp.identity import SpiffeId
from wisp.model import Workload
from wisp.sockets import format_address

from ..identity import CertificateUnavailable
from ..metrics import FLAG_CONNECT, MUTUAL_TLS, UNKNOWN, ConnectionRecord, Peer
from ..state.proxy_state import HBONE, NoHealthyEndpoint, Route, SelfCall
from . import listeners
from .inputs import PodContext, ProxyInputs
from .splice import reset, splice, tcp_stream

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


async def serve(inputs: ProxyInputs, pod: PodContext, sock: socket.socket, peer: tuple[str, int]) -> None:
    """Handle one connection captured on the pod's 15001."""
    dst = sockets.original_dst(sock)
    state = inputs.state.state
    source = pod.workload(state)
    source_identity = pod.identity
    try:
        route = state.route(source, dst)
    except (SelfCall, NoHealthyEndpoint) as exc:
        log.warning("outbound connection refused", src=format_address(*peer), dst=format_address(*dst), error=str(exc))
        reset(sock)
        return
    record = ConnectionRecord(
        inputs.metrics, direction="outbound",
        source=Peer(source, source_identity, peer[0]),
        destination=Peer(route.workload, route.destination_identity),
        service=route.service, security=MUTUAL_TLS if route.kind == HBONE else UNKNOWN,
        src_addr=format_address(*peer), dst_addr=format_address(*dst),
        hbone_addr=route.authority if route.kind == HBONE else None,
    )
    client = tcp_stream(sock)
    upstream: trio.abc.HalfCloseableStream | None = None
    try:
        try:
            upstream = await _connect(pod, route, peer, source, source_identity)
        except (HboneError, CertificateUnavailable, OSError, trio.TooSlowError) as exc:
            error = str(exc) or type(exc).__name__
            log.warning("outbound connect failed", src=format_address(*peer), dst=format_address(*dst),
                        via=route.kind, target=format_address(*route.target), error=error)
            record.close(FLAG_CONNECT, error)
            reset(client)
            return
        with inputs.tracker.track() as tracked:
            with tracked.scope:
                await splice(client, upstream, record.transfer)
    finally:
        await _close(client)
        if upstream is not None:
            await _close(upstream)
        record.close()


async def _connect(pod: PodContext, route: Route, peer: tuple[str, int], source: Workload | None,
                   source_identity: SpiffeId) -> trio.abc.HalfCloseableStream:
    if route.kind == HBONE:
        headers = connect_headers(
            route.authority, baggage_values=baggage_of(source), client=peer,
            service_host=route.service.hostname if route.service else None,
        )
        key = PoolKey(source_identity, route.identities, route.target, peer[0])
        assert pod.pool is not None, "a pod's handlers run only while its pool is open"
        return await pod.pool.connect(key, headers, timeout=listeners.CONNECT_TIMEOUT)
    upstream = await listeners.connect_in_pod(pod.netns_fd, route.target, timeout=listeners.CONNECT_TIMEOUT)
    return tcp_stream(upstream)


async def _close(stream: trio.abc.AsyncResource) -> None:
    with trio.CancelScope(shield=True):
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
