"""Waypoint binding of Services and Pods, and the istio.io/WaypointBound condition (ambient-api §2).

A binding to a missing or unready waypoint fails closed (issue 11): the object is bound to an
unusable address naming the waypoint, which ztunnel refuses, rather than left unbound (direct).
"""

from __future__ import annotations

from typing import Any

import pytest

from wisp.model import GatewayAddress
from wisp_operator.cluster import ClusterState
from wisp_operator.reconcile import StatusWrite, reconcile

WAYPOINT_IP = "10.96.0.99"
OTHER_WAYPOINT_IP = "10.96.0.98"


def namespace(name: str = "shop", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}


def gateway(name: str = "waypoint", ns: str = "shop", waypoint_for: str | None = None,
            allowed: dict[str, Any] | None = None, gateway_class: str = "istio-waypoint",
            status: dict[str, Any] | None = None) -> dict[str, Any]:
    listener: dict[str, Any] = {"name": "mesh", "port": 15008, "protocol": "HBONE"}
    if allowed is not None:
        listener["allowedRoutes"] = {"namespaces": allowed}
    labels = {"istio.io/waypoint-for": waypoint_for} if waypoint_for else {}
    gw: dict[str, Any] = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"gatewayClassName": gateway_class, "listeners": [listener]},
    }
    if status is not None:
        gw["status"] = status
    return gw


def waypoint_service(name: str = "waypoint", ns: str = "shop", ip: str = WAYPOINT_IP) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": {"gateway.istio.io/managed": "istio.io-mesh-controller",
                                                               "gateway.networking.k8s.io/gateway-name": name}},
        "spec": {"clusterIP": ip, "selector": {"gateway.networking.k8s.io/gateway-name": name},
                 "ports": [{"name": "mesh", "port": 15008}]},
    }


def waypoint_pod(name: str = "waypoint", ns: str = "shop", ready: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{name}-abc12", "namespace": ns,
                     "labels": {"gateway.networking.k8s.io/gateway-name": name,
                                "gateway.istio.io/managed": "istio.io-mesh-controller"}},
        "spec": {"serviceAccountName": name},
        "status": {"phase": "Running", "podIP": "10.244.9.9",
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def waypoint(name: str = "waypoint", ns: str = "shop", ip: str = WAYPOINT_IP, **gw: Any) -> list[dict[str, Any]]:
    """A ready waypoint: Gateway, its Service and a ready pod."""
    return [gateway(name, ns, **gw), waypoint_service(name, ns, ip), waypoint_pod(name, ns)]


def app_service(ns: str = "shop", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": ns, "labels": labels or {}},
        "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"}, "ports": [{"port": 80}]},
    }


def app_pod(ns: str = "shop", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": ns, "labels": {"app": "web", **(labels or {})}},
        "spec": {},
        "status": {"phase": "Running", "podIP": "10.244.0.5", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def bind(objs: list[dict[str, Any]], kind: str = "Service", ns: str = "shop") -> tuple[GatewayAddress | None, dict[str, Any] | None]:
    """The waypoint address and the WaypointBound condition of the app Service or Pod."""
    result = reconcile(ClusterState.of(objs))
    if kind == "Service":
        address = result.model.services[f"{ns}/web.{ns}.svc.cluster.local"].waypoint
    else:
        address = result.model.workloads[f"Kubernetes//Pod/{ns}/web-1"].waypoint
    writes = [w for w in result.status if (w.kind, w.namespace, w.name) == (kind, ns, "web" if kind == "Service" else "web-1")]
    return address, (writes[0].condition if writes else None)


USE = "istio.io/use-waypoint"
USE_NS = "istio.io/use-waypoint-namespace"


def bound_to(ip: str, ns: str = "shop", name: str = "waypoint") -> GatewayAddress:
    """The address of a ready waypoint: its VIP, and its Service's namespaced host name."""
    return GatewayAddress(ip, 15008, ns, f"{name}.{ns}.svc.cluster.local")


def refused(ns: str = "shop", name: str = "waypoint") -> GatewayAddress:
    """The unusable address of a missing or unready waypoint: ztunnel refuses the traffic."""
    return GatewayAddress("", 15008, ns, f"{name}.{ns}.svc.cluster.local")


# --- where the label comes from -------------------------------------------------------------------


def test_service_label_binds_the_service() -> None:
    address, cond = bind([namespace(), *waypoint(), app_service(labels={USE: "waypoint"})])
    assert address == bound_to(WAYPOINT_IP)
    assert cond == {"type": "istio.io/WaypointBound", "status": "True", "reason": "WaypointAccepted",
                    "message": "Successfully attached to waypoint shop/waypoint"}


def test_namespace_label_binds_the_service() -> None:
    address, cond = bind([namespace(labels={USE: "waypoint"}), *waypoint(), app_service()])
    assert address == bound_to(WAYPOINT_IP)
    assert cond is not None and cond["reason"] == "WaypointAccepted"


def test_service_label_beats_namespace_label() -> None:
    objs = [namespace(labels={USE: "waypoint"}), *waypoint(), *waypoint("other", ip=OTHER_WAYPOINT_IP),
            app_service(labels={USE: "other"})]
    address, _ = bind(objs)
    assert address == bound_to(OTHER_WAYPOINT_IP, name="other")


@pytest.mark.parametrize(
    "ns_labels, svc_labels",
    [({USE: "waypoint"}, {USE: "none"}), ({USE: "none"}, {}), ({}, {})],
    ids=["service-none-beats-namespace", "namespace-none", "no-label"],
)
def test_no_binding_and_no_condition(ns_labels: dict[str, str], svc_labels: dict[str, str]) -> None:
    assert bind([namespace(labels=ns_labels), *waypoint(), app_service(labels=svc_labels)]) == (None, None)


def test_pod_label_beats_namespace_label() -> None:
    objs = [namespace(labels={USE: "waypoint"}), *waypoint(waypoint_for="workload"),
            *waypoint("other", ip=OTHER_WAYPOINT_IP, waypoint_for="workload"), app_pod(labels={USE: "other"})]
    address, cond = bind(objs, "Pod")
    assert address == bound_to(OTHER_WAYPOINT_IP, name="other")
    assert cond is not None and cond["message"] == "Successfully attached to waypoint shop/other"


def test_pod_none_opts_out_of_namespace_waypoint() -> None:
    objs = [namespace(labels={USE: "waypoint"}), *waypoint(waypoint_for="all"), app_pod(labels={USE: "none"})]
    assert bind(objs, "Pod") == (None, None)


def test_waypoint_own_pods_and_service_are_never_bound() -> None:
    result = reconcile(ClusterState.of([namespace(labels={USE: "waypoint"}), *waypoint(waypoint_for="all")]))
    assert result.model.services["shop/waypoint.shop.svc.cluster.local"].waypoint is None
    assert result.model.workloads["Kubernetes//Pod/shop/waypoint-abc12"].waypoint is None
    # The Gateway gets its Gateway API status; nothing gets a WaypointBound condition.
    assert [w for w in result.status if isinstance(w, StatusWrite)] == []


# --- traffic type (istio.io/waypoint-for) ------------------------------------------------------------


@pytest.mark.parametrize(
    "waypoint_for, kind, bound",
    [
        (None, "Service", True),
        (None, "Pod", False),
        ("service", "Service", True),
        ("service", "Pod", False),
        ("workload", "Service", False),
        ("workload", "Pod", True),
        ("all", "Service", True),
        ("all", "Pod", True),
        ("none", "Service", False),
        ("none", "Pod", False),
    ],
)
def test_waypoint_for_decides_which_traffic_binds(waypoint_for: str | None, kind: str, bound: bool) -> None:
    objs = [namespace(labels={USE: "waypoint"}), *waypoint(waypoint_for=waypoint_for), app_service(), app_pod()]
    address, cond = bind(objs, kind)
    assert cond is not None
    if bound:
        assert address == bound_to(WAYPOINT_IP)
        assert (cond["status"], cond["reason"]) == ("True", "WaypointAccepted")
    else:
        traffic = "service" if kind == "Service" else "workload"
        assert address is None
        assert cond == {
            "type": "istio.io/WaypointBound", "status": "False", "reason": "UnsupportedTrafficType",
            "message": f'attempting to bind to traffic type "{traffic}" which the waypoint "shop/waypoint" does not support',
        }


def test_gateway_class_label_sets_the_default_traffic_type() -> None:
    gw_class = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                "metadata": {"name": "istio-waypoint", "labels": {"istio.io/waypoint-for": "workload"}}}
    address, _ = bind([gw_class, namespace(labels={USE: "waypoint"}), *waypoint(), app_pod()], "Pod")
    assert address == bound_to(WAYPOINT_IP)


# --- cross-namespace attachment --------------------------------------------------------------------


@pytest.mark.parametrize(
    "allowed, client_ns_labels, bound",
    [
        (None, {}, False),
        ({"from": "Same"}, {}, False),
        ({"from": "All"}, {}, True),
        ({"from": "Selector", "selector": {"matchLabels": {"mesh": "shared"}}}, {"mesh": "shared"}, True),
        ({"from": "Selector", "selector": {"matchLabels": {"mesh": "shared"}}}, {"mesh": "private"}, False),
        ({"from": "Selector", "selector": {"matchExpressions": [{"key": "mesh", "operator": "Exists"}]}},
         {"mesh": "x"}, True),
        ({"from": "Selector"}, {"mesh": "shared"}, False),
    ],
    ids=["default-same", "same", "all", "selector-match", "selector-mismatch", "selector-expression",
         "selector-missing"],
)
def test_cross_namespace_waypoint_needs_allowed_routes(allowed: dict[str, Any] | None,
                                                       client_ns_labels: dict[str, str], bound: bool) -> None:
    objs = [namespace("infra"), namespace("shop", client_ns_labels), *waypoint(ns="infra", allowed=allowed),
            app_service(labels={USE: "waypoint", USE_NS: "infra"})]
    address, cond = bind(objs)
    assert cond is not None
    if bound:
        assert address == bound_to(WAYPOINT_IP, ns="infra")
        assert cond["message"] == "Successfully attached to waypoint infra/waypoint"
    else:
        assert address is None
        assert cond == {
            "type": "istio.io/WaypointBound", "status": "False", "reason": "AttachmentDenied",
            "message": 'we are not permitted to attach to waypoint "infra/waypoint" (missing allowedRoutes?)',
        }


def test_namespace_label_can_point_to_another_namespace() -> None:
    objs = [namespace("infra"), namespace("shop", {USE: "waypoint", USE_NS: "infra"}),
            *waypoint(ns="infra", allowed={"from": "All"}), app_service()]
    assert bind(objs)[0] == bound_to(WAYPOINT_IP, ns="infra")


# --- readiness ----------------------------------------------------------------------------------------


NOT_READY = "it has no ready instance yet"
MISSING = "no Gateway of class istio-waypoint has that name"


def not_ready(message_key: str = "shop/waypoint", why: str = NOT_READY) -> dict[str, str]:
    return {"type": "istio.io/WaypointBound", "status": "False", "reason": "WaypointIsNotReady",
            "message": f'waypoint "{message_key}" is not ready ({why}); traffic is refused until it is'}


@pytest.mark.parametrize(
    "waypoint_objs, why",
    [
        ([gateway(), waypoint_service()], NOT_READY),
        ([gateway(), waypoint_service(), waypoint_pod(ready=False)], NOT_READY),
        ([gateway(), waypoint_pod()], NOT_READY),
        ([waypoint_service(), waypoint_pod()], MISSING),
        ([gateway(gateway_class="other"), waypoint_service(), waypoint_pod()], MISSING),
    ],
    ids=["no-pod", "pod-not-ready", "no-service-address", "no-gateway", "not-a-waypoint-class"],
)
def test_unready_or_missing_waypoint_is_reported_and_bound_to_a_refusing_address(
        waypoint_objs: list[dict[str, Any]], why: str) -> None:
    # Was "reported and not bound" (traffic went direct, bypassing L7 policy); now fails closed.
    for kind, objs in (("Service", [app_service()]), ("Pod", [app_pod()])):
        wp = [dict(o, metadata=dict(o["metadata"], labels={**o["metadata"].get("labels", {}),
                                                           "istio.io/waypoint-for": "all"}))
              if o["kind"] == "Gateway" else o for o in waypoint_objs]
        address, cond = bind([namespace(labels={USE: "waypoint"}), *wp, *objs], kind)
        assert address == refused()
        assert not address.usable
        assert cond == not_ready(why=why)


@pytest.mark.parametrize(
    "extra",
    [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "waypoint", "namespace": "shop"},
         "status": {"readyReplicas": 1}},
        None,
    ],
    ids=["deployment-ready-replicas", "gateway-status-addresses"],
)
def test_waypoint_is_ready_from_deployment_or_gateway_status(extra: dict[str, Any] | None) -> None:
    gw = gateway(status={"addresses": [{"type": "IPAddress", "value": WAYPOINT_IP}]}) if extra is None else gateway()
    objs = [namespace(labels={USE: "waypoint"}), gw, waypoint_service(), app_service()]
    if extra is not None:
        objs.append(extra)
    assert bind(objs)[0] == bound_to(WAYPOINT_IP)


def test_gateway_status_address_is_used_without_a_service() -> None:
    gw = gateway(status={"addresses": [{"type": "IPAddress", "value": "10.96.0.77"}]})
    assert bind([namespace(labels={USE: "waypoint"}), gw, app_service()])[0] == bound_to("10.96.0.77")


def test_own_label_on_unready_waypoint_does_not_fall_back_to_namespace() -> None:
    objs = [namespace(labels={USE: "waypoint"}), *waypoint(), gateway("pending"), app_service(labels={USE: "pending"})]
    assert bind(objs) == (refused(name="pending"), not_ready("shop/pending"))


# --- status writes ----------------------------------------------------------------------------------


def test_no_write_when_the_condition_is_already_current() -> None:
    svc = app_service(labels={USE: "waypoint"})
    svc["status"] = {"conditions": [{"type": "istio.io/WaypointBound", "status": "True", "reason": "WaypointAccepted",
                                     "message": "Successfully attached to waypoint shop/waypoint",
                                     "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    writes = reconcile(ClusterState.of([namespace(), *waypoint(), svc])).status
    assert [w for w in writes if isinstance(w, StatusWrite)] == []


def test_stale_condition_is_removed_when_binding_is_dropped() -> None:
    svc = app_service()
    svc["status"] = {"conditions": [{"type": "istio.io/WaypointBound", "status": "True"}]}
    assert reconcile(ClusterState.of([namespace(), svc])).status == (
        StatusWrite("v1", "Service", "shop", "web", "istio.io/WaypointBound", None),
    )
