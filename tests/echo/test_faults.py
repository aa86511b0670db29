"""The echo app's failure and delay switches: per pod (flags, environment) and per request
(headers), over HTTP/1.1, HTTP/2 and gRPC."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from functools import partial

import pytest
import trio

from tests.echo.test_echo import NAME, grpc_call, h1_get, h2_get_headers, h2_request
from wisp import sockets
from echo import EchoConfig, serve
from echo import grpc as echo_grpc
from echo import cli
from echo.faults import Faults, Plan, SwitchError, Switches


async def start(nursery, switches: Switches = Switches()) -> int:
    sock = sockets.listener(("127.0.0.1", 0), reuse_port=False)
    await nursery.start(partial(serve, EchoConfig(name=NAME, faults=Faults(switches)), http=sock))
    return sock.getsockname()[1]


# -- decisions -------------------------------------------------------------------------------

def test_no_switch_and_no_header_answers_normally():
    assert Faults().plan([("host", "a")]) == Plan()


def test_pod_fail_first_fails_exactly_the_first_n_requests():
    faults = Faults(Switches(fail_first=2, fail_status=502))
    assert [faults.plan([]).status for _ in range(4)] == [502, 502, None, None]


def test_fail_first_by_header_counts_each_key_apart():
    faults = Faults()
    asked = [("x-echo-fail-first", "1"), ("x-echo-fail-key", "a")]
    other = [("x-echo-fail-first", "1"), ("x-echo-fail-key", "b")]
    assert [faults.plan(asked).status, faults.plan(other).status, faults.plan(asked).status] == [
        503, 503, None]


def test_fail_keys_are_bounded():
    faults = Faults()
    for n in range(20_000):
        faults.plan([("x-echo-fail-first", "1"), ("x-echo-fail-key", str(n))])
    assert len(faults.keys) == 10_000


def test_fail_percent_is_drawn_independently_per_request():
    faults = Faults(Switches(fail_percent=30), rng=random.Random(7))
    failed = sum(faults.plan([]).status == 503 for _ in range(10_000))
    assert 2_850 <= failed <= 3_150


def test_request_header_overrides_the_pod_switch():
    faults = Faults(Switches(fail_percent=100))
    assert faults.plan([("x-echo-fail-percent", "0")]) == Plan()
    assert faults.plan([("x-echo-delay-ms", "250")]).delay_s == 0.25


def test_bad_header_value_is_an_error_naming_the_header():
    plan = Faults().plan([("x-echo-delay-ms", "soon")])
    assert "x-echo-delay-ms" in plan.error
    assert "from 200 to 599" in Faults().plan([("x-echo-status", "99")]).error


def test_environment_sets_the_pod_switches_and_rejects_garbage():
    env = {"WISP_ECHO_FAIL_FIRST": "3", "WISP_ECHO_FAIL_PERCENT": "12.5",
           "WISP_ECHO_FAIL_STATUS": "500", "WISP_ECHO_DELAY_MS": "40"}
    assert Switches.from_environment(env) == Switches(3, 12.5, 500, 40)
    with pytest.raises(SwitchError, match="WISP_ECHO_FAIL_FIRST"):
        Switches.from_environment({"WISP_ECHO_FAIL_FIRST": "x"})
    with pytest.raises(SwitchError, match="fail-percent"):
        Switches(fail_percent=101)


def test_cli_rejects_an_out_of_range_switch():
    result = subprocess.run([sys.executable, "-m", "echo", "--http", "0", "--fail-status",
                             "700"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "fail-status must be from 200 to 599" in result.stderr


def test_cli_flags_override_the_environment():
    args = type("Args", (), {"fail_first": 1, "fail_percent": None, "fail_status": None,
                             "delay_ms": None})()
    env = {"WISP_ECHO_FAIL_FIRST": "5", "WISP_ECHO_DELAY_MS": "7"}
    assert cli._switches(args, env) == Switches(fail_first=1, delay_ms=7)


# -- over the wire ----------------------------------------------------------------------------

async def test_http1_pod_fail_first_then_normal_answers(nursery):
    port = await start(nursery, Switches(fail_first=1))
    first, second = await h1_get(port, "/"), await h1_get(port, "/")
    assert (first.status, second.status) == (503, 200)
    assert first.headers["x-echo-fault"] == "fail-first=1/1"
    assert f"hostname={NAME}" in first.text
    assert "x-echo-fault" not in second.headers


async def test_http1_status_header_and_bad_header(nursery):
    port = await start(nursery)
    assert (await h1_get(port, "/", [("x-echo-status", "429")])).status == 429
    bad = await h1_get(port, "/", [("x-echo-fail-percent", "150")])
    assert bad.status == 400 and "x-echo-fail-percent" in bad.text


async def test_http1_delay_header_delays_the_answer(nursery):
    port = await start(nursery)
    began = trio.current_time()
    reply = await h1_get(port, "/", [("x-echo-delay-ms", "300")])
    assert reply.status == 200
    assert 0.3 <= trio.current_time() - began < 1.0


async def test_http2_delayed_stream_does_not_hold_up_the_others(nursery):
    port = await start(nursery)
    results: dict[str, float] = {}

    async def one(name: str, delay: str) -> None:
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            began = trio.current_time()
            reply = await h2_request(stream, h2_get_headers("/", ("x-echo-delay-ms", delay)))
            assert reply.status == 200
            results[name] = trio.current_time() - began

    async with trio.open_nursery() as inner:
        inner.start_soon(one, "slow", "500")
        inner.start_soon(one, "fast", "0")
    assert results["fast"] < 0.3 <= 0.5 <= results["slow"] < 1.5


async def test_http2_fail_percent_header_fails_with_the_asked_status(nursery):
    port = await start(nursery)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        reply = await h2_request(stream, h2_get_headers(
            "/", ("x-echo-fail-percent", "100"), ("x-echo-fail-status", "502")))
    assert reply.status == 502 and reply.headers["x-echo-fault"] == "fail-percent=100"


async def test_grpc_failure_is_trailers_only_with_the_mapped_status(nursery):
    port = await start(nursery, Switches(fail_first=1))
    failed = await grpc_call(port, echo_grpc.METHOD, "hi")
    ok = await grpc_call(port, echo_grpc.METHOD, "hi")
    assert failed.status == 200 and failed.headers["grpc-status"] == "14"
    assert failed.body == b"" and failed.trailers is None
    assert ok.trailers == {"grpc-status": "0"}


async def test_probes_are_never_failed_and_stats_count_the_other_requests(nursery):
    port = await start(nursery, Switches(fail_first=2))
    assert (await h1_get(port, "/healthz")).status == 200
    statuses = [(await h1_get(port, "/")).status for _ in range(3)]
    counts = (await h1_get(port, "/stats")).text
    assert statuses == [503, 503, 200]
    assert json.loads(counts) == {"served": 3, "failed": 2, "hostname": NAME}


async def test_http2_stats_count_requests_too(nursery):
    port = await start(nursery)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await h2_request(stream, h2_get_headers("/", ("x-echo-status", "500")))
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        reply = await h2_request(stream, h2_get_headers("/stats"))
    assert json.loads(reply.body) == {"served": 1, "failed": 1, "hostname": NAME}
