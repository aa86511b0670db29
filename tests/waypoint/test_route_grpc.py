"""GRPCRoute in the mesh (apis/v1/grpcroute_types.go): service/method and header matches,
precedence, weights, header modifiers, and the ``:path`` it reads them from."""

from __future__ import annotations

import pytest

from tests.waypoint.route_objects import backend, decide, grpc_route, request, table
from waypoint.route import DirectResponse, Forward
from waypoint.route.filters import HeaderModifier
from waypoint.route.request import grpc_service_method


def grule(*matches: dict, to: str = "web-v2", **extra) -> dict:
    out = {"backendRefs": [backend(to)], **extra}
    if matches:
        out["matches"] = list(matches)
    return out


def method(service: str | None = None, method_: str | None = None, type_: str | None = None) -> dict:
    spec = {}
    if service is not None:
        spec["service"] = service
    if method_ is not None:
        spec["method"] = method_
    if type_ is not None:
        spec["type"] = type_
    return {"method": spec}


def call(t, rpc: bytes, headers=None):
    decision = decide(t, request(rpc, b"POST", [(b"content-type", b"application/grpc"), *(headers or [])]))
    if isinstance(decision, DirectResponse):
        return decision.grpc_status
    assert isinstance(decision, Forward)
    return decision.backend.name


@pytest.mark.parametrize("path,expected", [
    (b"/pkg.Echo/Say", (b"pkg.Echo", b"Say")),
    (b"/Echo/Say", (b"Echo", b"Say")),
    (b"/pkg.Echo/", None),
    (b"//Say", None),
    (b"/pkg.Echo/Say/extra", None),
    (b"pkg.Echo/Say", None),
    (b"/", None),
])
def test_grpc_path_is_slash_service_slash_method(path, expected):
    assert grpc_service_method(path) == expected


def test_exact_service_and_method():
    t = table(grpc_route("g", grule(method("pkg.Echo", "Say"))))
    assert call(t, b"/pkg.Echo/Say") == "web-v2"
    assert call(t, b"/pkg.Echo/Shout") == 12
    assert call(t, b"/pkg.Other/Say") == 12


def test_method_match_type_defaults_to_exact_and_is_case_sensitive():
    t = table(grpc_route("g", grule(method("pkg.Echo", "Say"))))
    assert call(t, b"/pkg.echo/Say") == 12


def test_service_only_matches_every_method_of_it():
    t = table(grpc_route("g", grule(method("pkg.Echo"))))
    assert call(t, b"/pkg.Echo/Say") == call(t, b"/pkg.Echo/Shout") == "web-v2"
    assert call(t, b"/pkg.Other/Say") == 12


def test_method_only_matches_that_method_of_any_service():
    t = table(grpc_route("g", grule(method(method_="Say"))))
    assert call(t, b"/a.A/Say") == call(t, b"/b.B/Say") == "web-v2"
    assert call(t, b"/a.A/Shout") == 12


def test_regular_expression_service_and_method():
    t = table(grpc_route("g", grule(method(r"pkg\.v[0-9]+\.Echo", "S.*", "RegularExpression"))))
    assert call(t, b"/pkg.v2.Echo/Say") == "web-v2"
    assert call(t, b"/pkg.v2.Echo/Shout") == "web-v2"
    assert call(t, b"/pkg.vx.Echo/Say") == 12
    assert call(t, b"/pkg.v2.Echo/Yell") == 12


def test_header_match():
    t = table(grpc_route("g", grule({"headers": [{"name": "X-Tenant", "value": "blue"}]})))
    assert call(t, b"/a.A/B", [(b"x-tenant", b"blue")]) == "web-v2"
    assert call(t, b"/a.A/B", [(b"x-tenant", b"red")]) == 12


def test_rule_without_matches_matches_every_request():
    t = table(grpc_route("g", grule()))
    assert call(t, b"/a.A/B") == "web-v2"
    assert call(t, b"/not/a/grpc/path") == "web-v2"


def test_a_method_match_never_matches_a_path_that_is_not_grpc():
    t = table(grpc_route("g", grule(method("pkg.Echo"))))
    assert call(t, b"/pkg.Echo") == 12


def test_more_service_characters_win():
    t = table(grpc_route("g", grule(method(method_="Say"), to="web-v3"), grule(method("pkg.Echo"), to="web-v2")))
    assert call(t, b"/pkg.Echo/Say") == "web-v2"


def test_more_method_characters_win_when_services_tie():
    t = table(grpc_route("g", grule(method("pkg.Echo"), to="web-v3"), grule(method("pkg.Echo", "Say"), to="web-v2")))
    assert call(t, b"/pkg.Echo/Say") == "web-v2"


def test_more_header_matches_win_when_service_and_method_tie():
    t = table(grpc_route("g", grule(method("pkg.Echo"), to="web-v3"),
                         grule({**method("pkg.Echo"), "headers": [{"name": "x", "value": "1"}]}, to="web-v2")))
    assert call(t, b"/pkg.Echo/Say", [(b"x", b"1")]) == "web-v2"


def test_ties_go_to_the_older_route_then_the_first_rule():
    old = grpc_route("zzz", grule(method("pkg.Echo"), to="web-v2"), created="2023-01-01T00:00:00Z")
    new = grpc_route("aaa", grule(method("pkg.Echo"), to="web-v3"))
    assert call(table(new, old), b"/pkg.Echo/Say") == "web-v2"
    t = table(grpc_route("g", grule(method("pkg.Echo"), to="web-v2"), grule(method("pkg.Echo"), to="web-v3")))
    assert call(t, b"/pkg.Echo/Say") == "web-v2"


def test_all_weights_zero_answer_unavailable():
    t = table(grpc_route("g", {"backendRefs": [backend("web", weight=0), backend("web-v2", weight=0)]}))
    assert call(t, b"/a.A/B") == 14


def test_unresolvable_backend_answers_unavailable():
    t = table(grpc_route("g", {"backendRefs": [backend("missing")]}))
    assert call(t, b"/a.A/B") == 14


def test_header_modifiers_on_rule_and_backend():
    rule_filter = {"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "x-a", "value": "1"}]}}
    backend_filter = {"type": "ResponseHeaderModifier",
                      "responseHeaderModifier": {"set": [{"name": "x-b", "value": "2"}]}}
    t = table(grpc_route("g", {"filters": [rule_filter],
                               "backendRefs": [backend("web-v2", filters=[backend_filter])]}))
    decision = decide(t, request(b"/a.A/B", b"POST"))
    assert decision.request_headers == (HeaderModifier(add=((b"x-a", b"1"),)),)
    assert decision.response_headers == (HeaderModifier(set=((b"x-b", b"2"),)),)


def test_grpcroute_refuses_http_only_filters():
    redirect = {"type": "RequestRedirect", "requestRedirect": {"hostname": "x.example"}}
    t = table(grpc_route("g", {"filters": [redirect], "backendRefs": [backend("web-v2")]}))
    assert [p.reason for p in t.problems("GRPCRoute", "shop", "g")] == ["UnsupportedValue"]
