"""The reconciliation core: ClusterState in, resource model and status writes out.

Pure and deterministic: the same state always gives the same model (same key
order) and the same writes. A malformed object never stops the build: it is
left out (or, for an AuthorizationPolicy, replaced by a fail-closed stand-in),
and reported in ``Reconciliation.errors`` for the shell to log once.

Status writes are the conditions we own (``istio.io/WaypointBound`` on Services
and Pods, ``ZtunnelAccepted`` on AuthorizationPolicies, ``WaypointAccepted`` on
those with targetRefs, ``Accepted``/``ResolvedRefs``/``UnsupportedFields`` on
VirtualServices and DestinationRules) that differ from what
the object's status already says, ignoring lastTransitionTime; ``condition=None``
asks the writer to remove a condition we no longer want. Waypoint Gateways and
mesh routes get ``StatusFieldsWrite``s instead (whole Gateway API status fields,
``gateways``), and their objects go into the model as ConfigObjects for waypoints.

``reconcile(state)`` is the full build. ``Reconciler`` keeps the last build's
indexes so that the common change, a few Pods, re-derives only those Pods'
Workloads (and their status writes and errors); its result is exactly what
``reconcile`` would give for the new state, plus the model's delta.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Any

from wisp.model import KIND_WORKLOAD, Authorization, Delta, ModelSnapshot, ResourceKey, Service, Workload
from wisp_operator.cluster import KIND_NODE, KIND_POD, ClusterState, Key
from wisp.kube import ObjectId, labels
from wisp_operator.errors import InvalidObject, object_id
from wisp_operator.gateways import (
    CONDITION_WAYPOINT_ACCEPTED,
    StatusFieldsWrite,
    config_objects,
    gateway_api_writes,
    waypoint_policy_conditions,
)
from wisp_operator.networking import networking_conditions
from wisp_operator.peer_authentication import PeerAuth, PeerAuthIndex, parse_peer_authentication
from wisp_operator.policy import (
    CONDITION_ZTUNNEL_ACCEPTED,
    PolicyConversion,
    SelectorPolicyIndex,
    convert_authorization_policy,
    rejected_policy,
)
from wisp_operator.services import ServiceIndex, ServiceInfo, convert_service
from wisp_operator.waypoints import CONDITION_WAYPOINT_BOUND, GATEWAY_NAME_LABEL, WaypointIndex
from wisp_operator.workloads import WorkloadContext, convert_pod, node_locality, workload_uid

_DEFAULT_API_VERSION = {
    "Pod": "v1",
    "Service": "v1",
    "AuthorizationPolicy": "security.istio.io/v1",
}
# Past this many changed Pods a patch stops paying for itself; the full build takes over.
DEFAULT_MAX_PATCH = 512


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
    status: tuple[StatusWrite | StatusFieldsWrite, ...]
    errors: tuple[InvalidObject, ...]
    # Set when the model was patched from the previous one: exactly diff(previous.model, model),
    # so the distributor need not compare every resource. None after a full build.
    delta: Delta | None = field(default=None, compare=False)


def build_model(state: ClusterState) -> ModelSnapshot:
    return reconcile(state).model


def build_status(state: ClusterState) -> list[StatusWrite]:
    return list(reconcile(state).status)


def reconcile(state: ClusterState) -> Reconciliation:
    return _Build.full(state).result


# --- the build ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PodOutcome:
    """Everything one Pod contributes: its Workload, its WaypointBound write, or its error."""

    workload: Workload | None = None
    write: StatusWrite | None = None
    error: InvalidObject | None = None


_NOTHING = _PodOutcome()


class _Build:
    """One full build and what a patch needs of it.

    Pods come last in every output (workloads, writes, errors), in key order; the outputs of
    everything else (``head_writes``, ``head_errors``) and the indexes Pods are converted
    against (``ctx``) stay valid while only Pods change.
    """

    __slots__ = ("state", "ctx", "result", "head_writes", "head_errors", "pods",
                 "workload_keys", "write_keys", "error_keys", "trackable")

    def __init__(self, state: ClusterState, ctx: WorkloadContext, result: Reconciliation,
                 head_writes: tuple[StatusWrite | StatusFieldsWrite, ...], head_errors: tuple[InvalidObject, ...],
                 pods: dict[Key, _PodOutcome], trackable: bool) -> None:
        self.state = state
        self.ctx = ctx
        self.result = result
        self.head_writes = head_writes
        self.head_errors = head_errors
        # Only Pods that contribute something; the key lists below are sorted, as Pods are built.
        self.pods = pods
        self.workload_keys = [k for k, o in pods.items() if o.workload is not None]
        self.write_keys = [k for k, o in pods.items() if o.write is not None]
        self.error_keys = [k for k, o in pods.items() if o.error is not None]
        self.trackable = trackable

    @classmethod
    def full(cls, state: ClusterState) -> _Build:
        settings = state.settings
        errors: list[InvalidObject] = []
        writes: list[StatusWrite | StatusFieldsWrite] = []

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

        # --- waypoints: their config objects, Gateway and route status ---
        objects, object_errors = config_objects(state)
        errors.extend(object_errors)
        gateway_writes, gateway_errors = gateway_api_writes(state, waypoints, services.values())
        writes.extend(gateway_writes)
        errors.extend(gateway_errors)
        for ap, ap_id, condition in waypoint_policy_conditions(state, waypoints, services):
            _want(writes, ap, ap_id, CONDITION_WAYPOINT_ACCEPTED, condition)
        # VirtualService and DestinationRule: Accepted, ResolvedRefs, UnsupportedFields (networking)
        conditions, networking_errors = networking_conditions(state, services.values())
        errors.extend(networking_errors)
        for obj, obj_id, condition_type, condition in conditions:
            _want(writes, obj, obj_id, condition_type, condition)

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
        head_writes, head_errors = tuple(writes), tuple(errors)
        workloads: dict[str, Workload] = {}
        pods: dict[Key, _PodOutcome] = {}
        trackable = True
        for ns in state.namespaces_with(KIND_POD):
            namespace_obj = state.namespace(ns)
            for pod in state.pods(ns):
                outcome = _pod_outcome(pod, namespace_obj, ctx)
                if outcome is _NOTHING:
                    continue
                if outcome.workload is not None:
                    workloads[outcome.workload.uid] = outcome.workload
                if outcome.write is not None:
                    writes.append(outcome.write)
                if outcome.error is not None:
                    errors.append(outcome.error)
                key = _pod_key(pod, ns)
                if key is None:
                    trackable = False  # cannot happen for states built by ClusterState.of or the store
                else:
                    pods[key] = outcome

        model = ModelSnapshot(
            workloads=workloads,
            services=services,
            authorizations=dict(sorted(authorizations.items())),
            objects=objects,
        )
        return cls(state, ctx, Reconciliation(model, tuple(writes), tuple(errors)),
                   head_writes, head_errors, pods, trackable)

    def patch(self, state: ClusterState, keys: Collection[Key]) -> Reconciliation:
        """Re-derive the Pods under ``keys`` (all Pods, none a waypoint's) against the kept indexes."""
        previous = self.result
        workloads = dict(previous.model.workloads)
        upserts: list[Workload] = []
        removals: list[ResourceKey] = []
        reorder = writes_changed = errors_changed = False
        cluster_id = state.settings.cluster_id
        for key in keys:
            _, ns, name = key
            pod = state.get(*key)
            old = self.pods.get(key, _NOTHING)
            new = _NOTHING if pod is None else _pod_outcome(pod, state.namespace(ns), self.ctx)
            if new.workload is None:
                if old.workload is not None:
                    uid = workload_uid(cluster_id, ns, name)
                    del workloads[uid]
                    _remove(self.workload_keys, key)
                    removals.append(ResourceKey(KIND_WORKLOAD, uid))
            elif old.workload is None:
                workloads[new.workload.uid] = new.workload
                reorder = reorder or bool(self.workload_keys) and key < self.workload_keys[-1]
                insort(self.workload_keys, key)
                upserts.append(new.workload)
            elif old.workload == new.workload:
                # Keep the instance: the distributor caches encodings by identity.
                new = _PodOutcome(old.workload, new.write, new.error)
            else:
                workloads[new.workload.uid] = new.workload
                upserts.append(new.workload)
            if old.write != new.write:
                writes_changed = True
                _track(self.write_keys, key, old.write is not None, new.write is not None)
            if old.error is not None or new.error is not None:
                errors_changed = True
                _track(self.error_keys, key, old.error is not None, new.error is not None)
            if new is _NOTHING:
                self.pods.pop(key, None)
            else:
                self.pods[key] = new
        if reorder:
            # A new Workload lands where the full build would put it: in Pod key order.
            workloads = {w.uid: w for w in (self.pods[k].workload for k in self.workload_keys) if w is not None}
        model = ModelSnapshot(workloads, previous.model.services, previous.model.authorizations,
                              previous.model.objects)
        status = previous.status
        if writes_changed:
            status = self.head_writes + tuple(self.pods[k].write for k in self.write_keys)  # type: ignore[misc]
        errors = previous.errors
        if errors_changed:
            errors = self.head_errors + tuple(self.pods[k].error for k in self.error_keys)  # type: ignore[misc]
        upserts.sort(key=lambda w: w.uid)
        removals.sort()
        self.state = state
        self.result = Reconciliation(model, status, errors, Delta(tuple(upserts), tuple(removals)))
        return self.result


def _pod_outcome(pod: dict[str, Any], namespace_obj: dict[str, Any] | None, ctx: WorkloadContext) -> _PodOutcome:
    try:
        oid = object_id(pod, "Pod")
        result = convert_pod(pod, oid, namespace_obj, ctx)
    except InvalidObject as exc:
        return _PodOutcome(error=exc)
    if result is None:
        return _NOTHING
    return _PodOutcome(result.workload, _status_write(pod, oid, CONDITION_WAYPOINT_BOUND, result.binding.condition))


def _pod_key(pod: dict[str, Any], namespace: str) -> Key | None:
    meta = pod.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return (KIND_POD, namespace, name) if isinstance(name, str) and name else None


def _remove(keys: list[Key], key: Key) -> None:
    del keys[bisect_left(keys, key)]


def _track(keys: list[Key], key: Key, had: bool, has: bool) -> None:
    if had and not has:
        _remove(keys, key)
    elif has and not had:
        insort(keys, key)


# --- incremental reconciliation -----------------------------------------------------------------


class Reconciler:
    """Reconciles successive states, patching the last build when only Pods changed.

    A Pod's Workload depends on the Pod, its Namespace and indexes of everything else
    (Services by selector, selector policies, PeerAuthentications, waypoints, node
    localities), never on other Pods, with one exception: a waypoint counts as ready when
    one of its own Pods is. So a change confined to Pods that are not waypoint instances
    re-derives just those Pods; anything else (another kind, a waypoint's Pod, a Pod whose
    labels cannot be read, too many Pods) rebuilds everything.
    """

    def __init__(self, max_patch: int = DEFAULT_MAX_PATCH) -> None:
        self.max_patch = max_patch
        self._build: _Build | None = None
        self.full_builds = 0
        self.patches = 0

    @property
    def last(self) -> Reconciliation | None:
        return self._build.result if self._build is not None else None

    def can_patch(self, state: ClusterState, changed: Collection[Key] | None) -> bool:
        """Whether ``update(state, changed)`` will patch (cheap) rather than rebuild.

        ``changed`` holds the keys whose objects differ between the last state this
        reconciler saw and ``state``; None means unknown.
        """
        build = self._build
        if build is None or changed is None or not build.trackable:
            return False
        if len(changed) > self.max_patch or state.settings != build.state.settings:
            return False
        for key in changed:
            if _ignorable(key, build.state, state):
                continue
            if key[0] != KIND_POD:
                return False
            for pod in (build.state.get(*key), state.get(*key)):
                if pod is not None and _may_affect_waypoints(pod):
                    return False
        return True

    def update(self, state: ClusterState, changed: Collection[Key] | None) -> Reconciliation:
        """The reconciliation of ``state``: patched if ``can_patch`` says so, else a full build."""
        if self._build is not None and self.can_patch(state, changed):
            assert changed is not None
            pods = sorted(key for key in changed if not _ignorable(key, self._build.state, state))
            if not pods:
                return replace(self._build.result, delta=Delta())
            self.patches += 1
            try:
                return self._build.patch(state, pods)
            except BaseException:
                self._build = None  # half-patched: the next update starts over
                raise
        self._build = _Build.full(state)
        self.full_builds += 1
        return self._build.result


# Kinds the Kubernetes source follows that no part of the build reads (Services' endpoints come
# from Pods and selectors; the root certificate ConfigMaps are the writer's). The EndpointSlice
# controller rewrites slices as pods change, so without this every pod change on a cluster would
# come with a full build.
_UNREAD_KINDS = frozenset({"EndpointSlice", "ConfigMap"})


def _ignorable(key: Key, before: ClusterState, after: ClusterState) -> bool:
    """Whether the change of ``key`` leaves the model as it is: an unread kind, or a Node whose
    locality (all the build reads of it) stayed the same, as in a kubelet's status update."""
    if key[0] in _UNREAD_KINDS:
        return True
    if key[0] != KIND_NODE:
        return False
    localities = []
    for node in (before.get(*key), after.get(*key)):
        try:
            localities.append(None if node is None else node_locality(node, object_id(node, KIND_NODE)))
        except InvalidObject:
            return False
    return localities[0] == localities[1]


def _may_affect_waypoints(pod: dict[str, Any]) -> bool:
    # WaypointIndex reads Pods labelled with a gateway name (a waypoint's instances) to
    # decide readiness; a Pod whose labels do not parse might be one.
    try:
        return GATEWAY_NAME_LABEL in labels(pod, object_id(pod, "Pod"))
    except InvalidObject:
        return True


# --- status writes --------------------------------------------------------------------------------


def _want(
    writes: list[StatusWrite],
    obj: dict[str, Any],
    oid: ObjectId,
    condition_type: str,
    desired: dict[str, Any] | None,
) -> None:
    """Queue a write if ``desired`` differs from the object's current condition."""
    write = _status_write(obj, oid, condition_type, desired)
    if write is not None:
        writes.append(write)


def _status_write(
    obj: dict[str, Any], oid: ObjectId, condition_type: str, desired: dict[str, Any] | None
) -> StatusWrite | None:
    if desired is not None and "observedGeneration" not in desired:
        generation = _generation(obj)
        if generation:
            # Every condition says which spec it describes, as Kubernetes conditions do.
            desired = dict(desired, observedGeneration=generation)
    current = _current_condition(obj, condition_type)
    if desired is None:
        if current is None:
            return None
    elif current is not None and all(current.get(k) == v for k, v in desired.items()):
        return None
    api_version = obj.get("apiVersion")
    if not isinstance(api_version, str):
        api_version = _DEFAULT_API_VERSION.get(oid.kind, "v1")
    return StatusWrite(api_version, oid.kind, oid.namespace, oid.name, condition_type, desired)


def _generation(obj: dict[str, Any]) -> int:
    meta = obj.get("metadata")
    generation = meta.get("generation") if isinstance(meta, dict) else None
    return generation if isinstance(generation, int) and not isinstance(generation, bool) else 0


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
