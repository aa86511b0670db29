"""The reconciliation core: ClusterState in, resource model and status writes out.

Pure and deterministic: the same state always gives the same model (same key
order) and the same writes. A malformed object never stops the build: it is
left out (or, for an AuthorizationPolicy, replaced by a fail-closed stand-in),
and reported in ``Reconciliation.errors`` for the shell to log once.

Status writes are the conditions we own (``istio.io/WaypointBound`` on Services
and Pods, ``ZtunnelAccepted`` on AuthorizationPolicies) that differ from what
the object's status already says, ignoring lastTransitionTime; ``condition=None``
asks the writer to remove a condition we no longer want.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wisp.model import Authorization, ModelSnapshot, Service, Workload
from wisp_operator.cluster import ClusterState
from wisp_operator.errors import InvalidObject
from wisp_operator.manifest import ObjectId, object_id
from wisp_operator.peer_authentication import PeerAuth, PeerAuthIndex, parse_peer_authentication
from wisp_operator.policy import (
    CONDITION_ZTUNNEL_ACCEPTED,
    PolicyConversion,
    SelectorPolicyIndex,
    convert_authorization_policy,
    rejected_policy,
)
from wisp_operator.services import ServiceIndex, ServiceInfo, convert_service
from wisp_operator.waypoints import CONDITION_WAYPOINT_BOUND, WaypointIndex
from wisp_operator.workloads import WorkloadContext, convert_pod, node_locality

_DEFAULT_API_VERSION = {
    "Pod": "v1",
    "Service": "v1",
    "AuthorizationPolicy": "security.istio.io/v1",
}


@dataclass(frozen=True, slots=True)
class StatusWrite:
    """Set (or, with ``condition=None``, remove) one condition on one object's status."""

    api_version: str
    kind: str
    namespace: str
    name: str
    condition_type: str
    condition: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Reconciliation:
    model: ModelSnapshot
    status: tuple[StatusWrite, ...]
    errors: tuple[InvalidObject, ...]


def build_model(state: ClusterState) -> ModelSnapshot:
    return reconcile(state).model


def build_status(state: ClusterState) -> list[StatusWrite]:
    return list(reconcile(state).status)


def reconcile(state: ClusterState) -> Reconciliation:
    settings = state.settings
    errors: list[InvalidObject] = []
    writes: list[StatusWrite] = []

    waypoints = WaypointIndex(state)
    errors.extend(waypoints.errors)

    # --- authorization ---
    authorizations: dict[str, Authorization] = {}
    selector_policies = SelectorPolicyIndex(settings.root_namespace)
    for ap in state.authorization_policies():
        conversion: PolicyConversion | None
        try:
            conversion = convert_authorization_policy(ap, settings.root_namespace)
        except InvalidObject as exc:
            errors.append(exc)
            conversion = rejected_policy(ap, exc, settings.root_namespace)
            if conversion is None:
                continue
        oid = object_id(ap, "AuthorizationPolicy")
        auth = conversion.authorization
        if auth is not None:
            key = f"{auth.namespace}/{auth.name}"
            authorizations[key] = auth
            if auth.scope == "WORKLOAD_SELECTOR" and conversion.selector is not None:
                selector_policies.add(auth.namespace, conversion.selector, key)
        _want(writes, ap, oid, CONDITION_ZTUNNEL_ACCEPTED, conversion.condition)

    parsed: list[PeerAuth] = []
    for pa in state.peer_authentications():
        try:
            parsed.append(parse_peer_authentication(pa))
        except InvalidObject as exc:
            errors.append(exc)
    peer_auth = PeerAuthIndex(parsed, settings.root_namespace)
    for auth in peer_auth.policies():
        authorizations[f"{auth.namespace}/{auth.name}"] = auth

    # --- services ---
    services: dict[str, Service] = {}
    infos: list[ServiceInfo] = []
    for svc in state.services():
        try:
            oid = object_id(svc, "Service")
            result = convert_service(svc, oid, settings, waypoints, state.namespace(oid.namespace))
        except InvalidObject as exc:
            errors.append(exc)
            continue
        if result is None:
            continue
        services[result.info.key] = result.service
        infos.append(result.info)
        _want(writes, svc, oid, CONDITION_WAYPOINT_BOUND, result.binding.condition)

    # --- workloads ---
    localities = {}
    for node in state.nodes():
        try:
            nid = object_id(node, "Node")
            locality = node_locality(node, nid)
        except InvalidObject as exc:
            errors.append(exc)
            continue
        if locality is not None:
            localities[nid.name] = locality
    ctx = WorkloadContext(settings, ServiceIndex(infos), selector_policies, peer_auth, waypoints, localities)
    workloads: dict[str, Workload] = {}
    for ns in state.namespaces_with("Pod"):
        namespace_obj = state.namespace(ns)
        for pod in state.pods(ns):
            try:
                oid = object_id(pod, "Pod")
                result = convert_pod(pod, oid, namespace_obj, ctx)
            except InvalidObject as exc:
                errors.append(exc)
                continue
            if result is None:
                continue
            workloads[result.workload.uid] = result.workload
            _want(writes, pod, oid, CONDITION_WAYPOINT_BOUND, result.binding.condition)

    model = ModelSnapshot(
        workloads=workloads,
        services=services,
        authorizations=dict(sorted(authorizations.items())),
    )
    return Reconciliation(model, tuple(writes), tuple(errors))


def _want(
    writes: list[StatusWrite],
    obj: dict[str, Any],
    oid: ObjectId,
    condition_type: str,
    desired: dict[str, Any] | None,
) -> None:
    """Queue a write if ``desired`` differs from the object's current condition."""
    current = _current_condition(obj, condition_type)
    if desired is None:
        if current is None:
            return
    elif current is not None and all(current.get(k) == v for k, v in desired.items()):
        return
    api_version = obj.get("apiVersion")
    if not isinstance(api_version, str):
        api_version = _DEFAULT_API_VERSION.get(oid.kind, "v1")
    writes.append(StatusWrite(api_version, oid.kind, oid.namespace, oid.name, condition_type, desired))


def _current_condition(obj: dict[str, Any], condition_type: str) -> dict[str, Any] | None:
    # Status is written by us (or Istio); tolerate anything odd there rather than fail.
    status = obj.get("status")
    conditions = status.get("conditions") if isinstance(status, dict) else None
    if not isinstance(conditions, list):
        return None
    for cond in conditions:
        if isinstance(cond, dict) and cond.get("type") == condition_type:
            return cond
    return None
