"""VirtualServices and DestinationRules reach the waypoint of the Service their hosts name.

Hosts are read as Istio reads them, relative to the object's namespace: a short name, name.ns,
name.ns.svc and the FQDN all name the same Service; a DestinationRule also goes to every waypoint
whose routes send to its host, where the subsets are chosen.
"""

from __future__ import annotations

import pytest

from wisp.model import ConfigObject, ModelSnapshot, config_object
from wisp_operator.distributor import ROLE_WAYPOINT, Distributor, View

from .test_distributor_waypoints import service, snapshot_for

WAYPOINT = View(ROLE_WAYPOINT, gateway="shop/waypoint")
OTHER = View(ROLE_WAYPOINT, gateway="bank/waypoint")


def virtual_service(ns: str, name: str, hosts: list[str], destinations: list[str] = ()) -> ConfigObject:
    http = [{"route": [{"destination": {"host": host, "subset": "v1"}} for host in destinations]}] if destinations else []
    return config_object({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                          "metadata": {"name": name, "namespace": ns}, "spec": {"hosts": hosts, "http": http}})


def destination_rule(ns: str, name: str, host: str) -> ConfigObject:
    return config_object({"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
                          "metadata": {"name": name, "namespace": ns},
                          "spec": {"host": host, "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}})


def objects(distributor: Distributor, view: View) -> list[str]:
    return sorted(snapshot_for(distributor, view).objects)


@pytest.mark.parametrize("host", ["web", "web.shop", "web.shop.svc", "web.shop.svc.cluster.local"])
def test_every_host_form_reaches_the_services_waypoint(host: str) -> None:
    distributor = Distributor()
    distributor.publish(ModelSnapshot.of([service("shop", "web", "shop/waypoint"), service("bank", "ledger", "bank/waypoint"),
                                          virtual_service("shop", "vs", [host]), destination_rule("shop", "dr", host)]))
    assert objects(distributor, WAYPOINT) == ["DestinationRule/shop/dr", "VirtualService/shop/vs"]
    assert objects(distributor, OTHER) == []


def test_a_short_host_is_read_in_the_objects_namespace_not_the_services() -> None:
    distributor = Distributor()
    distributor.publish(ModelSnapshot.of([service("shop", "web", "shop/waypoint"),
                                          virtual_service("bank", "vs", ["web"]),
                                          virtual_service("bank", "vs-qualified", ["web.shop"])]))
    assert objects(distributor, WAYPOINT) == ["VirtualService/bank/vs-qualified"]


def test_a_destination_rule_also_goes_where_routes_send_to_its_host() -> None:
    distributor = Distributor()
    distributor.publish(ModelSnapshot.of([
        service("shop", "web", "shop/waypoint"), service("bank", "ledger", "bank/waypoint"),
        virtual_service("shop", "web-to-ledger", ["web"], ["ledger.bank.svc.cluster.local"]),
        destination_rule("bank", "ledger-subsets", "ledger"),
    ]))
    assert objects(distributor, WAYPOINT) == ["DestinationRule/bank/ledger-subsets", "VirtualService/shop/web-to-ledger"]
    assert objects(distributor, OTHER) == ["DestinationRule/bank/ledger-subsets"]


def test_an_httproute_backend_brings_its_destination_rule_too() -> None:
    route = config_object({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                           "metadata": {"name": "r", "namespace": "shop"},
                           "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                                    "rules": [{"backendRefs": [{"name": "ledger", "namespace": "bank", "port": 80}]}]}})
    distributor = Distributor()
    distributor.publish(ModelSnapshot.of([service("shop", "web", "shop/waypoint"), service("bank", "ledger"),
                                          route, destination_rule("bank", "ledger-policy", "ledger")]))
    assert objects(distributor, WAYPOINT) == ["DestinationRule/bank/ledger-policy", "HTTPRoute/shop/r"]


def test_wildcard_and_unknown_hosts_reach_no_waypoint() -> None:
    distributor = Distributor()
    distributor.publish(ModelSnapshot.of([service("shop", "web", "shop/waypoint"),
                                          virtual_service("shop", "vs", ["*.shop.svc.cluster.local", "example.com"])]))
    assert objects(distributor, WAYPOINT) == []
