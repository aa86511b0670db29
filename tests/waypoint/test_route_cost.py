"""Per-request routing cost with a table of 100 routes, and that a request never re-parses or re-sorts.

``pytest -s tests/waypoint/test_route_cost.py`` prints the figures quoted in
``waypoint/route/table.py``. The bound asserted is loose (a shared CI core is noisy); it catches
per-request parsing or sorting, which cost milliseconds, not a few percent.
"""

from __future__ import annotations

import random
import time
import timeit

from tests.waypoint.route_objects import WEB_VIP, backend, http_route, path, request, rule, services
from waypoint.route import DirectResponse, Forward, compile_table


def hundred_routes() -> list[dict]:
    routes = []
    for i in range(100):
        rules = [
            rule({**path("PathPrefix", f"/svc{i}/api"), "headers": [{"name": "x-version", "value": "v2"}]},
                 backends=[backend("web", weight=70), backend("web-v2", weight=30)]),
            rule(path("Exact", f"/svc{i}/health"), {"method": "POST", **path("PathPrefix", f"/svc{i}/items")},
                 backends=[backend("web")]),
        ]
        if i % 10 == 0:
            rules.append(rule(path("RegularExpression", f"/svc{i}/v[0-9]+/.*"), backends=[backend("web-v2")]))
        if i % 3 == 0:
            rules.append(rule({**path("PathPrefix", f"/svc{i}"), "queryParams": [{"name": "debug", "value": "1"}]},
                              backends=[backend("web-v3")]))
        routes.append(http_route(f"route-{i:03d}", *rules, created=f"2024-01-{i % 28 + 1:02d}T00:00:00Z"))
    return routes


CASES = {
    "prefix + header match": request(b"/svc57/api/orders?page=2", headers=[(b"x-version", b"v2")]),
    "exact match": request(b"/svc57/health"),
    "regex match (the 6th of 10 regexes)": request(b"/svc50/v2/orders"),
    "no rule matches (404, 10 regexes tried)": request(b"/nothing/here/at/all"),
}


def per_request_us(t, req, number: int = 20000) -> float:
    rng = random.Random(1)
    best = min(timeit.repeat(lambda: t.route(req, WEB_VIP, 80, "shop", rng), number=number, repeat=3))
    return best / number * 1e6


def test_routing_cost_with_100_routes():
    started = time.perf_counter()
    t = compile_table(hundred_routes(), services())
    compile_ms = (time.perf_counter() - started) * 1e3
    assert isinstance(t.route(CASES["prefix + header match"], WEB_VIP, 80, "shop"), Forward)
    assert isinstance(t.route(CASES["exact match"], WEB_VIP, 80, "shop"), Forward)
    assert isinstance(t.route(CASES["regex match (the 6th of 10 regexes)"], WEB_VIP, 80, "shop"), Forward)
    assert isinstance(t.route(CASES["no rule matches (404, 10 regexes tried)"], WEB_VIP, 80, "shop"), DirectResponse)
    print(f"\ncompile 100 routes: {compile_ms:.1f} ms")
    for label, req in CASES.items():
        cost = per_request_us(t, req)
        print(f"{label}: {cost:.2f} us/request")
        assert cost < 100, (label, cost)


def test_a_request_neither_parses_nor_sorts(monkeypatch):
    t = compile_table(hundred_routes(), services())

    def forbidden(*args, **kwargs):
        raise AssertionError("per-request path parsed or sorted")

    from waypoint.route import match, parse, table

    for name in ("_http_match", "_grpc_match", "_rule", "parse_route", "compile_regex"):
        monkeypatch.setattr(parse, name, forbidden)
    monkeypatch.setattr(table, "parse_route", forbidden)
    monkeypatch.setattr(match, "sorted", forbidden, raising=False)
    monkeypatch.setattr(table, "sorted", forbidden, raising=False)
    for req in CASES.values():
        t.route(req, WEB_VIP, 80, "shop")
