"""A waypoint on the config stream, over real HTTPS/HTTP2: it names its Gateway and gets that
Gateway's ConfigObjects; a ztunnel on the same control plane gets none; a waypoint may not name
a Gateway of another namespace."""

from __future__ import annotations

import pytest
import trio

from wisp.controlplane.client import ConfigSubscriber, ControlPlaneError
from wisp.model import GatewayAddress, ModelSnapshot, Service, config_object

from tests.conftest import spiffe
from .test_service import STATE, control_plane, wait_until

WEB = Service("web", "shop", "web.shop.svc.cluster.local", ("10.96.1.1",),
              waypoint=GatewayAddress("10.96.0.99", 15008, "shop", "waypoint.shop.svc.cluster.local"))
CART = Service("cart", "shop", "cart.shop.svc.cluster.local", ("10.96.1.2",))


def route(name: str, parent: str):
    return config_object({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                          "metadata": {"name": name, "namespace": "shop"},
                          "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": parent}]}})


async def test_waypoint_subscribes_with_its_gateway_and_gets_only_its_objects(ca):
    async with control_plane(ca, STATE) as plane:
        plane.publish(ModelSnapshot.of([WEB, CART, route("web-canary", "web"), route("cart-route", "cart")]))
        waypoint_updates, ztunnel_updates = [], []
        token = plane.credentials.issue_waypoint(spiffe("shop", "waypoint"))
        waypoint = ConfigSubscriber(plane.endpoint(token), "wp", waypoint_updates.append, gateway="shop/waypoint")
        ztunnel = ConfigSubscriber(plane.endpoint(plane.credentials.issue_ztunnel("node-a")), "zt",
                                   ztunnel_updates.append)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waypoint.run)
            nursery.start_soon(ztunnel.run)
            await wait_until(lambda: waypoint_updates and ztunnel_updates)
            assert list(waypoint_updates[-1].objects) == ["HTTPRoute/shop/web-canary"]
            assert not ztunnel_updates[-1].objects
            # Binding cart to the waypoint brings its (unchanged) route in the next delta.
            bound_cart = Service("cart", "shop", CART.hostname, CART.addresses, waypoint=WEB.waypoint)
            version = plane.publish(ModelSnapshot.of([WEB, bound_cart, route("web-canary", "web"),
                                                      route("cart-route", "cart")]))
            await wait_until(lambda: len(waypoint_updates) == 2)
            assert sorted(waypoint_updates[-1].objects) == ["HTTPRoute/shop/cart-route", "HTTPRoute/shop/web-canary"]
            await wait_until(lambda: plane.subscriber("wp").acked_version == version)
            assert plane.subscriber("wp").view.gateway == "shop/waypoint"
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("gateway, role, fragment", [
    ("bank/waypoint", "waypoint", "of another namespace"),
    ("waypoint", "waypoint", "namespace/name"),
    ("shop/waypoint", "ztunnel", "only waypoints name a gateway"),
])
async def test_a_gateway_the_caller_may_not_name_is_refused_saying_why(ca, gateway, role, fragment):
    async with control_plane(ca, STATE) as plane:
        token = (plane.credentials.issue_waypoint(spiffe("shop", "waypoint")) if role == "waypoint"
                 else plane.credentials.issue_ztunnel("node-a"))
        subscriber = ConfigSubscriber(plane.endpoint(token), "s", lambda _: None, gateway=gateway)
        with pytest.raises(ControlPlaneError, match=fragment):
            await subscriber._follow(resume=True)
