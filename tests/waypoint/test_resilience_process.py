"""Timeouts, retries, the retry budget and fault injection in a real wisp-waypoint process, between
a real HBONE client and wisp-echo apps behind HBONE (tests/waypoint/process_harness.py).

Services: `echo` (echo-a alone) with an HTTPRoute (a 1 s request timeout on /slow; 2 retries with
a 300 ms per-try timeout on /pertry; Istio's default retry policy elsewhere); `pair` (echo-a and
echo-b, which fails every request with 503; no route); `broken` (echo-c, which answers every
request 503 after 300 ms); `faulty` (echo-a) with a VirtualService injecting a 500 ms delay on
/delay and a 50% abort elsewhere. The echo apps' switches (echo.faults) make the failures.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from wisp.model import PortMapping, Service

from .process_harness import Harness, get

ECHO_VIP, PAIR_VIP, BROKEN_VIP, FAULTY_VIP = "10.96.78.10", "10.96.78.11", "10.96.78.12", "10.96.78.13"
CREATED = "2026-12-01T00:00:00Z"


def host(name: str) -> str:
    return f"{name}.shop.svc.cluster.local"


ROUTE = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
    "metadata": {"name": "echo", "namespace": "shop", "creationTimestamp": CREATED},
    "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}], "rules": [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/slow"}}], "timeouts": {"request": "1s"},
         "backendRefs": [{"name": "echo", "port": 80}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/pertry"}}],
         "retry": {"attempts": 2, "backoff": "10ms"}, "timeouts": {"request": "5s", "backendRequest": "300ms"},
         "backendRefs": [{"name": "echo", "port": 80}]},
        {"backendRefs": [{"name": "echo", "port": 80}]},
    ]},
}
FAULTS = {
    "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
    "metadata": {"name": "faulty", "namespace": "shop", "creationTimestamp": CREATED},
    "spec": {"hosts": [host("faulty")], "http": [
        {"match": [{"uri": {"prefix": "/delay"}}],
         "fault": {"delay": {"fixedDelay": "500ms", "percentage": {"value": 100}}},
         "route": [{"destination": {"host": host("faulty")}}]},
        {"fault": {"abort": {"httpStatus": 503, "percentage": {"value": 50}}},
         "route": [{"destination": {"host": host("faulty")}}]},
    ]},
}


@pytest.fixture(scope="module")
def wp(ca):
    harness = Harness(ca)
    try:
        a = harness.add_echo("echo-a", harness.ip(2))
        b = harness.add_echo("echo-b", harness.ip(3), args=("--fail-percent", "100"))
        c = harness.add_echo("echo-c", harness.ip(4), args=("--fail-percent", "100", "--delay-ms", "300"))
        harness.service_map = {
            "echo-a": {f"shop/{host('echo')}": (PortMapping(80, a.port),),
                       f"shop/{host('pair')}": (PortMapping(80, a.port),),
                       f"shop/{host('faulty')}": (PortMapping(80, a.port),)},
            "echo-b": {f"shop/{host('pair')}": (PortMapping(80, b.port),)},
            "echo-c": {f"shop/{host('broken')}": (PortMapping(80, c.port),)},
        }
        services = [Service(name, "shop", host(name), (vip,), (PortMapping(80, a.port),))
                    for name, vip in (("echo", ECHO_VIP), ("pair", PAIR_VIP), ("broken", BROKEN_VIP),
                                      ("faulty", FAULTY_VIP))]
        harness.start()
        harness.start_waypoint(services, [ROUTE, FAULTS])
        harness.echo_c = c
        yield harness
    finally:
        harness.close()


def timed(port: int, path: str, headers: dict[str, str] | None = None, name: str = "echo"):
    began = time.monotonic()
    status, answer_headers, body = get(port, path, headers, host=host(name))
    return status, time.monotonic() - began, body


def test_a_first_attempt_503_becomes_a_200_by_the_default_retry(wp):
    port = wp.client_port(f"{ECHO_VIP}:80")
    status, _, body = timed(port, "/", {"x-echo-fail-first": "1", "x-echo-fail-key": "first-503"})
    assert status == 200, body


def test_a_retry_goes_to_the_other_endpoint(wp):
    port = wp.client_port(f"{PAIR_VIP}:80")
    answers = [get(port, "/?format=json", host=host("pair")) for _ in range(20)]
    assert {status for status, _, _ in answers} == {200}
    assert {json.loads(body)["hostname"] for _, _, body in answers} == {"echo-a"}


def test_the_route_timeout_answers_504_after_it(wp):
    port = wp.client_port(f"{ECHO_VIP}:80")
    status, elapsed, body = timed(port, "/slow", {"x-echo-delay-ms": "3000"})
    assert status == 504 and body == b"upstream request timeout\n"
    assert 1.0 <= elapsed < 1.4


def test_per_try_timeouts_with_three_attempts_take_three_tries(wp):
    port = wp.client_port(f"{ECHO_VIP}:80")
    status, elapsed, _ = timed(port, "/pertry", {"x-echo-delay-ms": "2000"})
    assert status == 504
    # 3 × 300 ms, and two backoffs of at least 10 ms (GEP-1731's minimum) and at most 40 ms.
    assert 0.92 <= elapsed < 1.3


def test_the_retry_budget_caps_retries_to_an_endpoint_that_fails_everything(wp):
    port = wp.client_port(f"{BROKEN_VIP}:80")
    before = json.loads(get(wp.client_port(f"{BROKEN_VIP}:80"), "/stats", host=host("broken"))[2])["served"]
    statuses: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        status, _, _ = get(port, "/", host=host("broken"))
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    attempts = json.loads(get(port, "/stats", host=host("broken"))[2])["served"] - before
    assert statuses == [503] * 30
    # Unbudgeted, 30 requests × 3 attempts = 90. With 20% of ~30 active (6) and then the floor of
    # 3 retries in flight, about 30 + 6 + 3.
    assert 30 < attempts <= 45, attempts


def test_a_fault_delay_adds_its_time(wp):
    port = wp.client_port(f"{FAULTY_VIP}:80")
    status, elapsed, _ = timed(port, "/delay", name="faulty")
    assert status == 200 and 0.5 <= elapsed < 0.8


def test_a_fault_abort_of_half_aborts_about_half(wp):
    port = wp.client_port(f"{FAULTY_VIP}:80")
    statuses = [get(port, "/", host=host("faulty"))[0] for _ in range(200)]
    aborted = statuses.count(503)
    assert statuses.count(200) + aborted == 200
    assert 70 <= aborted <= 130, aborted


def test_http2_retries_too(wp):
    port = wp.client_port(f"{ECHO_VIP}:80")
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        reply = client.get(f"http://127.0.0.1:{port}/h2",
                           headers={"host": host("echo"), "x-echo-fail-first": "1", "x-echo-fail-key": "h2-once"})
    assert reply.http_version == "HTTP/2" and reply.status_code == 200
