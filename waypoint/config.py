"""What one waypoint is told, compiled once per config version into what each request reads.

`WaypointSettings` is the process's command line (who it is, where the control plane is, its
ports). `compile_config(snapshot, gateway)` turns a `wisp.model.ModelSnapshot` — every Workload
and Service, plus the `ConfigObject`s (Gateway, HTTPRoute, GRPCRoute, AuthorizationPolicy,
RequestAuthentication, Telemetry) the control plane sent this waypoint — into a `WaypointConfig`:
the route table (`waypoint.route.compile_table`), the L7 policies
(`waypoint.authz.compile_policies`), the JWT rules (`waypoint.authn.compile_authn`), tracing
(`waypoint.tracing.compile_tracing`), the DestinationRules' traffic policies by Service
(`waypoint.balance.rules.compile_destination_rules`), and the
indexes the pipeline looks endpoints up in (Service by VIP and by name, the HEALTHY workloads
of each Service, the workload at each address). Nothing here does I/O; a config that cannot be
read in part (one route or policy object that is not JSON) loses that part and says so in
`notes`, never the rest.

The control plane may send routes and policies that concern other waypoints (it is not
required to filter): the route table only serves Services the client dialled through us, and
the policies apply by their `targetRefs` (`waypoint.authz.targets`), so extra objects do no harm.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from wisp.identity import DEFAULT_TRUST_DOMAIN, SpiffeId
from wisp.model import ModelSnapshot, PortMapping, Service, Workload

from .authn import KIND as AUTHN_KIND
from .authn import WaypointAuthn, compile_authn
from .authz import WaypointPolicies, WaypointRef, compile_policies
from .balance.policy import EMPTY_POLICIES, TrafficPolicies
from .balance.rules import compile_destination_rules
from .route import RouteTable, compile_table
from .tracing import TELEMETRY_KIND, TracingDefaults, TracingPolicy, compile_tracing

ROUTE_KINDS = ("HTTPRoute", "GRPCRoute", "VirtualService")
POLICY_KIND = "AuthorizationPolicy"
DESTINATION_RULE_KIND = "DestinationRule"
HEALTHY = "HEALTHY"

MESH_PORT = 15008
METRICS_PORT = 15020
READINESS_PORT = 15021


@dataclass(slots=True, frozen=True)
class WaypointSettings:
    """The waypoint process's command line (waypoint/main.py)."""

    namespace: str  # the Gateway's
    name: str  # the Gateway's name
    control_plane: str | None  # host:port; None: config and certificates come from the test's hooks
    service_account: str | None = None  # default: the Gateway's name (what operator/ deploys)
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    state_dir: str = "/run/wisp/state"
    token_file: str | None = None  # default <state_dir>/tokens/waypoint-<namespace>-<name>
    root_cert: str | None = None  # default <state_dir>/root-cert.pem
    mesh_address: tuple[str, int] = ("0.0.0.0", MESH_PORT)
    metrics_address: tuple[str, int] = ("0.0.0.0", METRICS_PORT)
    readiness_address: tuple[str, int] = ("0.0.0.0", READINESS_PORT)
    drain_seconds: float = 5.0
    engine: str = "epoll"
    log_level: str = "info"
    log_json: bool | None = None
    trace_sampling: float = 1.0  # percent, when no Telemetry sets one (waypoint/tracing.py)
    otlp_endpoint: str | None = None  # host:port of the OTLP/gRPC collector; None: no export

    @property
    def gateway(self) -> WaypointRef:
        return WaypointRef(self.namespace, self.name)

    @property
    def identity(self) -> SpiffeId:
        return SpiffeId(self.trust_domain, self.namespace, self.service_account or self.name)

    @property
    def subscriber_id(self) -> str:
        return f"waypoint-{self.namespace}-{self.name}"

    def token_path(self) -> str:
        return self.token_file or os.path.join(self.state_dir, "tokens", f"waypoint-{self.namespace}-{self.name}")

    def root_path(self) -> str:
        return self.root_cert or os.path.join(self.state_dir, "root-cert.pem")


@dataclass(slots=True, frozen=True)
class Endpoint:
    """Where one request or connection goes: a workload's address and the port its app listens on.

    `identity` is the workload's SPIFFE id (what its ztunnel presents on 15008); `hbone` False for
    a workload outside the mesh, which is dialled in plain TCP."""

    address: str
    port: int
    identity: SpiffeId | None
    hbone: bool
    workload: Workload | None = None

    def __str__(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


@dataclass(slots=True, frozen=True)
class WaypointConfig:
    version: str | None
    snapshot: ModelSnapshot
    routes: RouteTable
    policies: WaypointPolicies
    services_by_vip: Mapping[str, Service]
    services_by_name: Mapping[tuple[str, str], Service]
    # "ns/hostname" -> the HEALTHY workloads serving that Service, with their port mappings.
    endpoints: Mapping[str, tuple[tuple[Workload, tuple[PortMapping, ...]], ...]]
    workloads_by_ip: Mapping[str, Workload]
    gateway: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()
    tracing: TracingPolicy = TracingPolicy()  # sampling and export (waypoint/tracing.py)
    authn: WaypointAuthn = WaypointAuthn()  # RequestAuthentication rules (waypoint/authn)
    traffic: TrafficPolicies = EMPTY_POLICIES  # DestinationRules by Service (waypoint/balance)
    counts: Mapping[str, int] = field(default_factory=dict)
    # (id(workload), target port) -> its Endpoint, made on first use (upstream.choose_endpoint):
    # the workloads live as long as this config, and an Endpoint is immutable, so requests share
    # one instead of parsing the workload's SPIFFE id each time.
    endpoint_cache: dict[tuple[int, int], Endpoint] = field(default_factory=dict, compare=False, repr=False)

    def service_at(self, ip: str) -> Service | None:
        return self.services_by_vip.get(ip)

    def workload_at(self, ip: str) -> Workload | None:
        return self.workloads_by_ip.get(ip)


def _objects(snapshot: ModelSnapshot) -> Iterable[Any]:
    # `ModelSnapshot.objects` (the ConfigObjects of the control plane's waypoint contract).
    return getattr(snapshot, "objects", {}).values()


def _read_object(obj: Any, notes: list[str]) -> dict[str, Any] | None:
    try:
        data = obj.object() if hasattr(obj, "object") else dict(obj)
    except (ValueError, TypeError) as exc:
        notes.append(f"{getattr(obj, 'kind', '?')} {getattr(obj, 'namespace', '?')}/{getattr(obj, 'name', '?')}: "
                     f"ignored: {exc}")
        return None
    kind = getattr(obj, "kind", None)
    if kind:
        data.setdefault("kind", kind)
    meta = data.get("metadata")
    if not isinstance(meta, dict):
        meta = data["metadata"] = {}
    meta.setdefault("namespace", getattr(obj, "namespace", None))
    meta.setdefault("name", getattr(obj, "name", None))
    return data


def compile_config(snapshot: ModelSnapshot, gateway: WaypointRef, version: str | None = None,
                   objects: Iterable[Any] | None = None,
                   tracing: TracingDefaults | None = None) -> WaypointConfig:
    """The compiled config of one version. `objects` (dicts or ConfigObjects) replaces the
    snapshot's own ConfigObjects when given (tests construct them); `tracing` holds the process's
    tracing settings (mesh sampling default, collector), default none."""
    notes: list[str] = []
    routes: list[dict[str, Any]] = []
    policies: list[dict[str, Any]] = []
    authn_objects: list[dict[str, Any]] = []
    gateway_object = None
    telemetry: list[dict[str, Any]] = []
    destination_rules: list[dict[str, Any]] = []
    for obj in (_objects(snapshot) if objects is None else objects):
        data = _read_object(obj, notes)
        if data is None:
            continue
        kind = data.get("kind")
        if kind in ROUTE_KINDS:
            routes.append(data)
        elif kind == POLICY_KIND:
            policies.append(data)
        elif kind == AUTHN_KIND:
            authn_objects.append(data)
        elif kind == TELEMETRY_KIND:
            telemetry.append(data)
        elif kind == DESTINATION_RULE_KIND:
            destination_rules.append(data)
        elif kind == "Gateway":
            meta = data.get("metadata") or {}
            if meta.get("namespace") == gateway.namespace and meta.get("name") == gateway.name:
                gateway_object = data
    services = list(snapshot.services.values())
    table = compile_table(routes, services)
    compiled = compile_policies(policies, gateway)
    notes.extend(f"AuthorizationPolicy {note.policy}: {note.message}" for note in compiled.notes)
    authn = compile_authn(authn_objects, gateway)
    notes.extend(authn.notes)
    traced = compile_tracing(telemetry, gateway.namespace, gateway.name, gateway_object, services,
                             tracing or TracingDefaults())
    notes.extend(traced.notes)
    traffic = compile_destination_rules(destination_rules, services)
    notes.extend(traffic.notes)

    by_vip: dict[str, Service] = {}
    by_name: dict[tuple[str, str], Service] = {}
    for service in services:
        by_name[(service.namespace, service.name)] = service
        for address in service.addresses:
            by_vip[_bare(address)] = service
    endpoints: dict[str, list[tuple[Workload, tuple[PortMapping, ...]]]] = {}
    by_ip: dict[str, Workload] = {}
    for workload in snapshot.workloads.values():
        for address in workload.addresses:
            by_ip[_bare(address)] = workload
        if workload.status != HEALTHY or not workload.addresses:
            continue
        for key, ports in workload.services.items():
            endpoints.setdefault(key, []).append((workload, ports))
    return WaypointConfig(
        version=version, snapshot=snapshot, routes=table, policies=compiled,
        services_by_vip=by_vip, services_by_name=by_name,
        endpoints={key: tuple(sorted(items, key=lambda item: item[0].uid)) for key, items in endpoints.items()},
        workloads_by_ip=by_ip, gateway=gateway_object, notes=tuple(notes), tracing=traced, authn=authn,
        traffic=traffic,
        counts={"workloads": len(snapshot.workloads), "services": len(services), "routes": len(routes),
                "policies": len(policies)},
    )


def _bare(address: str) -> str:
    """An address as the model writes it may carry a network prefix (`network/ip`)."""
    return address.rpartition("/")[2]


def empty_config(gateway: WaypointRef) -> WaypointConfig:
    return compile_config(ModelSnapshot(), gateway, None, ())


def service_key(service: Service) -> str:
    return f"{service.namespace}/{service.hostname}"


def target_port(service: Service, ports: tuple[PortMapping, ...], service_port: int) -> int | None:
    """The port a workload's app listens on for `service_port` of `service`; None if the Service has
    no such port. A workload's own mapping wins (named target ports resolve per pod)."""
    for mapping in ports:
        if mapping.service_port == service_port:
            return mapping.target_port or service_port
    for mapping in service.ports:
        if mapping.service_port == service_port:
            return mapping.target_port or service_port
    return None
