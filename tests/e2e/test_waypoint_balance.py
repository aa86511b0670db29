"""The waypoint's balancer end to end on the shared local mesh (issue 12's Must-show list):
outlier ejection and its return, maxEjectionPercent, peak-EWMA against round robin with one slow
endpoint, and connection-pool limits under overload with the waypoint's memory watched.

Namespace `lb`: a client on node1; Service `echo` over echo-fast and echo-slow (the echo app's
`--delay-ms 50`); Service `flaky` over flaky-1, flaky-2 and flaky-bad (`--fail-percent 100`:
every request answered 503 — it has no readiness probe, which would fail too); Service `good`
over flaky-1 and flaky-2; Service `pool` over echo-fast alone. HTTPRoutes on `flaky` and `good`
turn the waypoint's default retries off (`retry: {attempts: 0}`), so every 503 an endpoint gives
reaches the client and can be attributed to it. A waypoint serves the namespace (`wisp waypoint apply -n lb
--enroll-namespace`). Load comes from a small Python client run inside the client pod's network
namespace (`LOAD`), which reports per request its start, latency, status, the echo pod that
answered and the overflow marker. Each test applies and removes its own DestinationRule.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from .conftest import BIN
from .objects import client, echo_pod, manifest, namespace, service

NS = "lb"

APP = manifest(
    namespace(NS),
    client(NS),
    echo_pod(NS, "echo-fast", labels={"app": "echo", "speed": "fast"}, account="echo"),
    echo_pod(NS, "echo-slow", "--delay-ms", "50", labels={"app": "echo", "speed": "slow"}, account="echo"),
    echo_pod(NS, "flaky-1", labels={"app": "flaky", "good": "yes"}, account="flaky", node="node1"),
    echo_pod(NS, "flaky-2", labels={"app": "flaky", "good": "yes"}, account="flaky"),
    # No readiness probe: it would fail too.
    echo_pod(NS, "flaky-bad", "--fail-percent", "100", "--fail-status", "503", labels={"app": "flaky"},
             account="flaky", probe=False),
    service(NS, "echo"),
    service(NS, "flaky"),
    service(NS, "good", {"app": "flaky", "good": "yes"}),
    service(NS, "pool", {"app": "echo", "speed": "fast"}),
) + """---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: flaky, namespace: lb}
spec:
  parentRefs: [{group: "", kind: Service, name: flaky, port: 80}]
  rules: [{backendRefs: [{name: flaky, port: 80}], retry: {attempts: 0}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: good, namespace: lb}
spec:
  parentRefs: [{group: "", kind: Service, name: good, port: 80}]
  rules: [{backendRefs: [{name: good, port: 80}], retry: {attempts: 0}}]
"""
PODS = 6

# Runs inside the client pod: `clients` threads, each with one keep-alive connection, send GETs
# until `count` requests are made or `seconds` pass; prints one JSON list of
# [start_s, latency_s, status, echo pod, x-envoy-overloaded] sorted by start.
LOAD = r'''
import http.client, json, sys, threading, time
spec = json.loads(sys.argv[1])
host, path, headers = spec["host"], spec.get("path", "/"), spec.get("headers", {})
count, seconds, gap, pause = spec.get("count"), spec.get("seconds"), spec.get("gap", 0.0), spec.get("pause_503", 0.0)
results, lock = [], threading.Lock()
left = [count if count is not None else -1]
start = time.monotonic() + 0.3
deadline = start + seconds if seconds else None
def worker():
    conn, mine = None, []
    while time.monotonic() < start:
        time.sleep(0.001)
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            break
        with lock:
            if left[0] == 0:
                break
            left[0] -= 1
        t0 = time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, 80, timeout=15)
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body, status = response.read(), response.status
            over = response.getheader("x-envoy-overloaded")
            if (response.getheader("connection") or "").lower() == "close":
                conn.close()
                conn = None
        except Exception as exc:
            status, body, over = 0, repr(exc).encode(), None
            if conn is not None:
                conn.close()
            conn = None
        t1 = time.monotonic()
        name = ""
        for line in body.split(b"\n", 2)[:2]:
            if line.startswith(b"hostname="):
                name = line[9:].decode()
        mine.append([round(t0 - start, 4), round(t1 - t0, 4), status, name, over])
        if pause and status == 503:
            time.sleep(pause)
        if gap:
            time.sleep(gap)
    with lock:
        results.extend(mine)
threads = [threading.Thread(target=worker) for _ in range(spec["clients"])]
for t in threads:
    t.start()
for t in threads:
    t.join()
results.sort()
print(json.dumps(results))
'''


def load_command(mesh, spec: dict) -> list[str]:
    netns = mesh.pod(NS, "client")["netns"]
    return ["ip", "netns", "exec", netns, str(BIN / "python"), "-c", LOAD, json.dumps(spec)]


def load(mesh, timeout: float = 120, **spec) -> list[list]:
    result = subprocess.run(load_command(mesh, spec), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[max(0, int(round(0.99 * len(ordered))) - 1)]


def destination_rule(name: str, host: str, policy: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: lb}}
spec:
  host: {host}
  trafficPolicy: {policy}
"""


@contextmanager
def applied(mesh, text: str, name: str) -> Iterator[None]:
    mesh.apply(text, name)
    try:
        yield
    finally:
        mesh.delete(text, name)


def waypoint_pod(mesh) -> dict:
    pods = [p for p in mesh.status()["pods"] if p["namespace"] == NS and p["name"].startswith("waypoint-")]
    assert pods, "no waypoint pod in lb"
    return pods[0]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture(scope="module")
def lb(mesh):
    mesh.apply(APP, "balance-app")
    try:
        mesh.wait_for(lambda: sum(1 for p in mesh.status()["pods"] if p["namespace"] == NS and p["ready"]) == PODS,
                      timeout=90, what="lb's pods ready")
        enrolled = mesh.wisp("waypoint", "apply", "-n", NS, "--enroll-namespace", "--wait",
                             "--waypoint-timeout", "90s", timeout=120)
        assert enrolled.returncode == 0, enrolled.stderr
        # Through the waypoint: every answer names an echo pod.
        mesh.wait_for(lambda: all(r[2] == 200 for r in load(mesh, host="echo.lb", clients=1, count=4)),
                      timeout=30, interval=0.5, what="echo answering through the waypoint")
        yield mesh
    finally:
        mesh.wisp("waypoint", "delete", "-n", NS, "--all")
        mesh.delete(APP, "balance-app")


def _in_effect(mesh, check, what: str):
    return mesh.wait_for(check, timeout=30, interval=0.5, what=what)


# -- outlier detection ---------------------------------------------------------------------------

OUTLIER = "{loadBalancer: {simple: ROUND_ROBIN}, outlierDetection: {consecutive5xxErrors: 5, interval: 1s, " \
          "baseEjectionTime: 4s, maxEjectionPercent: %d}}"


def _bursts(times: list[float], quiet: float = 1.5) -> list[list[float]]:
    """`times` split where nothing happened for `quiet` seconds."""
    bursts: list[list[float]] = []
    for t in times:
        if bursts and t - bursts[-1][-1] < quiet:
            bursts[-1].append(t)
        else:
            bursts.append([t])
    return bursts


def _round_robin(results: list[list], n: int) -> bool:
    """The answers cycle through `n` distinct pods in a fixed order (round robin is in effect)."""
    names = [r[3] for r in results]
    return len(set(names)) == n and all(names[i] == names[i + n] for i in range(len(names) - n))


def test_five_consecutive_5xx_eject_an_endpoint_for_the_ejection_time_then_it_returns(lb):
    mesh = lb
    with applied(mesh, destination_rule("flaky", "flaky", OUTLIER % 100), "dr-flaky"):
        # In effect once round robin shows: the bad pod answers one request in three.
        _in_effect(mesh, lambda: _round_robin(load(mesh, host="flaky.lb", clients=1, count=9), 3),
                   "the flaky DestinationRule")
        results = load(mesh, host="flaky.lb", clients=1, seconds=17, gap=0.03)
    bad = [r for r in results if r[3] == "flaky-bad"]
    assert all(r[2] == 503 for r in bad) and all(r[2] == 200 for r in results if r[3] != "flaky-bad")
    others = Counter(r[3] for r in results if r[2] == 200)
    assert set(others) == {"flaky-1", "flaky-2"} and sum(others.values()) == len(results) - len(bad)
    # The bad pod's requests come in bursts: the rest of its five (the probe above had some),
    # then nothing for the ejection time (4 s, returning at the next 1 s sweep), then five 503s in
    # a row again and an ejection of twice the base time (8 s: the second ejection), then it is
    # back again.
    bursts = _bursts([r[0] for r in bad])
    assert len(bursts) == 3, bursts
    first, second, third = bursts
    assert 1 <= len(first) <= 5 and len(second) == 5 and 1 <= len(third) <= 5, bursts
    gaps = (second[0] - first[-1], third[0] - second[-1])
    assert 4.0 <= gaps[0] <= 5.6 and 8.0 <= gaps[1] <= 9.6, bursts
    print(f"\nejection: {len(results)} requests in 17 s, round robin over 3; the bad pod: {len(first)} × 503, "
          f"ejected — none for {gaps[0]:.2f} s; back: 5 × 503 in a row, ejected again — none for "
          f"{gaps[1]:.2f} s; back again ({len(third)} × 503 before the run ended)")


def test_max_ejection_percent_keeps_the_rest_in_service(lb):
    mesh = lb
    # Both endpoints of `good` fail (x-echo-status: 503 on every request): with
    # maxEjectionPercent 30 only one of two may go (0 % < 30, then 50 % ≥ 30) and the other keeps
    # serving; at 100 both go and the waypoint has no healthy upstream left.
    failing = {"x-echo-status": "503"}
    with applied(mesh, destination_rule("good", "good", OUTLIER % 30), "dr-good"):
        def one_left():
            load(mesh, host="good.lb", clients=1, count=20, headers=failing)
            after = load(mesh, host="good.lb", clients=1, count=20)
            return after if len({r[3] for r in after}) == 1 else None
        after = _in_effect(mesh, one_left, "an ejection on good")
        more = load(mesh, host="good.lb", clients=1, count=40, headers=failing)
        still = load(mesh, host="good.lb", clients=1, count=20)
    assert all(r[2] == 200 for r in after + still) and len({r[3] for r in after + still}) == 1
    assert all(r[2] == 503 and r[3] for r in more)  # the endpoint's own 503s: it stays in service
    with applied(mesh, destination_rule("good", "good", OUTLIER % 100), "dr-good"):
        def none_left():
            load(mesh, host="good.lb", clients=1, count=20, headers=failing)
            after = load(mesh, host="good.lb", clients=1, count=10)
            return after if all(r[2] == 503 and not r[3] for r in after) else None
        nothing = _in_effect(mesh, none_left, "every endpoint of good ejected")
    print(f"\nmaxEjectionPercent 30: 1 of 2 endpoints ejected, the other served {len(after + still)} requests "
          f"and answered 40 failures without being ejected; at 100: both ejected, {len(nothing)} × 503 no healthy "
          "upstream")


# -- peak EWMA against round robin ---------------------------------------------------------------

def _share_run(mesh) -> tuple[float, float, float]:
    """(the slow endpoint's share, p99 s) of 1,000 requests over 4 connections after 300 more
    that are not counted (the balancer's warm-up), and the slow share during the warm-up."""
    warm = load(mesh, host="echo.lb", clients=4, count=300)
    results = load(mesh, host="echo.lb", clients=4, count=1000)
    assert all(r[2] == 200 for r in warm + results), Counter(r[2] for r in warm + results)
    slow = sum(1 for r in results if r[3] == "echo-slow") / len(results)
    return slow, p99([r[1] for r in results]), sum(1 for r in warm if r[3] == "echo-slow") / len(warm)


def test_peak_ewma_sends_a_50ms_slower_endpoint_under_20_percent_where_round_robin_sends_half(lb):
    mesh = lb
    ewma_share, ewma_p99, ewma_warm = _share_run(mesh)  # no DestinationRule: the default balancer
    with applied(mesh, destination_rule("echo", "echo", "{loadBalancer: {simple: ROUND_ROBIN}}"), "dr-echo"):
        _in_effect(mesh, lambda: [r[3] for r in load(mesh, host="echo.lb", clients=1, count=4)].count("echo-slow") == 2,
                   "round robin on echo")
        rr_share, rr_p99, rr_warm = _share_run(mesh)
    print(f"\n1000 requests over 4 connections (after 300 not counted): peak-EWMA P2C sent {ewma_share:.1%} to "
          f"the slow endpoint ({ewma_warm:.1%} of the 300 before), p99 {ewma_p99 * 1000:.1f} ms; round robin "
          f"{rr_share:.1%} ({rr_warm:.1%}), p99 {rr_p99 * 1000:.1f} ms")
    assert ewma_share < 0.20
    assert 0.45 <= rr_share <= 0.55
    assert ewma_p99 < rr_p99


# -- connection pool -----------------------------------------------------------------------------

POOL = "{connectionPool: {tcp: {maxConnections: 4}, http: {http1MaxPendingRequests: 4}}}"


def test_connection_pool_limits_answer_503_overloaded_beyond_the_configured_concurrency(lb):
    mesh = lb
    with applied(mesh, destination_rule("pool", "pool", POOL), "dr-pool"):
        def limited():
            burst = load(mesh, host="pool.lb", clients=24, count=24, headers={"x-echo-delay-ms": "600"})
            return burst if any(r[4] == "true" for r in burst) else None
        burst = _in_effect(mesh, limited, "the pool DestinationRule")
    ok = [r for r in burst if r[2] == 200]
    overloaded = [r for r in burst if r[2] == 503]
    # 4 requests in flight and 4 waiting for one of their connections; the other 16 at once.
    assert len(ok) == 8, Counter(r[2] for r in burst)
    assert len(overloaded) == 16 and all(r[4] == "true" for r in overloaded)
    assert max(r[1] for r in overloaded) < 0.5  # answered at once, not queued
    waited = sorted(r[1] for r in ok)
    assert waited[3] < 1.1 and waited[4] >= 1.1  # the waiting four were served after the first four
    print(f"\npool: 24 concurrent requests (600 ms each) → {len(ok)} served (4 at once + 4 waiting), "
          f"{len(overloaded)} × 503 x-envoy-overloaded")


def test_waypoint_memory_stays_bounded_under_ten_times_overload(lb):
    mesh = lb
    pid = next(c["pid"] for c in waypoint_pod(mesh)["containers"])
    with applied(mesh, destination_rule("pool", "pool", POOL), "dr-pool"):
        _in_effect(mesh, lambda: any(r[4] == "true" for r in load(
            mesh, host="pool.lb", clients=16, count=16, headers={"x-echo-delay-ms": "300"})), "the pool DestinationRule")
        before = rss_kib(pid)
        # 80 clients (10× the 8 the pool admits), each request held 200 ms by the endpoint; a
        # client whose request overflowed waits 20 ms before the next.
        spec = dict(host="pool.lb", clients=80, seconds=16, headers={"x-echo-delay-ms": "200"}, pause_503=0.02)
        process = subprocess.Popen(load_command(mesh, spec), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        samples = []
        try:
            started = time.monotonic()
            while process.poll() is None and time.monotonic() - started < 60:
                samples.append((time.monotonic() - started, rss_kib(pid)))
                time.sleep(0.5)
            out, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == 0, err[-2000:]
        results = json.loads(out)
    statuses = Counter(r[2] for r in results)
    peak = max(kib for _, kib in samples)
    early = max(kib for t, kib in samples if t <= 8) if any(t <= 8 for t, _ in samples) else peak
    late = max(kib for t, kib in samples if t > 8) if any(t > 8 for t, _ in samples) else peak
    print(f"\noverload: {len(results)} requests in 16 s from 80 clients: {dict(statuses)}; waypoint RSS "
          f"{before / 1024:.1f} MiB before, peak {peak / 1024:.1f} MiB (first half {early / 1024:.1f}, "
          f"second half {late / 1024:.1f})")
    assert statuses[503] > statuses[200] > 0
    assert set(statuses) <= {200, 503}
    assert peak - before < 48 * 1024  # bounded: the pool holds 8 requests, the rest are answered at once
    assert late - early < 8 * 1024  # and it does not keep growing
