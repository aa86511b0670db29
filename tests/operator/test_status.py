"""Status tells the truth: conditions follow the current desired state, vanish with the object,
carry observedGeneration; a spiffe:// principal is kept as written (and never matches, as in Istio)."""

from __future__ import annotations

from typing import Any

from wisp.identity import SpiffeId
from wisp_operator.cluster import ClusterState
from wisp_operator.controller import Controller
from wisp_operator.distributor import Distributor
from wisp_operator.reconcile import reconcile
from wisp_operator.store import ObjectStore
from ztunnel.state.rbac import Connection, matches_policy

KEY = ("AuthorizationPolicy", "shop", "p", "ZtunnelAccepted")


def policy(generation: int = 1, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "shop", "generation": generation}, "spec": spec}


def controller_after(*states: list[dict[str, Any]]) -> Controller:
    controller = Controller(ObjectStore(), Distributor())
    for objects in states:
        state = ClusterState.of(objects)
        controller.apply(state, reconcile(state))
    return controller


def test_condition_carries_the_generation_it_describes() -> None:
    controller = controller_after([policy(generation=3, selector={"matchLabels": {"app": "web"}}, rules=[{}])])
    assert controller.status[KEY]["observedGeneration"] == 3


def test_a_policy_that_stops_reaching_ztunnel_loses_its_condition() -> None:
    selector = policy(selector={"matchLabels": {"app": "web"}}, rules=[{}])
    waypoint = policy(generation=2, targetRefs=[{"kind": "Gateway", "group": "gateway.networking.k8s.io",
                                                  "name": "waypoint"}], rules=[{}])
    controller = controller_after([selector], [waypoint])
    assert KEY not in controller.status


def test_a_deleted_policy_loses_its_condition() -> None:
    controller = controller_after([policy(rules=[{}])], [])
    assert controller.status == {}


def test_a_changed_policy_gets_a_fresh_condition() -> None:
    http = policy(action="DENY", rules=[{"to": [{"operation": {"methods": ["GET"]}}]}])
    plain = policy(generation=2, action="DENY", rules=[{"to": [{"operation": {"ports": ["80"]}}]}])
    controller = controller_after([http], [plain])
    assert (controller.status[KEY]["reason"], controller.status[KEY]["observedGeneration"]) == ("Accepted", 2)


def test_waypoint_bound_conditions_carry_observed_generation_too() -> None:
    objects = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"istio.io/use-waypoint": "w"}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop", "generation": 4},
         "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"}, "ports": [{"port": 80}]}},
    ]
    writes = [w for w in reconcile(ClusterState.of(objects)).status if w.kind == "Service"]
    assert writes and all(w.condition["observedGeneration"] == 4 for w in writes)


def test_a_spiffe_principal_is_kept_as_written_and_never_matches() -> None:
    state = ClusterState.of([policy(rules=[{"from": [{"source": {"principals": ["spiffe://cluster.local/ns/shop/sa/client"]}}]}])])
    result = reconcile(state)
    auth = result.model.authorizations["shop/p"]
    client = Connection(SpiffeId("cluster.local", "shop", "client"), "10.0.0.1", "10.0.0.2", 80)
    assert not matches_policy(auth, client)
    condition = next(w.condition for w in result.status if w.condition_type == "ZtunnelAccepted")
    assert condition["reason"] == "UnsupportedValue"
    assert 'never match' in condition["message"] and '"cluster.local/ns/shop/sa/client"' in condition["message"]


def test_the_same_principal_without_the_scheme_matches() -> None:
    state = ClusterState.of([policy(rules=[{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/client"]}}]}])])
    auth = reconcile(state).model.authorizations["shop/p"]
    client = Connection(SpiffeId("cluster.local", "shop", "client"), "10.0.0.1", "10.0.0.2", 80)
    assert matches_policy(auth, client)
