"""VirtualService ``http`` routes on the waypoint: Istio's semantics, compiled into the route table.

Order (the first matching http route wins, as written), matches, weighted subsets, rewrites,
redirects, direct responses, headers, mirrors, timeouts; what is refused and what is reported
as not supported; and a VirtualService beside an HTTPRoute on one Service (not merged).
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from tests.waypoint.route_objects import (
    WEB_VIP,
    backend,
    decide,
    http_route,
    request,
    rule,
    services,
)
from waypoint.route import DirectResponse, Forward, Redirect, compile_table
from waypoint.route.decision import DefaultService
from waypoint.route.filters import apply_header_modifiers
from waypoint.route.status import CONFLICTED, NO_MATCHING_PARENT, UNSUPPORTED_VALUE
from waypoint.route.virtualservice import UNSUPPORTED_FIELDS, go_duration, parse_virtual_service, status_conditions


def vs(name: str, *http: dict[str, Any], hosts: list[str] | None = None, ns: str = "shop",
       created: str = "2024-01-01T00:00:00Z", api: str = "v1", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"hosts": ["web"] if hosts is None else hosts, "http": list(http)}
    body.update(spec)
    return {"apiVersion": f"networking.istio.io/{api}", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": created}, "spec": body}


def dest(host: str = "web", subset: str | None = None, port: int | None = None, weight: int | None = None,
         **extra: Any) -> dict[str, Any]:
    destination: dict[str, Any] = {"host": host}
    if subset:
        destination["subset"] = subset
    if port:
        destination["port"] = {"number": port}
    out: dict[str, Any] = {"destination": destination}
    if weight is not None:
        out["weight"] = weight
    out.update(extra)
    return out


def table(*objects: dict[str, Any]):
    return compile_table(objects, services())


def parsed(obj: dict[str, Any]):
    by_key = {(s.namespace, s.name): s for s in services()}
    by_host = {s.hostname: s for s in services()}
    return parse_virtual_service(obj, lambda ns, n: by_key.get((ns, n)), by_host.get)


# --- order and matches -----------------------------------------------------------------------


def test_the_first_matching_http_route_wins_even_when_a_later_one_is_more_specific():
    t = table(vs("order",
                 {"match": [{"uri": {"prefix": "/"}}], "route": [dest("web-v2")]},
                 {"match": [{"uri": {"exact": "/api/v1"}}], "route": [dest("web-v3")]}))
    assert decide(t, request(b"/api/v1")).backend.name == "web-v2"


def test_a_later_route_serves_what_earlier_ones_do_not_match():
    t = table(vs("order",
                 {"match": [{"uri": {"prefix": "/a"}}], "route": [dest("web-v2")]},
                 {"route": [dest("web-v3")]}))
    assert decide(t, request(b"/b")).backend.name == "web-v3"
    assert decide(t, request(b"/a")).backend.name == "web-v2"


def test_uri_prefix_is_a_string_prefix_not_a_path_element():
    t = table(vs("p", {"match": [{"uri": {"prefix": "/api"}}], "route": [dest("web-v2")]}))
    assert decide(t, request(b"/apiary")).backend.name == "web-v2"


def test_no_matching_route_is_a_404_route_not_found():
    t = table(vs("p", {"match": [{"uri": {"exact": "/only"}}], "route": [dest("web-v2")]}))
    decision = decide(t, request(b"/other"))
    assert isinstance(decision, DirectResponse) and (decision.status, decision.detail) == (404, "route_not_found")


def test_regex_uri_matches_the_whole_path():
    t = table(vs("r", {"match": [{"uri": {"regex": "/item/[0-9]+"}}], "route": [dest("web-v2")]},
                 {"route": [dest("web-v3")]}))
    assert decide(t, request(b"/item/42")).backend.name == "web-v2"
    assert decide(t, request(b"/item/42/x")).backend.name == "web-v3"


def test_ignore_uri_case_compares_exact_and_prefix_without_case():
    t = table(vs("c", {"match": [{"uri": {"prefix": "/Shop"}, "ignoreUriCase": True}], "route": [dest("web-v2")]},
                 {"route": [dest("web-v3")]}))
    assert decide(t, request(b"/SHOP/cart")).backend.name == "web-v2"
    t = table(vs("c", {"match": [{"uri": {"prefix": "/Shop"}}], "route": [dest("web-v2")]}, {"route": [dest("web-v3")]}))
    assert decide(t, request(b"/SHOP/cart")).backend.name == "web-v3"


def test_headers_exact_prefix_regex_and_presence_all_must_hold():
    match = {"headers": {"x-user": {"exact": "jason"}, "x-tier": {"prefix": "gold"}, "x-id": {"regex": "[0-9]+"},
                         "x-flag": {}}}
    t = table(vs("h", {"match": [match], "route": [dest("web-v2")]}, {"route": [dest("web-v3")]}))
    good = [(b"x-user", b"jason"), (b"X-Tier", b"golden"), (b"x-id", b"12"), (b"x-flag", b"")]
    assert decide(t, request(b"/", headers=good)).backend.name == "web-v2"
    for drop in range(len(good)):
        assert decide(t, request(b"/", headers=good[:drop] + good[drop + 1:])).backend.name == "web-v3"


def test_without_headers_excludes_requests_carrying_the_header():
    t = table(vs("w", {"match": [{"withoutHeaders": {"x-canary": {}}}], "route": [dest("web-v2")]},
                 {"route": [dest("web-v3")]}))
    assert decide(t, request(b"/")).backend.name == "web-v2"
    assert decide(t, request(b"/", headers=[(b"x-canary", b"1")])).backend.name == "web-v3"


def test_query_params_and_method_match():
    t = table(vs("q", {"match": [{"queryParams": {"v": {"exact": "2"}}, "method": {"exact": "POST"}}],
                       "route": [dest("web-v2")]}, {"route": [dest("web-v3")]}))
    assert decide(t, request(b"/x?v=2", method=b"POST")).backend.name == "web-v2"
    assert decide(t, request(b"/x?v=2", method=b"GET")).backend.name == "web-v3"
    assert decide(t, request(b"/x?v=3", method=b"POST")).backend.name == "web-v3"


def test_match_entries_are_ored():
    t = table(vs("o", {"match": [{"uri": {"prefix": "/a"}}, {"uri": {"prefix": "/b"}}], "route": [dest("web-v2")]},
                 {"route": [dest("web-v3")]}))
    assert [decide(t, request(p)).backend.name for p in (b"/a", b"/b", b"/c")] == ["web-v2", "web-v2", "web-v3"]


def test_a_match_port_limits_the_route_to_that_service_port():
    t = table(vs("port", {"match": [{"port": 8080}], "route": [dest("web-v2")]}, {"route": [dest("web-v3")]}))
    assert decide(t, request(b"/"), port=8080).backend.name == "web-v2"
    assert decide(t, request(b"/"), port=80).backend.name == "web-v3"


# --- destinations ----------------------------------------------------------------------------


def test_an_80_20_canary_by_subset_lands_within_3_points_over_2000_requests():
    t = table(vs("canary", {"route": [dest("web", "v1", weight=80), dest("web", "v2", weight=20)]}))
    rng = random.Random(11)
    counts = Counter(t.route(request(b"/"), WEB_VIP, 80, "shop", rng).subset for _ in range(2000))
    assert abs(counts["v1"] / 2000 - 0.80) <= 0.03 and counts["v1"] + counts["v2"] == 2000


def test_a_single_destination_takes_every_request_whatever_its_weight():
    t = table(vs("one", {"route": [dest("web-v2", weight=0)]}))
    assert decide(t, request(b"/")).backend.name == "web-v2"


def test_destination_port_and_the_dialled_port_when_unset():
    t = table(vs("ports", {"route": [dest("web-v2", port=8080)]}))
    assert decide(t, request(b"/")).backend.port == 8080
    t = table(vs("ports", {"route": [dest("web-v2")]}))
    assert decide(t, request(b"/")).backend.port is None  # the pipeline uses the port the client dialled


@pytest.mark.parametrize("host", ["api.other", "api.other.svc", "api.other.svc.cluster.local"])
def test_hosts_in_other_namespaces_resolve_in_every_form(host: str):
    t = table(vs("x", {"route": [dest(host)]}))
    backend_ = decide(t, request(b"/")).backend
    assert (backend_.namespace, backend_.name, backend_.problem) == ("other", "api", None)


def test_short_names_resolve_in_the_virtualservice_namespace():
    route = parsed(vs("x", {"route": [dest("api")]}, hosts=["api"], ns="other"))
    assert [(p.namespace, p.name) for p in route.parents] == [("other", "api")]
    assert route.rules[0].backends[0].namespace == "other"


def test_an_unknown_destination_gets_500s_and_is_reported():
    t = table(vs("x", {"route": [dest("nope")]}))
    decision = decide(t, request(b"/"))
    assert isinstance(decision, DirectResponse) and decision.status == 500
    assert any(p.reason == "BackendNotFound" and "'nope'" in p.message for p in t.problems("VirtualService", "shop", "x"))


# --- actions ---------------------------------------------------------------------------------


def test_rewrite_uri_replaces_the_matched_prefix_like_envoy_prefix_rewrite():
    t = table(vs("rw", {"match": [{"uri": {"prefix": "/wpcatalog"}}], "rewrite": {"uri": "/newcatalog"},
                        "route": [dest("web-v2")]}))
    assert decide(t, request(b"/wpcatalog/item?q=1")).target == b"/newcatalog/item?q=1"


def test_rewrite_uri_replaces_the_whole_path_of_exact_and_regex_matches():
    t = table(vs("rw", {"match": [{"uri": {"exact": "/old"}}, {"uri": {"regex": "/r/.*"}}],
                        "rewrite": {"uri": "/new", "authority": "web-v2.shop"}, "route": [dest("web-v2")]}))
    assert decide(t, request(b"/old")).target == b"/new"
    decision = decide(t, request(b"/r/a/b"))
    assert (decision.target, decision.authority) == (b"/new", b"web-v2.shop")


def test_redirect_defaults_to_301_and_replaces_the_path():
    t = table(vs("rd", {"redirect": {"uri": "/v2", "authority": "new.example"}}))
    decision = decide(t, request(b"/v1?a=b"))
    assert isinstance(decision, Redirect)
    assert (decision.status, decision.location) == (301, b"http://new.example/v2?a=b")


def test_direct_response_answers_status_and_body():
    t = table(vs("dr", {"directResponse": {"status": 418, "body": {"string": "teapot"}}}))
    decision = decide(t, request(b"/"))
    assert isinstance(decision, DirectResponse) and (decision.status, decision.body) == (418, b"teapot")
    t = table(vs("dr", {"directResponse": {"status": 200, "body": {"bytes": "aGk="}}}))
    assert decide(t, request(b"/")).body == b"hi"


def test_header_operations_remove_before_set_and_add():
    t = table(vs("hd", {"headers": {"request": {"set": {"x-a": "1"}, "add": {"x-b": "2"}, "remove": ["x-a", "x-c"]},
                                    "response": {"set": {"x-r": "r"}}},
                        "route": [dest("web-v2", headers={"request": {"set": {"x-d": "d"}}})]}))
    decision = decide(t, request(b"/"))
    out = apply_header_modifiers([(b"x-a", b"0"), (b"x-c", b"3")], decision.request_headers)
    # x-a is removed first, then set: Envoy applies headers_to_remove before headers_to_add.
    assert sorted(out) == [(b"x-a", b"1"), (b"x-b", b"2"), (b"x-d", b"d")]
    assert apply_header_modifiers([], decision.response_headers) == [(b"x-r", b"r")]


def test_mirror_with_percentage_and_mirrors_list():
    t = table(vs("m", {"route": [dest("web-v2")], "mirror": {"host": "mirror", "port": {"number": 80}},
                       "mirrorPercentage": {"value": 25.0},
                       "mirrors": [{"destination": {"host": "web-v3", "port": {"number": 8080}, "subset": "v2"}}]}))
    mirrors = parsed_rule(t).mirrors
    assert [(m.name, m.port, m.fraction, m.subset) for m in mirrors] == [("mirror", 80, 0.25, None),
                                                                        ("web-v3", 8080, 1.0, "v2")]


def parsed_rule(t: Any) -> Any:
    return t._routes[("VirtualService", "shop", "m")].rules[0]


def test_timeout_is_the_request_timeout_and_0s_disables_it():
    t = table(vs("t", {"route": [dest("web-v2")], "timeout": "3s"}))
    assert decide(t, request(b"/")).request_timeout == 3.0
    t = table(vs("t", {"route": [dest("web-v2")], "timeout": "0s"}))
    assert decide(t, request(b"/")).request_timeout == float("inf")


def test_go_durations_as_the_crd_accepts_them():
    assert [go_duration(v, "t") for v in ("1.5s", "300ms", "1m30s", "2h")] == [1.5, 0.3, 90.0, 7200.0]


# --- what is not supported -------------------------------------------------------------------


def test_unsupported_fields_are_reported_by_path_and_the_rest_applies():
    obj = vs("u", {"corsPolicy": {"allowOrigins": [{"exact": "x"}]}, "route": [dest("web-v2")]},
             tcp=[{"route": [dest("web")]}], exportTo=["."], gateways=["mesh", "istio-system/ingress"])
    route = parsed(obj)
    messages = [p.message for p in route.problems if p.condition == UNSUPPORTED_FIELDS]
    assert [m.split(":")[0] for m in messages] == ["spec.gateways", "spec.exportTo", "spec.tcp",
                                                   "spec.http[0].corsPolicy"]
    assert route.accepted
    assert decide(table(obj), request(b"/")).backend.name == "web-v2"


def test_a_match_on_source_labels_never_matches():
    t = table(vs("s", {"match": [{"sourceLabels": {"app": "x"}}], "route": [dest("web-v2")]},
                 {"route": [dest("web-v3")]}))
    assert decide(t, request(b"/")).backend.name == "web-v3"


def test_delegate_answers_500_rather_than_skip_the_route():
    t = table(vs("d", {"delegate": {"name": "other"}}, {"route": [dest("web-v3")]}))
    decision = decide(t, request(b"/"))
    assert isinstance(decision, DirectResponse) and decision.status == 500


def test_a_virtualservice_for_gateways_only_is_not_applied_to_the_mesh():
    t = table(vs("g", {"route": [dest("web-v2")]}, gateways=["istio-system/ingress"]))
    assert isinstance(decide(t, request(b"/")), DefaultService)
    assert any(p.reason == "NotForMesh" for p in t.problems("VirtualService", "shop", "g"))


def test_an_invalid_regex_refuses_the_virtualservice():
    route = parsed(vs("bad", {"match": [{"uri": {"regex": "(a"}}], "route": [dest("web-v2")]}))
    assert not route.accepted and route.problems[0].reason == UNSUPPORTED_VALUE


def test_a_host_that_names_no_service_is_reported():
    route = parsed(vs("h", {"route": [dest("web")]}, hosts=["web", "nothing.example.com"]))
    assert route.accepted
    assert [(p.reason, p.parent) for p in route.problems] == [(NO_MATCHING_PARENT, 1)]


# --- beside HTTPRoutes and other VirtualServices ---------------------------------------------


def test_an_httproute_on_the_same_service_wins_and_both_are_told():
    t = table(vs("vs", {"route": [dest("web-v2")]}),
              http_route("hr", rule(backends=[backend("web-v3")])))
    assert decide(t, request(b"/")).backend.name == "web-v3"
    problems = t.problems("VirtualService", "shop", "vs")
    assert {p.reason for p in problems} == {CONFLICTED}
    assert "HTTPRoute shop/hr" in problems[0].message
    assert "VirtualService shop/vs" in t.notes("HTTPRoute", "shop", "hr", 0)[0]
    conditions = status_conditions(problems, t.applied("shop", "vs"))
    assert (conditions[0]["status"], conditions[0]["reason"]) == ("False", CONFLICTED)


def test_an_httproute_on_one_port_leaves_the_virtualservice_the_other():
    t = table(vs("vs", {"route": [dest("web-v2")]}),
              http_route("hr", rule(backends=[backend("web-v3")]), parents=[{"group": "", "kind": "Service",
                                                                             "name": "web", "port": 8080}]))
    assert decide(t, request(b"/"), port=80).backend.name == "web-v2"
    assert decide(t, request(b"/"), port=8080).backend.name == "web-v3"
    assert t.applied("shop", "vs") == ["Service shop/web port 80"]


def test_of_two_virtualservices_for_one_host_the_older_applies():
    t = table(vs("young", {"route": [dest("web-v3")]}, created="2024-02-01T00:00:00Z"),
              vs("old", {"route": [dest("web-v2")]}, created="2024-01-01T00:00:00Z"))
    assert decide(t, request(b"/")).backend.name == "web-v2"
    assert "VirtualService shop/old is older" in t.problems("VirtualService", "shop", "young")[0].message


@pytest.mark.parametrize("api", ["v1", "v1beta1", "v1alpha3"])
def test_every_served_version_compiles_the_same(api: str):
    t = table(vs("v", {"route": [dest("web-v2")]}, api=api))
    assert isinstance(decide(t, request(b"/")), Forward)


# --- retries and faults ------------------------------------------------------------------------


def test_retries_become_the_route_retry_policy():
    t = table(vs("r", {"route": [dest("web-v2")],
                       "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "gateway-error,connect-failure,429"}}))
    retry = decide(t, request(b"/")).retry
    assert (retry.attempts, retry.per_try_timeout, retry.codes) == (3, 2.0, frozenset({429}))
    assert retry.on == {"gateway-error", "connect-failure", "retriable-status-codes"}


def test_no_retries_keeps_the_default_and_zero_attempts_disable_them():
    assert decide(table(vs("r", {"route": [dest("web-v2")]})), request(b"/")).retry is None
    retry = decide(table(vs("r", {"route": [dest("web-v2")], "retries": {"attempts": 0}})), request(b"/")).retry
    assert not retry.enabled


def test_an_unknown_retry_on_condition_is_reported_and_the_rest_kept():
    route = parsed(vs("r", {"route": [dest("web-v2")], "retries": {"attempts": 2, "retryOn": "5xx,envoy-ratelimited"}}))
    assert [p.message for p in route.problems] == [
        "spec.http[0].retries.retryOn: condition(s) envoy-ratelimited not supported; ignored"]
    assert route.rules[0].retry.on == {"5xx"}


def test_fault_delay_and_abort_with_percentages():
    t = table(vs("f", {"route": [dest("web-v2")],
                       "fault": {"delay": {"fixedDelay": "1s", "percentage": {"value": 100}},
                                 "abort": {"httpStatus": 503, "percentage": {"value": 50}}}}))
    fault = decide(t, request(b"/")).fault
    assert (fault.delay, fault.delay_percent, fault.abort_status, fault.abort_percent) == (1.0, 100.0, 503, 50.0)


def test_fault_grpc_abort_by_name_and_legacy_percent():
    route = parsed(vs("f", {"route": [dest("web-v2")],
                            "fault": {"abort": {"grpcStatus": "UNAVAILABLE"}, "delay": {"fixedDelay": "5ms", "percent": 10}}}))
    fault = route.rules[0].fault
    assert (fault.abort_grpc_status, fault.abort_percent, fault.delay, fault.delay_percent) == (14, 100.0, 0.005, 10.0)


def test_fault_abort_outside_200_599_refuses_the_virtualservice():
    route = parsed(vs("f", {"route": [dest("web-v2")], "fault": {"abort": {"httpStatus": 700}}}))
    assert not route.accepted and "abort status" in route.problems[0].message
