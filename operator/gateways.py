"""Waypoint Gateways and mesh routes: what waypoints are sent, and the Gateway API status we own.

Pure functions over ClusterState objects, called by the reconciliation core (``reconcile``):

- ``config_objects``: the ConfigObjects waypoints compile themselves — Gateways of class
  ``istio-waypoint``, HTTPRoutes and GRPCRoutes with a mesh (core ``Service``) parent, and
  AuthorizationPolicies with ``targetRefs`` (policies without them are ztunnel's, see
  waypoint/authz/targets.py), every VirtualService and DestinationRule (status: ``networking``).
  The distributor sends each waypoint the ones that concern it.
- ``gateway_status``: a waypoint Gateway's ``status`` as the Gateway API asks of its controller
  (kubernetes-sigs/gateway-api ``apis/v1/gateway_types.go``): ``Accepted`` (``ListenersNotValid``
  when a listener other than the HBONE one on 15008 is present, False when there is no such
  listener), ``Programmed`` (``AddressNotAssigned`` until the waypoint's Service has an address,
  ``Pending`` until an instance is ready), per listener ``Accepted`` (``UnsupportedProtocol`` for
  anything but HBONE on 15008), ``Programmed``, ``ResolvedRefs``, ``Conflicted``, and
  ``status.addresses`` once programmed.
- ``route_status``: ``status.parents`` entries of a route for its Service parents, conditions
  from the waypoint's own route parser (waypoint/route: ``RouteTable.parent_status``), so status
  says what the proxy does. A route that wins a Service port over a VirtualService stays
  ``Accepted`` and its message names the VirtualService not applied there. Entries of other controllers are left alone. HTTPRoutes also get
  Istio's ``ResolvedWaypoints`` (pilot/pkg/config/kube/gateway/conditions.go, conversion.go
  ``referenceAllowed``): always ``True``/``ResolvedWaypoints``, its message saying whether the
  parent Service or its namespace carries an ``istio.io/use-waypoint`` label other than ``none``
  ("All waypoints resolved"), not ("istio.io/use-waypoint label missing from parent and parent
  namespace; in ambient mode, route will not be respected"), or the Service is missing ("parent
  not found", with ``Accepted=False``/``NoMatchingParent``). A mesh route whose Service has no
  waypoint is thus ``Accepted=True`` as in Istio: the route is valid, nothing carries it out.

- ``waypoint_policy_conditions``: Istio's ``WaypointAccepted`` condition on AuthorizationPolicies
  with ``targetRefs`` (pilot/pkg/serviceregistry/kube/controller/ambient/policies.go): Accepted
  ("bound to ns/waypoint") when every target is bound, else ``AncestorNotBound`` ("Service ns/x
  is not bound to a waypoint") or ``TargetNotFound``. A Service bound to a waypoint that is not
  ready counts as not bound: the policy is not enforced anywhere yet (its traffic is refused).

These writes set fields the controller owns whole (``StatusFieldsWrite``); ``merge_status``
turns one into the status to store, keeping ``lastTransitionTime`` while a condition's status
holds. Comparisons ignore ``lastTransitionTime``, so an unchanged status is never rewritten.
Conditions carry ``observedGeneration``, the object's ``metadata.generation``.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from waypoint.route import RouteTable, compile_table
from wisp.kube import ObjectId, dicts, integer, string
from wisp.model import HBONE_MTLS_PORT, ConfigObject, ModelError, Service, config_object
from wisp_operator.cluster import ClusterState
from wisp_operator.errors import InvalidObject, object_id
from wisp_operator.waypoints import USE_WAYPOINT_LABEL, WAYPOINT_GATEWAY_CLASS, Waypoint, WaypointIndex

CONTROLLER_NAME = "istio.io/mesh-controller"
CONDITION_WAYPOINT_ACCEPTED = "WaypointAccepted"
MESH_LISTENER_PROTOCOL = "HBONE"
ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")
VIRTUAL_SERVICE = "VirtualService"
DESTINATION_RULE = "DestinationRule"
GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"
_CORE_GROUPS = ("", "core")
# The Gateway conditions this controller owns (others' are kept as they are).
GATEWAY_CONDITIONS = ("Accepted", "Programmed")
# Istio's words (pilot/pkg/config/kube/gateway/conditions.go).
RESOLVED_WAYPOINTS = "ResolvedWaypoints"
WAYPOINTS_RESOLVED = "All waypoints resolved"
WAYPOINT_LABEL_MISSING = ("istio.io/use-waypoint label missing from parent and parent namespace; "
                          "in ambient mode, route will not be respected")
WAYPOINT_PARENT_NOT_FOUND = "parent not found"


@dataclass(frozen=True, slots=True)
class StatusFieldsWrite:
    """Set status fields of one object that this controller owns whole.

    Gateway: ``conditions`` (only the types in ``GATEWAY_CONDITIONS`` are ours), ``listeners``,
    ``addresses``. Routes: ``parents`` (only the entries whose controllerName is ours).
    """

    api_version: str
    kind: str
    namespace: str
    name: str
    fields: dict[str, Any]


# --- config objects -----------------------------------------------------------------------------


def config_objects(state: ClusterState) -> tuple[dict[str, ConfigObject], list[InvalidObject]]:
    """The ConfigObjects of ``state`` by resource key, sorted, and the objects that could not be."""
    objects: dict[str, ConfigObject] = {}
    errors: list[InvalidObject] = []

    def add(obj: dict[str, Any], kind: str) -> None:
        try:
            oid = object_id(obj, kind)
            item = config_object(obj)
        except InvalidObject as exc:
            errors.append(exc)
            return
        except ModelError as exc:
            errors.append(oid.invalid(f"not sent to waypoints: {exc}"))
            return
        objects[f"{item.kind}/{item.namespace}/{item.name}"] = item

    for gw in state.gateways():
        spec = gw.get("spec")
        if isinstance(spec, dict) and spec.get("gatewayClassName") == WAYPOINT_GATEWAY_CLASS:
            add(gw, "Gateway")
    for kind in ROUTE_KINDS:
        for route in state.of_kind(kind):
            if _has_service_parent(route):
                add(route, kind)
    for policy in state.authorization_policies():
        spec = policy.get("spec")
        if isinstance(spec, dict) and (spec.get("targetRefs") or spec.get("targetRef")):
            add(policy, "AuthorizationPolicy")
    for authn in state.of_kind("RequestAuthentication"):
        spec = authn.get("spec")
        # Waypoints apply a RequestAuthentication only through targetRefs (waypoint/authn/policy.py).
        if isinstance(spec, dict) and (spec.get("targetRefs") or spec.get("targetRef")):
            add(authn, "RequestAuthentication")
    for telemetry in state.of_kind("Telemetry"):
        spec = telemetry.get("spec")
        if isinstance(spec, dict) and spec.get("tracing"):  # waypoints read only tracing (waypoint/tracing.py)
            add(telemetry, "Telemetry")
    # Every VirtualService and DestinationRule: the distributor sends each to the waypoints of the
    # Services its hosts name (and a DestinationRule also where routes send to its host).
    for kind in (VIRTUAL_SERVICE, DESTINATION_RULE):
        for obj in state.of_kind(kind):
            add(obj, kind)
    return dict(sorted(objects.items())), errors


def _has_service_parent(route: Mapping[str, Any]) -> bool:
    spec = route.get("spec")
    refs = spec.get("parentRefs") if isinstance(spec, Mapping) else None
    if not isinstance(refs, list):
        return False
    return any(isinstance(ref, Mapping) and ref.get("kind") == "Service"
               and ref.get("group", "gateway.networking.k8s.io") in _CORE_GROUPS for ref in refs)


# --- Gateway status -----------------------------------------------------------------------------


def _condition(type_: str, ok: bool, reason: str, message: str, generation: int) -> dict[str, Any]:
    cond: dict[str, Any] = {"type": type_, "status": "True" if ok else "False", "reason": reason,
                            "message": message}
    if generation:
        cond["observedGeneration"] = generation
    return cond


def gateway_status(gw: dict[str, Any], oid: ObjectId, waypoint: Waypoint | None) -> dict[str, Any]:
    """The status fields of a waypoint Gateway (see the module docstring). Raises InvalidObject
    for listeners that cannot be read; ``waypoint`` None means the index refused the Gateway."""
    generation = _generation(gw)
    listeners = []
    mesh_listeners = 0
    others = []
    for where, listener in dicts(gw, "spec.listeners", oid):
        name = string(listener, "name", oid, at=where)
        protocol = string(listener, "protocol", oid, at=where)
        port = integer(listener, "port", oid, at=where)
        if protocol == MESH_LISTENER_PROTOCOL and port == HBONE_MTLS_PORT:
            mesh_listeners += 1
            programmed = waypoint is not None and waypoint.address is not None and waypoint.has_instance
            conditions = [
                _condition("Accepted", True, "Accepted", "No errors found", generation),
                _condition("Programmed", programmed, "Programmed" if programmed else "Pending",
                           "No errors found" if programmed else "Waiting for the waypoint to be ready", generation),
                _condition("ResolvedRefs", True, "ResolvedRefs", "No errors found", generation),
                _condition("Conflicted", False, "NoConflicts", "No errors found", generation),
            ]
        else:
            others.append(name)
            message = (f"protocol {protocol} on port {port} is not supported by a waypoint; "
                       f"only {MESH_LISTENER_PROTOCOL} on port {HBONE_MTLS_PORT} is")
            conditions = [
                _condition("Accepted", False, "UnsupportedProtocol", message, generation),
                _condition("Programmed", False, "Invalid", message, generation),
                _condition("ResolvedRefs", True, "ResolvedRefs", "No errors found", generation),
                _condition("Conflicted", False, "NoConflicts", "No errors found", generation),
            ]
        # Mesh routes attach to Services, not to the waypoint's listener (GEP-1294).
        listeners.append({"name": name, "supportedKinds": [], "attachedRoutes": 0, "conditions": conditions})

    if mesh_listeners == 0:
        accepted = _condition("Accepted", False, "ListenersNotValid",
                              f"a waypoint needs a listener with protocol {MESH_LISTENER_PROTOCOL} on port "
                              f"{HBONE_MTLS_PORT}", generation)
    elif others:
        accepted = _condition("Accepted", True, "ListenersNotValid",
                              f"listener(s) {', '.join(others)} not supported; the {MESH_LISTENER_PROTOCOL} "
                              "listener is used", generation)
    else:
        accepted = _condition("Accepted", True, "Accepted", "Resource accepted", generation)

    addresses: list[dict[str, str]] = []
    if mesh_listeners == 0 or waypoint is None:
        programmed = _condition("Programmed", False, "Invalid", "The Gateway is not accepted", generation)
    elif waypoint.address is None:
        programmed = _condition("Programmed", False, "AddressNotAssigned",
                                f"waiting for Service {oid.namespace}/{oid.name} to have a cluster IP", generation)
    elif not waypoint.has_instance:
        programmed = _condition("Programmed", False, "Pending",
                                f"waiting for a ready instance of Deployment {oid.namespace}/{oid.name}", generation)
    else:
        address = waypoint.address
        programmed = _condition("Programmed", True, "Programmed",
                                f"Resource programmed, assigned to service(s) {address.hostname}:"
                                f"{address.hbone_mtls_port}", generation)
        addresses = [{"type": "IPAddress", "value": address.address}]
    return {"conditions": [accepted, programmed], "listeners": listeners, "addresses": addresses}


# --- route status -------------------------------------------------------------------------------


def route_table(state: ClusterState, services: Iterable[Service]) -> RouteTable:
    """Every mesh route and VirtualService of ``state`` compiled against the model's Services, as a
    waypoint would (a VirtualService and an xRoute on one Service port are not merged: the table
    says which applies, and both statuses say so)."""
    routes = [r for kind in ROUTE_KINDS for r in state.of_kind(kind) if _has_service_parent(r)]
    return compile_table(routes + state.of_kind(VIRTUAL_SERVICE), services, state.settings.domain_suffix)


def route_status(route: dict[str, Any], oid: ObjectId, table: RouteTable,
                 state: ClusterState | None = None) -> dict[str, Any] | None:
    """The ``parents`` entries we own for ``route``; None when it has no Service parent.

    With ``state``, an HTTPRoute's entries also say whether their Service has a waypoint
    (``ResolvedWaypoints``)."""
    by_index = table.parent_status(oid.kind, oid.namespace, oid.name)
    if not by_index:
        return None
    generation = _generation(route)
    refs = route["spec"]["parentRefs"]
    parents = []
    for index, conditions in sorted(by_index.items()):
        overridden = table.notes(oid.kind, oid.namespace, oid.name, index)
        if overridden:
            # Still Accepted (this route applies); the message says what it overrides.
            conditions = [dict(c, message=c["message"] + "; " + "; ".join(overridden))
                          if c["type"] == "Accepted" and c["status"] == "True" else c for c in conditions]
        if state is not None and oid.kind == "HTTPRoute":
            message = _waypoint_resolution(state, refs[index], oid.namespace)
            conditions = [*conditions, {"type": RESOLVED_WAYPOINTS, "status": "True", "reason": RESOLVED_WAYPOINTS,
                                        "message": message}]
        if generation:
            conditions = [dict(c, observedGeneration=generation) for c in conditions]
        parents.append({"parentRef": refs[index], "controllerName": CONTROLLER_NAME, "conditions": conditions})
    return {"parents": parents}


def _waypoint_resolution(state: ClusterState, ref: dict[str, Any], namespace: str) -> str:
    """Istio's ``ResolvedWaypoints`` message for one Service parentRef: labels only, as istiod
    reads them (whether that waypoint exists or is ready is the Service's WaypointBound)."""
    service_namespace = ref.get("namespace") if isinstance(ref.get("namespace"), str) else namespace
    service = state.get("Service", service_namespace, ref.get("name") if isinstance(ref.get("name"), str) else "")
    if service is None:
        return WAYPOINT_PARENT_NOT_FOUND
    if _uses_waypoint(service):
        return WAYPOINTS_RESOLVED
    ns = state.namespace(service_namespace)
    if ns is not None and not _uses_waypoint(ns):
        return WAYPOINT_LABEL_MISSING
    return WAYPOINTS_RESOLVED


def _uses_waypoint(obj: dict[str, Any]) -> bool:
    meta = obj.get("metadata")
    labels = meta.get("labels") if isinstance(meta, dict) else None
    value = labels.get(USE_WAYPOINT_LABEL) if isinstance(labels, dict) else None
    return isinstance(value, str) and value != "" and value.lower() != "none"


# --- writes: compare and merge ------------------------------------------------------------------


def wanted_write(obj: dict[str, Any], oid: ObjectId, fields: dict[str, Any]) -> StatusFieldsWrite | None:
    """A write of ``fields``, or None when ``obj``'s status already says it (times aside)."""
    if _strip_times(owned_part(oid.kind, obj.get("status"))) == _strip_times(fields):
        return None
    api_version = obj.get("apiVersion")
    return StatusFieldsWrite(api_version if isinstance(api_version, str) else GATEWAY_API_VERSION,
                             oid.kind, oid.namespace, oid.name, fields)


def owned_part(kind: str, status: Any) -> dict[str, Any]:
    """The part of an object's ``status`` this controller owns, in the form ``fields`` take."""
    status = status if isinstance(status, dict) else {}
    if kind == "Gateway":
        conditions = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
        ours = [c for t in GATEWAY_CONDITIONS for c in conditions if c.get("type") == t]
        return {"conditions": ours, "listeners": status.get("listeners") or [],
                "addresses": status.get("addresses") or []}
    parents = [p for p in status.get("parents") or [] if isinstance(p, dict)
               and p.get("controllerName") == CONTROLLER_NAME]
    return {"parents": parents}


def merge_status(kind: str, status: Any, fields: dict[str, Any], now: str | None = None) -> dict[str, Any]:
    """The fields to store: ``fields`` with ``lastTransitionTime`` on every condition (kept from
    ``status`` while the condition's status is unchanged, else ``now``), and others' parts of
    ``status`` (Gateway conditions of other types, route parents of other controllers) kept."""
    now = now or _now()
    status = status if isinstance(status, dict) else {}
    if kind == "Gateway":
        current = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
        conditions = _timed(fields["conditions"], current, now)
        kept = [c for c in current if c.get("type") not in GATEWAY_CONDITIONS]
        old_listeners = {entry.get("name"): entry for entry in status.get("listeners") or [] if isinstance(entry, dict)}
        listeners = [dict(entry, conditions=_timed(entry["conditions"],
                                                   old_listeners.get(entry["name"], {}).get("conditions") or [], now))
                     for entry in fields["listeners"]]
        return {"conditions": kept + conditions, "listeners": listeners, "addresses": fields["addresses"]}
    current_parents = [p for p in status.get("parents") or [] if isinstance(p, dict)]
    others = [p for p in current_parents if p.get("controllerName") != CONTROLLER_NAME]
    ours_before = {_parent_key(p.get("parentRef")): p for p in current_parents
                   if p.get("controllerName") == CONTROLLER_NAME}
    parents = [dict(p, conditions=_timed(p["conditions"],
                                         ours_before.get(_parent_key(p["parentRef"]), {}).get("conditions") or [],
                                         now))
               for p in fields["parents"]]
    return {"parents": others + parents}


def _timed(wanted: list[dict[str, Any]], current: list[Any], now: str) -> list[dict[str, Any]]:
    before = {c.get("type"): c for c in current if isinstance(c, dict)}
    out = []
    for cond in wanted:
        old = before.get(cond["type"])
        keep = old is not None and old.get("status") == cond["status"] and old.get("lastTransitionTime")
        out.append(dict(cond, lastTransitionTime=old["lastTransitionTime"] if keep else now))
    return out


def _parent_key(ref: Any) -> tuple[Any, ...]:
    ref = ref if isinstance(ref, dict) else {}
    return tuple(ref.get(k) for k in ("group", "kind", "namespace", "name", "port", "sectionName"))


def _strip_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_times(v) for k, v in value.items() if k != "lastTransitionTime"}
    if isinstance(value, list):
        return [_strip_times(v) for v in value]
    return value


def _generation(obj: dict[str, Any]) -> int:
    meta = obj.get("metadata")
    generation = meta.get("generation") if isinstance(meta, dict) else None
    return generation if isinstance(generation, int) and not isinstance(generation, bool) else 0


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- for the reconciliation core ---------------------------------------------------------------


def gateway_api_writes(state: ClusterState, waypoints: WaypointIndex, services: Iterable[Service]
                       ) -> tuple[list[StatusFieldsWrite], list[InvalidObject]]:
    """The status writes of every waypoint Gateway and mesh route in ``state``."""
    writes: list[StatusFieldsWrite] = []
    errors: list[InvalidObject] = []
    for gw in state.gateways():
        try:
            oid = object_id(gw, "Gateway")
            if string(gw, "spec.gatewayClassName", oid) != WAYPOINT_GATEWAY_CLASS:
                continue
            fields = gateway_status(gw, oid, waypoints.waypoints.get((oid.namespace, oid.name)))
        except InvalidObject:
            continue  # WaypointIndex reported it already
        write = wanted_write(gw, oid, fields)
        if write is not None:
            writes.append(write)
    routes = [(kind, r) for kind in ROUTE_KINDS for r in state.of_kind(kind) if _has_service_parent(r)]
    if routes:
        table = route_table(state, services)
        for kind, route in routes:
            try:
                oid = object_id(route, kind)
            except InvalidObject as exc:
                errors.append(exc)
                continue
            fields = route_status(route, oid, table, state)
            if fields is None:
                continue
            write = wanted_write(route, oid, fields)
            if write is not None:
                writes.append(write)
    return writes, errors


# --- AuthorizationPolicy WaypointAccepted ---------------------------------------------------------


def waypoint_policy_conditions(state: ClusterState, waypoints: WaypointIndex, services: Mapping[str, Service]
                               ) -> list[tuple[dict[str, Any], ObjectId, dict[str, Any]]]:
    """(policy, id, WaypointAccepted condition) for every AuthorizationPolicy with targetRefs.

    ``services`` is the model's Services by "ns/hostname" (their ``waypoint`` says the binding).
    """
    bound: dict[tuple[str, str], str] = {}  # (ns, Service name) -> waypoint "ns/name", "" if not usable
    for service in services.values():
        if service.waypoint is not None:
            bound[(service.namespace, service.name)] = service.waypoint.gateway if service.waypoint.usable else ""
        else:
            bound.setdefault((service.namespace, service.name), "")
    root = state.settings.root_namespace
    out = []
    for policy in state.authorization_policies():
        spec = policy.get("spec")
        if not isinstance(spec, dict):
            continue
        refs = spec.get("targetRefs") or ([spec["targetRef"]] if isinstance(spec.get("targetRef"), dict) else [])
        if not isinstance(refs, list) or not refs:
            continue
        try:
            oid = object_id(policy, "AuthorizationPolicy")
        except InvalidObject:
            continue  # the policy converter reports it
        results = [_target_binding(ref, oid.namespace, root, waypoints, bound) for ref in refs]
        failed = [(reason, message) for ok, reason, message in results if not ok]
        if failed:
            condition = {"type": CONDITION_WAYPOINT_ACCEPTED, "status": "False", "reason": failed[0][0],
                         "message": "; ".join(message for _, message in failed)}
        else:
            condition = {"type": CONDITION_WAYPOINT_ACCEPTED, "status": "True", "reason": "Accepted",
                         "message": "; ".join(dict.fromkeys(message for _, _, message in results))}
        out.append((policy, oid, condition))
    return out


def _target_binding(ref: Any, namespace: str, root: str, waypoints: WaypointIndex,
                    bound: Mapping[tuple[str, str], str]) -> tuple[bool, str, str]:
    if not isinstance(ref, dict) or not isinstance(ref.get("name"), str):
        return False, "TargetNotFound", "not bound"
    target_ns = ref.get("namespace") or namespace
    key = f"{target_ns}/{ref['name']}"
    kind, group = ref.get("kind"), ref.get("group") or ""
    if kind == "Gateway":
        waypoint = waypoints.waypoints.get((target_ns, ref["name"])) if target_ns == namespace else None
        if waypoint is None:
            return False, "TargetNotFound", f"Gateway {key} not found"
        return True, "Accepted", f"bound to {key}"
    if kind == "GatewayClass" and ref["name"] == WAYPOINT_GATEWAY_CLASS and namespace == root:
        return True, "Accepted", "bound to every waypoint (GatewayClass istio-waypoint)"
    if kind == "Service" and group in _CORE_GROUPS:
        if target_ns != namespace or (target_ns, ref["name"]) not in bound:
            return False, "TargetNotFound", f"Service {key} was not found"
        waypoint = bound[(target_ns, ref["name"])]
        if not waypoint:
            return False, "AncestorNotBound", f"Service {key} is not bound to a waypoint"
        return True, "Accepted", f"bound to {waypoint}"
    return False, "TargetNotFound", f"{kind} {key} is not a target wisp's waypoints serve"
