"""Outbound (15001): where a pod's captured connection goes, and taking it there.

`plan` is the decision of reference §3, pure over ProxyState: service VIP → waypoint or a
healthy endpoint with the right port; pod IP → that workload (or its waypoint); unknown →
passthrough. `serve` is the I/O shell: HBONE through the pod's pool (sockets made in the
source pod's netns), plain TCP for NONE destinations, and splice.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
import trio

from wisp import sockets
from wisp.sockets import format_address
from wisp.hbone import HboneError, PoolKey, connect_headers
from wisp.identity import SpiffeId
from wisp.model import GatewayAddress, Service, Workload

from . import listeners
from .identity import CertificateUnavailable
from .metrics import FLAG_CONNECT, MUTUAL_TLS, UNKNOWN, ConnectionRecord, Peer
from .splice import reset, splice, tcp_stream
from .state import NoHealthyEndpoint, ProxyState, service_identities, workload_identity

if TYPE_CHECKING:
    from .proxy import PodProxy

log = structlog.get_logger("ztunnel.outbound")

HBONE = "hbone"
DIRECT = "direct"
PASSTHROUGH = "passthrough"


class SelfCall(ValueError):
    """The destination is one of ztunnel's own ports on loopback."""


@dataclass(slots=True, frozen=True)
class Route:
    kind: str  # HBONE | DIRECT | PASSTHROUGH
    target: tuple[str, int]  # what we connect to: peer's 15008, the endpoint, or the original dst
    authority: str | None = None  # HBONE :authority
    workload: Workload | None = None
    service: Service | None = None
    identities: frozenset[SpiffeId] = frozenset()
    waypoint: bool = False



def plan(state: ProxyState, source: Workload | None, dst: tuple[str, int],
         rng: random.Random | None = None) -> Route:
    """Reference §3. Raises SelfCall, or NoHealthyEndpoint for a known service without one."""
    ip, port = dst
    if ipaddress.ip_address(ip).is_loopback and port in listeners.ILLEGAL_PORTS:
        raise SelfCall(f"refusing to connect to ztunnel's own port {format_address(ip, port)}")
    source_ns = source.namespace if source else None
    service = state.service_by_vip(ip, source_ns)
    if service is not None:
        if service.waypoint is not None and not _is_waypoint(state, source, service.waypoint):
            return _to_waypoint(state, service.waypoint, dst, service, rng)
        endpoint = state.pick_endpoint(service, port, rng)
        workload, target_ip, target_port = endpoint.workload, endpoint.ip, endpoint.port
    else:
        workload = state.workload_by_ip(ip)
        if workload is None:
            return Route(PASSTHROUGH, dst)
        if workload.waypoint is not None and not _is_waypoint(state, source, workload.waypoint):
            return _to_waypoint(state, workload.waypoint, dst, None, rng, workload)
        target_ip, target_port = ip, port
    if workload.tunnel_protocol == "HBONE":
        identities = set(service_identities(service))
        own = workload_identity(workload)
        if own is not None:
            identities.add(own)
        return Route(HBONE, (target_ip, listeners.INBOUND_PORT), format_address(target_ip, target_port),
                     workload, service, frozenset(identities))
    return Route(DIRECT, (target_ip, target_port), None, workload, service)


def _waypoint_workloads(state: ProxyState, gateway: GatewayAddress) -> list[Workload]:
    service = state.service_by_vip(gateway.address)
    if service is not None:
        return [e.workload for e in state.service_endpoints(service, gateway.hbone_mtls_port)]
    workload = state.workload_by_ip(gateway.address)
    return [workload] if workload is not None else []


def _is_waypoint(state: ProxyState, source: Workload | None, gateway: GatewayAddress) -> bool:
    if source is None:
        return False
    if gateway.address in source.addresses:
        return True
    service = state.service_by_vip(gateway.address)
    return service is not None and f"{service.namespace}/{service.hostname}" in source.services


def _to_waypoint(state: ProxyState, gateway: GatewayAddress, dst: tuple[str, int],
                 service: Service | None, rng: random.Random | None,
                 workload: Workload | None = None) -> Route:
    candidates = [w for w in _waypoint_workloads(state, gateway) if w.status == "HEALTHY" and w.addresses]
    if not candidates:
        raise NoHealthyEndpoint(f"waypoint {gateway.address} has no healthy workload")
    waypoint = (rng or random).choices(candidates, [max(w.capacity, 1) for w in candidates])[0]
    identity = workload_identity(waypoint)
    return Route(HBONE, (waypoint.addresses[0], gateway.hbone_mtls_port), format_address(*dst),
                 workload, service, frozenset([identity]) if identity else frozenset(), waypoint=True)


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


async def serve(proxy: PodProxy, sock: socket.socket, peer: tuple[str, int]) -> None:
    """Handle one connection captured on the pod's 15001."""
    ztunnel = proxy.ztunnel
    dst = sockets.original_dst(sock)
    state = ztunnel.state
    source = proxy.workload(state)
    source_identity = proxy.identity
    try:
        route = plan(state, source, dst)
    except (SelfCall, NoHealthyEndpoint) as exc:
        log.warning("outbound connection refused", src=format_address(*peer), dst=format_address(*dst), error=str(exc))
        reset(sock)
        return
    dst_identity = next(iter(sorted(route.identities)), None) if route.kind == HBONE else (
        workload_identity(route.workload) if route.workload else None)
    record = ConnectionRecord(
        ztunnel.metrics, direction="outbound",
        source=Peer(source, source_identity, peer[0]),
        destination=Peer(route.workload, dst_identity),
        service=route.service, security=MUTUAL_TLS if route.kind == HBONE else UNKNOWN,
        src_addr=format_address(*peer), dst_addr=format_address(*dst),
        hbone_addr=route.authority if route.kind == HBONE else None,
    )
    client = tcp_stream(sock)
    upstream: trio.abc.HalfCloseableStream | None = None
    try:
        try:
            upstream = await _connect(proxy, route, peer, source, source_identity)
        except (HboneError, CertificateUnavailable, OSError, trio.TooSlowError) as exc:
            error = str(exc) or type(exc).__name__
            log.warning("outbound connect failed", src=format_address(*peer), dst=format_address(*dst),
                        via=route.kind, target=format_address(*route.target), error=error)
            record.close(FLAG_CONNECT, error)
            reset(client)
            return
        with ztunnel.tracker.track() as tracked:
            with tracked.scope:
                await splice(client, upstream, record.transfer)
    finally:
        await _close(client)
        if upstream is not None:
            await _close(upstream)
        record.close()


async def _connect(proxy: PodProxy, route: Route, peer: tuple[str, int], source: Workload | None,
                   source_identity: SpiffeId) -> trio.abc.HalfCloseableStream:
    if route.kind == HBONE:
        headers = connect_headers(
            route.authority, baggage_values=baggage_of(source), client=peer,
            service_host=route.service.hostname if route.service else None,
        )
        key = PoolKey(source_identity, route.identities, route.target, peer[0])
        return await proxy.pool.connect(key, headers, timeout=listeners.CONNECT_TIMEOUT)
    upstream = await listeners.connect_in_pod(proxy.netns_fd, route.target, timeout=listeners.CONNECT_TIMEOUT)
    return tcp_stream(upstream)


async def _close(stream: trio.abc.AsyncResource) -> None:
    with trio.CancelScope(shield=True):
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
