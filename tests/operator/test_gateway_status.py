"""Waypoint Gateways and mesh routes in the core: ConfigObjects for waypoints, Gateway API status.

Condition types and reasons are the Gateway API's (kubernetes-sigs/gateway-api apis/v1
gateway_types.go, shared_types.go); route conditions come from the waypoint's own route parser.
"""

from __future__ import annotations

from typing import Any

from wisp.model import ConfigObject
from wisp_operator.cluster import ClusterState
from wisp_operator.gateways import CONTROLLER_NAME, StatusFieldsWrite, merge_status
from wisp_operator.reconcile import reconcile

WAYPOINT_IP = "10.96.0.99"


def gateway(listeners: list[dict[str, Any]] | None = None, status: dict[str, Any] | None = None,
            gateway_class: str = "istio-waypoint") -> dict[str, Any]:
    gw: dict[str, Any] = {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "waypoint", "namespace": "shop", "generation": 2},
        "spec": {"gatewayClassName": gateway_class,
                 "listeners": listeners if listeners is not None else
                 [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
    }
    if status is not None:
        gw["status"] = status
    return gw


def waypoint_service() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "waypoint", "namespace": "shop",
                         "labels": {"gateway.networking.k8s.io/gateway-name": "waypoint"}},
            "spec": {"clusterIP": WAYPOINT_IP, "selector": {"gateway.networking.k8s.io/gateway-name": "waypoint"},
                     "ports": [{"name": "mesh", "port": 15008}, {"name": "status-port", "port": 15021}]}}


def waypoint_pod(ready: bool = True) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "waypoint-abc12", "namespace": "shop",
                         "labels": {"gateway.networking.k8s.io/gateway-name": "waypoint"}},
            "spec": {"serviceAccountName": "waypoint"},
            "status": {"phase": "Running", "podIP": "10.244.0.50",
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def app_service(name: str = "web") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "shop", "labels": {"istio.io/use-waypoint": "waypoint"}},
            "spec": {"clusterIP": "10.96.0.20", "selector": {"app": name}, "ports": [{"port": 80}]}}


def route(rules: list[dict[str, Any]], kind: str = "HTTPRoute", parent: str = "web",
          status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": kind,
        "metadata": {"name": "canary", "namespace": "shop", "generation": 4},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": parent, "port": 80}], "rules": rules},
    }
    if status is not None:
        obj["status"] = status
    return obj


def fields_of(result, kind: str, name: str) -> dict[str, Any] | None:
    found = [w.fields for w in result.status
             if isinstance(w, StatusFieldsWrite) and (w.kind, w.namespace, w.name) == (kind, "shop", name)]
    return found[0] if found else None


def by_type(conditions: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in conditions}


# --- config objects ---------------------------------------------------------------------------


def test_waypoint_gateways_mesh_routes_and_targeted_policies_become_config_objects() -> None:
    policy_targeted = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                       "metadata": {"name": "l7", "namespace": "shop"},
                       "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "web"}],
                                "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}}
    policy_l4 = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                 "metadata": {"name": "l4", "namespace": "shop"}, "spec": {"action": "ALLOW"}}
    gateway_route = route([{}])
    gateway_route["metadata"] = {"name": "ingress", "namespace": "shop"}
    gateway_route["spec"]["parentRefs"] = [{"name": "ingress-gw"}]  # a Gateway parent: not ours
    other_class = gateway(gateway_class="istio")
    other_class["metadata"] = {"name": "ingress-gw", "namespace": "shop"}
    result = reconcile(ClusterState.of([gateway(), other_class, waypoint_service(), app_service(),
                                        route([{"backendRefs": [{"name": "web", "port": 80}]}]),
                                        gateway_route, policy_targeted, policy_l4]))
    assert sorted(result.model.objects) == ["AuthorizationPolicy/shop/l7", "Gateway/shop/waypoint",
                                            "HTTPRoute/shop/canary"]
    obj = result.model.objects["HTTPRoute/shop/canary"]
    assert isinstance(obj, ConfigObject) and obj.object()["spec"]["parentRefs"][0]["name"] == "web"


def test_a_status_write_coming_back_does_not_change_the_model() -> None:
    objs = [gateway(), waypoint_service(), waypoint_pod(), app_service(), route([{}])]
    first = reconcile(ClusterState.of(objs))
    objs[0] = gateway(status=merge_status("Gateway", None, fields_of(first, "Gateway", "waypoint")))
    assert reconcile(ClusterState.of(objs)).model == first.model


# --- Gateway status ---------------------------------------------------------------------------


def test_ready_waypoint_gateway_is_accepted_programmed_with_its_address() -> None:
    fields = fields_of(reconcile(ClusterState.of([gateway(), waypoint_service(), waypoint_pod()])),
                       "Gateway", "waypoint")
    assert by_type(fields["conditions"]) == {"Accepted": ("True", "Accepted"),
                                             "Programmed": ("True", "Programmed")}
    assert all(c["observedGeneration"] == 2 for c in fields["conditions"])
    assert fields["addresses"] == [{"type": "IPAddress", "value": WAYPOINT_IP}]
    (listener,) = fields["listeners"]
    assert listener["name"] == "mesh" and listener["attachedRoutes"] == 0
    assert by_type(listener["conditions"]) == {
        "Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed"),
        "ResolvedRefs": ("True", "ResolvedRefs"), "Conflicted": ("False", "NoConflicts")}


def test_gateway_without_ready_instance_is_pending_with_no_address() -> None:
    fields = fields_of(reconcile(ClusterState.of([gateway(), waypoint_service(), waypoint_pod(ready=False)])),
                       "Gateway", "waypoint")
    assert by_type(fields["conditions"])["Programmed"] == ("False", "Pending")
    assert fields["addresses"] == []


def test_gateway_without_service_address_is_address_not_assigned() -> None:
    fields = fields_of(reconcile(ClusterState.of([gateway()])), "Gateway", "waypoint")
    assert by_type(fields["conditions"]) == {"Accepted": ("True", "Accepted"),
                                             "Programmed": ("False", "AddressNotAssigned")}


def test_other_listeners_are_refused_as_unsupported_protocol() -> None:
    gw = gateway([{"name": "mesh", "port": 15008, "protocol": "HBONE"},
                  {"name": "http", "port": 80, "protocol": "HTTP"}])
    fields = fields_of(reconcile(ClusterState.of([gw, waypoint_service(), waypoint_pod()])), "Gateway", "waypoint")
    assert by_type(fields["conditions"])["Accepted"] == ("True", "ListenersNotValid")
    mesh, http = fields["listeners"]
    assert by_type(mesh["conditions"])["Accepted"] == ("True", "Accepted")
    assert by_type(http["conditions"])["Accepted"] == ("False", "UnsupportedProtocol")
    assert by_type(http["conditions"])["Programmed"] == ("False", "Invalid")


def test_gateway_without_the_hbone_listener_is_not_accepted() -> None:
    gw = gateway([{"name": "http", "port": 80, "protocol": "HTTP"}])
    fields = fields_of(reconcile(ClusterState.of([gw, waypoint_service(), waypoint_pod()])), "Gateway", "waypoint")
    assert by_type(fields["conditions"]) == {"Accepted": ("False", "ListenersNotValid"),
                                             "Programmed": ("False", "Invalid")}


def test_gateway_status_already_current_is_not_written_again() -> None:
    objs = [gateway(), waypoint_service(), waypoint_pod()]
    wanted = fields_of(reconcile(ClusterState.of(objs)), "Gateway", "waypoint")
    stored = merge_status("Gateway", {"conditions": [{"type": "other.io/Thing", "status": "True"}]}, wanted)
    objs[0] = gateway(status=stored)
    assert fields_of(reconcile(ClusterState.of(objs)), "Gateway", "waypoint") is None


# --- route status -----------------------------------------------------------------------------


def test_valid_route_is_accepted_with_resolved_refs_per_parent() -> None:
    r = route([{"backendRefs": [{"name": "web", "port": 80}]}])
    fields = fields_of(reconcile(ClusterState.of([app_service(), r])), "HTTPRoute", "canary")
    (parent,) = fields["parents"]
    assert parent["parentRef"] == r["spec"]["parentRefs"][0]
    assert parent["controllerName"] == CONTROLLER_NAME == "istio.io/mesh-controller"
    assert by_type(parent["conditions"]) == {"Accepted": ("True", "Accepted"),
                                             "ResolvedRefs": ("True", "ResolvedRefs"),
                                             "ResolvedWaypoints": ("True", "ResolvedWaypoints")}
    assert all(c["observedGeneration"] == 4 for c in parent["conditions"])
    assert message_of(parent, "ResolvedWaypoints") == "All waypoints resolved"


def message_of(parent: dict[str, Any], condition: str) -> str:
    return next(c["message"] for c in parent["conditions"] if c["type"] == condition)


def unlabelled_service() -> dict[str, Any]:
    service = app_service()
    service["metadata"]["labels"] = {}
    return service


NO_WAYPOINT = ("istio.io/use-waypoint label missing from parent and parent namespace; "
               "in ambient mode, route will not be respected")


def test_route_on_a_service_without_waypoint_is_accepted_and_says_it_is_not_carried_out() -> None:
    # Istio (pilot/pkg/config/kube/gateway conversion.go referenceAllowed): the route is valid, so
    # Accepted=True; ResolvedWaypoints stays True and its message says nothing will apply it.
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
    r = route([{"backendRefs": [{"name": "web", "port": 80}]}])
    (parent,) = fields_of(reconcile(ClusterState.of([namespace, unlabelled_service(), r])),
                          "HTTPRoute", "canary")["parents"]
    assert by_type(parent["conditions"]) == {"Accepted": ("True", "Accepted"),
                                             "ResolvedRefs": ("True", "ResolvedRefs"),
                                             "ResolvedWaypoints": ("True", "ResolvedWaypoints")}
    assert message_of(parent, "ResolvedWaypoints") == NO_WAYPOINT


def test_a_namespace_label_resolves_the_waypoint_and_none_opts_out() -> None:
    namespace = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": "shop", "labels": {"istio.io/use-waypoint": "waypoint"}}}
    r = route([{"backendRefs": [{"name": "web", "port": 80}]}])
    (parent,) = fields_of(reconcile(ClusterState.of([namespace, unlabelled_service(), r])),
                          "HTTPRoute", "canary")["parents"]
    assert message_of(parent, "ResolvedWaypoints") == "All waypoints resolved"
    namespace["metadata"]["labels"]["istio.io/use-waypoint"] = "None"
    (parent,) = fields_of(reconcile(ClusterState.of([namespace, unlabelled_service(), r])),
                          "HTTPRoute", "canary")["parents"]
    assert message_of(parent, "ResolvedWaypoints") == NO_WAYPOINT


def test_missing_backend_is_backend_not_found() -> None:
    r = route([{"backendRefs": [{"name": "nowhere", "port": 80}]}])
    (parent,) = fields_of(reconcile(ClusterState.of([app_service(), r])), "HTTPRoute", "canary")["parents"]
    assert by_type(parent["conditions"])["ResolvedRefs"] == ("False", "BackendNotFound")


def test_unsupported_filter_everywhere_is_invalid_filter() -> None:
    r = route([{"filters": [{"type": "CORS", "cors": {}}], "backendRefs": [{"name": "web", "port": 80}]}])
    (parent,) = fields_of(reconcile(ClusterState.of([app_service(), r])), "HTTPRoute", "canary")["parents"]
    assert by_type(parent["conditions"])["Accepted"] == ("False", "InvalidFilter")


def test_missing_parent_service_is_no_matching_parent() -> None:
    r = route([{}], parent="ghost")
    (parent,) = fields_of(reconcile(ClusterState.of([app_service(), r])), "HTTPRoute", "canary")["parents"]
    assert by_type(parent["conditions"])["Accepted"] == ("False", "NoMatchingParent")
    assert message_of(parent, "ResolvedWaypoints") == "parent not found"


def test_grpc_routes_get_status_too() -> None:
    r = route([{"backendRefs": [{"name": "web", "port": 80}]}], kind="GRPCRoute")
    (parent,) = fields_of(reconcile(ClusterState.of([app_service(), r])), "GRPCRoute", "canary")["parents"]
    assert by_type(parent["conditions"])["Accepted"] == ("True", "Accepted")
    assert "ResolvedWaypoints" not in by_type(parent["conditions"])  # Istio reports it for HTTPRoutes only


def test_other_controllers_parents_are_kept_and_times_survive_an_unchanged_status() -> None:
    theirs = {"parentRef": {"name": "ingress"}, "controllerName": "example.com/other", "conditions": []}
    r = route([{"backendRefs": [{"name": "web", "port": 80}]}])
    wanted = fields_of(reconcile(ClusterState.of([app_service(), r])), "HTTPRoute", "canary")
    first = merge_status("HTTPRoute", {"parents": [theirs]}, wanted, now="2026-01-01T00:00:00Z")
    assert first["parents"][0] == theirs
    again = merge_status("HTTPRoute", first, wanted, now="2026-02-02T00:00:00Z")
    assert [c["lastTransitionTime"] for c in again["parents"][1]["conditions"]] == ["2026-01-01T00:00:00Z"] * 3
    r["status"] = again
    assert fields_of(reconcile(ClusterState.of([app_service(), r])), "HTTPRoute", "canary") is None


def test_a_condition_that_flips_gets_a_new_transition_time() -> None:
    old = {"conditions": [{"type": "Programmed", "status": "False", "reason": "Pending",
                           "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    wanted = fields_of(reconcile(ClusterState.of([gateway(), waypoint_service(), waypoint_pod()])),
                       "Gateway", "waypoint")
    merged = merge_status("Gateway", old, wanted, now="2026-03-03T00:00:00Z")
    programmed = next(c for c in merged["conditions"] if c["type"] == "Programmed")
    assert programmed["lastTransitionTime"] == "2026-03-03T00:00:00Z"


# --- AuthorizationPolicy WaypointAccepted -----------------------------------------------------


def targeted_policy(*targets: dict[str, Any], ns: str = "shop") -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "l7", "namespace": ns, "generation": 3},
            "spec": {"targetRefs": list(targets), "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}}


def waypoint_accepted(objs: list[dict[str, Any]]) -> dict[str, Any] | None:
    found = [w.condition for w in reconcile(ClusterState.of(objs)).status
             if getattr(w, "condition_type", None) == "WaypointAccepted"]
    return found[0] if found else None


GATEWAY_REF = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}
WEB_REF = {"group": "", "kind": "Service", "name": "web"}
READY = [gateway(), waypoint_service(), waypoint_pod()]


def test_policy_on_the_waypoint_and_a_bound_service_is_accepted() -> None:
    condition = waypoint_accepted([*READY, app_service(), targeted_policy(GATEWAY_REF, WEB_REF)])
    assert condition == {"type": "WaypointAccepted", "status": "True", "reason": "Accepted",
                         "message": "bound to shop/waypoint", "observedGeneration": 3}


def test_policy_on_an_unbound_service_is_ancestor_not_bound() -> None:
    unbound = app_service()
    unbound["metadata"]["labels"] = {}
    condition = waypoint_accepted([*READY, unbound, targeted_policy(WEB_REF)])
    assert (condition["status"], condition["reason"]) == ("False", "AncestorNotBound")
    assert condition["message"] == "Service shop/web is not bound to a waypoint"


def test_policy_on_a_service_whose_waypoint_is_not_ready_is_not_bound_yet() -> None:
    condition = waypoint_accepted([gateway(), waypoint_service(), app_service(), targeted_policy(WEB_REF)])
    assert condition["reason"] == "AncestorNotBound"


def test_policy_on_a_missing_target_is_target_not_found() -> None:
    condition = waypoint_accepted([*READY, targeted_policy({"kind": "Service", "name": "ghost"})])
    assert (condition["reason"], condition["message"]) == ("TargetNotFound", "Service shop/ghost was not found")
    other = dict(GATEWAY_REF, name="elsewhere")
    assert waypoint_accepted([*READY, targeted_policy(other)])["reason"] == "TargetNotFound"


def test_mesh_wide_policy_on_the_gateway_class_is_accepted_in_the_root_namespace_only() -> None:
    ref = {"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "istio-waypoint"}
    assert waypoint_accepted([targeted_policy(ref, ns="istio-system")])["status"] == "True"
    assert waypoint_accepted([targeted_policy(ref)])["status"] == "False"


def test_policies_without_target_refs_get_no_waypoint_condition() -> None:
    plain = targeted_policy()
    del plain["spec"]["targetRefs"]
    assert waypoint_accepted([*READY, plain]) is None
