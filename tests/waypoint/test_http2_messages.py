"""HTTP/2 header blocks ↔ request heads, and the waypoint's own replies (Envoy's local-reply shape)."""

from __future__ import annotations

import pytest

from waypoint.http2.messages import (
    RequestProblem,
    http_to_grpc_status,
    is_grpc,
    local_reply,
    percent_encode,
    request_head,
    upstream_request,
)
from waypoint.pipeline import PROTOCOL_GRPC, PROTOCOL_HTTP2, RequestHead, Respond


@pytest.mark.parametrize("value,grpc", [
    (b"application/grpc", True), (b"application/grpc+proto", True), (b"application/grpc;charset=utf-8", True),
    (b"application/grpc-web", False), (b"application/json", False), (None, False),
])
def test_grpc_is_told_by_content_type_as_envoy_tells_it(value, grpc):
    assert is_grpc(value) is grpc


def test_request_head_takes_pseudo_headers_apart_and_marks_grpc():
    head = request_head([(":method", "POST"), (":scheme", "http"), (":authority", "echo:80"),
                         (":path", "/pkg.Echo/Say"), ("content-type", "application/grpc"), ("te", "trailers")])
    assert (head.method, head.target, head.authority, head.protocol) == (b"POST", b"/pkg.Echo/Say", b"echo:80",
                                                                         PROTOCOL_GRPC)
    assert head.headers == [(b"content-type", b"application/grpc"), (b"te", b"trailers")]


def test_host_stands_in_for_a_missing_authority_and_is_not_forwarded_twice():
    head = request_head([(":method", "GET"), (":scheme", "http"), (":path", "/"), ("host", "echo")])
    assert head.authority == b"echo" and head.headers == [] and head.protocol == PROTOCOL_HTTP2


def test_connect_inside_the_tunnel_is_a_problem_with_status_405():
    with pytest.raises(RequestProblem) as caught:
        request_head([(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    assert caught.value.status == 405


def test_upstream_request_drops_fields_http2_forbids_that_a_header_modifier_may_have_added():
    head = RequestHead(b"GET", b"/x", b"echo", [(b"X-Added", b"1"), (b"connection", b"close"), (b"te", b"gzip"),
                                                (b"te", b"trailers")], protocol=PROTOCOL_HTTP2)
    assert upstream_request(head) == [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"echo"),
                                      (b":path", b"/x"), (b"x-added", b"1"), (b"te", b"trailers")]


def test_denial_of_a_grpc_call_is_trailers_only_permission_denied():
    fields, body = local_reply(Respond(403, b"RBAC: access denied"), grpc=True)
    assert body == b""
    assert fields == [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"7"),
                      (b"grpc-message", b"RBAC: access denied")]


def test_a_decided_grpc_status_wins_over_the_mapped_http_status():
    fields, _ = local_reply(Respond(500, b"", grpc_status=14), grpc=True)
    assert (b"grpc-status", b"14") in fields and not any(n == b"grpc-message" for n, _ in fields)


def test_plain_reply_carries_status_headers_and_length():
    fields, body = local_reply(Respond(403, b"RBAC: access denied", [(b"content-type", b"text/plain")]), grpc=False)
    assert fields == [(b":status", b"403"), (b"content-type", b"text/plain"), (b"content-length", b"19")]
    assert body == b"RBAC: access denied"


@pytest.mark.parametrize("status,grpc", [(400, 13), (401, 16), (403, 7), (404, 12), (429, 14), (502, 14),
                                         (503, 14), (504, 14), (500, 2), (301, 2)])
def test_http_status_maps_to_grpc_as_envoy_maps_it(status, grpc):
    assert http_to_grpc_status(status) == grpc


def test_grpc_message_percent_encodes_outside_printable_ascii_and_percent():
    assert percent_encode(b"plain text: ok") == b"plain text: ok"
    assert percent_encode("100% é\n".encode()) == b"100%25 %C3%A9%0A"
