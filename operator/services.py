"""Kubernetes Services -> model Services, and the index pods use to find theirs.

A Service's hostname is ``<name>.<ns>.svc.<domain suffix>``; its VIPs are its
cluster IPs (headless "None" gives none); its ports keep numeric target ports
and leave named ones as 0, resolved per workload against the pod's container
ports (Istio's rule). ExternalName Services have no workloads behind them and
are not part of the ambient model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from wisp.model import LoadBalancing, PortMapping, Service
from wisp_operator.cluster import MeshSettings
from wisp.kube import ObjectId, annotations, dicts, get, labels, string, string_map, strings
from wisp_operator.selectors import is_subset
from wisp_operator.waypoints import TRAFFIC_SERVICE, WaypointBinding, WaypointIndex

TRAFFIC_DISTRIBUTION_ANNOTATION = "networking.istio.io/traffic-distribution"
PREFER_CLOSE = ("NETWORK", "REGION", "ZONE", "SUBZONE")

# Istio protocol names (from appProtocol or the port name's prefix) -> ztunnel AppProtocol.
_APP_PROTOCOLS = {
    "http": "HTTP11",
    "http2": "HTTP2",
    "kubernetes.io/h2c": "HTTP2",
    "grpc": "GRPC",
    "kubernetes.io/ws": "HTTP11",
    "kubernetes.io/wss": "",
}


@dataclass(frozen=True, slots=True)
class ServicePort:
    service_port: int
    target_port: int  # 0 when the target is a named port
    target_port_name: str
    app_protocol: str


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What a pod needs to know about a Service that may select it."""

    key: str  # "ns/hostname", the key in Workload.services
    namespace: str
    name: str
    selector: dict[str, str]
    ports: tuple[ServicePort, ...]


@dataclass(frozen=True, slots=True)
class ServiceResult:
    service: Service
    info: ServiceInfo
    binding: WaypointBinding


def service_hostname(name: str, namespace: str, domain_suffix: str) -> str:
    return f"{name}.{namespace}.svc.{domain_suffix}"


def app_protocol(port_name: str, declared: str) -> str:
    """ztunnel's app protocol: the port's appProtocol if set, else its name's prefix."""
    if declared:
        return _APP_PROTOCOLS.get(declared.lower(), "")
    prefix = port_name.split("-", 1)[0].lower()
    return _APP_PROTOCOLS.get(prefix, "") if prefix in ("http", "http2", "grpc") else ""


def convert_service(
    svc: dict[str, Any],
    oid: ObjectId,
    settings: MeshSettings,
    waypoints: WaypointIndex,
    namespace_obj: dict[str, Any] | None,
) -> ServiceResult | None:
    """The model Service for ``svc`` and its waypoint binding; None for ExternalName."""
    if string(svc, "spec.type", oid) == "ExternalName":
        return None
    hostname = service_hostname(oid.name, oid.namespace, settings.domain_suffix)
    ips = strings(svc, "spec.clusterIPs", oid) or [string(svc, "spec.clusterIP", oid)]
    vips = tuple(ip for ip in ips if ip and ip != "None")

    ports: list[ServicePort] = []
    for where, port in dicts(svc, "spec.ports", oid):
        number = get(port, "port", oid, int, None, at=where)
        if number is None:
            raise oid.invalid(f"{where}.port is required")
        target = port.get("targetPort")
        if target is None:
            target_port, target_name = number, ""
        elif isinstance(target, int) and not isinstance(target, bool):
            target_port, target_name = target, ""
        elif isinstance(target, str):
            # The API lets a numeric target port arrive as a string ("8080").
            target_port, target_name = (int(target), "") if target.isdigit() else (0, target)
        else:
            raise oid.invalid(f"{where}.targetPort must be an integer or a port name, got {target!r}")
        proto = app_protocol(string(port, "name", oid, at=where), string(port, "appProtocol", oid, at=where))
        ports.append(ServicePort(number, target_port, target_name, proto))

    binding = waypoints.bind(TRAFFIC_SERVICE, labels(svc, oid), oid.namespace, namespace_obj)
    service = Service(
        name=oid.name,
        namespace=oid.namespace,
        hostname=hostname,
        addresses=vips,
        ports=tuple(PortMapping(p.service_port, p.target_port, p.app_protocol) for p in ports),
        waypoint=binding.address,
        load_balancing=_load_balancing(svc, oid),
    )
    info = ServiceInfo(
        key=f"{oid.namespace}/{hostname}",
        namespace=oid.namespace,
        name=oid.name,
        selector=string_map(svc, "spec.selector", oid),
        ports=tuple(ports),
    )
    return ServiceResult(service, info, binding)


def _load_balancing(svc: dict[str, Any], oid: ObjectId) -> LoadBalancing | None:
    mode = annotations(svc, oid).get(TRAFFIC_DISTRIBUTION_ANNOTATION) or string(
        svc, "spec.trafficDistribution", oid
    )
    if mode == "PreferClose":
        return LoadBalancing(PREFER_CLOSE, "FAILOVER")
    return None


class ServiceIndex:
    """Services by namespace and by one of their selector labels.

    A pod only meets Services of its own namespace that share at least one label
    with it, so matching costs O(pod labels x candidates), not O(all services).
    """

    def __init__(self, infos: Iterable[ServiceInfo]) -> None:
        self._by_anchor: dict[str, dict[tuple[str, str], list[ServiceInfo]]] = {}
        for info in infos:
            if not info.selector:
                continue  # no selector: endpoints are managed by hand, never from pods
            anchor = min(info.selector.items())
            self._by_anchor.setdefault(info.namespace, {}).setdefault(anchor, []).append(info)

    def selecting(self, namespace: str, pod_labels: dict[str, str]) -> list[ServiceInfo]:
        anchors = self._by_anchor.get(namespace)
        if not anchors:
            return []
        found: list[ServiceInfo] = []
        for item in pod_labels.items():
            for info in anchors.get(item, ()):
                if is_subset(info.selector, pod_labels):
                    found.append(info)
        return found


def resolve_ports(info: ServiceInfo, container_ports: dict[str, int]) -> tuple[PortMapping, ...]:
    """A Service's ports for one pod: named target ports looked up in its containers;
    a name the pod does not declare drops that port for this pod (as Istio does)."""
    out = []
    for p in info.ports:
        target = p.target_port
        if p.target_port_name:
            resolved = container_ports.get(p.target_port_name)
            if resolved is None:
                continue
            target = resolved
        out.append(PortMapping(p.service_port, target, p.app_protocol))
    return tuple(out)
