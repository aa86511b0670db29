"""Trace context at the waypoint: W3C traceparent and B3 parsing, propagation and the sampling
decision (waypoint/tracing.py `forward`, through the pipeline's forwarding step)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from waypoint.pipeline import ClientContext, forwarded, forwarding_headers
from waypoint.tracing import (
    B3_MULTI,
    B3_SINGLE,
    parse_b3,
    parse_b3_multi,
    parse_traceparent,
)

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
SAMPLED = f"00-{TRACE}-{PARENT}-01".encode()
UNSAMPLED = f"00-{TRACE}-{PARENT}-00".encode()


def _ctx() -> ClientContext:
    return ClientContext(None, "10.244.2.9", 40000, "10.96.0.10", 80)


def _forward(headers, percentage=0.0, export=True, seed=1):
    out, span = forwarded(list(headers), _ctx(), random.Random(seed), percentage, export,
                          "echo.shop.svc.cluster.local", 80, True)
    return out, dict(out), span


# -- W3C ---------------------------------------------------------------------------------------------

def test_a_valid_traceparent_gives_its_ids_and_flag():
    parent = parse_traceparent(SAMPLED)
    assert (parent.trace_id, parent.span_id, parent.sampled) == (int(TRACE, 16), int(PARENT, 16), True)
    assert parse_traceparent(UNSAMPLED).sampled is False


def test_a_later_version_may_append_fields_but_version_00_may_not():
    assert parse_traceparent(f"01-{TRACE}-{PARENT}-01-extra".encode()) is not None
    assert parse_traceparent(SAMPLED + b"-extra") is None


def test_malformed_traceparents_are_absent():
    for bad in (b"", b"garbage", SAMPLED.upper(), f"ff-{TRACE}-{PARENT}-01".encode(),
                f"00-{'0' * 32}-{PARENT}-01".encode(), f"00-{TRACE}-{'0' * 16}-01".encode(),
                f"00-{TRACE}-{PARENT}-0x".encode(), f"00-{TRACE}-{PARENT}".encode(), SAMPLED[:-1] + b"\xff",
                f"00_{TRACE}-{PARENT}-01".encode()):
        assert parse_traceparent(bad) is None, bad


# -- B3 -----------------------------------------------------------------------------------------------

def test_b3_single_with_ids_sampling_and_parent():
    parent = parse_b3(f"{TRACE}-{PARENT}-1-05e3ac9a4f6e3b90".encode())
    assert (parent.trace_id, parent.span_id, parent.sampled, parent.b3) == (int(TRACE, 16), int(PARENT, 16), True,
                                                                          B3_SINGLE)
    assert parse_b3(f"{TRACE}-{PARENT}".encode()).sampled is None
    assert parse_b3(f"{TRACE}-{PARENT}-d".encode()).sampled is True  # debug implies sampled
    narrow = parse_b3(f"{TRACE[16:]}-{PARENT}-0".encode())
    assert narrow.trace_id == int(TRACE[16:], 16) and not narrow.wide and narrow.sampled is False


def test_b3_single_sampling_state_alone():
    assert parse_b3(b"0").sampled is False and parse_b3(b"0").trace_id == 0
    assert parse_b3(b"1").sampled is True


def test_malformed_b3_single_headers_are_absent():
    for bad in (b"", b"x", b"2", b"-", f"{TRACE}".encode(), f"{TRACE}-{PARENT}-2".encode(),
                f"{TRACE}-{PARENT}-1-zz".encode(), f"{TRACE}-{PARENT}-1-{PARENT}-x".encode(),
                f"{TRACE[:20]}-{PARENT}".encode(), f"{TRACE}-{PARENT[:8]}".encode(), f"{'0' * 32}-{PARENT}".encode(),
                f"{TRACE.upper()}-{PARENT}".encode()):
        assert parse_b3(bad) is None, bad


def test_b3_multi_headers():
    parent = parse_b3_multi({b"x-b3-traceid": TRACE.encode(), b"x-b3-spanid": PARENT.encode(),
                             b"x-b3-sampled": b"1"})
    assert (parent.trace_id, parent.span_id, parent.sampled, parent.b3) == (int(TRACE, 16), int(PARENT, 16), True,
                                                                          B3_MULTI)
    assert parse_b3_multi({b"x-b3-traceid": TRACE.encode(), b"x-b3-spanid": PARENT.encode(),
                           b"x-b3-flags": b"1"}).sampled is True
    assert parse_b3_multi({b"x-b3-sampled": b"0"}).sampled is False
    assert parse_b3_multi({}) is None


def test_malformed_b3_multi_headers_are_absent():
    for bad in ({b"x-b3-traceid": TRACE.encode()}, {b"x-b3-spanid": PARENT.encode()},
                {b"x-b3-traceid": b"nothex", b"x-b3-spanid": PARENT.encode()},
                {b"x-b3-traceid": TRACE.encode(), b"x-b3-spanid": PARENT.encode(), b"x-b3-sampled": b"yes"},
                {b"x-b3-traceid": TRACE.encode(), b"x-b3-spanid": PARENT.encode(), b"x-b3-parentspanid": b"1"}):
        assert parse_b3_multi(bad) is None, bad


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80), st.binary(max_size=80), st.binary(max_size=40), st.binary(max_size=40))
def test_no_header_value_crashes_the_forwarding_step(traceparent, b3, trace_id, sampled):
    headers = [(b"traceparent", traceparent), (b"b3", b3), (b"x-b3-traceid", trace_id),
               (b"x-b3-spanid", trace_id[:16]), (b"x-b3-sampled", sampled), (b"tracestate", b3)]
    out, values, span = _forward(headers, percentage=50.0)
    assert parse_traceparent(values[b"traceparent"]) is not None


# -- propagation and sampling --------------------------------------------------------------------------

def test_the_waypoints_span_is_the_forwarded_parent_and_the_exported_span():
    _, values, span = _forward([(b"traceparent", SAMPLED), (b"tracestate", b"vendor=1")])
    sent = parse_traceparent(values[b"traceparent"])
    assert sent.trace_id == int(TRACE, 16) and sent.sampled is True
    assert (span.trace_id, span.span_id, span.parent_id) == (sent.trace_id, sent.span_id, int(PARENT, 16))
    assert values[b"tracestate"] == b"vendor=1" and span.tracestate == "vendor=1"
    assert span.name == "echo.shop.svc.cluster.local:80/*"
    assert span.cluster == "inbound-vip|80|http|echo.shop.svc.cluster.local"
    assert span.client_ip == "10.244.2.9" and span.request_id == values[b"x-request-id"].decode()


def test_an_unsampled_parent_is_obeyed_even_at_100_percent():
    _, values, span = _forward([(b"traceparent", UNSAMPLED)], percentage=100.0)
    assert span is None and values[b"traceparent"].endswith(b"-00")
    assert values[b"traceparent"][:36] == UNSAMPLED[:36]


def test_a_sampled_parent_is_obeyed_at_0_percent():
    _, values, span = _forward([(b"traceparent", SAMPLED)], percentage=0.0)
    assert span is not None and values[b"traceparent"].endswith(b"-01")


def test_without_a_parent_the_percentage_decides():
    sampled = sum(_forward([], percentage=25.0, seed=seed)[2] is not None for seed in range(2000))
    assert 400 <= sampled <= 600
    assert _forward([], percentage=100.0)[2].parent_id == 0  # a root span
    assert _forward([], percentage=0.0)[2] is None


def test_without_export_nothing_is_recorded_but_the_flag_passes():
    _, values, span = _forward([(b"traceparent", SAMPLED)], export=False)
    assert span is None and values[b"traceparent"].endswith(b"-01")


def test_b3_single_is_propagated_with_the_waypoints_span():
    out, values, span = _forward([(b"b3", f"{TRACE}-{PARENT}-1".encode())])
    assert values[b"b3"] == f"{TRACE}-{span.span_id:016x}-1-{PARENT}".encode()
    assert values[b"traceparent"] == f"00-{TRACE}-{span.span_id:016x}-01".encode()
    assert span.parent_id == int(PARENT, 16)


def test_b3_multi_is_propagated_with_the_waypoints_span_and_the_clients_as_parent():
    out, values, span = _forward([(b"x-b3-traceid", TRACE[16:].encode()), (b"x-b3-spanid", PARENT.encode()),
                                  (b"x-b3-sampled", b"1")])
    assert values[b"x-b3-traceid"] == TRACE[16:].encode()  # a 64-bit trace id stays 64-bit
    assert values[b"x-b3-spanid"] == b"%016x" % span.span_id
    assert values[b"x-b3-parentspanid"] == PARENT.encode() and values[b"x-b3-sampled"] == b"1"
    assert sum(1 for name, _ in out if name.startswith(b"x-b3-")) == 4


def test_b3_sampling_state_alone_starts_a_trace_with_that_decision():
    out, values, span = _forward([(b"b3", b"0")], percentage=100.0)
    assert span is None and values[b"traceparent"].endswith(b"-00")
    assert values[b"b3"].endswith(b"-0")


def test_w3c_wins_over_b3_when_both_came():
    _, values, span = _forward([(b"b3", f"{'1' * 32}-{PARENT}-0".encode()), (b"traceparent", SAMPLED)])
    assert span.trace_id == int(TRACE, 16) and span.parent_id == int(PARENT, 16)


def test_a_malformed_traceparent_falls_back_to_b3_then_a_fresh_trace():
    _, values, span = _forward([(b"traceparent", b"garbage"), (b"b3", f"{TRACE}-{PARENT}-1".encode())])
    assert span.trace_id == int(TRACE, 16)
    _, values, span = _forward([(b"traceparent", b"garbage")], percentage=100.0)
    assert span.trace_id != int(TRACE, 16) and span.parent_id == 0


def test_the_user_agent_is_read_for_a_sampled_span():
    _, _, span = _forward([(b"user-agent", b"curl/8"), (b"traceparent", SAMPLED)])
    assert span.user_agent == "curl/8"


def test_forwarding_headers_keeps_one_traceparent_and_no_duplicates():
    headers = forwarding_headers([(b"traceparent", SAMPLED), (b"traceparent", UNSAMPLED)], _ctx(), random.Random(2))
    assert [name for name, _ in headers].count(b"traceparent") == 1


def test_an_answered_request_is_sampled_like_a_forwarded_one():
    from waypoint.tracing import answer

    span = answer([(b"traceparent", SAMPLED), (b"x-request-id", b"r-1")], 0.0, random.Random(1), "10.244.1.9", 8080,
                  False, "10.244.2.9")
    assert span.parent_id == int(PARENT, 16) and span.cluster == "-" and span.request_id == "r-1"
    assert span.name == "10.244.1.9:8080/*"
    assert answer([(b"traceparent", UNSAMPLED)], 100.0, random.Random(1), "h", 80, True, "10.244.2.9") is None
    assert answer([], 100.0, random.Random(1), "h", 80, True, "10.244.2.9").parent_id == 0
