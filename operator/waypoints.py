"""Waypoint binding: which waypoint, if any, carries a Service's or a Pod's traffic.

Istio's rules (ambient-api §2): the object's own ``istio.io/use-waypoint`` label
beats its namespace's; ``none`` opts out; ``istio.io/use-waypoint-namespace``
names the waypoint's namespace, which must admit the client through the HBONE
listener's ``allowedRoutes.namespaces.from`` (Same by default, All, Selector);
the Gateway's ``istio.io/waypoint-for`` label (service by default) says whether
services, workloads, both or neither may bind. Every decision comes with the
``istio.io/WaypointBound`` condition Istio writes, in Istio's words.

Readiness, failing closed. Istio reports WaypointIsNotReady until the Gateway is
ready (it waits for ``status.addresses``). Not binding meanwhile would send the
traffic direct, past the L7 policy the waypoint exists to enforce, so an object
bound to a missing or unready waypoint is bound anyway with an unusable address
(``GatewayAddress`` with an empty ``address``, naming the waypoint): ztunnel
refuses its connections and the condition says why. (AttachmentDenied and
UnsupportedTrafficType stay unbound, as in Istio: the waypoint never takes that
traffic, so there is no policy to bypass.) A waypoint counts as ready when we know its address (the
ClusterIP of its Service, named after the Gateway, or else an IP in the
Gateway's ``status.addresses``) and it has capacity: a Running+Ready pod
labelled ``gateway.networking.k8s.io/gateway-name=<name>``, or its Deployment
reports ``readyReplicas >= 1``, or the Gateway already has ``status.addresses``
(Istio's own signal, which it never withdraws once set).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from wisp.model import HBONE_MTLS_PORT, GatewayAddress
from wisp_operator import pods
from wisp_operator.cluster import ClusterState
from wisp.kube import ObjectId, dicts, get, integer, items, labels, mapping, string
from wisp_operator.errors import InvalidObject, object_id
from wisp_operator.selectors import selector_matches

USE_WAYPOINT_LABEL = "istio.io/use-waypoint"
USE_WAYPOINT_NAMESPACE_LABEL = "istio.io/use-waypoint-namespace"
WAYPOINT_FOR_LABEL = "istio.io/waypoint-for"
WAYPOINT_GATEWAY_CLASS = "istio-waypoint"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
MANAGED_GATEWAY_LABEL = "gateway.istio.io/managed"
MANAGED_BY_MESH = "istio.io-mesh-controller"
CONDITION_WAYPOINT_BOUND = "istio.io/WaypointBound"

TRAFFIC_SERVICE = "service"
TRAFFIC_WORKLOAD = "workload"
TRAFFIC_ALL = "all"

REASON_ACCEPTED = "WaypointAccepted"
REASON_NOT_READY = "WaypointIsNotReady"
REASON_ATTACHMENT_DENIED = "AttachmentDenied"
REASON_UNSUPPORTED_TRAFFIC = "UnsupportedTrafficType"


@dataclass(frozen=True, slots=True)
class Waypoint:
    """A Gateway of class istio-waypoint, as far as binding cares."""

    namespace: str
    name: str
    traffic_type: str
    allowed_from: str
    allowed_selector: dict[str, Any] | None
    ready: bool
    address: GatewayAddress | None
    # A Running+Ready instance or a Deployment with a ready replica (not the Gateway's status).
    has_instance: bool = False

    def carries(self, traffic: str) -> bool:
        return self.traffic_type in (traffic, TRAFFIC_ALL)

    def admits(self, client_namespace: str, namespace_obj: dict[str, Any] | None) -> bool:
        if self.allowed_from == "All":
            return True
        if self.allowed_from == "Selector":
            if namespace_obj is None or self.allowed_selector is None:
                # As Kubernetes converts selectors: missing selects nothing, {} everything.
                return False
            ns_id = object_id(namespace_obj, "Namespace")
            gw_id = ObjectId("Gateway", self.namespace, self.name, InvalidObject)
            # The selector belongs to the Gateway; a bad one is the Gateway's fault.
            return selector_matches(
                self.allowed_selector, labels(namespace_obj, ns_id), gw_id, "spec.listeners.allowedRoutes.namespaces.selector"
            )
        return client_namespace == self.namespace


@dataclass(frozen=True, slots=True)
class WaypointBinding:
    """Outcome for one Service or Pod.

    ``waypoint`` is the "ns/name" asked for ("" if none), ``address`` is set when traffic is
    bound (unusable, see `refused`, when the waypoint is missing or not ready), ``condition`` is the WaypointBound condition to write, or None when
    nothing asks for a waypoint (any old condition should then be removed).
    """

    waypoint: str = ""
    address: GatewayAddress | None = None
    condition: dict[str, str] | None = None

    @property
    def refused(self) -> bool:
        """Bound to a waypoint that cannot take the traffic: ztunnel refuses it."""
        return self.address is not None and not self.address.usable


NO_BINDING = WaypointBinding()


def _condition(status: bool, reason: str, message: str) -> dict[str, str]:
    return {
        "type": CONDITION_WAYPOINT_BOUND,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
    }


class WaypointIndex:
    """Every waypoint in a ClusterState, resolved once per build."""

    def __init__(self, state: ClusterState) -> None:
        self._state = state
        self._ready_instances: dict[str, set[str]] = {}
        self.waypoints: dict[tuple[str, str], Waypoint] = {}
        # Malformed Gateways are skipped (objects bound to them see "not ready") and reported here.
        self.errors: list[InvalidObject] = []
        default_traffic = TRAFFIC_SERVICE
        gw_class = state.get("GatewayClass", "", WAYPOINT_GATEWAY_CLASS)
        if gw_class is not None:
            try:
                class_id = object_id(gw_class, "GatewayClass")
                default_traffic = labels(gw_class, class_id).get(WAYPOINT_FOR_LABEL, default_traffic)
            except InvalidObject as exc:
                self.errors.append(exc)
        for gw in state.gateways():
            try:
                oid = object_id(gw, "Gateway")
                if string(gw, "spec.gatewayClassName", oid) != WAYPOINT_GATEWAY_CLASS:
                    continue
                self.waypoints[(oid.namespace, oid.name)] = self._waypoint(gw, oid, default_traffic)
            except InvalidObject as exc:
                self.errors.append(exc)

    def _waypoint(self, gw: dict[str, Any], oid: ObjectId, default_traffic: str) -> Waypoint:
        traffic = labels(gw, oid).get(WAYPOINT_FOR_LABEL, default_traffic)
        allowed_from, selector = "Same", None
        for where, listener in dicts(gw, "spec.listeners", oid):
            if string(listener, "protocol", oid, at=where) == "HBONE" and integer(
                listener, "port", oid, at=where
            ) == HBONE_MTLS_PORT:
                namespaces = mapping(listener, "allowedRoutes.namespaces", oid, at=where)
                allowed_from = string(namespaces, "from", oid, "Same", at=f"{where}.allowedRoutes.namespaces")
                selector = get(namespaces, "selector", oid, dict, None, at=f"{where}.allowedRoutes.namespaces")
                if selector is not None:
                    # Validate now, so a bad selector is the Gateway's error, not its clients'.
                    selector_matches(selector, {}, oid, f"{where}.allowedRoutes.namespaces.selector")
                break
        address = self._address(gw, oid)
        status_addresses = items(gw, "status.addresses", oid)
        has_instance = address is not None and self._has_ready_instance(oid)
        ready = address is not None and (bool(status_addresses) or has_instance)
        return Waypoint(oid.namespace, oid.name, traffic, allowed_from, selector, ready, address, has_instance)

    def hostname(self, namespace: str, name: str) -> str:
        """The host name of a waypoint's Service (named after its Gateway)."""
        return f"{name}.{namespace}.svc.{self._state.settings.domain_suffix}"

    def _address(self, gw: dict[str, Any], oid: ObjectId) -> GatewayAddress | None:
        svc = self._state.get("Service", oid.namespace, oid.name)
        if svc is not None:
            sid = object_id(svc, "Service")
            ip = string(svc, "spec.clusterIP", sid)
            if ip and ip != "None":
                return GatewayAddress(ip, HBONE_MTLS_PORT, oid.namespace, self.hostname(oid.namespace, oid.name))
        for where, addr in dicts(gw, "status.addresses", oid):
            value = string(addr, "value", oid, at=where)
            try:
                ipaddress.ip_address(value)
            except ValueError:
                continue  # a hostname; without the Service we cannot resolve it purely
            return GatewayAddress(value, HBONE_MTLS_PORT, oid.namespace, self.hostname(oid.namespace, oid.name))
        return None

    def _has_ready_instance(self, oid: ObjectId) -> bool:
        deploy = self._state.get("Deployment", oid.namespace, oid.name)
        if deploy is not None and integer(deploy, "status.readyReplicas", object_id(deploy, "Deployment")) >= 1:
            return True
        ready = self._ready_instances.get(oid.namespace)
        if ready is None:
            # One pass over the namespace's pods serves every waypoint in it.
            ready = self._ready_instances[oid.namespace] = set()
            for pod in self._state.pods(oid.namespace):
                pid = object_id(pod, "Pod")
                gw_name = labels(pod, pid).get(GATEWAY_NAME_LABEL)
                if gw_name is not None and pods.is_ready(pod, pid):
                    ready.add(gw_name)
        return oid.name in ready

    # --- binding -------------------------------------------------------------------------------

    def is_waypoint_instance(self, obj_labels: dict[str, str], namespace: str) -> bool:
        """Waypoints' own pods and Services never go through a waypoint."""
        if obj_labels.get(MANAGED_GATEWAY_LABEL) == MANAGED_BY_MESH:
            return True
        gw_name = obj_labels.get(GATEWAY_NAME_LABEL)
        return gw_name is not None and (namespace, gw_name) in self.waypoints

    def bind(
        self,
        traffic: str,
        obj_labels: dict[str, str],
        namespace: str,
        namespace_obj: dict[str, Any] | None,
    ) -> WaypointBinding:
        """Bind a Service (``traffic="service"``) or Pod (``"workload"``) in ``namespace``."""
        if self.is_waypoint_instance(obj_labels, namespace):
            return NO_BINDING
        own = obj_labels.get(USE_WAYPOINT_LABEL)
        if own is not None:
            if own == "none":
                return NO_BINDING
            wp_ns = obj_labels.get(USE_WAYPOINT_NAMESPACE_LABEL, namespace)
            wp_name = own
        else:
            if namespace_obj is None:
                return NO_BINDING
            ns_labels = labels(namespace_obj, object_id(namespace_obj, "Namespace"))
            wp_name = ns_labels.get(USE_WAYPOINT_LABEL, "")
            if not wp_name or wp_name == "none":
                return NO_BINDING
            wp_ns = ns_labels.get(USE_WAYPOINT_NAMESPACE_LABEL, namespace)
        key = f"{wp_ns}/{wp_name}"
        waypoint = self.waypoints.get((wp_ns, wp_name))
        if waypoint is None or not waypoint.ready:
            refused = GatewayAddress("", HBONE_MTLS_PORT, wp_ns, self.hostname(wp_ns, wp_name))
            why = ("no Gateway of class istio-waypoint has that name" if waypoint is None
                   else "it has no ready instance yet")
            return WaypointBinding(key, refused, _condition(
                False, REASON_NOT_READY, f'waypoint "{key}" is not ready ({why}); traffic is refused until it is'))
        if not waypoint.admits(namespace, namespace_obj):
            return WaypointBinding(
                key,
                None,
                _condition(
                    False,
                    REASON_ATTACHMENT_DENIED,
                    f'we are not permitted to attach to waypoint "{key}" (missing allowedRoutes?)',
                ),
            )
        if not waypoint.carries(traffic):
            return WaypointBinding(
                key,
                None,
                _condition(
                    False,
                    REASON_UNSUPPORTED_TRAFFIC,
                    f'attempting to bind to traffic type "{traffic}" which the waypoint "{key}" does not support',
                ),
            )
        return WaypointBinding(
            key, waypoint.address, _condition(True, REASON_ACCEPTED, f"Successfully attached to waypoint {key}")
        )
