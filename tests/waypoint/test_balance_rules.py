"""DestinationRule → traffic policy (waypoint/balance/rules.py), and the pipeline's use of the
balancer: the overflow answer and a retry's new endpoint (waypoint/pipeline.py)."""

from __future__ import annotations

import pytest

from waypoint.balance.policy import (
    CONSISTENT_HASH,
    HASH_COOKIE,
    LEAST_REQUEST,
    PEAK_EWMA,
    ConnectionPool,
    HashKey,
    OutlierDetection,
)
from waypoint.balance.rules import _Bad, compile_destination_rules, parse_duration
from waypoint.pipeline import ClientContext, Pipeline, Proxy, RequestHead, Respond
from wisp.identity import SpiffeId

from .balance_fixtures import ECHO, KEY, balancer, config, pod, rule


def _compile(*rules):
    return compile_destination_rules(list(rules), [ECHO])


def test_a_full_rule_resolves_by_port_and_subset_as_istio_merges_it():
    policies = _compile(rule({
        "trafficPolicy": {
            "loadBalancer": {"simple": "LEAST_CONN"},
            "connectionPool": {"tcp": {"maxConnections": 10},
                               "http": {"http1MaxPendingRequests": 5, "http2MaxRequests": 100,
                                        "maxRequestsPerConnection": 0}},
            "outlierDetection": {"consecutiveGatewayErrors": 3, "interval": "500ms", "baseEjectionTime": "1m"},
            "portLevelSettings": [{"port": {"number": 81}, "connectionPool": {"http": {"http2MaxRequests": 7}}}],
        },
        "subsets": [{"name": "v2", "labels": {"version": "v2"},
                     "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpCookie": {"name": "s"}}}}}],
    }))
    destination = policies.get(KEY)
    top = destination.resolve(80, None)
    assert top.load_balancer.algorithm == LEAST_REQUEST
    assert top.connection_pool == ConnectionPool(10, 5, 100, None)
    assert top.outlier == OutlierDetection(consecutive_5xx=5, consecutive_gateway=3, interval=0.5,
                                           base_ejection_time=60.0)
    assert destination.resolve(81, None).connection_pool == ConnectionPool(max_requests=7)  # whole field replaced
    v2 = destination.resolve(80, "v2")
    assert v2.load_balancer.algorithm == CONSISTENT_HASH and v2.load_balancer.hash_key == HashKey(HASH_COOKIE, "s")
    assert v2.outlier == top.outlier
    assert destination.resolve(80, "v9") is None
    assert policies.notes == ()


def test_unsupported_fields_and_values_are_noted_and_the_rest_applies():
    policies = _compile(rule({
        "trafficPolicy": {
            "loadBalancer": {"simple": "PASSTHROUGH", "localityLbSetting": {"enabled": True}},
            "tls": {"mode": "ISTIO_MUTUAL"},
            "connectionPool": {"tcp": {"maxConnections": -1, "connectTimeout": "1s"}},
            "outlierDetection": {"interval": "soon", "splitExternalLocalOriginErrors": True},
        },
        "workloadSelector": {"matchLabels": {"app": "x"}},
    }))
    notes = "\n".join(policies.notes)
    for fragment in ("loadBalancer.simple: 'PASSTHROUGH' is not supported", "loadBalancer.localityLbSetting",
                     "spec.trafficPolicy.tls: not supported", "tcp.maxConnections: ", "tcp.connectTimeout",
                     "outlierDetection.interval: 'soon' is not a duration", "splitExternalLocalOriginErrors",
                     "spec.workloadSelector"):
        assert fragment in notes
    resolved = policies.get(KEY).resolve(80, None)
    assert resolved.load_balancer is None  # the default: peak EWMA
    assert resolved.outlier == OutlierDetection()


def test_host_is_read_relative_to_the_rules_namespace_and_wildcards_name_no_service():
    assert _compile(rule({}, namespace="other")).by_service == {}
    assert KEY in _compile(rule({"host": "echo.lb.svc.cluster.local"}, namespace="other")).by_service
    wild = _compile(rule({"host": "*.lb.svc.cluster.local"}))
    assert wild.by_service == {} and "names no Service" in wild.notes[0]


def test_of_two_rules_the_older_sets_the_policy_and_subsets_merge():
    older = rule({"trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}},
                  "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}, name="a", created="2025-01-01T00:00:00Z")
    newer = rule({"trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}},
                  "subsets": [{"name": "v1", "labels": {"version": "x"}}, {"name": "v2", "labels": {"version": "v2"}}]},
                 name="b", created="2025-06-01T00:00:00Z")
    policies = _compile(newer, older)
    destination = policies.get(KEY)
    assert destination.rule == "lb/a" and destination.resolve(80, None).load_balancer.algorithm == "RANDOM"
    assert dict(destination.subsets["v1"].labels) == {"version": "v1"} and "v2" in destination.subsets
    assert any("already sets" in note for note in policies.notes)
    assert any("already defined" in note for note in policies.notes)


@pytest.mark.parametrize("text, seconds", [("10s", 10.0), ("1m30s", 90.0), ("100ms", 0.1), ("1.5s", 1.5),
                                           ("1h", 3600.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "s", "0s", "1x", 5])
def test_bad_durations(text):
    with pytest.raises(_Bad):
        parse_duration(text)


def test_no_rule_means_peak_ewma():
    b, _ = balancer()
    assert b.cluster(config([pod(1)]), ECHO, 80, None).algorithm == PEAK_EWMA


# -- the pipeline ----------------------------------------------------------------------------------

CTX = ClientContext(SpiffeId("cluster.local", "lb", "client"), "10.244.1.100", 40000, "10.96.0.10", 80)


def _pipeline(cfg):
    b, clock = balancer()
    return Pipeline(lambda: cfg, b, lambda endpoint, done: None), b


def _head():
    return RequestHead(b"GET", b"/", b"echo", [])


def test_a_full_connection_pool_answers_503_with_the_overloaded_marker():
    cfg = config([pod(1)], [rule({"trafficPolicy": {"connectionPool": {"http": {"http2MaxRequests": 1}}}})])
    pipeline, _ = _pipeline(cfg)
    first = pipeline.decide(CTX, _head())
    assert isinstance(first, Proxy) and first.lease is not None
    second = pipeline.decide(CTX, _head())
    assert isinstance(second, Respond) and second.status == 503
    assert (b"x-envoy-overloaded", b"true") in second.headers
    first.lease.finish(200)
    assert isinstance(pipeline.decide(CTX, _head()), Proxy)


def test_retarget_gives_a_retry_another_endpoint_and_lease():
    cfg = config([pod(1), pod(2)])
    pipeline, b = _pipeline(cfg)
    proxy = pipeline.decide(CTX, _head())
    first, lease = proxy.endpoint, proxy.lease
    lease.finish(503)
    assert pipeline.retarget(proxy) is None
    assert proxy.endpoint.address != first.address and proxy.lease is not lease
    assert proxy.tried == (first.address,)
    assert b.state_of(proxy.endpoint.address, 8080).outstanding == 1
    proxy.lease.finish(503)
    assert pipeline.retarget(proxy) is None  # both tried: Envoy's predicate gives up and takes one
    assert proxy.tried == (first.address, proxy.tried[1])


def test_retarget_without_any_endpoint_left_is_503():
    cfg = config([pod(1)], [rule({"trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 1,
                                                                         "maxEjectionPercent": 100}}})])
    pipeline, _ = _pipeline(cfg)
    proxy = pipeline.decide(CTX, _head())
    proxy.lease.finish(503)  # ejected
    answer = pipeline.retarget(proxy)
    assert isinstance(answer, Respond) and answer.status == 503 and answer.detail == "no_healthy_upstream"
