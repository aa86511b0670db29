"""Config distribution: versions of the model and what each subscriber should be sent next.

Sans-IO: the HTTP layer asks `next_message(view, version)` and writes the bytes. Each publication
keeps the global delta from its predecessor, so a subscriber that is current gets a filtered copy
of one delta, one that fell behind (slow, or reconnecting with the version it holds) gets the
merged deltas since its version, and one too far behind gets a snapshot. A slow subscriber thus
costs only itself: versions coalesce while it is busy, nobody waits for it.

ztunnels see every workload and service (any of them can be a destination) but only the
authorizations they enforce: GLOBAL ones, those of namespaces with a workload on their node, and
selector policies a workload on their node lists (Istio's mesh-wide STRICT lives in the root
namespace and reaches workloads that way). ztunnels never receive ConfigObjects.

Waypoints see every workload, service and authorization, and the ConfigObjects that concern
the Gateway they subscribed with (`View.gateway`, "ns/name"): that Gateway; HTTPRoutes and
GRPCRoutes with a parentRef to a Service bound to it; AuthorizationPolicies whose targetRefs
name that Gateway, a Service bound to it, or (in the root namespace) the istio-waypoint
GatewayClass; VirtualServices whose ``hosts`` and DestinationRules whose ``host`` name a Service
bound to it (Istio host names, read relative to the object's namespace: ``wisp.istio_hosts``),
and the DestinationRules of every Service its routes and VirtualServices send to (the subsets
and traffic policy of a destination apply where the request leaves, at this waypoint). A Service is bound to the waypoint its `waypoint` GatewayAddress names, usable or
not (so a waypoint has its config before it turns ready). A waypoint that names no Gateway gets
every ConfigObject. When a binding changes, objects that became (or stopped being) a waypoint's
business are sent (or removed) in the next delta although they did not change themselves.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

from wisp.controlplane.protocol import encode_delta, encode_resource, encode_snapshot
from wisp.istio_hosts import host_key
from wisp.model import (
    KIND_AUTHORIZATION,
    KIND_CONFIG_OBJECT,
    KIND_SERVICE,
    KIND_WORKLOAD,
    Authorization,
    ConfigObject,
    Delta,
    ModelSnapshot,
    ModelError,
    Resource,
    ResourceKey,
    Service,
    Workload,
    diff,
    resource_key,
)

ROLE_ZTUNNEL = "ztunnel"
ROLE_WAYPOINT = "waypoint"
DEFAULT_ROOT_NAMESPACE = "istio-system"
WAYPOINT_GATEWAY_CLASS = "istio-waypoint"
_GATEWAY_GROUP = "gateway.networking.k8s.io"
_CORE_GROUPS = ("", "core")
DEFAULT_HISTORY = 64
_DELTA_MESSAGE_CACHE = 256


@dataclass(slots=True, frozen=True)
class View:
    """Who is subscribing: a ztunnel on a node, or a waypoint (of the Gateway "ns/name", if given)."""

    role: str
    node: str | None = None
    gateway: str | None = None

    @property
    def filtered(self) -> bool:
        return self.role == ROLE_ZTUNNEL


@dataclass(slots=True)
class _Publication:
    number: int
    snapshot: ModelSnapshot
    delta: Delta
    # Per node, what makes a policy its business: ("ns", namespace) of a local workload, and
    # ("ref", "ns/name") of a selector policy a local workload lists.
    node_scopes: dict[str, frozenset[tuple[str, str]]]
    authorizations_by_namespace: dict[str, list[Authorization]]
    # Built on first use by a waypoint: Gateway "ns/name" (or "*" for every waypoint) -> the
    # ConfigObject keys that concern it.
    waypoint_objects: dict[str, frozenset[str]] | None = None


@dataclass(slots=True)
class SubscriberStatus:
    """What the control plane knows of one subscriber, for acks, debugging and tests."""

    id: str
    view: View
    # Who authenticated as this subscriber (operator/auth.py's Caller): ids are per caller, so
    # one node's credential cannot take over, or squat, another node's subscription.
    owner: Hashable = None
    connected: bool = True
    sent_version: str | None = None
    acked_version: str | None = None
    last_error: str | None = None
    sent_at: dict[str, float] = field(default_factory=dict)
    ack_event: asyncio.Event = field(default_factory=asyncio.Event)
    # Sent and not yet acknowledged, oldest first: (version number, size in bytes, sent at).
    in_flight: deque[tuple[int, int, float]] = field(default_factory=deque)

    def in_flight_bytes(self) -> int:
        return sum(size for _, size, _ in self.in_flight)


class Distributor:
    def __init__(self, history: int = DEFAULT_HISTORY, root_namespace: str = DEFAULT_ROOT_NAMESPACE) -> None:
        self.epoch = secrets.token_hex(4)
        self._history: deque[_Publication] = deque(maxlen=history)
        self._changed = asyncio.Event()
        self._encoded: dict[ResourceKey, tuple[Resource, dict]] = {}
        # Workloads per (node, scope), kept up to date from each delta so a publication
        # costs O(change), not O(workloads).
        self._node_scope_counts: dict[str, dict[tuple[str, str], int]] = {}
        # Encoded deltas to the current version, by (base version, filter); reset on publish.
        self._delta_messages: dict[tuple, bytes] = {}
        # By (owner, subscriber id): the id a client names is unique only among its caller's.
        self.subscribers: dict[tuple[Hashable, str], SubscriberStatus] = {}
        self.root_namespace = root_namespace
        # ConfigObject key -> (object, what it targets), parsed once per object version.
        self._targets: dict[str, tuple[ConfigObject, tuple[tuple[str, str], ...]]] = {}
        self.publish(ModelSnapshot())

    # -- publishing ----------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self._version(self._history[-1].number)

    @property
    def snapshot(self) -> ModelSnapshot:
        return self._history[-1].snapshot

    def publish(self, snapshot: ModelSnapshot, delta: Delta | None = None) -> str | None:
        """Make `snapshot` current; returns its version, or None if nothing changed.

        `delta`, if given, must be exactly `diff(self.snapshot, snapshot)` (the reconciler knows
        it when it patched one pod); otherwise it is computed, comparing every resource.
        """
        previous = self._history[-1] if self._history else None
        if delta is None:
            delta = diff(previous.snapshot, snapshot) if previous else Delta(tuple(snapshot.resources()), ())
        if previous is not None and not delta:
            return None
        for key in delta.removals:
            self._encoded.pop(key, None)
        if previous is None:
            node_scopes = self._count_node_scopes(snapshot)
            authorizations = _authorizations_by_namespace(snapshot)
        else:
            node_scopes = self._update_node_scopes(previous, delta)
            authorizations = previous.authorizations_by_namespace
            if any(k.kind == KIND_AUTHORIZATION for k in delta.removals) or any(
                isinstance(obj, Authorization) for obj in delta.upserts
            ):
                authorizations = _authorizations_by_namespace(snapshot)
        waypoint_objects = None
        if previous is not None and not any(
                k.kind in (KIND_CONFIG_OBJECT, KIND_SERVICE) for k in delta.removals) and not any(
                isinstance(obj, (ConfigObject, Service)) for obj in delta.upserts):
            waypoint_objects = previous.waypoint_objects  # no object or binding changed
        publication = _Publication(
            number=previous.number + 1 if previous else 0,
            snapshot=snapshot,
            delta=delta,
            node_scopes=node_scopes,
            authorizations_by_namespace=authorizations,
            waypoint_objects=waypoint_objects,
        )
        self._history.append(publication)
        self._delta_messages.clear()
        # Wake everyone waiting on this version; later waiters wait on a fresh event.
        self._changed.set()
        self._changed = asyncio.Event()
        return self._version(publication.number)

    async def wait_for_change(self, version: str | None, timeout: float) -> bool:
        """Wait until the current version differs from `version`; False on timeout."""
        if version != self.version:
            return True
        event = self._changed
        try:
            # asyncio.timeout rather than wait_for, which runs the wait as another task: this
            # is every stream's wait, woken for every change.
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        return True

    def _count_node_scopes(self, snapshot: ModelSnapshot) -> dict[str, frozenset[tuple[str, str]]]:
        counts = self._node_scope_counts = {}
        for workload in snapshot.workloads.values():
            if workload.node:
                per_node = counts.setdefault(workload.node, {})
                for scope in _scopes(workload):
                    per_node[scope] = per_node.get(scope, 0) + 1
        return {node: frozenset(scopes) for node, scopes in counts.items()}

    def _update_node_scopes(self, previous: _Publication, delta: Delta) -> dict[str, frozenset[tuple[str, str]]]:
        counts = self._node_scope_counts
        touched: set[str] = set()

        def count(workload: Workload | None, step: int) -> None:
            if workload is None or not workload.node:
                return
            per_node = counts.setdefault(workload.node, {})
            for scope in _scopes(workload):
                left = per_node.get(scope, 0) + step
                if left:
                    per_node[scope] = left
                else:
                    del per_node[scope]
            touched.add(workload.node)

        before = previous.snapshot.workloads
        for key in delta.removals:
            if key.kind == KIND_WORKLOAD:
                count(before.get(key.key), -1)
        for obj in delta.upserts:
            if isinstance(obj, Workload):
                old = before.get(obj.uid)
                if (old is not None and old.node == obj.node and old.namespace == obj.namespace
                        and old.authorization_policies == obj.authorization_policies):
                    continue
                count(old, -1)
                count(obj, +1)
        if not touched:
            return previous.node_scopes
        result = dict(previous.node_scopes)
        for node in touched:
            scopes = counts.get(node)
            if scopes:
                result[node] = frozenset(scopes)
            else:
                result.pop(node, None)
                counts.pop(node, None)
        return result

    def _version(self, number: int) -> str:
        return f"{self.epoch}-{number}"

    def _find(self, version: str | None) -> _Publication | None:
        number = self._number(version) if version else None
        if number is None:
            return None
        first = self._history[0].number
        if not first <= number <= self._history[-1].number:
            return None
        return self._history[number - first]

    # -- what to send --------------------------------------------------------------------------
    def next_message(self, view: View, version: str | None) -> tuple[str, bytes] | None:
        """(new version, encoded message) to bring a subscriber at `version` up to date."""
        current = self._history[-1]
        if version == self._version(current.number):
            return None
        base = self._find(version)
        if base is None:
            return self._version(current.number), self._snapshot_message(view, current)
        # Subscribers at the same version with the same filter get the same bytes: a pod change
        # fanned out to a node's ztunnels is encoded once, not once per stream.
        key = (base.number, view.filtered, self._scopes_of(view, base) if view.filtered else None,
               self._scopes_of(view, current) if view.filtered else None, view.gateway)
        message = self._delta_messages.get(key)
        if message is None:
            if len(self._delta_messages) >= _DELTA_MESSAGE_CACHE:
                self._delta_messages.clear()
            message = self._delta_messages[key] = self._delta_message(view, base, current)
        return self._version(current.number), message

    def _scopes_of(self, view: View, publication: _Publication) -> frozenset[tuple[str, str]]:
        return publication.node_scopes.get(view.node or "", frozenset())

    def _wanted(self, view: View, obj: Resource, scopes: frozenset[tuple[str, str]],
                objects: frozenset[str] | None = None) -> bool:
        if isinstance(obj, ConfigObject):
            if view.filtered:
                return False  # ztunnels never receive them
            return objects is None or f"{obj.kind}/{obj.namespace}/{obj.name}" in objects
        if not view.filtered or not isinstance(obj, Authorization):
            return True
        return _relevant(obj, scopes)

    # -- what concerns a waypoint ----------------------------------------------------------------
    def _objects_of(self, view: View, publication: _Publication) -> frozenset[str] | None:
        """The ConfigObject keys a waypoint view gets; None = all of them (no Gateway named)."""
        if view.filtered or view.gateway is None:
            return None
        index = publication.waypoint_objects
        if index is None:
            index = publication.waypoint_objects = self._index_waypoint_objects(publication.snapshot)
        return index.get(view.gateway, frozenset()) | index.get("*", frozenset())

    def _index_waypoint_objects(self, snapshot: ModelSnapshot) -> dict[str, frozenset[str]]:
        bound: dict[str, str] = {}  # Service "ns/name" -> its waypoint's Gateway "ns/name"
        names: dict[str, str] = {}  # Service hostname -> "ns/name"
        for service in snapshot.services.values():
            names[service.hostname] = f"{service.namespace}/{service.name}"
            if service.waypoint is not None and service.waypoint.gateway:
                bound[f"{service.namespace}/{service.name}"] = service.waypoint.gateway
        index: dict[str, set[str]] = {}
        # Gateway -> Services its routes send to; Service -> the DestinationRules for it.
        destinations: dict[str, set[str]] = {}
        rules: dict[str, set[str]] = {}
        live = set()
        for key, obj in snapshot.objects.items():
            live.add(key)
            gateways = []
            sends_to = []
            for target, value in self._targets_of(key, obj):
                if target in ("host", "destination") and "/" not in value:
                    # A fully qualified Istio host: the Service of that hostname.
                    target, value = ("service" if target == "host" else target), names.get(value, "")
                if target == "destination":
                    sends_to.append(value)
                    continue
                if target == "service" and obj.kind == "DestinationRule":
                    rules.setdefault(value, set()).add(key)
                gateway = value if target == "gateway" else bound.get(value) if target == "service" else "*"
                if gateway:
                    index.setdefault(gateway, set()).add(key)
                    gateways.append(gateway)
            for gateway in gateways:
                destinations.setdefault(gateway, set()).update(sends_to)
        for gateway, services in destinations.items():
            for service in services:
                index[gateway].update(rules.get(service, ()))
        for key in self._targets.keys() - live:
            del self._targets[key]
        return {gateway: frozenset(keys) for gateway, keys in index.items()}

    def _targets_of(self, key: str, obj: ConfigObject) -> tuple[tuple[str, str], ...]:
        cached = self._targets.get(key)
        if cached is not None and cached[0] is obj:
            return cached[1]
        try:
            targets = _targets(obj, obj.object(), self.root_namespace)
        except ModelError:
            targets = ()  # not JSON: concerns nobody (the waypoint would refuse it anyway)
        self._targets[key] = (obj, targets)
        return targets

    def _snapshot_message(self, view: View, publication: _Publication) -> bytes:
        scopes = self._scopes_of(view, publication)
        objects = self._objects_of(view, publication)
        resources = (
            self._encode(obj) for obj in publication.snapshot.resources()
            if self._wanted(view, obj, scopes, objects)
        )
        return encode_snapshot(self._version(publication.number), resources)

    def _delta_message(self, view: View, base: _Publication, current: _Publication) -> bytes:
        # Merge every delta after `base`: the last word on each key wins.
        changes: dict[ResourceKey, Resource | None] = {}
        for publication in self._history:
            if publication.number <= base.number:
                continue
            for key in publication.delta.removals:
                changes[key] = None
            for obj in publication.delta.upserts:
                changes[resource_key(obj)] = obj
        upserts: list[dict] = []
        removals: list[ResourceKey] = []
        now = self._scopes_of(view, current)
        objects_now = self._objects_of(view, current)
        for key, obj in changes.items():
            if obj is None:
                if not (view.filtered and key.kind == KIND_CONFIG_OBJECT):
                    removals.append(key)
            elif self._wanted(view, obj, now, objects_now):
                upserts.append(self._encode(obj))
            elif not (view.filtered and key.kind == KIND_CONFIG_OBJECT):
                removals.append(key)  # changed, but no longer this subscriber's business
        if objects_now is not None:
            objects_before = self._objects_of(view, base)
            assert objects_before is not None
            # Unchanged objects that became (or stopped being) this waypoint's business.
            for key_text in objects_now ^ objects_before:
                key = ResourceKey(KIND_CONFIG_OBJECT, key_text)
                if key in changes:
                    continue
                if key_text in objects_now:
                    upserts.append(self._encode(current.snapshot.objects[key_text]))
                else:
                    removals.append(key)
        if view.filtered:
            before = self._scopes_of(view, base)
            # Unchanged policies that became (or stopped being) this node's business.
            candidates: dict[ResourceKey, Authorization] = {}
            for kind, value in now ^ before:
                if kind == "ns":
                    for obj in current.authorizations_by_namespace.get(value, ()):
                        candidates[resource_key(obj)] = obj
                else:
                    obj = current.snapshot.authorizations.get(value)
                    if obj is not None:
                        candidates[resource_key(obj)] = obj
            for key, obj in candidates.items():
                if key in changes:
                    continue
                was, is_now = _relevant(obj, before), _relevant(obj, now)
                if is_now and not was:
                    upserts.append(self._encode(obj))
                elif was and not is_now:
                    removals.append(key)
        return encode_delta(self._version(current.number), self._version(base.number), upserts, removals)

    def _encode(self, obj: Resource) -> dict:
        # Encoding dominates snapshot cost; objects are immutable, so cache per instance.
        key = resource_key(obj)
        cached = self._encoded.get(key)
        if cached is not None and cached[0] is obj:
            return cached[1]
        encoded = encode_resource(obj)
        self._encoded[key] = (obj, encoded)
        return encoded

    # -- subscriber bookkeeping ----------------------------------------------------------------
    def connected(self, subscriber_id: str, view: View, owner: Hashable = None) -> SubscriberStatus:
        """The status of `owner`'s subscriber `subscriber_id`, new if it has none of that id (or
        had it with another view). Another caller's subscriber of the same id is untouched."""
        key = (owner, subscriber_id)
        status = self.subscribers.get(key)
        if status is None or status.view != view:
            status = self.subscribers[key] = SubscriberStatus(subscriber_id, view, owner)
        status.connected = True
        status.last_error = None
        return status

    def sent(self, status: SubscriberStatus, version: str, size: int = 0) -> None:
        now = time.monotonic()
        status.sent_version = version
        status.sent_at[version] = now
        if len(status.sent_at) > 16:
            status.sent_at.pop(next(iter(status.sent_at)))
        number = self._number(version)
        if number is not None:
            status.in_flight.append((number, size, now))

    def acked(self, subscriber_id: str, view: View, version: str, error: str | None,
              owner: Hashable = None) -> bool:
        """Record an ack (error None) or a NACK; False if `owner` has no such subscriber.

        An ack covers every version up to it: subscribers may acknowledge only the latest of
        several they applied in a row.
        """
        status = self.subscribers.get((owner, subscriber_id))
        # The Gateway a waypoint named travels on its stream only; acks by POST do not repeat it.
        if status is None or (status.view.role, status.view.node) != (view.role, view.node):
            return False
        if error:
            status.last_error = error
        else:
            status.acked_version = version
            status.last_error = None
            number = self._number(version)
            if number is not None:
                while status.in_flight and status.in_flight[0][0] <= number:
                    status.in_flight.popleft()
        status.ack_event.set()
        return True

    def ack_deadline(self, status: SubscriberStatus, timeout: float) -> float | None:
        """When (time.monotonic) the oldest unacknowledged message runs out of time, if any."""
        return status.in_flight[0][2] + timeout if status.in_flight else None

    async def wait_for_room(self, status: SubscriberStatus, window: int, window_bytes: int, timeout: float) -> bool:
        """Wait until the subscriber may be sent another message; False on a NACK or when its
        oldest unacknowledged message is older than `timeout`.

        At most `window` messages, and `window_bytes` beyond the first, are in flight per
        subscriber: one that stops reading costs that much memory, not a backlog, and
        everything published meanwhile reaches it as one merged delta once it catches up.
        """
        while True:
            if status.last_error is not None:
                return False
            if len(status.in_flight) < window and (
                    not status.in_flight or status.in_flight_bytes() < window_bytes):
                return True
            status.ack_event.clear()
            remaining = self.ack_deadline(status, timeout) - time.monotonic()
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await status.ack_event.wait()
            except TimeoutError:
                return False

    def _number(self, version: str) -> int | None:
        epoch, _, number = version.rpartition("-")
        return int(number) if epoch == self.epoch and number.isdigit() else None


def _scopes(workload: Workload) -> list[tuple[str, str]]:
    return [("ns", workload.namespace), *(("ref", key) for key in workload.authorization_policies)]


def _relevant(policy: Authorization, scopes: frozenset[tuple[str, str]]) -> bool:
    """Does a ztunnel whose local workloads give `scopes` enforce `policy`?"""
    return (policy.scope == "GLOBAL" or ("ns", policy.namespace) in scopes
            or ("ref", f"{policy.namespace}/{policy.name}") in scopes)


def _targets(obj: ConfigObject, body: dict, root_namespace: str) -> tuple[tuple[str, str], ...]:
    """What a ConfigObject concerns: ("gateway", "ns/name"), ("service", "ns/name"), ("host", fqdn)
    (the Service of that hostname), ("all", ""); and ("destination", "ns/name" or fqdn): a Service
    its routes send to, whose DestinationRules go wherever the object goes."""
    spec = body.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    ns = obj.namespace
    if obj.kind == "Gateway":
        return (("gateway", f"{ns}/{obj.name}"),)
    if obj.kind == "Telemetry" and not (spec.get("targetRefs") or spec.get("targetRef")):
        # Mesh-wide (root namespace) or namespace-wide: every waypoint sorts out its own
        # (waypoint/tracing.py compile_tracing).
        return (("all", ""),)
    out: list[tuple[str, str]] = []
    if obj.kind in ("HTTPRoute", "GRPCRoute"):
        for ref in spec.get("parentRefs") or []:
            if (isinstance(ref, dict) and ref.get("kind") == "Service" and ref.get("group", _GATEWAY_GROUP)
                    in _CORE_GROUPS and isinstance(ref.get("name"), str)):
                namespace = ref.get("namespace") if isinstance(ref.get("namespace"), str) and ref["namespace"] else ns
                out.append(("service", f"{namespace}/{ref['name']}"))
        for rule in spec.get("rules") or []:
            for ref in (rule.get("backendRefs") or []) if isinstance(rule, dict) else []:
                if (isinstance(ref, dict) and ref.get("kind", "Service") == "Service"
                        and ref.get("group", "") in _CORE_GROUPS and isinstance(ref.get("name"), str)):
                    namespace = ref.get("namespace") if isinstance(ref.get("namespace"), str) and ref["namespace"] else ns
                    out.append(("destination", f"{namespace}/{ref['name']}"))
        return tuple(out)
    if obj.kind == "VirtualService":
        for host in spec.get("hosts") or []:
            out.extend(_host_target("service", host, ns))
        for rule in spec.get("http") or []:
            for item in (rule.get("route") or []) if isinstance(rule, dict) else []:
                destination = item.get("destination") if isinstance(item, dict) else None
                if isinstance(destination, dict):
                    out.extend(_host_target("destination", destination.get("host"), ns))
        return tuple(out)
    if obj.kind == "DestinationRule":
        return tuple(_host_target("service", spec.get("host"), ns))
    refs = spec.get("targetRefs") or ([spec["targetRef"]] if spec.get("targetRef") else [])
    for ref in refs if isinstance(refs, list) else []:
        if not isinstance(ref, dict) or not isinstance(ref.get("name"), str):
            continue
        if ref.get("namespace") and ref.get("namespace") != ns:
            continue  # cross-namespace targets never match (waypoint/authz/targets.py)
        group, kind = ref.get("group") or "", ref.get("kind")
        if kind == "Service" and group in _CORE_GROUPS:
            out.append(("service", f"{ns}/{ref['name']}"))
        elif kind == "Gateway" and group == _GATEWAY_GROUP:
            out.append(("gateway", f"{ns}/{ref['name']}"))
        elif kind == "GatewayClass" and group == _GATEWAY_GROUP and ref["name"] == WAYPOINT_GATEWAY_CLASS \
                and ns == root_namespace:
            out.append(("all", ""))
    return tuple(out)


def _host_target(target: str, host: object, namespace: str) -> list[tuple[str, str]]:
    """An Istio host as a target: ("service"/"destination", "ns/name"), or the FQDN as ("host",
    fqdn) / ("destination", fqdn) for the index to look up by hostname."""
    key = host_key(host, namespace) if isinstance(host, str) else None
    if key is None:
        return []
    if isinstance(key, tuple):
        return [(target, f"{key[0]}/{key[1]}")]
    return [("host" if target == "service" else target, key)]


def _authorizations_by_namespace(snapshot: ModelSnapshot) -> dict[str, list[Authorization]]:
    result: dict[str, list[Authorization]] = {}
    for policy in snapshot.authorizations.values():
        result.setdefault(policy.namespace, []).append(policy)
    return result

