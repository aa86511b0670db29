"""What the control plane told us, indexed for the data path, and the outbound decision over it (pure).

`ProxyState` is built once per config version from a ModelSnapshot and never changes: lookups
on the hot path are dict reads, and a connection keeps the state it started with. Indexes:
IP → workload, VIP → services, service → endpoints (workloads that list it), policies by
namespace and key.

`ProxyState.route` is reference §3 in one call: service VIP → waypoint or a healthy endpoint
with the right port; pod IP → that workload (or its waypoint); unknown → passthrough; with the
identities the peer may present. A destination bound to a waypoint that cannot take it (the
control plane's unusable GatewayAddress for a missing or unready waypoint, or no healthy
waypoint instance) raises WaypointUnavailable: the connection is refused, never sent direct
past the waypoint's L7 policy (fail closed, issue 11).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass

from wisp.identity import InvalidSpiffeId, SpiffeId
from wisp.model import Authorization, GatewayAddress, ModelSnapshot, PortMapping, Service, Workload
from wisp.sockets import format_address

from ..config import ILLEGAL_PORTS, INBOUND_PORT

HBONE = "hbone"
DIRECT = "direct"
PASSTHROUGH = "passthrough"


class NoHealthyEndpoint(LookupError):
    """A known service has no healthy endpoint that serves the requested port."""


class WaypointUnavailable(NoHealthyEndpoint):
    """The destination is bound to a waypoint that is missing, not ready or has no healthy instance."""

    def __init__(self, message: str, service: Service | None = None, workload: Workload | None = None) -> None:
        super().__init__(message)
        self.service = service
        self.workload = workload


class SelfCall(ValueError):
    """The destination is one of ztunnel's own ports on loopback."""


@dataclass(slots=True, frozen=True)
class Route:
    """Where one outbound connection goes (reference §3)."""

    kind: str  # HBONE | DIRECT | PASSTHROUGH
    target: tuple[str, int]  # what we connect to: peer's 15008, the endpoint, or the original dst
    authority: str | None = None  # HBONE :authority
    workload: Workload | None = None
    service: Service | None = None
    identities: frozenset[SpiffeId] = frozenset()  # what the HBONE peer may present
    waypoint: bool = False

    @property
    def destination_identity(self) -> SpiffeId | None:
        """The identity telemetry reports for the destination."""
        if self.kind == HBONE:
            return next(iter(sorted(self.identities)), None)
        return workload_identity(self.workload) if self.workload else None


@dataclass(slots=True, frozen=True)
class Endpoint:
    workload: Workload
    ip: str
    port: int


class ProxyState:
    """An immutable, indexed view of one config version."""

    def __init__(self, snapshot: ModelSnapshot | None = None) -> None:
        snapshot = snapshot or ModelSnapshot()
        self.snapshot = snapshot
        self.workloads_by_ip: dict[str, Workload] = {}
        self.workloads_by_name: dict[tuple[str, str], Workload] = {}
        self.services_by_vip: dict[str, list[Service]] = {}
        self.services_by_host: dict[str, list[Service]] = {}
        self.endpoints: dict[str, list[Workload]] = {}
        self.policies_by_namespace: dict[str, list[Authorization]] = {}
        self.global_policies: list[Authorization] = []
        self.policies_by_key: dict[str, Authorization] = {}

        for workload in sorted(snapshot.workloads.values(), key=lambda w: w.uid):
            for ip in workload.addresses:
                # Two workloads claiming one IP (a pod replaced in place): the healthy one wins.
                current = self.workloads_by_ip.get(ip)
                if current is None or (current.status != "HEALTHY" and workload.status == "HEALTHY"):
                    self.workloads_by_ip[ip] = workload
            self.workloads_by_name[(workload.namespace, workload.name)] = workload
            for service_key in workload.services:
                self.endpoints.setdefault(service_key, []).append(workload)
        for key, service in sorted(snapshot.services.items()):
            for vip in service.addresses:
                self.services_by_vip.setdefault(vip, []).append(service)
            self.services_by_host.setdefault(service.hostname, []).append(service)
        for key, policy in sorted(snapshot.authorizations.items()):
            self.policies_by_key[key] = policy
            if policy.scope == "GLOBAL":
                self.global_policies.append(policy)
            elif policy.scope == "NAMESPACE":
                self.policies_by_namespace.setdefault(policy.namespace, []).append(policy)

    # -- workloads --------------------------------------------------------------------------------
    def workload_by_ip(self, ip: str) -> Workload | None:
        return self.workloads_by_ip.get(ip)

    def local_workload(self, namespace: str, name: str, ip: str | None = None) -> Workload | None:
        """A pod ztunnel serves, by (namespace, name) from ZDS, else by its IP."""
        workload = self.workloads_by_name.get((namespace, name))
        if workload is None and ip:
            workload = self.workloads_by_ip.get(ip)
        return workload

    # -- services ---------------------------------------------------------------------------------
    def service_by_vip(self, ip: str, prefer_namespace: str | None = None) -> Service | None:
        """The service behind a VIP; when several share it, the source's namespace wins."""
        services = self.services_by_vip.get(ip)
        if not services:
            return None
        if prefer_namespace is not None:
            for service in services:
                if service.namespace == prefer_namespace:
                    return service
        return services[0]

    def service_by_host(self, hostname: str, prefer_namespace: str | None = None) -> Service | None:
        services = self.services_by_host.get(hostname)
        if not services:
            return None
        for service in services:
            if service.namespace == prefer_namespace:
                return service
        return services[0]

    def service_endpoints(self, service: Service, port: int) -> list[Endpoint]:
        """Healthy endpoints of `service` for service port `port`, with their target ports."""
        key = service_key(service)
        mapping = _port(service.ports, port)
        result = []
        for workload in self.endpoints.get(key, ()):
            if workload.status != "HEALTHY" or not workload.addresses:
                continue
            target = target_port(workload, key, mapping, port)
            if target:
                result.append(Endpoint(workload, workload.addresses[0], target))
        return result

    def pick_endpoint(self, service: Service, port: int, rng: random.Random | None = None) -> Endpoint:
        """A healthy endpoint, random and weighted by capacity; NoHealthyEndpoint if none."""
        candidates = self.service_endpoints(service, port)
        if not candidates:
            raise NoHealthyEndpoint(
                f"service {service.namespace}/{service.hostname} has no healthy endpoint for port {port}"
            )
        if len(candidates) == 1:
            return candidates[0]
        weights = [max(e.workload.capacity, 1) for e in candidates]
        return (rng or random).choices(candidates, weights)[0]

    # -- routing ----------------------------------------------------------------------------------
    def route(self, source: Workload | None, dst: tuple[str, int], rng: random.Random | None = None) -> Route:
        """Reference §3 for a connection from `source` to `dst`. Raises SelfCall,
        NoHealthyEndpoint for a known service without one, or WaypointUnavailable."""
        ip, port = dst
        if port in ILLEGAL_PORTS and ipaddress.ip_address(ip).is_loopback:
            raise SelfCall(f"refusing to connect to ztunnel's own port {format_address(ip, port)}")
        source_ns = source.namespace if source else None
        service = self.service_by_vip(ip, source_ns)
        if service is not None:
            if service.waypoint is not None and not self._is_waypoint(source, service.waypoint):
                return self._to_waypoint(service.waypoint, dst, service, rng)
            endpoint = self.pick_endpoint(service, port, rng)
            workload, target_ip, target_port = endpoint.workload, endpoint.ip, endpoint.port
        else:
            workload = self.workload_by_ip(ip)
            if workload is None:
                return Route(PASSTHROUGH, dst)
            if workload.waypoint is not None and not self._is_waypoint(source, workload.waypoint):
                return self._to_waypoint(workload.waypoint, dst, None, rng, workload)
            target_ip, target_port = ip, port
        if workload.tunnel_protocol == "HBONE":
            identities = set(service_identities(service))
            own = workload_identity(workload)
            if own is not None:
                identities.add(own)
            return Route(HBONE, (target_ip, INBOUND_PORT), format_address(target_ip, target_port),
                         workload, service, frozenset(identities))
        return Route(DIRECT, (target_ip, target_port), None, workload, service)

    def _waypoint_workloads(self, gateway: GatewayAddress) -> list[Workload]:
        if not gateway.usable:
            return []
        service = self.service_by_vip(gateway.address)
        if service is not None:
            return [e.workload for e in self.service_endpoints(service, gateway.hbone_mtls_port)]
        workload = self.workload_by_ip(gateway.address)
        return [workload] if workload is not None else []

    def _is_waypoint(self, source: Workload | None, gateway: GatewayAddress) -> bool:
        if source is None or not gateway.usable:
            return False
        if gateway.address in source.addresses:
            return True
        service = self.service_by_vip(gateway.address)
        return service is not None and f"{service.namespace}/{service.hostname}" in source.services

    def _to_waypoint(self, gateway: GatewayAddress, dst: tuple[str, int], service: Service | None,
                     rng: random.Random | None, workload: Workload | None = None) -> Route:
        what = (f"service {service.namespace}/{service.hostname}" if service is not None
                else f"workload {workload.namespace}/{workload.name}" if workload is not None else format_address(*dst))
        if not gateway.usable:
            raise WaypointUnavailable(f"{what} is bound to waypoint {gateway.gateway or '(unnamed)'}, which is "
                                      "missing or not ready; refusing rather than bypassing it", service, workload)
        candidates = [w for w in self._waypoint_workloads(gateway) if w.status == "HEALTHY" and w.addresses]
        if not candidates:
            raise WaypointUnavailable(f"{what} is bound to waypoint {gateway.gateway or gateway.address}, which has "
                                      "no healthy instance; refusing rather than bypassing it", service, workload)
        waypoint = (rng or random).choices(candidates, [max(w.capacity, 1) for w in candidates])[0]
        identity = workload_identity(waypoint)
        return Route(HBONE, (waypoint.addresses[0], gateway.hbone_mtls_port), format_address(*dst),
                     workload, service, frozenset([identity]) if identity else frozenset(), waypoint=True)

    # -- policies ---------------------------------------------------------------------------------
    def policies_for(self, workload: Workload) -> list[Authorization]:
        """GLOBAL policies, the workload namespace's, and the selector policies it lists."""
        result = list(self.global_policies)
        result.extend(self.policies_by_namespace.get(workload.namespace, ()))
        for key in workload.authorization_policies:
            policy = self.policies_by_key.get(key)
            if policy is not None and policy.scope == "WORKLOAD_SELECTOR":
                result.append(policy)
        return result


def service_key(service: Service) -> str:
    """How workloads name a service in their `services` map."""
    return f"{service.namespace}/{service.hostname}"


def _port(ports: Iterable[PortMapping], port: int) -> PortMapping | None:
    for mapping in ports:
        if mapping.service_port == port:
            return mapping
    return None


def target_port(workload: Workload, key: str, service_mapping: PortMapping | None, port: int) -> int:
    """The workload's own port map first, then the service's target port; 0 when unresolved.

    A service without that port at all forwards to the same port, as a headless service would.
    """
    own = _port(workload.services.get(key, ()), port)
    if own is not None and own.target_port:
        return own.target_port
    if service_mapping is None:
        return port
    return service_mapping.target_port


def workload_identity(workload: Workload) -> SpiffeId | None:
    try:
        return SpiffeId(workload.trust_domain, workload.namespace, workload.service_account)
    except InvalidSpiffeId:
        return None


def service_identities(service: Service | None) -> list[SpiffeId]:
    """The service's subject_alt_names that are SPIFFE IDs (others cannot be verified by us)."""
    if service is None:
        return []
    ids = []
    for san in service.subject_alt_names:
        try:
            ids.append(SpiffeId.parse(san))
        except InvalidSpiffeId:
            continue
    return ids
