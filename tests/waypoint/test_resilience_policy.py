"""Retry and fault policies as pure decisions (waypoint.resilience), and HTTPRoute `retry` parsing."""

from __future__ import annotations

import random
import statistics

import pytest

from tests.waypoint.route_objects import decide, http_route, request, rule, table
from waypoint.resilience import (
    DEFAULT_RETRY,
    Budget,
    Budgets,
    FaultPolicy,
    Injected,
    PolicyError,
    RetryPolicy,
    backoff_delay,
    decide_fault,
    http_route_retry,
    parse_retry_on,
    retry_on_failure,
    retry_on_response,
)
from waypoint.resilience.policy import (
    FAILED_CONNECT,
    FAILED_REFUSED,
    FAILED_RESET,
    FAILED_TIMEOUT,
)
from waypoint.route.status import UNSUPPORTED_VALUE

# -- Istio's default policy -----------------------------------------------------------------------


def test_default_policy_is_istios_two_retries_on_connect_refused_grpc_and_503():
    assert DEFAULT_RETRY.attempts == 2
    assert DEFAULT_RETRY.on == {"connect-failure", "refused-stream", "unavailable", "cancelled",
                                "retriable-status-codes"}
    assert DEFAULT_RETRY.codes == {503}
    assert DEFAULT_RETRY.previous_hosts


@pytest.mark.parametrize(("status", "grpc", "retried"), [
    (503, None, True), (502, None, False), (504, None, False), (500, None, False), (200, None, False),
    (200, 14, True), (200, 1, True), (200, 4, False), (200, 13, False), (429, None, False),
])
def test_default_policy_retries_503_and_grpc_unavailable_or_cancelled_only(status, grpc, retried):
    assert retry_on_response(DEFAULT_RETRY, status, grpc) is retried


def test_default_policy_retries_connect_failures_and_refused_streams_but_not_resets_or_timeouts():
    assert retry_on_failure(DEFAULT_RETRY, FAILED_CONNECT)
    assert retry_on_failure(DEFAULT_RETRY, FAILED_REFUSED)
    assert not retry_on_failure(DEFAULT_RETRY, FAILED_RESET)
    assert not retry_on_failure(DEFAULT_RETRY, FAILED_TIMEOUT)


@pytest.mark.parametrize("condition", ["reset", "5xx", "gateway-error"])
def test_reset_class_conditions_retry_every_failure_without_a_response(condition):
    policy = RetryPolicy(1, frozenset({condition}))
    assert all(retry_on_failure(policy, f) for f in (FAILED_CONNECT, FAILED_REFUSED, FAILED_RESET, FAILED_TIMEOUT))


def test_5xx_gateway_error_and_retriable_4xx_cover_their_statuses():
    assert retry_on_response(RetryPolicy(1, frozenset({"5xx"})), 500, None)
    assert not retry_on_response(RetryPolicy(1, frozenset({"gateway-error"})), 500, None)
    assert retry_on_response(RetryPolicy(1, frozenset({"gateway-error"})), 504, None)
    assert retry_on_response(RetryPolicy(1, frozenset({"retriable-4xx"})), 409, None)
    assert not retry_on_response(RetryPolicy(1, frozenset({"retriable-4xx"})), 404, None)


def test_codes_count_only_with_retriable_status_codes():
    assert not retry_on_response(RetryPolicy(1, frozenset({"reset"}), frozenset({500})), 500, None)


def test_policy_refuses_unknown_conditions_and_negative_attempts():
    with pytest.raises(PolicyError, match="unknown retry conditions"):
        RetryPolicy(1, frozenset({"sometimes"}))
    with pytest.raises(PolicyError, match="attempts"):
        RetryPolicy(-1, frozenset({"reset"}))


def test_zero_attempts_disables_retries():
    assert not RetryPolicy(0, frozenset({"5xx"})).enabled
    assert DEFAULT_RETRY.enabled


# -- HTTPRoute retry (GEP-1731) -------------------------------------------------------------------


def test_http_route_retry_defaults_to_two_attempts_and_adds_codes_to_connection_errors():
    policy = http_route_retry(None, (500, 502), None)
    assert policy.attempts == 2
    assert policy.codes == {500, 502}
    assert {"connect-failure", "refused-stream", "reset", "retriable-status-codes"} <= policy.on
    assert retry_on_response(policy, 502, None) and not retry_on_response(policy, 503, None)
    assert retry_on_failure(policy, FAILED_TIMEOUT)  # GEP: a backendRequest timeout is retried


def test_http_route_retry_is_parsed_from_the_rule():
    t = table(http_route("r", rule(retry={"attempts": 3, "codes": [503], "backoff": "100ms"})))
    policy = decide(t, request()).retry
    assert (policy.attempts, policy.codes, policy.backoff, policy.backoff_floor) == (3, {503}, 0.1, True)


def test_rule_without_retry_leaves_the_default_to_the_waypoint():
    assert decide(table(http_route("r", rule())), request()).retry is None


def test_retry_attempts_zero_is_kept_and_disables_retries():
    policy = decide(table(http_route("r", rule(retry={"attempts": 0}))), request()).retry
    assert policy is not None and not policy.enabled


@pytest.mark.parametrize(("retry", "message"), [
    ({"codes": [200]}, "retry.codes[0]"),
    ({"attempts": -1}, "retry.attempts"),
    ({"backoff": "soon"}, "retry.backoff"),
    ({"attempts": "3"}, "retry.attempts"),
])
def test_invalid_retry_makes_the_route_unaccepted_naming_the_field(retry, message):
    t = table(http_route("r", rule(retry=retry)))
    problems = t.problems("HTTPRoute", "shop", "r")
    assert any(p.reason == UNSUPPORTED_VALUE and message in p.message for p in problems), problems


def test_zero_backoff_means_the_implementation_default():
    policy = decide(table(http_route("r", rule(retry={"backoff": "0s"}))), request()).retry
    assert (policy.backoff, policy.backoff_floor) == (0.025, False)


# -- VirtualService retryOn ------------------------------------------------------------------------


def test_retry_on_string_splits_conditions_codes_and_unsupported_tokens():
    on, codes, unsupported = parse_retry_on("gateway-error, connect-failure,503,envoy-ratelimited,,")
    assert on == {"gateway-error", "connect-failure", "retriable-status-codes"}
    assert codes == {503}
    assert unsupported == ("envoy-ratelimited",)


# -- backoff ----------------------------------------------------------------------------------------


def test_envoy_backoff_is_fully_jittered_and_capped_at_ten_times_the_base():
    rng = random.Random(1)
    first = [backoff_delay(DEFAULT_RETRY, 1, rng) for _ in range(2000)]
    third = [backoff_delay(DEFAULT_RETRY, 3, rng) for _ in range(2000)]
    tenth = [backoff_delay(DEFAULT_RETRY, 10, rng) for _ in range(2000)]
    assert 0 <= min(first) and max(first) <= 0.025
    assert max(third) <= 0.175 and statistics.mean(third) == pytest.approx(0.0875, rel=0.1)
    assert max(tenth) <= 0.25 and max(tenth) > 0.2


def test_gep_backoff_is_never_shorter_than_the_configured_minimum():
    policy = http_route_retry(3, (), 0.1)
    rng = random.Random(2)
    for retry in (1, 2, 3, 8):
        delays = [backoff_delay(policy, retry, rng) for _ in range(500)]
        assert min(delays) >= 0.1
        assert max(delays) <= 1.0  # capped at 10 × the minimum


def test_gep_backoff_grows_exponentially():
    policy = http_route_retry(3, (), 0.05)
    rng = random.Random(3)
    means = [statistics.mean(backoff_delay(policy, n, rng) for _ in range(500)) for n in (1, 2, 3)]
    assert means[0] < means[1] < means[2]


# -- retry budget -----------------------------------------------------------------------------------


def test_budget_allows_min_retry_concurrency_when_quiet():
    budget = Budget()
    budget.enter()
    assert [budget.try_retry() for _ in range(4)] == [True, True, True, False]
    assert (budget.granted, budget.overflow) == (3, 1)


def test_budget_caps_retries_in_flight_at_twenty_percent_of_active_requests():
    budget = Budget()
    for _ in range(100):
        budget.enter()
    granted = sum(budget.try_retry() for _ in range(100))
    assert granted == 20
    budget.retry_done()
    assert budget.try_retry()
    assert not budget.try_retry()


def test_budget_frees_slots_as_retries_end_and_requests_leave():
    budget = Budget()
    for _ in range(20):
        budget.enter()
    assert sum(budget.try_retry() for _ in range(10)) == 4
    for _ in range(4):
        budget.retry_done()
    for _ in range(20):
        budget.leave()
    assert (budget.active, budget.retries) == (0, 0)
    budget.leave()
    budget.retry_done()
    assert (budget.active, budget.retries) == (0, 0)


def test_budgets_are_per_cluster_and_totals_add_up():
    budgets = Budgets()
    a, b = budgets.get(("shop", "web", 80)), budgets.get(("shop", "api", 80))
    assert a is budgets.get(("shop", "web", 80)) and a is not b
    a.enter()
    for _ in range(5):
        a.try_retry()
    assert budgets.totals() == (3, 2)


def test_next_retry_frees_the_ended_retrys_slot_before_taking_one():
    budget = Budget()
    for _ in range(3):
        budget.enter()
    assert budget.next_retry(False) and budget.retries == 1  # a first attempt ended: take a slot
    assert budget.next_retry(True) and budget.retries == 1   # that retry ended: same slot, again
    budget.retries = budget.min_retry_concurrency             # the budget is spent by others
    assert not budget.next_retry(False)
    assert budget.next_retry(True) and budget.retries == budget.min_retry_concurrency


def test_budget_totals_never_go_down_when_idle_budgets_are_dropped(monkeypatch):
    # They are exported as counters (wisp_waypoint_upstream_rq_retry_total, ..._overflow_total).
    monkeypatch.setattr("waypoint.resilience.budget.MAX_CLUSTERS", 2)
    budgets = Budgets()
    first = budgets.get(("shop", "web", 80))
    for _ in range(5):
        if first.try_retry():
            first.retry_done()
    first.retries = 3
    for _ in range(2):
        first.try_retry()
    assert budgets.totals() == (5, 2)
    first.retries = 0
    budgets.get(("shop", "api", 80))
    budgets.get(("shop", "db", 80))  # over the limit: the idle ones are dropped
    assert ("shop", "web", 80) not in budgets.by_cluster
    assert budgets.totals() == (5, 2)


# -- fault injection ----------------------------------------------------------------------------


def test_fault_abort_percentage_is_drawn_per_request():
    policy = FaultPolicy(abort_status=503, abort_percent=50)
    rng = random.Random(4)
    aborted = sum(1 for _ in range(10_000) if (d := decide_fault(policy, rng)) and d.aborts)
    assert 4_800 <= aborted <= 5_200


def test_fault_delay_and_abort_are_independent_draws():
    policy = FaultPolicy(delay=1.0, delay_percent=50, abort_status=500, abort_percent=50)
    rng = random.Random(5)
    seen = {}
    for _ in range(8000):
        d = decide_fault(policy, rng) or Injected()
        key = (d.delay > 0, d.aborts)
        seen[key] = seen.get(key, 0) + 1
    assert all(1_800 <= seen[k] <= 2_200 for k in [(False, False), (True, False), (False, True), (True, True)]), seen


def test_full_percentages_do_not_draw_and_zero_never_applies():
    rng = random.Random(6)
    assert decide_fault(FaultPolicy(delay=1.0, delay_percent=100), rng) == Injected(1.0)
    assert decide_fault(FaultPolicy(delay=1.0, delay_percent=0, abort_status=503, abort_percent=0), rng) is None
    assert decide_fault(FaultPolicy(abort_grpc_status=14, abort_percent=100), rng) == Injected(0.0, None, 14)


@pytest.mark.parametrize("kwargs", [{"delay_percent": 101}, {"abort_status": 99}, {"abort_grpc_status": 17},
                                    {"delay": -1}])
def test_fault_policy_refuses_values_out_of_range(kwargs):
    with pytest.raises(PolicyError):
        FaultPolicy(**kwargs)


# -- the API server's side: the bundled CRD carries GEP-1731's retry ---------------------------------


def _route_with(retry: dict) -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "shop"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                     "rules": [{"backendRefs": [{"name": "web", "port": 80}], "retry": retry}]}}


def test_the_httproute_crd_admits_retry_and_refuses_a_code_below_400():
    from wisp_operator.validation import admit
    assert admit(_route_with({"attempts": 3, "codes": [500, 503], "backoff": "100ms"})).refusal is None
    refusal = admit(_route_with({"codes": [302]})).refusal
    assert refusal is not None and "spec.rules[0].retry.codes[0]" in refusal.message
    assert admit(_route_with({"backoff": "soon"})).refusal is not None
