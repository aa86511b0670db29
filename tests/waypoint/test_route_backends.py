"""Weighted backendRefs (BackendRef.Weight, HTTPRouteRule.BackendRefs): shares, weight 0, 500s."""

from __future__ import annotations

import random
from collections import Counter

from tests.waypoint.route_objects import WEB_VIP, backend, decide, http_route, request, rule, table
from waypoint.route import DirectResponse, Forward
from waypoint.route.backends import Backend, choose, weighted


class FixedRandom:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def outcomes(t, draws: int = 1000, seed: int = 7) -> Counter:
    rng = random.Random(seed)
    counts: Counter = Counter()
    for _ in range(draws):
        decision = t.route(request(b"/"), WEB_VIP, 80, "shop", rng)
        counts[decision.backend.name if isinstance(decision, Forward) else decision.status] += 1
    return counts


def test_a_70_30_split_lands_within_5_points_over_1000_requests():
    t = table(http_route("canary", rule(backends=[backend("web", weight=70), backend("web-v2", weight=30)])))
    counts = outcomes(t)
    assert abs(counts["web"] / 1000 - 0.70) <= 0.05
    assert abs(counts["web-v2"] / 1000 - 0.30) <= 0.05
    assert counts["web"] + counts["web-v2"] == 1000


def test_weight_defaults_to_1():
    t = table(http_route("even", rule(backends=[backend("web"), backend("web-v2")])))
    counts = outcomes(t)
    assert abs(counts["web"] - 500) <= 50 and abs(counts["web-v2"] - 500) <= 50


def test_weight_0_is_never_chosen():
    t = table(http_route("r", rule(backends=[backend("web", weight=1), backend("web-v2", weight=0)])))
    assert outcomes(t) == Counter({"web": 1000})


def test_all_weights_0_answer_500():
    t = table(http_route("r", rule(backends=[backend("web", weight=0), backend("web-v2", weight=0)])))
    decision = decide(t, request())
    assert isinstance(decision, DirectResponse)
    assert (decision.status, decision.grpc_status) == (500, 14)
    assert decision.route is not None and decision.route.name == "r"


def test_rule_without_backends_answers_500():
    t = table(http_route("r", rule(backends=[])))
    decision = decide(t, request())
    assert isinstance(decision, DirectResponse) and decision.status == 500


def test_an_unresolvable_backend_gets_500_for_its_share():
    # "if two backends are specified with equal weights, and one is invalid, 50 percent of traffic
    # must receive a 500".
    t = table(http_route("r", rule(backends=[backend("web"), backend("missing")])))
    counts = outcomes(t)
    assert set(counts) == {"web", 500}
    assert abs(counts[500] - 500) <= 50


def test_a_backend_of_another_kind_gets_500_for_its_share():
    t = table(http_route("r", rule(backends=[backend("web", weight=1),
                                             backend("bucket", group="example.com", kind="Bucket", weight=1)])))
    assert set(outcomes(t)) == {"web", 500}


def test_backend_in_another_namespace_needs_no_reference_grant_in_the_mesh():
    # GEP-1294: mesh routes may send to backendRefs in any namespace without a ReferenceGrant.
    t = table(http_route("r", rule(backends=[backend("api", ns="other")])))
    decision = decide(t, request())
    assert isinstance(decision, Forward)
    assert (decision.backend.namespace, decision.backend.name, decision.backend.port) == ("other", "api", 80)


def test_choose_follows_the_running_weight_sums():
    choice = weighted((Backend("shop", "a", 80, 70), Backend("shop", "b", 80, 0), Backend("shop", "c", 80, 30)))
    assert choose(choice, FixedRandom(0.0)).name == "a"
    assert choose(choice, FixedRandom(0.6999)).name == "a"
    assert choose(choice, FixedRandom(0.7)).name == "c"
    assert choose(choice, FixedRandom(0.999999)).name == "c"


def test_choose_without_weight_is_none():
    assert choose(weighted((Backend("shop", "a", 80, 0),)), FixedRandom(0.5)) is None
    assert choose(weighted(()), FixedRandom(0.5)) is None
