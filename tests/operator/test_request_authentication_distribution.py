"""RequestAuthentication reaches waypoints as Istio attaches it: only through targetRefs, and only to
the waypoint whose Gateway, Service or GatewayClass it names (docs/jwt.md)."""

from __future__ import annotations

from wisp.controlplane.protocol import decode
from wisp.model import GatewayAddress, ModelSnapshot, Service, config_object
from wisp_operator.cluster import ClusterState
from wisp_operator.distributor import ROLE_WAYPOINT, Distributor, View
from wisp_operator.gateways import config_objects

JWT_RULES = [{"issuer": "issuer-foo", "jwksUri": "http://jwks.auth.svc.cluster.local/keys"}]
GATEWAY_REF = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}


def request_authentication(ns: str, name: str, **spec) -> dict:
    return {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
            "metadata": {"name": name, "namespace": ns}, "spec": {"jwtRules": JWT_RULES, **spec}}


def service(ns: str, name: str, waypoint: str | None) -> Service:
    address = None
    if waypoint is not None:
        wp_ns, wp_name = waypoint.split("/")
        address = GatewayAddress("10.96.0.99", 15008, wp_ns, f"{wp_name}.{wp_ns}.svc.cluster.local")
    return Service(name, ns, f"{name}.{ns}.svc.cluster.local", ("10.96.1.1",), waypoint=address)


def test_only_request_authentications_with_target_refs_become_config_objects() -> None:
    state = ClusterState.of([
        request_authentication("shop", "on-gateway", targetRefs=[GATEWAY_REF]),
        request_authentication("shop", "legacy-ref", targetRef={"kind": "Service", "group": "", "name": "web"}),
        request_authentication("shop", "by-selector", selector={"matchLabels": {"app": "web"}}),
        request_authentication("istio-system", "mesh-wide-selectorless"),
    ])
    objects, errors = config_objects(state)
    assert errors == []
    assert sorted(objects) == ["RequestAuthentication/shop/legacy-ref", "RequestAuthentication/shop/on-gateway"]
    assert objects["RequestAuthentication/shop/on-gateway"].object()["spec"]["jwtRules"] == JWT_RULES


def test_a_waypoint_receives_the_request_authentications_of_its_gateway_services_and_class() -> None:
    objects = [
        config_object(request_authentication("shop", "on-gateway", targetRefs=[GATEWAY_REF])),
        config_object(request_authentication("shop", "on-web", targetRefs=[{"group": "", "kind": "Service",
                                                                             "name": "web"}])),
        config_object(request_authentication("shop", "on-cart", targetRefs=[{"kind": "Service", "name": "cart"}])),
        config_object(request_authentication("istio-system", "mesh-wide", targetRefs=[
            {"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "istio-waypoint"}])),
        config_object(request_authentication("shop", "cross-namespace", targetRefs=[
            {"kind": "Service", "name": "web", "namespace": "bank"}])),
    ]
    distributor = Distributor()
    distributor.publish(ModelSnapshot.of([service("shop", "web", "shop/waypoint"),
                                          service("shop", "cart", "shop/other"), *objects]))
    _, message = distributor.next_message(View(ROLE_WAYPOINT, gateway="shop/waypoint"), None)
    assert sorted(decode(message).snapshot.objects) == [
        "RequestAuthentication/istio-system/mesh-wide",
        "RequestAuthentication/shop/on-gateway",
        "RequestAuthentication/shop/on-web",
    ]
