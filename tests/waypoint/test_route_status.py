"""Problems with routes and the status conditions they make, and bad input never raising."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.waypoint.route_objects import (
    backend,
    decide,
    http_route,
    parent,
    path,
    request,
    rule,
    services,
    table,
)
from waypoint.route import DefaultService, DirectResponse, Forward, compile_table, parse_route


def reasons(t, name: str = "r", kind: str = "HTTPRoute") -> list[tuple[str, str]]:
    return [(p.condition, p.reason) for p in t.problems(kind, "shop", name)]


def conditions(t, name: str = "r", index: int = 0) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in t.parent_status("HTTPRoute", "shop", name)[index]}


def test_a_valid_route_is_accepted_with_resolved_refs():
    t = table(http_route("r", rule()))
    assert conditions(t) == {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}


def test_missing_backend_service_is_backend_not_found():
    t = table(http_route("r", rule(backends=[backend("missing")])))
    assert conditions(t)["ResolvedRefs"] == ("False", "BackendNotFound")
    assert conditions(t)["Accepted"] == ("True", "Accepted")
    assert t.problems("HTTPRoute", "shop", "r")[0].message == "backend(missing.shop.svc.cluster.local) not found"


def test_backend_of_another_kind_is_invalid_kind():
    t = table(http_route("r", rule(backends=[backend("b", group="example.com", kind="Bucket")])))
    assert reasons(t) == [("ResolvedRefs", "InvalidKind")]


def test_parent_service_that_does_not_exist_is_no_matching_parent_for_that_parent_only():
    t = table(http_route("r", rule(), parents=[parent("gone"), parent("web")]))
    assert conditions(t, index=0)["Accepted"] == ("False", "NoMatchingParent")
    assert conditions(t, index=1)["Accepted"] == ("True", "Accepted")
    assert isinstance(decide(t, request()), Forward)


def test_parent_port_the_service_does_not_have_is_no_matching_parent():
    t = table(http_route("r", rule(), parents=[parent(port=9999)]))
    assert reasons(t) == [("Accepted", "NoMatchingParent")]
    assert decide(t, request()) == DefaultService(("shop", "web"))


def test_section_name_on_a_service_parent_is_not_supported():
    t = table(http_route("r", rule(), parents=[parent(sectionName="http")]))
    assert reasons(t) == [("Accepted", "NoMatchingParent")]
    assert decide(t, request()) == DefaultService(("shop", "web"))


def test_regex_re2_refuses_makes_the_route_unsupported_and_unused():
    t = table(http_route("r", rule(path("RegularExpression", r"/(a)\1"))))
    assert reasons(t) == [("Accepted", "UnsupportedValue")]
    assert "invalid regular expression" in t.problems("HTTPRoute", "shop", "r")[0].message
    assert decide(t, request(b"/aa")) == DefaultService(("shop", "web"))


def test_unknown_path_match_type_is_unsupported_value():
    t = table(http_route("r", rule({"path": {"type": "Glob", "value": "/*"}})))
    assert reasons(t) == [("Accepted", "UnsupportedValue")]


def test_replace_prefix_match_without_a_single_path_prefix_match_is_unsupported():
    rewrite = {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}
    t = table(http_route("r", rule(path("Exact", "/a"), filters=[rewrite])))
    assert reasons(t) == [("Accepted", "UnsupportedValue")]


def test_unsupported_filter_drops_its_rule_and_marks_the_route_partially_invalid():
    cors = {"type": "CORS", "cors": {"allowOrigins": ["*"]}}
    t = table(http_route("r", rule(path("Exact", "/cors"), backends=[backend("web-v2")], filters=[cors]),
                         rule(backends=[backend("web-v3")])))
    status = conditions(t)
    assert status["Accepted"] == ("True", "Accepted")
    assert status["PartiallyInvalid"][0] == "True"
    status_list = t.parent_status("HTTPRoute", "shop", "r")[0]
    message = next(c["message"] for c in status_list if c["type"] == "PartiallyInvalid")
    assert message.startswith("Dropped Rule")
    # The dropped rule no longer routes: its requests fall to the remaining rule.
    assert decide(t, request(b"/cors")).backend.name == "web-v3"


def test_route_whose_every_rule_is_dropped_is_not_accepted():
    cors = {"type": "CORS", "cors": {}}
    t = table(http_route("r", rule(filters=[cors])))
    assert conditions(t)["Accepted"] == ("False", "InvalidFilter")
    assert decide(t, request()) == DefaultService(("shop", "web"))


def test_extension_ref_is_not_skipped_its_requests_get_500():
    ext = {"type": "ExtensionRef", "extensionRef": {"group": "example.com", "kind": "Auth", "name": "a"}}
    t = table(http_route("r", rule(path("PathPrefix", "/ext"), filters=[ext]), rule(backends=[backend("web-v2")])))
    decision = decide(t, request(b"/ext/x"))
    assert isinstance(decision, DirectResponse) and decision.status == 500
    assert conditions(t)["ResolvedRefs"] == ("False", "InvalidFilter")
    assert decide(t, request(b"/other")).backend.name == "web-v2"


def test_parse_route_alone_reports_with_a_lookup_callback():
    known = {("shop", "web"): services()[0]}
    route = http_route("r", rule(backends=[backend("web"), backend("nope")]))
    parsed = parse_route(route, lambda ns, name: known.get((ns, name)))
    assert [(p.reason, p.rule) for p in parsed.problems] == [("BackendNotFound", 0)]
    assert parsed.accepted


def test_timeouts_are_parsed_as_seconds_and_zero_disables():
    t = table(http_route("r", rule(timeouts={"request": "1m30s", "backendRequest": "500ms"}),
                         rule(path("Exact", "/x"), timeouts={"request": "0s"})))
    decision = decide(t, request())
    assert (decision.request_timeout, decision.backend_timeout) == (90.0, 0.5)
    assert decide(t, request(b"/x")).request_timeout == float("inf")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["name", "port", "kind", "group", "type", "value", "matches", "path", "filters", "weight",
                         "backendRefs", "headers", "queryParams", "method", "requestRedirect", "urlRewrite",
                         "requestMirror", "backendRef", "set", "add", "remove", "statusCode", "percent"]),
        inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values, json_values)
def test_malformed_routes_become_problems_never_exceptions(rules, parents):
    route = http_route("r")
    route["spec"] = {"parentRefs": parents if parents is not None else [parent()], "rules": rules}
    t = compile_table([route, http_route("ok", rule())], services())
    t.problems("HTTPRoute", "shop", "r")
    t.parent_status("HTTPRoute", "shop", "r")
    # A broken route never takes the healthy one down with it.
    assert decide(t, request(b"/")) is not None


def _rich_route() -> dict:
    return http_route("r", rule(
        {**path("PathPrefix", "/a"), "method": "GET", "headers": [{"name": "x", "value": "1"}],
         "queryParams": [{"name": "q", "type": "RegularExpression", "value": "[0-9]+"}]},
        backends=[backend("web", weight=3, filters=[{"type": "RequestHeaderModifier",
                                                     "requestHeaderModifier": {"set": [{"name": "a", "value": "b"}],
                                                                               "remove": ["c"]}}])],
        filters=[{"type": "URLRewrite", "urlRewrite": {"hostname": "h", "path": {"type": "ReplacePrefixMatch",
                                                                                 "replacePrefixMatch": "/b"}}},
                 {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "mirror", "port": 80},
                                                             "percent": 50}}],
        timeouts={"request": "10s"},
    ), rule(path("Exact", "/r"), backends=[], filters=[{"type": "RequestRedirect", "requestRedirect": {
        "scheme": "https", "port": 8443, "statusCode": 301,
        "path": {"type": "ReplaceFullPath", "replaceFullPath": "/x"}}}]),
        parents=[parent(port=80)])


def _leaf_paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaf_paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaf_paths(v, prefix + (i,))


_PATHS = [p for p in _leaf_paths(_rich_route()["spec"]) if p]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(_PATHS), json_values)
def test_any_field_of_a_valid_route_replaced_by_garbage_never_raises(where, garbage):
    route = _rich_route()
    node = route["spec"]
    for step in where[:-1]:
        node = node[step]
    node[where[-1]] = garbage
    t = compile_table([route], services())
    t.problems("HTTPRoute", "shop", "r")
    for target in (b"/a/x?q=1", b"/r", b"/"):
        t.route(request(target, headers=[(b"x", b"1")]), "10.96.0.10", 80, "shop")
