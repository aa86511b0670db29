"""Properties of HTTPRoute matching over generated routes and requests (hypothesis).

The reference below restates the spec's precedence list (``HTTPRouteRule.Matches``) as a brute
force over every match; the table, with its indexes, must always agree with it.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.waypoint.route_objects import WEB_VIP, http_route, request, services
from waypoint.route import DirectResponse, Forward, compile_table

# Few paths, so that matches collide and the later precedence criteria decide.
PATHS = ["/", "/a", "/a/", "/a/b", "/a/bc"]
REQUEST_PATHS = PATHS + ["/ab", "/a/b/", "/a/b/c"]
DATES = ["2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z"]

matches = st.fixed_dictionaries(
    {"path": st.fixed_dictionaries({"type": st.sampled_from(["Exact", "PathPrefix"]),
                                    "value": st.sampled_from(PATHS)})},
    optional={
        "method": st.sampled_from(["GET", "POST"]),
        "headers": st.lists(st.sampled_from([{"name": "x", "value": "1"}, {"name": "y", "value": "1"}]),
                            min_size=1, max_size=2, unique_by=lambda h: h["name"]),
        "queryParams": st.lists(st.sampled_from([{"name": "q", "value": "1"}, {"name": "r", "value": "1"}]),
                                min_size=1, max_size=2, unique_by=lambda h: h["name"]),
    },
)
rules = st.lists(st.lists(matches, min_size=1, max_size=3), min_size=1, max_size=4)


@st.composite
def route_sets(draw):
    names = draw(st.lists(st.sampled_from(["r1", "r2", "r3", "r4"]), min_size=2, max_size=4, unique=True))
    out = []
    for name in names:
        route_rules = [{"matches": m, "backendRefs": [{"name": "web", "port": 80}]} for m in draw(rules)]
        out.append(http_route(name, *route_rules, created=draw(st.sampled_from(DATES))))
    return out


requests = st.tuples(
    st.sampled_from(REQUEST_PATHS),
    st.sampled_from([b"GET", b"POST"]),
    # Mostly values that match, so several matches compete; sometimes one that does not.
    st.sampled_from([[(b"x", b"1"), (b"y", b"1")], [(b"x", b"1"), (b"y", b"1")], [(b"x", b"1")], [(b"y", b"2")], []]),
    st.sampled_from([["q=1", "r=1"], ["q=1", "r=1"], ["r=1", "q=1"], ["q=1"], ["r=2", "r=1"], []]),
)


def _path_matches(match: dict, path: str) -> bool:
    kind, value = match["path"]["type"], match["path"]["value"]
    if kind == "Exact":
        return path == value
    value = value.rstrip("/") or "/"
    return value == "/" or path == value or path.startswith(value + "/")


def _matches(match: dict, path: str, method: bytes, headers: dict, query: list[str]) -> bool:
    if not _path_matches(match, path):
        return False
    if "method" in match and match["method"].encode() != method:
        return False
    for h in match.get("headers", []):
        if headers.get(h["name"].encode()) != h["value"].encode():
            return False
    first: dict[str, str] = {}
    for item in query:
        k, _, v = item.partition("=")
        first.setdefault(k, v)
    return all(first.get(q["name"]) == q["value"] for q in match.get("queryParams", []))


def reference_winner(routes, path, method, headers, query):
    """(route name, rule index) of the highest-precedence matching match, by the spec's list."""
    best = None
    for route in routes:
        meta = route["metadata"]
        for r, rule_spec in enumerate(route["spec"]["rules"]):
            for m, match in enumerate(rule_spec["matches"]):
                if not _matches(match, path, method, headers, query):
                    continue
                value = match["path"]["value"]
                length = len(value) if match["path"]["type"] == "Exact" else len(value.rstrip("/") or "/")
                key = (
                    0 if match["path"]["type"] == "Exact" else 1,
                    -length,
                    0 if "method" in match else 1,
                    -len(match.get("headers", [])),
                    -len(match.get("queryParams", [])),
                    meta["creationTimestamp"],
                    f"{meta['namespace']}/{meta['name']}",
                    r,
                    m,
                )
                if best is None or key < best[0]:
                    best = (key, (meta["name"], r))
    return None if best is None else best[1]


def winner(routes, req_spec):
    path, method, header_pairs, query = req_spec
    target = path.encode() + (b"?" + "&".join(query).encode() if query else b"")
    decision = compile_table(routes, services()).route(request(target, method, header_pairs), WEB_VIP, 80, "shop",
                                                       random.Random(0))
    if isinstance(decision, DirectResponse):
        assert decision.status == 404
        return None
    assert isinstance(decision, Forward)
    return (decision.route.name, decision.route.rule)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(route_sets(), requests)
def test_the_chosen_rule_is_the_highest_precedence_matching_one(routes, req_spec):
    path, method, header_pairs, query = req_spec
    expected = reference_winner(routes, path, method, dict(header_pairs), query)
    assert winner(routes, req_spec) == expected


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(route_sets(), requests, st.randoms(use_true_random=False))
def test_the_decision_does_not_depend_on_the_order_routes_are_given_in(routes, req_spec, rnd):
    shuffled = list(routes)
    rnd.shuffle(shuffled)
    assert winner(shuffled, req_spec) == winner(routes, req_spec)
