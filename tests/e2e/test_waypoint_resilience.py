"""Timeouts, retries, the retry budget and fault injection at the waypoint, end to end on the shared
local mesh (issue 12, Must-show: "A 3 s route timeout answers 504 after 3 s ± 0.5 s; a per-try
timeout with 3 attempts takes the expected time; retries turn a first-attempt 503 into a 200; the
retry budget caps retries when an endpoint fails every request" and "Abort 50% gives 45–55% 503
over 1,000 requests; a 1 s delay at 100% adds 1 s ± 0.1 s").

The module adds namespace `resil`: a client; `echo` (one wisp-echo pod) behind Services `echo`
(an HTTPRoute with a 3 s request timeout on /slow, two retries with a 500 ms per-try timeout on
/pertry, Istio's default retry policy elsewhere) and `faulty` (a VirtualService: a 1 s delay for
every request to /delay, a 50% abort with 503 on /abort, nothing on the rest); `broken` (a
wisp-echo that answers every request 503 after 200 ms). The echo app's switches make the failures
and its `/stats` counts the attempts that reached it (echo.faults). Each test prints what it
measured; docs/resilience.md records a run's figures.
"""

from __future__ import annotations

import json
import re
import secrets
import statistics

import pytest

from .objects import client, echo_deployment, manifest, namespace, service

NS = "resil"


APP = manifest(
    namespace(NS),
    client(NS),
    echo_deployment(NS, "echo"),
    echo_deployment(NS, "broken", "--fail-percent", "100", "--delay-ms", "200"),
    service(NS, "echo"),
    service(NS, "faulty", {"app": "echo"}),
    service(NS, "broken"),
)

MARK = "x-resil-config"
CONFIG = f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: echo, namespace: {NS}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo, port: 80}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /slow}}}}]
    timeouts: {{request: 3s}}
    backendRefs: [{{name: echo, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /pertry}}}}]
    retry: {{attempts: 2, backoff: 10ms}}
    timeouts: {{request: 10s, backendRequest: 500ms}}
    backendRefs: [{{name: echo, port: 80}}]
  - filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: {MARK}, value: route}}]}}}}]
    backendRefs: [{{name: echo, port: 80}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: faulty, namespace: {NS}}}
spec:
  hosts: [faulty]
  http:
  - match: [{{uri: {{prefix: /delay}}}}]
    fault: {{delay: {{fixedDelay: 1s, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: faulty}}}}]
  - match: [{{uri: {{prefix: /abort}}}}]
    fault: {{abort: {{httpStatus: 503, percentage: {{value: 50}}}}}}
    route: [{{destination: {{host: faulty}}}}]
  - headers: {{response: {{set: {{{MARK}: vs}}}}}}
    route: [{{destination: {{host: faulty}}}}]
"""


@pytest.fixture(scope="module")
def resil(mesh):
    mesh.apply(APP, "resil-app")
    try:
        mesh.wait_for(lambda: sum(1 for p in mesh.status()["pods"] if p["namespace"] == NS and p["ready"]) == 3,
                      timeout=60, what="the resil namespace's pods ready")
        enrolled = mesh.wisp("waypoint", "apply", "-n", NS, "--enroll-namespace", "--wait",
                             "--waypoint-timeout", "90s", timeout=120)
        assert enrolled.returncode == 0, enrolled.stderr
        mesh.apply(CONFIG, "resil-config")
        for url, value in ((f"http://echo.{NS}/", "route"), (f"http://faulty.{NS}/", "vs")):
            mesh.wait_for(lambda: value in headers(mesh, url).get(MARK, ""), timeout=30, interval=0.3,
                          what=f"the {value} config in force at the waypoint")
        yield
    finally:
        mesh.delete(CONFIG, "resil-config")
        mesh.wisp("waypoint", "delete", "-n", NS, "--all")
        mesh.delete(APP, "resil-app")


def headers(mesh, url: str) -> dict[str, str]:
    result = mesh.in_pod(NS, "client", "curl", "-s", "-m", "5", "-o", "/dev/null", "-D", "-", url, timeout=10)
    return {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in result.stdout.splitlines()) if v}


def timed(mesh, url: str, *header: str, timeout: float = 15) -> tuple[int, float]:
    """(status, seconds) of one request from the client pod, as curl measured it."""
    extra = [arg for h in header for arg in ("-H", h)]
    result = mesh.in_pod(NS, "client", "curl", "-s", "-o", "/dev/null", "-m", str(timeout),
                         "-w", "%{http_code} %{time_total}", *extra, url, timeout=timeout + 5)
    code, seconds = result.stdout.split()
    return int(code), float(seconds)


def served(mesh, name: str) -> dict:
    """The echo pod's own count of the requests it answered (echo.faults, GET /stats)."""
    code, body = mesh.curl(NS, "client", f"http://{name}.{NS}/stats")
    assert code == 200, body
    return json.loads(body)


def retry_counters(mesh) -> tuple[float, float]:
    """(retries made, retries refused by the budget) from the waypoint's /metrics."""
    pod = next(p for p in mesh.status()["pods"] if p["namespace"] == NS and p["name"].startswith("waypoint-"))
    text = mesh.in_node(pod["node"], "curl", "-s", "-m", "5", f"http://{pod['ip']}:15020/metrics").stdout
    values = dict(line.split() for line in text.splitlines()
                  if line.startswith("wisp_waypoint_upstream_rq_retry"))
    return (float(values["wisp_waypoint_upstream_rq_retry_total"]),
            float(values["wisp_waypoint_upstream_rq_retry_overflow_total"]))


def test_a_3s_route_timeout_answers_504_after_3s(mesh, resil):
    status, seconds = timed(mesh, f"http://echo.{NS}/slow", "x-echo-delay-ms: 6000")
    print(f"route timeout 3s: status {status} after {seconds:.3f} s")
    assert status == 504
    assert 2.5 <= seconds <= 3.5


def test_a_per_try_timeout_with_three_attempts_takes_three_tries(mesh, resil):
    before = served(mesh, "echo")["served"]
    status, seconds = timed(mesh, f"http://echo.{NS}/pertry", "x-echo-delay-ms: 3000")
    attempts = served(mesh, "echo")["served"] - before
    print(f"per-try 500ms x 3 attempts: status {status} after {seconds:.3f} s, {attempts} attempts at the echo")
    assert status == 504 and attempts == 3
    # Three tries of 500 ms and two backoffs of 10-40 ms (GEP-1731: backoff is a minimum).
    assert 1.5 <= seconds <= 1.75


def test_retries_turn_a_first_attempt_503_into_a_200(mesh, resil):
    before = served(mesh, "echo")
    key = secrets.token_hex(4)
    status, seconds = timed(mesh, f"http://echo.{NS}/", "x-echo-fail-first: 1", f"x-echo-fail-key: {key}")
    after = served(mesh, "echo")
    print(f"fail-first 1: status {status} after {seconds:.3f} s; echo served {after['served'] - before['served']},"
          f" failed {after['failed'] - before['failed']}")
    assert status == 200
    assert (after["served"] - before["served"], after["failed"] - before["failed"]) == (2, 1)


def test_the_retry_budget_caps_retries_when_an_endpoint_fails_every_request(mesh, resil):
    count = 30
    before = served(mesh, "broken")["served"]
    counted_before = retry_counters(mesh)
    result = mesh.in_pod(NS, "client", "curl", "-s", "-o", "/dev/null", "-m", "20", "--parallel",
                         "--parallel-immediate", "--parallel-max", str(count), "-w", "%{http_code}\n",
                         f"http://broken.{NS}/budget?n=[1-{count}]", timeout=40)
    statuses = result.stdout.split()
    attempts = served(mesh, "broken")["served"] - before
    print(f"budget: {count} concurrent requests to an endpoint failing all: {attempts} attempts "
          f"(unbudgeted: {count * 3}); statuses {sorted(set(statuses))}")
    assert statuses == ["503"] * count
    # Retries in flight at most max(3, 20% of the ~30 active requests): about 30 + 6 + 3.
    assert count < attempts <= count + count // 2, attempts
    # The waypoint's counters say the same: every attempt after the first 30 was a retry, and
    # the retries the budget refused were counted.
    retried, refused = (after - earlier for after, earlier in zip(retry_counters(mesh), counted_before))
    assert retried == attempts - count
    assert refused > 0


def test_an_abort_of_50_percent_gives_45_to_55_percent_503_over_1000_requests(mesh, resil):
    result = mesh.in_pod(NS, "client", "h2load", "--h1", "-n", "1000", "-c", "10", f"http://faulty.{NS}/abort",
                         timeout=120)
    found = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", result.stdout)
    assert found, result.stdout[-2000:] + result.stderr[-1000:]
    ok, _, _, failed = (int(n) for n in found.groups())
    print(f"abort 50%: {failed} of {ok + failed} answered 5xx ({failed / 10:.1f}%)")
    assert ok + failed == 1000
    assert 450 <= failed <= 550


def test_a_1s_delay_at_100_percent_adds_1s(mesh, resil):
    plain = [timed(mesh, f"http://faulty.{NS}/plain") for _ in range(5)]
    delayed = [timed(mesh, f"http://faulty.{NS}/delay") for _ in range(5)]
    assert {code for code, _ in plain + delayed} == {200}
    added = statistics.median(s for _, s in delayed) - statistics.median(s for _, s in plain)
    print(f"delay 1s at 100%: median {statistics.median(s for _, s in delayed):.3f} s vs "
          f"{statistics.median(s for _, s in plain):.3f} s without: +{added:.3f} s")
    assert 0.9 <= added <= 1.1
    assert all(0.9 <= s - statistics.median(p for _, p in plain) <= 1.1 for _, s in delayed)
