"""The distributor's ConfigObjects: only waypoints receive them, each the ones that concern its Gateway.

Sans-IO: `Distributor.next_message` bytes decoded with the stream's own decoder. The end-to-end
subscription over HTTPS (ConfigSubscriber with a gateway) is in
tests/controlplane/test_waypoint_stream.py.
"""

from __future__ import annotations

import json

from wisp.controlplane.protocol import ConfigView, decode
from wisp.model import (
    Authorization,
    ConfigObject,
    GatewayAddress,
    ModelSnapshot,
    Service,
    Workload,
    config_object,
)
from wisp_operator.distributor import ROLE_WAYPOINT, ROLE_ZTUNNEL, Distributor, View


def gateway(ns: str, name: str) -> ConfigObject:
    return config_object({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                          "metadata": {"name": name, "namespace": ns},
                          "spec": {"gatewayClassName": "istio-waypoint",
                                   "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})


def route(ns: str, name: str, parent: str, parent_ns: str | None = None, kind: str = "HTTPRoute") -> ConfigObject:
    ref = {"group": "", "kind": "Service", "name": parent}
    if parent_ns:
        ref["namespace"] = parent_ns
    return config_object({"apiVersion": "gateway.networking.k8s.io/v1", "kind": kind,
                          "metadata": {"name": name, "namespace": ns}, "spec": {"parentRefs": [ref]}})


def policy(ns: str, name: str, target: dict) -> ConfigObject:
    return config_object({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                          "metadata": {"name": name, "namespace": ns}, "spec": {"targetRefs": [target]}})


def service(ns: str, name: str, waypoint: str | None = None, ready: bool = True) -> Service:
    address = None
    if waypoint is not None:
        wp_ns, wp_name = waypoint.split("/")
        address = GatewayAddress("10.96.0.99" if ready else "", 15008, wp_ns, f"{wp_name}.{wp_ns}.svc.cluster.local")
    return Service(name, ns, f"{name}.{ns}.svc.cluster.local", ("10.96.1.1",), waypoint=address)


WORKLOAD = Workload("Kubernetes//Pod/shop/web-1", "web-1", "shop", ("10.244.0.5",), node="node-a")
L4 = Authorization("deny", "shop", "NAMESPACE", "DENY")


def everything() -> list:
    return [
        WORKLOAD, L4,
        service("shop", "web", "shop/waypoint"),
        service("shop", "cart", "shop/other"),
        service("bank", "ledger"),
        gateway("shop", "waypoint"), gateway("shop", "other"),
        route("shop", "web-canary", "web"),
        route("shop", "cart-route", "cart"),
        route("bank", "consumer", "web", parent_ns="shop", kind="GRPCRoute"),
        route("bank", "ledger-route", "ledger"),
        policy("shop", "on-gateway", {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}),
        policy("shop", "on-web", {"group": "", "kind": "Service", "name": "web"}),
        policy("shop", "on-cart", {"kind": "Service", "name": "cart"}),
        policy("istio-system", "mesh-wide", {"group": "gateway.networking.k8s.io", "kind": "GatewayClass",
                                             "name": "istio-waypoint"}),
        policy("shop", "cross-ns", {"kind": "Service", "name": "web", "namespace": "bank"}),
    ]


def snapshot_for(distributor: Distributor, view: View) -> ModelSnapshot:
    _, message = distributor.next_message(view, None)
    return decode(message).snapshot


WAYPOINT = View(ROLE_WAYPOINT, gateway="shop/waypoint")


def test_ztunnels_never_receive_config_objects() -> None:
    distributor = Distributor()
    distributor.publish(ModelSnapshot.of(everything()))
    snap = snapshot_for(distributor, View(ROLE_ZTUNNEL, "node-a"))
    assert not snap.objects
    assert set(snap.workloads) and set(snap.services) and set(snap.authorizations)


def test_a_waypoint_gets_its_gateway_routes_and_policies_of_its_services_and_mesh_wide_policies() -> None:
    distributor = Distributor()
    distributor.publish(ModelSnapshot.of(everything()))
    snap = snapshot_for(distributor, WAYPOINT)
    assert sorted(snap.objects) == [
        "AuthorizationPolicy/istio-system/mesh-wide",
        "AuthorizationPolicy/shop/on-gateway",
        "AuthorizationPolicy/shop/on-web",
        "GRPCRoute/bank/consumer",
        "Gateway/shop/waypoint",
        "HTTPRoute/shop/web-canary",
    ]
    # Workloads, services and L4 authorizations are not filtered for waypoints.
    assert len(snap.services) == 3 and snap.workloads and snap.authorizations


def test_a_waypoint_naming_no_gateway_gets_every_config_object() -> None:
    distributor = Distributor()
    distributor.publish(ModelSnapshot.of(everything()))
    assert len(snapshot_for(distributor, View(ROLE_WAYPOINT)).objects) == 11


def test_a_waypoint_gets_the_config_of_services_bound_to_it_before_it_is_ready() -> None:
    distributor = Distributor()
    distributor.publish(ModelSnapshot.of([service("shop", "web", "shop/waypoint", ready=False),
                                          route("shop", "web-canary", "web")]))
    assert list(snapshot_for(distributor, WAYPOINT).objects) == ["HTTPRoute/shop/web-canary"]


def test_binding_a_service_sends_its_unchanged_routes_and_unbinding_removes_them() -> None:
    distributor = Distributor()
    unbound = [service("shop", "web"), route("shop", "web-canary", "web"), gateway("shop", "waypoint")]
    first = distributor.publish(ModelSnapshot.of(unbound))
    view = ConfigView()
    view.apply(decode(distributor.next_message(WAYPOINT, None)[1]))
    assert list(view.snapshot.objects) == ["Gateway/shop/waypoint"]
    assert view.version == first

    distributor.publish(ModelSnapshot.of([service("shop", "web", "shop/waypoint"), *unbound[1:]]))
    message = decode(distributor.next_message(WAYPOINT, view.version)[1])
    assert message.type == "delta"
    view.apply(message)
    assert sorted(view.snapshot.objects) == ["Gateway/shop/waypoint", "HTTPRoute/shop/web-canary"]

    distributor.publish(ModelSnapshot.of(unbound))
    view.apply(decode(distributor.next_message(WAYPOINT, view.version)[1]))
    assert list(view.snapshot.objects) == ["Gateway/shop/waypoint"]


def test_a_changed_object_reaches_only_the_waypoints_it_concerns() -> None:
    distributor = Distributor()
    base = [service("shop", "web", "shop/waypoint"), service("shop", "cart", "shop/other"),
            route("shop", "web-canary", "web"), route("shop", "cart-route", "cart")]
    distributor.publish(ModelSnapshot.of(base))
    before = distributor.version
    changed = config_object({**route("shop", "cart-route", "cart").object(), "spec": {
        "parentRefs": [{"group": "", "kind": "Service", "name": "cart"}], "rules": [{}]}})
    distributor.publish(ModelSnapshot.of([*base[:3], changed]))
    mine = json.loads(distributor.next_message(WAYPOINT, before)[1])
    theirs = json.loads(distributor.next_message(View(ROLE_WAYPOINT, gateway="shop/other"), before)[1])
    ztunnel = json.loads(distributor.next_message(View(ROLE_ZTUNNEL, "node-a"), before)[1])
    assert [u["key"] for u in theirs["upserts"]] == ["HTTPRoute/shop/cart-route"]
    assert mine["upserts"] == [] and ztunnel["upserts"] == []
    assert ztunnel["removals"] == []  # ztunnels are not told about objects at all


def test_removing_an_object_removes_it_from_its_waypoint_and_tells_ztunnels_nothing() -> None:
    distributor = Distributor()
    base = [service("shop", "web", "shop/waypoint"), route("shop", "web-canary", "web")]
    distributor.publish(ModelSnapshot.of(base))
    before = distributor.version
    distributor.publish(ModelSnapshot.of(base[:1]))
    mine = json.loads(distributor.next_message(WAYPOINT, before)[1])
    assert mine["removals"] == [{"kind": "object", "key": "HTTPRoute/shop/web-canary"}]
    assert json.loads(distributor.next_message(View(ROLE_ZTUNNEL, "node-a"), before)[1])["removals"] == []
