"""Probes as kubelet reads and counts them (runtime/probes.py), and restart policies
(runtime/processes.py): pure parts."""

from __future__ import annotations

import pytest

from runtime.probes import Probe, ProbeError, Tracker, parse_probe, probe_request
from runtime.processes import exit_of, restarts_after

CONTAINER = {"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}


def test_an_http_probe_takes_a_named_port_and_kubernetes_defaults() -> None:
    probe = parse_probe({"httpGet": {"path": "healthz", "port": "http"}}, CONTAINER)
    assert probe == Probe("http", port=8080, path="/healthz", initial_delay=0, period=10, timeout=1,
                          success_threshold=1, failure_threshold=3)


def test_timings_and_headers_are_read() -> None:
    probe = parse_probe({"httpGet": {"port": 80, "scheme": "https", "httpHeaders": [{"name": "X", "value": "1"}]},
                         "initialDelaySeconds": 2, "periodSeconds": 3, "timeoutSeconds": 4,
                         "successThreshold": 2, "failureThreshold": 5}, CONTAINER)
    assert (probe.scheme, probe.headers, probe.initial_delay, probe.period, probe.timeout) == (
        "HTTPS", (("X", "1"),), 2, 3, 4)
    assert (probe.success_threshold, probe.failure_threshold) == (2, 5)


def test_tcp_and_exec_probes() -> None:
    assert parse_probe({"tcpSocket": {"port": 15021}}, CONTAINER).port == 15021
    assert parse_probe({"exec": {"command": ["true"]}}, CONTAINER).command == ("true",)


@pytest.mark.parametrize("spec, words", [
    ({"httpGet": {"port": "metrics"}}, "names no port"),
    ({"tcpSocket": {"port": 70000}}, "outside"),
    ({"exec": {"command": []}}, "non-empty"),
    ({"grpc": {"port": 1}}, "grpc"),
    ({}, "needs one of"),
    ({"tcpSocket": {"port": 1}, "periodSeconds": 0}, "periodSeconds"),
])
def test_a_probe_that_cannot_run_is_refused_with_its_field(spec: dict, words: str) -> None:
    with pytest.raises(ProbeError, match=words):
        parse_probe(spec, CONTAINER)


def test_thresholds_decide_the_verdict() -> None:
    probe = Probe("tcp", port=1, success_threshold=2, failure_threshold=3)
    readiness = Tracker.readiness(probe)
    assert [readiness.record(ok) for ok in (True, True, False, False, False)] == [False, True, True, True, False]
    liveness = Tracker.liveness(probe)
    assert [liveness.record(ok) for ok in (False, False, True, False, False, False)] == [
        True, True, True, True, True, False]


def test_restart_policies() -> None:
    assert restarts_after("Always", 0) and restarts_after("Always", 1)
    assert restarts_after("OnFailure", 1) and not restarts_after("OnFailure", 0)
    assert not restarts_after("Never", 1)


def test_a_signalled_process_exits_with_128_plus_the_signal() -> None:
    ended = exit_of(-9, 1.0, 2.0)
    assert (ended.code, ended.signal, ended.started, ended.finished) == (137, 9, 1.0, 2.0)
    assert exit_of(3, None, 5.0).started == 5.0


def test_a_probe_request_names_the_pod_and_kube_probe_by_default() -> None:
    request = probe_request("/healthz", "10.244.1.10")
    assert request.startswith(b"GET /healthz HTTP/1.0\r\nHost: 10.244.1.10\r\n")
    assert b"\r\nUser-Agent: kube-probe/" in request and request.endswith(b"\r\n\r\n")


def test_a_host_header_of_the_probe_replaces_the_default_instead_of_doubling_it() -> None:
    request = probe_request("/", "10.244.1.10", (("Host", "shop.example"), ("User-Agent", "me")))
    assert request.lower().count(b"\r\nhost:") == 1 and b"\r\nHost: shop.example\r\n" in request
    assert request.lower().count(b"\r\nuser-agent:") == 1
