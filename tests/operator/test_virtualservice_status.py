"""VirtualService and DestinationRule in the core: sent to waypoints, and the status conditions we write.

Accepted (where it applies, with which waypoint), ResolvedRefs (destinations and subsets),
UnsupportedFields (each field the waypoint does not carry out, by path); a VirtualService and an
HTTPRoute on one Service: both statuses say which applies.
"""

from __future__ import annotations

from typing import Any

from wisp_operator.cluster import ClusterState
from wisp_operator.gateways import StatusFieldsWrite
from wisp_operator.reconcile import StatusWrite, reconcile

from .test_gateway_status import app_service, gateway, route, waypoint_pod, waypoint_service


def vs(http: list[dict[str, Any]], hosts: list[str] | None = None, name: str = "reviews",
       api: str = "v1", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"networking.istio.io/{api}", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "shop", "generation": 3,
                         "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"hosts": hosts or ["web"], "http": http, **spec}}


def dr(host: str = "web", subsets: tuple[str, ...] = ("v1", "v2"), **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
            "metadata": {"name": "web-versions", "namespace": "shop", "generation": 2},
            "spec": {"host": host, "subsets": [{"name": s, "labels": {"version": s}} for s in subsets], **spec}}


CANARY = [{"route": [{"destination": {"host": "web", "subset": "v1"}, "weight": 80},
                     {"destination": {"host": "web", "subset": "v2"}, "weight": 20}]}]
MESH = [gateway(), waypoint_service(), waypoint_pod(), app_service()]


def conditions(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, dict[str, Any]]:
    result = reconcile(ClusterState.of(objects))
    return {w.condition_type: w.condition for w in result.status
            if isinstance(w, StatusWrite) and (w.kind, w.name) == (kind, name)}


def summary(found: dict[str, dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {t: (c["status"], c["reason"]) for t, c in found.items()}


def test_both_kinds_become_config_objects_for_waypoints() -> None:
    result = reconcile(ClusterState.of([*MESH, vs(CANARY), dr()]))
    assert {"VirtualService/shop/reviews", "DestinationRule/shop/web-versions"} <= set(result.model.objects)


def test_a_canary_with_defined_subsets_is_accepted_on_its_services_waypoint() -> None:
    found = conditions([*MESH, vs(CANARY), dr()], "VirtualService", "reviews")
    assert summary(found) == {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs"),
                              "UnsupportedFields": ("False", "AllFieldsSupported")}
    assert found["Accepted"]["message"] == "applied to Service shop/web port 80 (waypoint shop/waypoint)"
    assert found["Accepted"]["observedGeneration"] == 3


def test_an_undefined_subset_is_an_unresolved_reference() -> None:
    found = conditions([*MESH, vs(CANARY), dr(subsets=("v1",))], "VirtualService", "reviews")
    assert summary(found)["ResolvedRefs"] == ("False", "BackendNotFound")
    assert "subset 'v2' of Service shop/web is defined by no DestinationRule" in found["ResolvedRefs"]["message"]


def test_unsupported_fields_are_named_in_status() -> None:
    obj = vs([{**CANARY[0], "corsPolicy": {"allowOrigins": [{"exact": "https://x"}]}}],
             tcp=[{"route": [{"destination": {"host": "web"}}]}])
    found = conditions([*MESH, obj, dr()], "VirtualService", "reviews")
    assert summary(found)["UnsupportedFields"] == ("True", "FieldIgnored")
    message = found["UnsupportedFields"]["message"]
    assert "spec.tcp: tcp routes are not supported on a waypoint" in message
    assert "spec.http[0].corsPolicy: CORS is not enforced on a waypoint" in message
    assert summary(found)["Accepted"] == ("True", "Accepted")


def test_a_service_without_a_waypoint_is_said_so() -> None:
    plain = app_service()
    plain["metadata"]["labels"] = {}
    found = conditions([plain, vs(CANARY), dr()], "VirtualService", "reviews")
    assert found["Accepted"]["message"].endswith("(no waypoint: nothing applies it until the Service uses one)")


def test_a_host_that_names_no_service_is_not_accepted() -> None:
    found = conditions([*MESH, vs(CANARY, hosts=["nothing.example.com"])], "VirtualService", "reviews")
    assert summary(found)["Accepted"] == ("False", "NoMatchingParent")


def test_virtualservice_and_httproute_on_one_service_each_say_which_applies() -> None:
    result = reconcile(ClusterState.of([*MESH, vs(CANARY), dr(), route([{"backendRefs": [{"name": "web", "port": 80}]}])]))
    vs_accepted = next(w.condition for w in result.status if isinstance(w, StatusWrite)
                       and w.kind == "VirtualService" and w.condition_type == "Accepted")
    assert (vs_accepted["status"], vs_accepted["reason"]) == ("False", "Conflicted")
    assert "HTTPRoute shop/canary bound there takes precedence" in vs_accepted["message"]
    route_fields = next(w.fields for w in result.status if isinstance(w, StatusFieldsWrite) and w.kind == "HTTPRoute")
    accepted = next(c for c in route_fields["parents"][0]["conditions"] if c["type"] == "Accepted")
    assert accepted["status"] == "True"
    assert "VirtualService shop/reviews for the same Service is not applied" in accepted["message"]


def test_destination_rule_status_names_ignored_fields_and_its_service() -> None:
    rule = dr(trafficPolicy={"tls": {"mode": "ISTIO_MUTUAL"}, "loadBalancer": {"simple": "ROUND_ROBIN"}})
    found = conditions([*MESH, rule], "DestinationRule", "web-versions")
    assert summary(found) == {"Accepted": ("True", "Accepted"), "UnsupportedFields": ("True", "FieldIgnored")}
    assert "spec.trafficPolicy.tls" in found["UnsupportedFields"]["message"]
    assert found["Accepted"]["message"] == "applied to Service shop/web (waypoint shop/waypoint)"


def test_a_destination_rule_for_no_service_is_not_accepted() -> None:
    found = conditions([*MESH, dr(host="*.example.com")], "DestinationRule", "web-versions")
    assert summary(found)["Accepted"] == ("False", "NoMatchingParent")


def test_an_unchanged_status_is_not_written_again() -> None:
    objects = [*MESH, vs(CANARY), dr()]
    found = conditions(objects, "VirtualService", "reviews")
    objects[4] = dict(objects[4], status={"conditions": list(found.values())})
    assert conditions(objects, "VirtualService", "reviews") == {}
