"""Which AuthorizationPolicies a waypoint enforces, and for which traffic (``targetRefs``).

Istio's rules for a waypoint (``pilot/pkg/model/policyattachment.go``, ``ShouldAttachPolicy`` with
a waypoint proxy), which this module follows:

- A policy without ``targetRefs``/``targetRef`` (a ``selector`` policy, or a namespace-wide one)
  never applies at a waypoint: ztunnel enforces it, at L4.
- ``kind: Gateway`` (group ``gateway.networking.k8s.io``) named as the waypoint, the policy in the
  waypoint's namespace: all traffic through the waypoint.
- ``kind: GatewayClass`` named ``istio-waypoint``, the policy in the root namespace: all traffic
  through every waypoint. This is the only mesh-wide form; a root-namespace policy targeting a
  Gateway or a Service applies to that object only, like any other.
- ``kind: Service`` (core group, ``""``): requests addressed to that Service, the policy in the
  Service's namespace. ``kind: ServiceEntry`` (``networking.istio.io``) likewise for
  ServiceEntries. Requests sent straight to a pod IP have no Service: only Gateway and
  GatewayClass policies apply to them.
- A ``targetRef.namespace`` other than the policy's own never matches (cross-namespace references
  are not supported). The legacy single ``targetRef`` is read when ``targetRefs`` is empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GATEWAY_GROUP = "gateway.networking.k8s.io"
ISTIO_NETWORKING_GROUP = "networking.istio.io"
WAYPOINT_GATEWAY_CLASS = "istio-waypoint"
DEFAULT_ROOT_NAMESPACE = "istio-system"


class BadTarget(ValueError):
    """``targetRefs`` that cannot be read (not a list of objects with string fields)."""


@dataclass(frozen=True, slots=True)
class WaypointRef:
    """The waypoint's Gateway."""

    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class ServiceRef:
    """The Service (or ServiceEntry) a request was addressed to."""

    namespace: str
    name: str
    kind: str = "Service"


@dataclass(frozen=True, slots=True)
class Attachment:
    """Where a policy applies at one waypoint; ``reason`` says why when it applies nowhere."""

    whole_waypoint: bool = False
    services: frozenset[ServiceRef] = field(default_factory=frozenset)
    reason: str = ""

    @property
    def applies(self) -> bool:
        return self.whole_waypoint or bool(self.services)


def _canonical_group(group: str) -> str:
    return "core" if group == "" else group


def target_refs(spec: dict[str, Any]) -> list[dict[str, str]]:
    """``targetRefs``, or the legacy ``targetRef`` when ``targetRefs`` is empty."""
    refs = spec.get("targetRefs")
    if not refs:
        single = spec.get("targetRef")
        refs = [single] if single else []
    if not isinstance(refs, list):
        raise BadTarget("spec.targetRefs must be a list")
    out = []
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict):
            raise BadTarget(f"spec.targetRefs[{i}] must be an object")
        read = {}
        for key in ("group", "kind", "name", "namespace"):
            value = ref.get(key, "")
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise BadTarget(f"spec.targetRefs[{i}].{key} must be a string")
            read[key] = value
        out.append(read)
    return out


def attachment(policy_namespace: str, spec: dict[str, Any], waypoint: WaypointRef,
               root_namespace: str = DEFAULT_ROOT_NAMESPACE) -> Attachment:
    """Where a policy in ``policy_namespace`` with this ``spec`` applies at ``waypoint``."""
    refs = target_refs(spec)
    if not refs:
        what = "a selector" if spec.get("selector") is not None else "no targetRefs"
        return Attachment(reason=f"has {what}: enforced by ztunnel, not by waypoints")
    whole = False
    services: set[ServiceRef] = set()
    for ref in refs:
        group, kind, name, namespace = (_canonical_group(ref["group"]), ref["kind"], ref["name"],
                                        ref["namespace"])
        if namespace and namespace != policy_namespace:
            continue
        if group == "core" and kind == "Service":
            services.add(ServiceRef(policy_namespace, name, "Service"))
        elif group == ISTIO_NETWORKING_GROUP and kind == "ServiceEntry":
            services.add(ServiceRef(policy_namespace, name, "ServiceEntry"))
        elif group == GATEWAY_GROUP and kind == "GatewayClass":
            if name == WAYPOINT_GATEWAY_CLASS and policy_namespace == root_namespace:
                whole = True
        elif group == GATEWAY_GROUP and kind == "Gateway":
            if name == waypoint.name and policy_namespace == waypoint.namespace:
                whole = True
    if whole or services:
        return Attachment(whole, frozenset(services))
    return Attachment(reason="targets neither this waypoint, its GatewayClass nor a Service")
