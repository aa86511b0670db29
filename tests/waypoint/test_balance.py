"""The balancer (waypoint/balance/balancer.py): the algorithms, the peak-EWMA estimate, leases,
outlier ejection, connection-pool limits, locality and subsets — on a settable clock and a
seeded random source, so each test is exact."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import pytest

from waypoint.balance.balancer import DECAY, DEFAULT_RTT, OVERLOADED, EndpointState
from waypoint.config import Endpoint

from .balance_fixtures import CLIENT, CLOSE, ECHO, balancer, config, pod, rule


def _shares(b, cfg, n, finish=None, **kw):
    seen = Counter()
    for _ in range(n):
        lease = b.pick(cfg, ECHO, 80, **kw)
        seen[lease.endpoint.address] += 1
        lease.finish(200) if finish is None else finish(lease)
    return seen


# -- peak EWMA -------------------------------------------------------------------------------------

def test_a_new_endpoint_starts_at_linkerds_default_rtt_and_decays_toward_zero():
    state = EndpointState(("10.0.0.1", 80), Endpoint("10.0.0.1", 80, None, False), now=0.0)
    assert state.estimate(0.0) == DEFAULT_RTT == 0.030
    assert state.estimate(DECAY) == pytest.approx(DEFAULT_RTT / math.e)


def test_a_slower_sample_becomes_the_estimate_at_once_and_a_faster_one_blends_by_elapsed_time():
    state = EndpointState(("10.0.0.1", 80), Endpoint("10.0.0.1", 80, None, False), now=0.0)
    state.observe(0.200, 1.0)
    assert state.rtt == 0.200  # peak
    state.observe(0.010, 1.0 + DECAY)  # one time constant later: weight 1 - 1/e to the sample
    w = math.exp(-1)
    assert state.rtt == pytest.approx(0.200 * w + 0.010 * (1 - w))


def test_a_failure_never_lowers_the_estimate():
    state = EndpointState(("10.0.0.1", 80), Endpoint("10.0.0.1", 80, None, False), now=0.0)
    state.observe(0.100, 0.0)
    state.observe(0.001, 5.0, only_raise=True)  # a fast connect refusal
    assert state.rtt == pytest.approx(0.100 * math.exp(-5.0 / DECAY))


def test_p2c_ewma_sends_few_requests_to_an_endpoint_50ms_slower():
    b, clock = balancer()
    cfg = config([pod(1), pod(2)])

    def finish(lease):
        latency = 0.052 if lease.endpoint.address == "10.244.1.2" else 0.002
        clock.now += latency
        lease.finish(200, False, latency)

    seen = _shares(b, cfg, 2000, finish)
    assert seen["10.244.1.2"] / 2000 < 0.05


def test_p2c_ewma_weighs_the_estimate_by_outstanding_requests():
    b, clock = balancer()
    cfg = config([pod(1), pod(2)])
    fast = b.pick(cfg, ECHO, 80)
    b.state_of(fast.endpoint.address, 8080).rtt = 0.010
    other = "10.244.1.1" if fast.endpoint.address == "10.244.1.2" else "10.244.1.2"
    b.state_of(other, 8080).rtt = 0.025
    # 10 ms × (1 + 1) < 25 ms × 1: the faster still wins; 10 ms × (2 + 1) > 25 ms: the idle one does
    assert b.pick(cfg, ECHO, 80).endpoint.address == fast.endpoint.address
    assert b.pick(cfg, ECHO, 80).endpoint.address == other


def test_lease_finish_counts_once():
    b, _ = balancer()
    cfg = config([pod(1)])
    lease = b.pick(cfg, ECHO, 80)
    state = b.state_of("10.244.1.1", 8080)
    assert state.outstanding == 1
    lease.finish(200)
    lease.finish(503)
    assert state.outstanding == 0 and state.consecutive_5xx == 0


# -- the other algorithms --------------------------------------------------------------------------

def test_round_robin_takes_turns():
    b, _ = balancer()
    cfg = config([pod(1), pod(2), pod(3)], [rule({"trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}})])
    order = [b.pick(cfg, ECHO, 80) for _ in range(6)]
    addresses = [lease.endpoint.address for lease in order]
    assert addresses[:3] == addresses[3:] and len(set(addresses)) == 3


def test_least_request_prefers_fewer_outstanding():
    b, _ = balancer()
    cfg = config([pod(1), pod(2)], [rule({"trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}})])
    first = b.pick(cfg, ECHO, 80)
    second = b.pick(cfg, ECHO, 80)
    assert first.endpoint.address != second.endpoint.address


def test_random_spreads_evenly():
    b, _ = balancer()
    cfg = config([pod(1), pod(2), pod(3), pod(4)], [rule({"trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}})])
    seen = _shares(b, cfg, 4000)
    assert all(900 < count < 1100 for count in seen.values()) and len(seen) == 4


class _Head:
    def __init__(self, headers=(), target=b"/", authority=b"echo"):
        self.headers = list(headers)
        self.target = target
        self.authority = authority

    def header(self, name):
        for key, value in self.headers:
            if key == name:
                return value
        return None


def _hashed(spec):
    b, _ = balancer()
    cfg = config([pod(n) for n in range(1, 6)],
                 [rule({"trafficPolicy": {"loadBalancer": {"consistentHash": spec}}})])
    return b, cfg


def test_consistent_hash_on_a_header_keeps_a_key_on_one_endpoint_and_spreads_keys():
    b, cfg = _hashed({"httpHeaderName": "x-user"})
    by_key = {}
    for user in range(50):
        head = _Head([(b"x-user", b"user-%d" % user)])
        chosen = {b.pick(cfg, ECHO, 80, head=head).endpoint.address for _ in range(5)}
        assert len(chosen) == 1
        by_key[user] = chosen.pop()
    assert len(set(by_key.values())) >= 4


def test_consistent_hash_without_the_header_places_requests_at_random():
    b, cfg = _hashed({"httpHeaderName": "x-user"})
    chosen = {b.pick(cfg, ECHO, 80, head=_Head()).endpoint.address for _ in range(100)}
    assert len(chosen) >= 4


def test_consistent_hash_on_a_cookie_reads_the_cookie_the_request_carries():
    b, cfg = _hashed({"httpCookie": {"name": "session", "ttl": "0s"}})
    head = _Head([(b"cookie", b"theme=dark; session=abc123")])
    same = _Head([(b"cookie", b"session=abc123")])
    assert {b.pick(cfg, ECHO, 80, head=h).endpoint.address for h in (head, same) for _ in range(5)} \
        .__len__() == 1
    assert any(note.endswith("placed at random") for note in cfg.notes)


def test_consistent_hash_on_the_source_ip():
    b, cfg = _hashed({"useSourceIp": True})
    one = {b.pick(cfg, ECHO, 80, source_ip="10.1.0.7").endpoint.address for _ in range(10)}
    many = {b.pick(cfg, ECHO, 80, source_ip=f"10.1.0.{n}").endpoint.address for n in range(60)}
    assert len(one) == 1 and len(many) >= 4


def test_consistent_hash_on_a_query_parameter():
    b, cfg = _hashed({"httpQueryParameterName": "user"})
    chosen = {b.pick(cfg, ECHO, 80, head=_Head(target=b"/a?x=1&user=7")).endpoint.address for _ in range(10)}
    assert len(chosen) == 1


# -- outlier detection -----------------------------------------------------------------------------

OUTLIER = {"consecutive5xxErrors": 5, "interval": "1s", "baseEjectionTime": "10s", "maxEjectionPercent": 50}


def _fail(b, cfg, address, status=503, times=5, connect_failed=False):
    """Send until `address` has answered `status` `times` times in a row (others answer 200)."""
    count = 0
    for _ in range(1000):
        lease = b.pick(cfg, ECHO, 80)
        if lease is None:
            return
        if lease.endpoint.address == address:
            lease.finish(status, connect_failed)
            count += 1
            if count == times:
                return
        else:
            lease.finish(200)
    raise AssertionError("never reached")


def _outlier_config(pods=None, **changes):
    return config(pods or [pod(1), pod(2)], [rule({"trafficPolicy": {
        "loadBalancer": {"simple": "ROUND_ROBIN"}, "outlierDetection": {**OUTLIER, **changes}}})])


def test_five_consecutive_5xx_eject_an_endpoint_until_the_sweep_after_the_ejection_time():
    b, clock = balancer()
    cfg = _outlier_config()
    start = b.started
    clock.now = start + 0.5
    _fail(b, cfg, "10.244.1.2")
    state = b.state_of("10.244.1.2", 8080)
    assert state.ejected and state.ejections == 1
    assert {b.pick(cfg, ECHO, 80).endpoint.address for _ in range(20)} == {"10.244.1.1"}
    assert state.return_at == start + 11.0  # 0.5 + 10 s, at the next 1 s sweep
    clock.now = start + 10.9
    assert {b.pick(cfg, ECHO, 80).endpoint.address for _ in range(10)} == {"10.244.1.1"}
    clock.now = start + 11.0
    assert {b.pick(cfg, ECHO, 80).endpoint.address for _ in range(10)} == {"10.244.1.1", "10.244.1.2"}


def test_a_second_ejection_lasts_twice_the_base_time():
    b, clock = balancer()
    cfg = _outlier_config()
    start = b.started
    _fail(b, cfg, "10.244.1.2")
    clock.now = start + 10.0
    _fail(b, cfg, "10.244.1.2")  # returned at 10.0 and failed again before any further sweep
    state = b.state_of("10.244.1.2", 8080)
    assert state.ejections == 2 and state.return_at == start + 30.0


def test_the_multiplier_drops_one_per_healthy_sweep():
    b, clock = balancer()
    cfg = _outlier_config()
    start = b.started
    _fail(b, cfg, "10.244.1.2")
    clock.now = start + 10.0
    b.pick(cfg, ECHO, 80).finish(200)  # the endpoint returns at the 10 s sweep
    clock.now = start + 15.5  # five healthy sweeps (11..15): the multiplier is back to 0
    _fail(b, cfg, "10.244.1.2")
    assert b.state_of("10.244.1.2", 8080).return_at == start + 26.0  # 15.5 + 10 → the 26 s sweep


def test_a_success_between_failures_resets_the_count():
    b, _ = balancer()
    cfg = _outlier_config([pod(1)])
    for status in (503, 503, 503, 503, 200, 503, 503, 503, 503):
        b.pick(cfg, ECHO, 80).finish(status)
    assert not b.state_of("10.244.1.1", 8080).ejected


def test_gateway_errors_alone_eject_when_consecutive_5xx_is_off():
    b, _ = balancer()
    cfg = _outlier_config(consecutive5xxErrors=0, consecutiveGatewayErrors=3)
    _fail(b, cfg, "10.244.1.2", status=500, times=10)
    assert not b.state_of("10.244.1.2", 8080).ejected  # 500 is not a gateway error
    _fail(b, cfg, "10.244.1.2", status=0, times=3, connect_failed=True)
    assert b.state_of("10.244.1.2", 8080).ejected


def test_max_ejection_percent_caps_ejections_but_one_can_always_go():
    b, _ = balancer()
    cfg = _outlier_config([pod(1), pod(2), pod(3), pod(4)], maxEjectionPercent=10)
    for _ in range(40):
        b.pick(cfg, ECHO, 80).finish(503)
    ejected = [n for n in (1, 2, 3, 4) if b.state_of(f"10.244.1.{n}", 8080).ejected]
    assert len(ejected) == 1
    b2, _ = balancer()
    cfg2 = _outlier_config([pod(1), pod(2), pod(3), pod(4)], maxEjectionPercent=50)
    for _ in range(80):
        b2.pick(cfg2, ECHO, 80).finish(503)
    assert sum(b2.state_of(f"10.244.1.{n}", 8080).ejected for n in (1, 2, 3, 4)) == 2


def test_every_endpoint_ejected_is_no_healthy_upstream_unless_min_health_percent_panics():
    b, _ = balancer()
    cfg = _outlier_config(maxEjectionPercent=100)
    for _ in range(10):
        lease = b.pick(cfg, ECHO, 80)
        if lease is not None:
            lease.finish(503)
    assert b.pick(cfg, ECHO, 80) is None
    b2, _ = balancer()
    cfg2 = _outlier_config([pod(1), pod(2), pod(3)], maxEjectionPercent=100, minHealthPercent=50)
    for _ in range(30):
        b2.pick(cfg2, ECHO, 80).finish(503)
    assert b2.pick(cfg2, ECHO, 80) is not None  # panic: balanced over all


def test_ejection_outlives_a_new_config_version():
    b, _ = balancer()
    _fail(b, _outlier_config(), "10.244.1.2")
    cfg = _outlier_config()  # another version (another pod elsewhere changed)
    assert {b.pick(cfg, ECHO, 80).endpoint.address for _ in range(10)} == {"10.244.1.1"}


# -- connection pool -------------------------------------------------------------------------------

def _pool(**http):
    tcp = {"maxConnections": http.pop("maxConnections")} if "maxConnections" in http else {}
    return config([pod(1), pod(2)], [rule({"trafficPolicy": {"connectionPool": {"tcp": tcp, "http": http}}})])


def test_http2_max_requests_overflows_at_once():
    b, _ = balancer()
    cfg = _pool(http2MaxRequests=2)
    held = [b.pick(cfg, ECHO, 80, http1=False) for _ in range(2)]
    assert b.pick(cfg, ECHO, 80, http1=False) is OVERLOADED
    held[0].finish(200)
    assert b.pick(cfg, ECHO, 80, http1=False) not in (None, OVERLOADED)


def test_http1_requests_beyond_max_connections_wait_then_overflow_beyond_max_pending():
    b, _ = balancer()
    cfg = _pool(maxConnections=1, http1MaxPendingRequests=1)
    first = b.pick(cfg, ECHO, 80)
    second = b.pick(cfg, ECHO, 80)
    assert first.admitted and not second.admitted
    assert b.pick(cfg, ECHO, 80) is OVERLOADED
    resumed = []
    assert second.ready(lambda: resumed.append(True)) is False
    first.finish(200)
    assert resumed == [True] and second.admitted and second.ready(lambda: None)


def test_a_waiting_request_that_goes_away_frees_its_place():
    b, _ = balancer()
    cfg = _pool(maxConnections=1, http1MaxPendingRequests=1)
    first = b.pick(cfg, ECHO, 80)
    waiting = b.pick(cfg, ECHO, 80)
    waiting.finish(None)
    third = b.pick(cfg, ECHO, 80)
    assert third is not OVERLOADED and not third.admitted
    first.finish(200)
    assert third.admitted


def test_max_requests_per_connection_rides_on_the_lease():
    b, _ = balancer()
    cfg = _pool(maxRequestsPerConnection=1)
    assert b.pick(cfg, ECHO, 80).per_connection == 1


# -- locality and subsets --------------------------------------------------------------------------

def test_prefer_close_keeps_traffic_on_the_clients_node_then_fails_over():
    b, _ = balancer()
    near, far = pod(1, node="node1"), pod(2, node="node2")
    cfg = config([near, far], [rule({"trafficPolicy": {"outlierDetection": {"maxEjectionPercent": 100,
                                                                           "interval": "1s"}}})], service=CLOSE)
    chosen = {b.pick(cfg, CLOSE, 80, source_ip=CLIENT.addresses[0]).endpoint.address for _ in range(30)}
    assert chosen == {"10.244.1.1"}
    for _ in range(5):
        b.pick(cfg, CLOSE, 80, source_ip=CLIENT.addresses[0]).finish(503)
    chosen = {b.pick(cfg, CLOSE, 80, source_ip=CLIENT.addresses[0]).endpoint.address for _ in range(30)}
    assert chosen == {"10.244.1.2"}


def test_without_prefer_close_both_nodes_serve():
    b, _ = balancer()
    cfg = config([pod(1, node="node1"), pod(2, node="node2")])
    chosen = {b.pick(cfg, ECHO, 80, source_ip=CLIENT.addresses[0]).endpoint.address for _ in range(50)}
    assert len(chosen) == 2


SUBSETS = {"subsets": [
    {"name": "v1", "labels": {"version": "v1"}},
    {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}},
]}


def test_a_subset_selects_its_workloads_by_labels():
    b, _ = balancer()
    cfg = config([pod(1, version="v1"), pod(2, version="v2"), pod(3, version="v2")], [rule(SUBSETS)])
    assert {b.pick(cfg, ECHO, 80, "v1").endpoint.address for _ in range(20)} == {"10.244.1.1"}
    assert {b.pick(cfg, ECHO, 80, "v2").endpoint.address for _ in range(20)} == {"10.244.1.2", "10.244.1.3"}
    assert b.pick(cfg, ECHO, 80, "v3") is None  # not defined: no such cluster


def test_a_subset_policy_overrides_the_rules():
    b, _ = balancer()
    cfg = config([pod(1, version="v1"), pod(2, version="v2")], [rule(SUBSETS)])
    assert b.cluster(cfg, ECHO, 80, "v2").algorithm == "ROUND_ROBIN"
    assert b.cluster(cfg, ECHO, 80, "v1").algorithm == "PEAK_EWMA"


def test_port_level_settings_override_for_their_port():
    b, _ = balancer()
    cfg = config([pod(1)], [rule({"trafficPolicy": {
        "loadBalancer": {"simple": "RANDOM"},
        "portLevelSettings": [{"port": {"number": 81}, "loadBalancer": {"simple": "LEAST_REQUEST"}}]}})])
    assert b.cluster(cfg, ECHO, 80, None).algorithm == "RANDOM"
    assert b.cluster(cfg, ECHO, 81, None).algorithm == "LEAST_REQUEST"


def test_retries_avoid_the_hosts_already_tried():
    b, _ = balancer()
    cfg = config([pod(1), pod(2), pod(3)])
    first = b.pick(cfg, ECHO, 80)
    first.finish(503)
    for _ in range(20):
        again = b.pick(cfg, ECHO, 80, None, {first.endpoint.address})
        assert again.endpoint.address != first.endpoint.address
        again.finish(200)


def test_prefer_close_is_relative_to_each_client():
    from wisp.model import Workload

    b, _ = balancer()
    other = Workload("client2", "client2", "lb", ("10.244.2.100",), tunnel_protocol="HBONE", node="node2")
    cfg = config([pod(1, node="node1"), pod(2, node="node2")], service=CLOSE, extra=[other])
    assert {b.pick(cfg, CLOSE, 80, source_ip=CLIENT.addresses[0]).endpoint.address for _ in range(20)} \
        == {"10.244.1.1"}
    assert {b.pick(cfg, CLOSE, 80, source_ip="10.244.2.100").endpoint.address for _ in range(20)} == {"10.244.1.2"}
    assert {b.pick(cfg, CLOSE, 80, source_ip="10.9.9.9").endpoint.address for _ in range(40)} \
        == {"10.244.1.1", "10.244.1.2"}  # a client the mesh does not know: no preference


def test_strict_locality_has_no_endpoint_when_none_matches():
    from wisp.model import LoadBalancing, Locality, Service

    strict = Service("echo", "lb", CLOSE.hostname, CLOSE.addresses, CLOSE.ports,
                     load_balancing=LoadBalancing(("REGION",), "STRICT"))
    b, _ = balancer()
    far = dataclasses.replace(pod(1), locality=Locality("eu-west"))
    cfg = config([far], service=strict)
    assert b.pick(cfg, strict, 80, source_ip=CLIENT.addresses[0]) is None


def test_choose_without_a_lease_hashes_the_source_ip_for_tcp():
    b, cfg = _hashed({"useSourceIp": True})
    assert len({b.choose(cfg, ECHO, 80, source_ip="10.1.0.7").address for _ in range(10)}) == 1
    assert b.state_of(b.choose(cfg, ECHO, 80, source_ip="10.1.0.7").address, 8080).outstanding == 0
