"""Retries, timeouts, the retry budget and fault injection in the HTTP/1.1 shell, with bytes alone.

The rig is test_http1_proxy's (FakeEnd streams, the real Pipeline and Http1Pool) with a route
config of the test's choosing and the loop's timers replaced by ones the test fires by hand, so
a backoff or a timeout passes when the test says so.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from tests.support.balancer import FunctionBalancer
from tests.waypoint.test_http1_proxy import ECHO, OK, POD, FakeEnd
from waypoint.authz import WaypointRef
from waypoint.channel import Channel
from waypoint.config import compile_config
from waypoint.http1 import downstream as h1
from waypoint.http1.downstream import Http1Downstream, Http1Inputs
from waypoint.http1.upstream import Http1Pool
from waypoint.pipeline import ClientContext, Pipeline
from waypoint.resilience import FaultPolicy
from waypoint.telemetry import Telemetry
from waypoint.upstream import choose_endpoint
from wisp.engine.loop import Loop
from wisp.identity import SpiffeId
from wisp.model import ModelSnapshot, config_object

UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy"
FAILED = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\nfail"
GET = b"GET /a HTTP/1.1\r\nhost: echo\r\n\r\n"


def route(**rule) -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "echo", "namespace": "shop", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo"}],
                     "rules": [{"backendRefs": [{"name": "echo", "port": 80}], **rule}]}}


class Timer:
    def __init__(self, delay: float, callback) -> None:
        self.delay = delay
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _FaultRoutes:
    """The compiled route table with a fault policy on every Forward (VirtualService's job)."""

    def __init__(self, routes, fault: FaultPolicy) -> None:
        self.routes = routes
        self.fault = fault

    def route(self, *args):
        decision = self.routes.route(*args)
        return dataclasses.replace(decision, fault=self.fault)


class Rig:
    def __init__(self, *objects: dict, fault: FaultPolicy | None = None, refuse: int = 0) -> None:
        snapshot = ModelSnapshot.of([POD, ECHO, *(config_object(o) for o in objects)])
        config = compile_config(snapshot, WaypointRef("shop", "waypoint"), "v1")
        if fault is not None:
            config = dataclasses.replace(config, routes=_FaultRoutes(config.routes, fault))
        rng = random.Random(3)
        self.upstreams: list[FakeEnd] = []
        self.refuse = refuse  # how many upstream connects fail before they succeed

        def open_upstream(endpoint, on_stream) -> None:
            if self.refuse:
                self.refuse -= 1
                on_stream(None, "connection refused")
                return
            end = FakeEnd()
            self.upstreams.append(end)
            on_stream(end, None)

        self.pipeline = Pipeline(lambda: config, FunctionBalancer(lambda c, s, p: choose_endpoint(c, s, p, rng)), open_upstream,
                                 rng)
        self.loop = Loop()
        self.timers: list[Timer] = []
        self.loop.call_later = self._call_later
        self.pool = Http1Pool(self.loop, self.pipeline)
        self.telemetry = Telemetry(access_log=False)
        self.client = FakeEnd()
        ctx = ClientContext(SpiffeId("cluster.local", "shop", "client"), "10.244.2.9", 40000, "10.96.0.10", 80)
        self.down = Http1Downstream(Http1Inputs(self.loop, self.pipeline, self.pool, self.telemetry),
                                    Channel(self.client), ctx)

    def _call_later(self, delay, callback) -> Timer:
        timer = Timer(delay, callback)
        self.timers.append(timer)
        return timer

    def fire(self, at_most: float = 0.075) -> Timer:
        """Fire the one pending timer of at most `at_most` seconds (a backoff, by default)."""
        [timer] = [t for t in self.timers if not t.cancelled and t.delay <= at_most]
        timer.cancelled = True
        timer.callback()
        return timer

    def live(self) -> list[Timer]:
        """Timers still pending, but the pool's idle sweep."""
        return [t for t in self.timers if not t.cancelled and t.delay != self.pool.idle_timeout / 4]

    def pending(self, delay: float) -> list[Timer]:
        return [t for t in self.timers if not t.cancelled and t.delay == delay]

    @property
    def budget(self):
        return self.pipeline.budgets.get(("shop", "echo", 80))

    def requests_upstream(self) -> list[bytes]:
        return [bytes(end.written) for end in self.upstreams]

    def close(self) -> None:
        self.loop.close()


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


# -- Istio's default policy -----------------------------------------------------------------------


def test_a_503_is_retried_after_the_backoff_and_the_client_sees_only_the_200(rig):
    rig.client.deliver(GET)
    rig.upstreams[0].deliver(UNAVAILABLE)
    assert rig.client.take() == b""
    backoff = rig.fire()
    assert 0 <= backoff.delay <= 0.025  # Envoy: the first retry waits up to the 25 ms base
    rig.upstreams[-1].deliver(OK)
    answer = rig.client.take()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"ok")
    assert all(sent.startswith(b"GET /a HTTP/1.1\r\n") for sent in rig.requests_upstream())
    assert rig.telemetry.value("istio_requests_total", response_code="200") == 1
    assert (rig.budget.active, rig.budget.retries, rig.budget.granted) == (0, 0, 1)


def test_the_retried_responses_connection_is_read_to_its_end_and_reused(rig):
    rig.client.deliver(GET)
    rig.upstreams[0].deliver(UNAVAILABLE)
    rig.fire()
    assert len(rig.upstreams) == 1 and rig.pool.reused == 1
    assert rig.upstreams[0].take().count(b"GET /a HTTP/1.1") == 2


def test_retries_stop_after_two_and_the_last_response_is_the_answer(rig):
    rig.client.deliver(GET)
    for attempt in range(3):
        rig.upstreams[-1].deliver(UNAVAILABLE)
        if attempt < 2:
            rig.fire()
    answer = rig.client.take()
    assert answer.startswith(b"HTTP/1.1 503") and answer.endswith(b"busy")
    assert rig.upstreams[0].written.count(b"GET /a") == 3
    assert not rig.live()
    assert (rig.budget.active, rig.budget.retries) == (0, 0)


def test_a_500_is_not_retried_by_the_default_policy(rig):
    rig.client.deliver(GET)
    rig.upstreams[0].deliver(FAILED)
    assert rig.client.take().startswith(b"HTTP/1.1 500")
    assert not rig.live()


def test_a_connect_failure_is_retried():
    rig = Rig(refuse=1)
    rig.client.deliver(GET)
    assert rig.upstreams == []
    rig.fire()
    rig.upstreams[0].deliver(OK)
    assert rig.client.take().startswith(b"HTTP/1.1 200")


def test_connect_failures_past_the_retries_answer_503_upstream_connect_error():
    rig = Rig(refuse=3)
    rig.client.deliver(GET)
    rig.fire()
    rig.fire()
    answer = rig.client.take()
    assert answer.startswith(b"HTTP/1.1 503") and b"upstream connect error" in answer
    assert rig.telemetry.value("istio_requests_total", response_code="503", response_flags="UF") == 1


def test_a_reset_before_the_response_is_not_retried_by_the_default_policy(rig):
    rig.client.deliver(GET)
    rig.upstreams[0].deliver(b"HTTP/1.1 2")
    rig.upstreams[0].deliver_eof()
    assert rig.client.take().startswith(b"HTTP/1.1 502")
    assert not rig.live()


# -- what can be replayed ----------------------------------------------------------------------------


def test_a_small_request_body_is_replayed_on_the_retry(rig):
    rig.client.deliver(b"POST /p HTTP/1.1\r\nhost: echo\r\ncontent-length: 5\r\n\r\nhello")
    rig.upstreams[0].deliver(UNAVAILABLE)
    rig.fire()
    sent = rig.upstreams[0].take()
    assert sent.count(b"POST /p HTTP/1.1") == 2 and sent.count(b"\r\n\r\nhello") == 2
    rig.upstreams[0].deliver(OK)
    assert rig.client.take().startswith(b"HTTP/1.1 200")


def test_a_chunked_body_that_arrives_during_the_backoff_goes_whole_to_the_retry(rig):
    rig.client.deliver(b"POST /p HTTP/1.1\r\nhost: echo\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
    rig.upstreams[0].deliver(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    rig.client.deliver(b"2\r\nde\r\n0\r\n\r\n")
    rig.fire()
    retry = rig.upstreams[-1].take()
    assert retry.startswith(b"POST /p HTTP/1.1\r\n") and retry.endswith(b"5\r\nabcde\r\n0\r\n\r\n")


def test_a_body_larger_than_the_replay_limit_is_not_retried(rig):
    body = b"x" * (h1.MAX_REPLAY + 1)
    rig.client.deliver(b"POST /p HTTP/1.1\r\nhost: echo\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
    rig.upstreams[0].deliver(UNAVAILABLE)
    assert rig.client.take().startswith(b"HTTP/1.1 503")
    assert not rig.live()


def test_a_request_without_a_body_or_retries_keeps_no_replay_copy():
    rig = Rig(route(retry={"attempts": 0}))
    rig.client.deliver(b"POST /p HTTP/1.1\r\nhost: echo\r\ncontent-length: 2\r\n\r\nhi")
    assert rig.down.exchange.replay is None
    rig.upstreams[0].deliver(UNAVAILABLE)
    assert rig.client.take().startswith(b"HTTP/1.1 503")


# -- HTTPRoute retry and timeouts ----------------------------------------------------------------------


def test_route_retry_codes_replace_the_default_ones():
    rig = Rig(route(retry={"attempts": 1, "codes": [500]}))
    rig.client.deliver(GET)
    rig.upstreams[0].deliver(FAILED)
    rig.fire()
    rig.upstreams[0].deliver(UNAVAILABLE)
    assert rig.client.take().startswith(b"HTTP/1.1 503")


def test_route_backoff_is_a_minimum():
    rig = Rig(route(retry={"attempts": 1, "codes": [503], "backoff": "200ms"}))
    rig.client.deliver(GET)
    rig.upstreams[0].deliver(UNAVAILABLE)
    assert 0.2 <= rig.fire(at_most=0.4).delay <= 0.4


def test_per_try_timeouts_are_retried_and_the_last_answers_504():
    rig = Rig(route(retry={"attempts": 2}, timeouts={"request": "10s", "backendRequest": "1s"}))
    rig.client.deliver(GET)
    for attempt in range(3):
        [per_try] = rig.pending(1.0)
        per_try.cancelled = True
        per_try.callback()
        if attempt < 2:
            rig.fire()
    answer = rig.client.take()
    assert answer.startswith(b"HTTP/1.1 504") and b"upstream request timeout" in answer
    assert len(rig.upstreams) == 3 and all(end.aborted for end in rig.upstreams)
    assert rig.pending(10.0) == []  # the request timeout was cancelled with the answer
    assert rig.telemetry.value("istio_requests_total", response_code="504", response_flags="UT") == 1


def test_a_backend_request_timeout_without_retry_stanza_is_not_retried():
    rig = Rig(route(timeouts={"backendRequest": "1s"}))
    rig.client.deliver(GET)
    [per_try] = rig.pending(1.0)
    per_try.callback()
    assert rig.client.take().startswith(b"HTTP/1.1 504")


def test_the_request_timeout_ends_a_retry_waiting_in_its_backoff():
    rig = Rig(route(timeouts={"request": "2s"}))
    rig.client.deliver(GET)
    rig.upstreams[0].deliver(UNAVAILABLE)
    [backoff] = [t for t in rig.timers if t.delay < 1 and not t.cancelled]
    [request] = rig.pending(2.0)
    request.callback()
    assert rig.client.take().startswith(b"HTTP/1.1 504")
    assert backoff.cancelled
    assert rig.budget.active == 0


def test_a_response_that_started_is_never_retried(rig):
    rig.client.deliver(GET)
    rig.upstreams[0].deliver(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\npart")
    rig.upstreams[0].deliver_eof()
    assert rig.client.take().startswith(b"HTTP/1.1 200 OK")
    assert not rig.live()


# -- the retry budget --------------------------------------------------------------------------------


def test_a_retry_the_budget_refuses_answers_with_the_failed_response(rig):
    rig.budget.retries = 3  # three retries already in flight to the cluster: the floor is reached
    rig.client.deliver(GET)
    rig.upstreams[0].deliver(UNAVAILABLE)
    assert rig.client.take().startswith(b"HTTP/1.1 503")
    assert rig.budget.overflow == 1 and not rig.live()


def test_a_retry_holds_its_budget_place_until_its_attempt_ends(rig):
    rig.client.deliver(GET)
    rig.upstreams[0].deliver(UNAVAILABLE)
    assert rig.budget.retries == 1
    rig.fire()
    assert rig.budget.retries == 1
    rig.upstreams[0].deliver(OK)
    assert rig.budget.retries == 0


# -- fault injection -----------------------------------------------------------------------------------


def test_a_fault_delay_holds_the_request_on_the_loop_timer():
    rig = Rig(route(), fault=FaultPolicy(delay=1.0, delay_percent=100))
    rig.client.deliver(GET)
    assert rig.upstreams == []
    [delay] = rig.pending(1.0)
    delay.callback()
    rig.upstreams[0].deliver(OK)
    assert rig.client.take().startswith(b"HTTP/1.1 200")


def test_a_fault_abort_answers_its_status_without_an_upstream():
    rig = Rig(route(), fault=FaultPolicy(abort_status=418, abort_percent=100))
    rig.client.deliver(GET)
    answer = rig.client.take()
    assert answer.startswith(b"HTTP/1.1 418") and answer.endswith(b"fault filter abort")
    assert rig.upstreams == []
    assert rig.telemetry.value("istio_requests_total", response_code="418", response_flags="FI") == 1


def test_a_fault_abort_comes_after_its_delay_and_the_connection_stays_usable():
    rig = Rig(route(), fault=FaultPolicy(delay=0.5, delay_percent=100, abort_status=503, abort_percent=100))
    rig.client.deliver(b"POST /p HTTP/1.1\r\nhost: echo\r\ncontent-length: 2\r\n\r\nhi")
    assert rig.client.take() == b""
    [delay] = rig.pending(0.5)
    delay.callback()
    assert rig.client.take().startswith(b"HTTP/1.1 503")
    rig.client.deliver(GET)
    rig.pending(0.5)[0].callback()
    assert rig.client.take().startswith(b"HTTP/1.1 503")


def test_fault_aborts_on_a_kept_alive_connection_answer_request_after_request():
    rig = Rig(route(), fault=FaultPolicy(abort_status=503, abort_percent=100))
    for _ in range(3):
        rig.client.deliver(GET)
        assert rig.client.take().startswith(b"HTTP/1.1 503")


def test_a_client_that_leaves_during_a_fault_delay_cancels_it():
    rig = Rig(route(), fault=FaultPolicy(delay=1.0, delay_percent=100))
    rig.client.deliver(GET)
    [delay] = rig.pending(1.0)
    rig.down.closed("gone")
    assert delay.cancelled and rig.upstreams == []
    assert rig.budget.active == 0
