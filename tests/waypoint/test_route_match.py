"""HTTPRoute matches and their precedence (apis/v1/httproute_types.go), one behaviour per test.

Which rule won is read from where the request goes: each rule sends to its own backend.
"""

from __future__ import annotations

import pytest

from tests.waypoint.route_objects import (
    backend,
    backend_name,
    decide,
    http_route,
    path,
    request,
    rule,
    table,
)
from waypoint.route import DirectResponse, Forward


def to(name: str) -> list[dict]:
    return [backend(name)]


def routed(t, target: bytes = b"/", **kwargs) -> str | None:
    """The backend a request reaches, or None for a 404."""
    method = kwargs.pop("method", b"GET")
    headers = kwargs.pop("headers", None)
    decision = decide(t, request(target, method, headers), **kwargs)
    if isinstance(decision, DirectResponse):
        assert decision.status == 404 and decision.detail == "route_not_found"
        return None
    assert isinstance(decision, Forward)
    return backend_name(decision)


def single(match: dict) -> object:
    return table(http_route("r", rule(match, backends=to("web-v2"))))


# --- path ------------------------------------------------------------------------------------


@pytest.mark.parametrize("target,hit", [(b"/abc", True), (b"/abc/", False), (b"/Abc", False), (b"/abcd", False)])
def test_exact_path_matches_only_the_same_path(target, hit):
    # The spec's own example: Exact /abc matches /abc, NOT /abc/, /Abc or /abcd.
    assert (routed(single(path("Exact", "/abc")), target) == "web-v2") is hit


@pytest.mark.parametrize("target,hit", [(b"/abc", True), (b"/abc/", True), (b"/abc/def", True), (b"/abcd", False),
                                        (b"/ab", False), (b"/", False)])
def test_path_prefix_matches_whole_elements(target, hit):
    # The spec's example: /abc, /abc/ and /abc/def match the prefix /abc, /abcd does not.
    assert (routed(single(path("PathPrefix", "/abc")), target) == "web-v2") is hit


@pytest.mark.parametrize("target", [b"/abc", b"/abc/", b"/abc/def"])
def test_trailing_slash_of_a_prefix_is_ignored(target):
    assert routed(single(path("PathPrefix", "/abc/")), target) == "web-v2"


def test_path_prefix_is_case_sensitive():
    assert routed(single(path("PathPrefix", "/abc")), b"/ABC/def") is None


def test_root_prefix_matches_every_path():
    t = single(path("PathPrefix", "/"))
    assert {routed(t, p) for p in (b"/", b"/x", b"/x/y/", b"/?q=1")} == {"web-v2"}


def test_path_is_matched_without_the_query_string():
    assert routed(single(path("Exact", "/abc")), b"/abc?x=/def") == "web-v2"


def test_regex_path_must_match_the_whole_path():
    t = single(path("RegularExpression", "/v[0-9]+/users"))
    assert routed(t, b"/v2/users") == "web-v2"
    assert routed(t, b"/v2/users/alice") is None
    assert routed(t, b"/api/v2/users") is None


def test_regex_path_uses_re2_syntax():
    # \pL (a Unicode letter class) is RE2; the standard re module has no \p.
    t = single(path("RegularExpression", r"/\pL+"))
    assert routed(t, b"/caf\xc3\xa9") == "web-v2"
    assert routed(t, b"/123") is None


def test_rule_without_matches_matches_every_request():
    t = table(http_route("r", rule(backends=to("web-v2"))))
    assert routed(t, b"/anything/at/all", method=b"DELETE") == "web-v2"


def test_route_without_rules_gets_the_default_rule_and_its_500():
    # The CRD defaults rules to one PathPrefix / match with no backendRefs.
    t = table(http_route("r"))
    decision = decide(t, request(b"/x"))
    assert isinstance(decision, DirectResponse) and decision.status == 500


def test_match_without_path_is_a_root_prefix():
    t = table(http_route("r", rule({"method": "GET"}, backends=to("web-v2"))))
    assert routed(t, b"/deep/path") == "web-v2"
    assert routed(t, b"/deep/path", method=b"POST") is None


def test_matches_of_one_rule_are_ored():
    t = table(http_route("r", rule(path("Exact", "/a"), path("Exact", "/b"), backends=to("web-v2"))))
    assert routed(t, b"/a") == routed(t, b"/b") == "web-v2"
    assert routed(t, b"/c") is None


def test_conditions_of_one_match_are_anded():
    match = {**path("PathPrefix", "/foo"), "headers": [{"name": "version", "value": "v2"}], "method": "GET"}
    t = table(http_route("r", rule(match, backends=to("web-v2"))))
    assert routed(t, b"/foo", headers=[(b"version", b"v2")]) == "web-v2"
    assert routed(t, b"/foo") is None
    assert routed(t, b"/foo", method=b"PUT", headers=[(b"version", b"v2")]) is None
    assert routed(t, b"/bar", headers=[(b"version", b"v2")]) is None


# --- headers, query params, method -------------------------------------------------------------


def header_route(*headers: dict) -> object:
    return table(http_route("r", rule({"headers": list(headers)}, backends=to("web-v2"))))


def test_header_names_match_case_insensitively():
    t = header_route({"name": "X-Version", "value": "two"})
    assert routed(t, headers=[(b"x-version", b"two")]) == "web-v2"
    assert routed(t, headers=[(b"X-VERSION", b"two")]) == "web-v2"


def test_header_values_match_case_sensitively():
    assert routed(header_route({"name": "version", "value": "two"}), headers=[(b"version", b"Two")]) is None


def test_absent_header_does_not_match():
    assert routed(header_route({"name": "version", "value": "two"})) is None


def test_header_regex_matches_the_whole_value():
    t = header_route({"name": "user-agent", "type": "RegularExpression", "value": "curl/[0-9.]+"})
    assert routed(t, headers=[(b"user-agent", b"curl/8.5.0")]) == "web-v2"
    assert routed(t, headers=[(b"user-agent", b"x curl/8.5.0")]) is None


def test_repeated_request_headers_match_as_one_comma_joined_value():
    t = header_route({"name": "x-tag", "value": "a,b"})
    assert routed(t, headers=[(b"x-tag", b"a"), (b"x-tag", b"b")]) == "web-v2"


def test_only_the_first_of_equivalent_header_match_names_counts():
    # "If multiple entries specify equivalent header names, only the first entry ... MUST be considered".
    t = header_route({"name": "Version", "value": "one"}, {"name": "version", "value": "two"})
    assert routed(t, headers=[(b"version", b"one")]) == "web-v2"


def query_route(*params: dict) -> object:
    return table(http_route("r", rule({"queryParams": list(params)}, backends=to("web-v2"))))


def test_query_param_exact_match():
    t = query_route({"name": "animal", "value": "whale"})
    assert routed(t, b"/?animal=whale") == "web-v2"
    assert routed(t, b"/?animal=whale&otherparam=irrelevant") == "web-v2"
    assert routed(t, b"/?animal=whaledolphin") is None
    assert routed(t, b"/?color=blue") is None
    assert routed(t, b"/") is None


def test_query_param_names_are_case_sensitive():
    assert routed(query_route({"name": "animal", "value": "whale"}), b"/?ANIMAL=whale") is None


def test_repeated_query_param_matches_its_first_value():
    t = query_route({"name": "animal", "value": "whale"})
    assert routed(t, b"/?animal=whale&animal=dog") == "web-v2"
    assert routed(t, b"/?animal=dog&animal=whale") is None


def test_query_param_regex():
    t = query_route({"name": "id", "type": "RegularExpression", "value": "[0-9]{3}"})
    assert routed(t, b"/?id=123") == "web-v2"
    assert routed(t, b"/?id=1234") is None


def test_query_param_is_matched_as_sent_not_decoded():
    t = query_route({"name": "q", "value": "a b"})
    assert routed(t, b"/?q=a%20b") is None
    assert routed(query_route({"name": "q", "value": "a%20b"}), b"/?q=a%20b") == "web-v2"


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"])
def test_method_match(method):
    t = table(http_route("r", rule({"method": method}, backends=to("web-v2"))))
    assert routed(t, method=method.encode()) == "web-v2"
    other = b"GET" if method != "GET" else b"POST"
    assert routed(t, method=other) is None


# --- precedence -------------------------------------------------------------------------------


def test_exact_path_beats_a_longer_prefix():
    t = table(http_route("r", rule(path("PathPrefix", "/match/long/prefix"), backends=to("web-v3")),
                         rule(path("Exact", "/match/long/prefix"), backends=to("web-v2"))))
    assert routed(t, b"/match/long/prefix") == "web-v2"


def test_longer_prefix_wins():
    t = table(http_route("r", rule(path("PathPrefix", "/a"), backends=to("web-v3")),
                         rule(path("PathPrefix", "/a/b"), backends=to("web-v2"))))
    assert routed(t, b"/a/b/c") == "web-v2"
    assert routed(t, b"/a/c") == "web-v3"


def test_prefix_beats_regex_even_when_shorter():
    # Regex precedence is implementation-specific; Istio ranks Exact > Prefix > Regex.
    t = table(http_route("r", rule(path("RegularExpression", "/api/.*"), backends=to("web-v3")),
                         rule(path("PathPrefix", "/api"), backends=to("web-v2"))))
    assert routed(t, b"/api/x") == "web-v2"


def test_method_match_beats_more_header_matches():
    t = table(http_route("r",
                         rule({**path("PathPrefix", "/"), "headers": [{"name": "a", "value": "1"},
                                                                      {"name": "b", "value": "2"}]},
                              backends=to("web-v3")),
                         rule({**path("PathPrefix", "/"), "method": "GET"}, backends=to("web-v2"))))
    assert routed(t, headers=[(b"a", b"1"), (b"b", b"2")]) == "web-v2"


def test_more_header_matches_beat_more_query_matches():
    t = table(http_route("r",
                         rule({"queryParams": [{"name": "a", "value": "1"}, {"name": "b", "value": "2"}]},
                              backends=to("web-v3")),
                         rule({"headers": [{"name": "h", "value": "1"}]}, backends=to("web-v2"))))
    assert routed(t, b"/?a=1&b=2", headers=[(b"h", b"1")]) == "web-v2"


def test_more_query_matches_win():
    t = table(http_route("r", rule({"queryParams": [{"name": "a", "value": "1"}]}, backends=to("web-v3")),
                         rule({"queryParams": [{"name": "a", "value": "1"}, {"name": "b", "value": "2"}]},
                              backends=to("web-v2"))))
    assert routed(t, b"/?a=1&b=2") == "web-v2"
    assert routed(t, b"/?a=1") == "web-v3"


def test_path_length_outranks_method():
    t = table(http_route("r", rule({**path("PathPrefix", "/a"), "method": "GET"}, backends=to("web-v3")),
                         rule(path("PathPrefix", "/a/b"), backends=to("web-v2"))))
    assert routed(t, b"/a/b") == "web-v2"


def test_a_later_rule_with_a_better_match_wins_over_an_earlier_rule():
    t = table(http_route("r", rule(backends=to("web-v3")), rule(path("Exact", "/x"), backends=to("web-v2"))))
    assert routed(t, b"/x") == "web-v2"


def test_tie_goes_to_the_older_route_whatever_its_name():
    old = http_route("zzz", rule(backends=to("web-v2")), created="2024-01-01T00:00:00Z")
    new = http_route("aaa", rule(backends=to("web-v3")), created="2024-06-01T00:00:00Z")
    assert routed(table(new, old)) == "web-v2"


def test_tie_between_routes_of_the_same_age_goes_by_namespace_and_name():
    a = http_route("aaa", rule(backends=to("web-v2")))
    b = http_route("bbb", rule(backends=to("web-v3")))
    assert routed(table(b, a)) == "web-v2"


def test_tie_within_a_route_goes_to_the_first_rule():
    t = table(http_route("r", rule(path("PathPrefix", "/a"), backends=to("web-v2")),
                         rule(path("PathPrefix", "/a"), backends=to("web-v3"))))
    assert routed(t, b"/a") == "web-v2"


def test_route_without_creation_timestamp_loses_ties_to_one_with_it():
    dated = http_route("zzz", rule(backends=to("web-v2")))
    undated = http_route("aaa", rule(backends=to("web-v3")), created=None)
    assert routed(table(undated, dated)) == "web-v2"


def test_conformance_path_match_order():
    # conformance/tests/httproute-path-match-order: rules and expected backends.
    t = table(http_route(
        "path-matching-order",
        rule(path("Exact", "/match"), backends=to("web")),
        rule(path("Exact", "/match/exact"), backends=to("web-v2")),
        rule(path("Exact", "/match/exact/one"), backends=to("web-v3")),
        rule(path("PathPrefix", "/match/"), backends=to("web-v3")),
        rule(path("PathPrefix", "/match/prefix/"), backends=to("web")),
        rule(path("PathPrefix", "/match/prefix/one"), backends=to("web-v2")),
    ))
    assert routed(t, b"/match/exact/one") == "web-v3"
    assert routed(t, b"/match/exact") == "web-v2"
    assert routed(t, b"/match") == "web"
    assert routed(t, b"/match/prefix/one/any") == "web-v2"
    assert routed(t, b"/match/prefix/any") == "web"
    assert routed(t, b"/match/any") == "web-v3"


def test_no_matching_rule_is_a_404_route_not_found():
    t = single(path("Exact", "/only"))
    decision = decide(t, request(b"/other"))
    assert decision == DirectResponse(404, "route_not_found", 12)


def test_between_regexes_the_longer_pattern_wins():
    # Istio's order among RegularExpression matches: by pattern length.
    t = table(http_route("r", rule(path("RegularExpression", "/api/.*"), backends=to("web-v3")),
                         rule(path("RegularExpression", "/api/v[0-9]+/.*"), backends=to("web-v2"))))
    assert routed(t, b"/api/v1/x") == "web-v2"
    assert routed(t, b"/api/other") == "web-v3"


def test_regex_set_fallback_answers_like_the_set():
    from waypoint.route.regex import RegexSet, compile_regex

    regexes = [compile_regex(p) for p in ("/a.*", "/ab.*", "/x", "[a-z]+")]
    together = RegexSet(regexes)
    one_by_one = RegexSet(regexes)
    one_by_one._set = None
    for value in (b"/abc", b"/a", b"/x", b"abc", b"/y", b""):
        assert together.matching(value) == one_by_one.matching(value)
    assert together.matching(b"/abc") == {0, 1}
