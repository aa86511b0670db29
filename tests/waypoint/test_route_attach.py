"""Which routes apply to a request (GEP-1294): the dialled Service VIP and port, parentRef port
scoping, producer and consumer routes, route types."""

from __future__ import annotations

from tests.waypoint.route_objects import (
    POD_IP,
    V2_VIP,
    WEB_VIP,
    backend,
    decide,
    grpc_route,
    http_route,
    parent,
    path,
    request,
    rule,
    table,
)
from waypoint.route import DefaultService, DirectResponse, Forward


def canary(name: str = "canary", to: str = "web-v2", **kwargs) -> dict:
    return http_route(name, rule(backends=[backend(to)]), **kwargs)


def goes_to(decision) -> str | None:
    return decision.backend.name if isinstance(decision, Forward) else None


def test_route_applies_to_requests_to_its_parent_services_vip():
    assert goes_to(decide(table(canary()), request(), ip=WEB_VIP)) == "web-v2"


def test_route_does_not_apply_to_another_services_vip():
    assert decide(table(canary()), request(), ip=V2_VIP) == DefaultService(("shop", "web-v2"))


def test_host_header_does_not_choose_the_route():
    # Dialled web's VIP while naming web-v2 in Host: web's route applies.
    req = request(authority=b"web-v2.shop.svc.cluster.local")
    assert goes_to(decide(table(canary(to="web-v3")), req, ip=WEB_VIP)) == "web-v3"
    # And a route on web-v2 does not apply to web's VIP whatever Host says.
    on_v2 = canary(parents=[parent("web-v2")], to="web-v3")
    assert decide(table(on_v2), req, ip=WEB_VIP) == DefaultService(("shop", "web"))


def test_request_to_a_pod_ip_is_not_routed_by_service_routes():
    assert decide(table(canary()), request(), ip=POD_IP) == DefaultService(None)


def test_service_without_routes_gets_its_default_backends():
    assert decide(table(), request(), ip=WEB_VIP) == DefaultService(("shop", "web"))


def test_route_scoped_to_port_80_does_not_apply_on_8080():
    t = table(canary(parents=[parent(port=80)]))
    assert goes_to(decide(t, request(), port=80)) == "web-v2"
    assert decide(t, request(), port=8080) == DefaultService(("shop", "web"))


def test_route_without_port_applies_to_every_service_port():
    t = table(canary())
    assert goes_to(decide(t, request(), port=80)) == goes_to(decide(t, request(), port=8080)) == "web-v2"


def test_parent_without_kind_is_a_gateway_and_not_a_mesh_parent():
    t = table(canary(parents=[{"name": "web"}]))
    assert decide(t, request()) == DefaultService(("shop", "web"))
    assert t.problems("HTTPRoute", "shop", "canary") == ()


def test_core_group_may_be_spelled_core():
    t = table(canary(parents=[parent(group="core")]))
    assert goes_to(decide(t, request())) == "web-v2"


def test_hostnames_are_ignored_in_the_mesh():
    route = canary()
    route["spec"]["hostnames"] = ["elsewhere.example.com"]
    assert goes_to(decide(table(route), request())) == "web-v2"


# --- producer and consumer routes -------------------------------------------------------------


def producer() -> dict:
    return http_route("producer", rule(path("Exact", "/x"), backends=[backend("web-v2")]),
                      rule(backends=[backend("web")]))


def consumer(port: int | None = None) -> dict:
    # A route in namespace "client" for the Service in "shop": a consumer route.
    return http_route("consumer", rule(backends=[backend("web-v3", ns="shop")]), ns="client",
                      parents=[parent("web", ns="shop", port=port)])


def test_producer_route_applies_to_clients_in_every_namespace():
    t = table(producer())
    for client in ("shop", "client", "elsewhere", None):
        assert goes_to(decide(t, request(b"/x"), client_ns=client)) == "web-v2"


def test_consumer_route_applies_to_clients_in_its_namespace_only():
    t = table(consumer())
    assert goes_to(decide(t, request(), client_ns="client")) == "web-v3"
    assert decide(t, request(), client_ns="elsewhere") == DefaultService(("shop", "web"))
    assert decide(t, request(), client_ns=None) == DefaultService(("shop", "web"))


def test_consumer_routes_replace_producer_routes_for_their_clients():
    t = table(producer(), consumer())
    # The producer's Exact match is more specific, but the consumer's namespace only sees its own.
    assert goes_to(decide(t, request(b"/x"), client_ns="client")) == "web-v3"
    assert goes_to(decide(t, request(b"/x"), client_ns="elsewhere")) == "web-v2"


def test_consumer_route_scoped_to_a_port_leaves_other_ports_to_the_producer():
    t = table(producer(), consumer(port=80))
    assert goes_to(decide(t, request(b"/x"), port=80, client_ns="client")) == "web-v3"
    assert goes_to(decide(t, request(b"/x"), port=8080, client_ns="client")) == "web-v2"


def test_clients_in_the_services_namespace_get_producer_routes():
    t = table(producer(), consumer())
    assert goes_to(decide(t, request(b"/x"), client_ns="shop")) == "web-v2"


def test_parent_namespace_defaults_to_the_routes():
    # A route in "client" naming Service "web" without a namespace means client/web, which
    # does not exist: it is not attached to shop/web.
    route = http_route("r", rule(backends=[backend("web-v3", ns="shop")]), ns="client", parents=[parent("web")])
    t = table(route)
    assert decide(t, request(), client_ns="client") == DefaultService(("shop", "web"))
    assert [p.reason for p in t.problems("HTTPRoute", "client", "r")] == ["NoMatchingParent"]


# --- route types ------------------------------------------------------------------------------


def grpc_canary(**kwargs) -> dict:
    return grpc_route("grpc", {"backendRefs": [backend("web-v3")]}, **kwargs)


def test_grpcroute_wins_over_httproute_on_the_same_service_port():
    t = table(canary(), grpc_canary())
    assert goes_to(decide(t, request(b"/pkg.Svc/Call"))) == "web-v3"
    problems = t.problems("HTTPRoute", "shop", "canary")
    assert [(p.condition, p.reason) for p in problems] == [("Accepted", "Conflicted")]
    assert t.problems("GRPCRoute", "shop", "grpc") == ()


def test_grpcroute_on_one_port_leaves_the_httproute_on_others():
    t = table(canary(), grpc_canary(parents=[parent(port=80)]))
    assert goes_to(decide(t, request(), port=80)) == "web-v3"
    assert goes_to(decide(t, request(), port=8080)) == "web-v2"


def test_routes_attached_but_none_matching_answer_404_not_the_default_service():
    t = table(http_route("r", rule(path("Exact", "/only"))))
    assert isinstance(decide(t, request(b"/other")), DirectResponse)
