"""Config lookups and the outbound decision (reference §3, `ProxyState.route`), pure over ProxyState."""

from __future__ import annotations

import random

import pytest

from wisp.identity import SpiffeId
from wisp.model import GatewayAddress, ModelSnapshot, PortMapping, Service, Workload
from ztunnel.proxy.outbound import baggage_of
from ztunnel.state.proxy_state import (
    DIRECT,
    HBONE,
    PASSTHROUGH,
    NoHealthyEndpoint,
    ProxyState,
    SelfCall,
    WaypointUnavailable,
)

SVC = "shop/web.shop.svc.cluster.local"


def workload(name: str, ip: str, *, ns: str = "shop", services=None, status: str = "HEALTHY",
             tunnel: str = "HBONE", capacity: int = 1, sa: str = "web", waypoint=None) -> Workload:
    return Workload(uid=f"c//Pod/{ns}/{name}", name=name, namespace=ns, addresses=(ip,),
                    tunnel_protocol=tunnel, service_account=sa, status=status, capacity=capacity,
                    services=services or {}, waypoint=waypoint)


def service(ns: str = "shop", vip: str = "10.96.0.10", ports=(PortMapping(80, 8080),), sans=(), waypoint=None,
            name: str = "web") -> Service:
    return Service(name=name, namespace=ns, hostname=f"{name}.{ns}.svc.cluster.local", addresses=(vip,),
                   ports=tuple(ports), subject_alt_names=tuple(sans), waypoint=waypoint)


def state(*resources) -> ProxyState:
    return ProxyState(ModelSnapshot.of(resources))


CLIENT = workload("client", "10.244.1.5", sa="client", services={})


def test_vip_resolves_to_an_endpoint_with_the_service_target_port():
    s = state(service(), workload("web-1", "10.244.1.10", services={SVC: ()}))
    endpoint = s.pick_endpoint(s.service_by_vip("10.96.0.10"), 80)
    assert (endpoint.ip, endpoint.port) == ("10.244.1.10", 8080)


def test_workload_port_map_overrides_the_service_target_port():
    s = state(service(ports=(PortMapping(80, 0),)),
              workload("web-1", "10.244.1.10", services={SVC: (PortMapping(80, 9090),)}))
    assert s.pick_endpoint(s.service_by_vip("10.96.0.10"), 80).port == 9090


def test_named_port_unresolved_by_the_workload_is_not_an_endpoint():
    s = state(service(ports=(PortMapping(80, 0),)), workload("web-1", "10.244.1.10", services={SVC: ()}))
    with pytest.raises(NoHealthyEndpoint):
        s.pick_endpoint(s.service_by_vip("10.96.0.10"), 80)


def test_unhealthy_endpoints_are_excluded():
    s = state(service(), workload("web-1", "10.244.1.10", services={SVC: ()}, status="UNHEALTHY"),
              workload("web-2", "10.244.1.11", services={SVC: ()}))
    picks = {s.pick_endpoint(s.service_by_vip("10.96.0.10"), 80, random.Random(i)).ip for i in range(30)}
    assert picks == {"10.244.1.11"}


def test_no_healthy_endpoint_is_an_error():
    s = state(service(), workload("web-1", "10.244.1.10", services={SVC: ()}, status="UNHEALTHY"))
    with pytest.raises(NoHealthyEndpoint, match="no healthy endpoint"):
        s.route(CLIENT, ("10.96.0.10", 80))


def test_endpoints_are_weighted_by_capacity():
    s = state(service(), workload("web-1", "10.244.1.10", services={SVC: ()}, capacity=9),
              workload("web-2", "10.244.1.11", services={SVC: ()}, capacity=1))
    rng = random.Random(7)
    picks = [s.pick_endpoint(s.service_by_vip("10.96.0.10"), 80, rng).ip for _ in range(1000)]
    assert 800 < picks.count("10.244.1.10") < 980


def test_shared_vip_prefers_the_source_namespace():
    a, b = service(ns="a", vip="10.96.0.1"), service(ns="b", vip="10.96.0.1")
    s = state(a, b)
    assert s.service_by_vip("10.96.0.1", "b") is b
    assert s.service_by_vip("10.96.0.1", "c") is a


def test_ip_lookup_finds_workloads():
    w = workload("web-1", "10.244.1.10")
    s = state(w)
    assert s.workload_by_ip("10.244.1.10") == w
    assert s.local_workload("shop", "web-1") == w
    assert s.workload_by_ip("10.244.1.99") is None


# -- outbound plan -----------------------------------------------------------------------------
def test_service_with_hbone_endpoint_goes_to_its_15008_with_the_target_port_as_authority():
    s = state(service(sans=("spiffe://cluster.local/ns/shop/sa/other",)),
              workload("web-1", "10.244.1.10", services={SVC: ()}))
    route = s.route(CLIENT, ("10.96.0.10", 80))
    assert route.kind == HBONE
    assert route.target == ("10.244.1.10", 15008)
    assert route.authority == "10.244.1.10:8080"
    assert route.service.hostname == "web.shop.svc.cluster.local"
    assert route.identities == {SpiffeId("cluster.local", "shop", "web"), SpiffeId("cluster.local", "shop", "other")}


def test_pod_ip_goes_straight_to_that_workload():
    s = state(workload("web-1", "10.244.1.10"))
    route = s.route(CLIENT, ("10.244.1.10", 5000))
    assert (route.kind, route.target, route.authority, route.service) == (HBONE, ("10.244.1.10", 15008), "10.244.1.10:5000", None)


def test_workload_without_hbone_is_reached_directly():
    s = state(service(), workload("web-1", "10.244.1.10", services={SVC: ()}, tunnel="NONE"))
    route = s.route(CLIENT, ("10.96.0.10", 80))
    assert (route.kind, route.target) == (DIRECT, ("10.244.1.10", 8080))


def test_unknown_destination_passes_through():
    route = state().route(CLIENT, ("192.0.2.1", 443))
    assert (route.kind, route.target) == (PASSTHROUGH, ("192.0.2.1", 443))


@pytest.mark.parametrize("port", [15001, 15006, 15008])
def test_loopback_to_ztunnel_ports_is_a_self_call(port):
    with pytest.raises(SelfCall):
        state().route(CLIENT, ("127.0.0.1", port))


def test_service_with_waypoint_goes_to_the_waypoint_with_the_vip_as_authority():
    wp_svc = service(ns="shop", vip="10.96.0.99", name="waypoint", ports=(PortMapping(15008, 15008),))
    wp = workload("waypoint-1", "10.244.1.50", sa="waypoint", services={"shop/waypoint.shop.svc.cluster.local": ()})
    s = state(service(waypoint=GatewayAddress("10.96.0.99")), wp_svc, wp,
              workload("web-1", "10.244.1.10", services={SVC: ()}))
    route = s.route(CLIENT, ("10.96.0.10", 80))
    assert route.waypoint and route.target == ("10.244.1.50", 15008)
    assert route.authority == "10.96.0.10:80"
    assert route.identities == {SpiffeId("cluster.local", "shop", "waypoint")}
    # The waypoint itself is not sent back to itself.
    assert not s.route(wp, ("10.96.0.10", 80)).waypoint


def test_workload_waypoint_applies_when_addressed_directly():
    wp = workload("waypoint-1", "10.244.1.50", sa="waypoint")
    s = state(wp, workload("web-1", "10.244.1.10", waypoint=GatewayAddress("10.244.1.50")))
    route = s.route(CLIENT, ("10.244.1.10", 8080))
    assert route.waypoint and route.authority == "10.244.1.10:8080" and route.target == ("10.244.1.50", 15008)


UNREADY_WAYPOINT = GatewayAddress("", 15008, "shop", "waypoint.shop.svc.cluster.local")


def test_service_bound_to_a_missing_or_unready_waypoint_is_refused_not_sent_direct():
    s = state(service(waypoint=UNREADY_WAYPOINT), workload("web-1", "10.244.1.10", services={SVC: ()}))
    with pytest.raises(WaypointUnavailable, match="shop/waypoint"):
        s.route(CLIENT, ("10.96.0.10", 80))


def test_workload_bound_to_a_missing_waypoint_is_refused_when_addressed_directly():
    s = state(workload("web-1", "10.244.1.10", waypoint=UNREADY_WAYPOINT))
    with pytest.raises(WaypointUnavailable, match="workload shop/web-1"):
        s.route(CLIENT, ("10.244.1.10", 8080))


def test_waypoint_without_a_healthy_instance_refuses_rather_than_bypasses():
    wp_svc = service(ns="shop", vip="10.96.0.99", name="waypoint", ports=(PortMapping(15008, 15008),))
    wp = workload("waypoint-1", "10.244.1.50", sa="waypoint", status="UNHEALTHY",
                  services={"shop/waypoint.shop.svc.cluster.local": ()})
    bound = GatewayAddress("10.96.0.99", 15008, "shop", "waypoint.shop.svc.cluster.local")
    s = state(service(waypoint=bound), wp_svc, wp, workload("web-1", "10.244.1.10", services={SVC: ()}))
    with pytest.raises(WaypointUnavailable, match="no healthy instance"):
        s.route(CLIENT, ("10.96.0.10", 80))


def test_baggage_names_the_source_workload():
    w = Workload(uid="u", name="web-1", namespace="shop", workload_type="deployment", workload_name="web",
                 canonical_name="web", canonical_revision="v1", cluster_id="Kubernetes")
    assert baggage_of(w) == {
        "k8s.cluster.name": "Kubernetes", "k8s.namespace.name": "shop", "k8s.deployment.name": "web",
        "service.name": "web", "service.version": "v1",
    }
