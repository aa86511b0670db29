"""The wisp-waypoint process end to end on loopback: a real HBONE client, real echo apps behind HBONE.

tests/waypoint/process_harness.py has the topology. One waypoint serves every test of this module
(its config below); each test uses its own client connections.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading

import pytest

from wisp.model import PortMapping, Service

from .process_harness import Harness, exchange, get, parse_response

HOST = "echo.shop.svc.cluster.local"
ECHO_VIP, ECHO_V2_VIP, ECHO_TCP_VIP = "10.96.77.10", "10.96.77.11", "10.96.77.12"


def _route(name: str, rules: list, port: int = 80, service: str = "echo") -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "shop", "creationTimestamp": "2026-12-01T00:00:00Z"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": service, "port": port}], "rules": rules}}


def _prefix(value: str) -> list:
    return [{"path": {"type": "PathPrefix", "value": value}}]


ROUTE = _route("echo", [
    {"matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}], "backendRefs": [{"name": "echo-v2", "port": 80}]},
    {"matches": _prefix("/old"), "filters": [{"type": "RequestRedirect", "requestRedirect": {
        "statusCode": 301, "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}]},
    {"matches": _prefix("/rewrite"), "filters": [
        {"type": "URLRewrite", "urlRewrite": {"hostname": "rewritten.example",
                                              "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/echoed"}}},
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "x-added", "value": "1"}],
                                                                    "remove": ["x-drop-me"]}},
        {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x-resp", "value": "yes"}]}}],
     "backendRefs": [{"name": "echo", "port": 80}]},
    {"matches": _prefix("/split"), "backendRefs": [{"name": "echo", "port": 80, "weight": 70},
                                                   {"name": "echo-v2", "port": 80, "weight": 30}]},
    {"backendRefs": [{"name": "echo", "port": 80}]},
])
DENY_DELETE = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
               "metadata": {"name": "no-delete", "namespace": "shop"},
               "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "echo"}], "action": "DENY",
                        "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]}}


@pytest.fixture(scope="module")
def wp(ca):
    harness = Harness(ca)
    try:
        v1 = harness.add_echo("echo-v1", harness.ip(2))
        v2 = harness.add_echo("echo-v2", harness.ip(3))
        echo_key, v2_key, tcp_key = (f"shop/{n}.shop.svc.cluster.local" for n in ("echo", "echo-v2", "echo-tcp"))
        harness.service_map = {
            "echo-v1": {echo_key: (PortMapping(80, v1.port),), tcp_key: (PortMapping(9000, v1.tcp_port),)},
            "echo-v2": {v2_key: (PortMapping(80, v2.port),)},
        }
        services = [
            Service("echo", "shop", HOST, (ECHO_VIP,), (PortMapping(80, v1.port),)),
            Service("echo-v2", "shop", "echo-v2.shop.svc.cluster.local", (ECHO_V2_VIP,), (PortMapping(80, v2.port),)),
            Service("echo-tcp", "shop", "echo-tcp.shop.svc.cluster.local", (ECHO_TCP_VIP,),
                    (PortMapping(9000, v1.tcp_port, "tcp"),)),
        ]
        harness.start()
        harness.start_waypoint(services, [ROUTE, DENY_DELETE])
        harness.echo_port = harness.client_port(f"{ECHO_VIP}:80")
        yield harness
    finally:
        harness.close()


def report(body: bytes) -> dict:
    return json.loads(body)


def test_a_request_reaches_the_echo_with_forwarding_headers_and_without_hop_by_hop(wp):
    status, headers, body = get(wp.echo_port, "/hello?format=json",
                                {"x-secret": "1", "connection": "close, x-secret", "keep-alive": "timeout=5",
                                 "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    assert status == 200
    seen = report(body)
    assert seen["hostname"] == "echo-v1" and seen["path"] == "/hello?format=json"
    assert seen["headers"]["host"] == [HOST]
    assert seen["headers"]["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["headers"]["x-forwarded-proto"] == ["http"]
    trace = seen["headers"]["traceparent"][0]
    assert trace.startswith("00-0af7651916cd43dd8448eb211c80319c-") and trace.endswith("-01")
    assert "b7ad6b7169203331" not in trace  # the waypoint's span is the new parent
    for hop in ("x-secret", "keep-alive", "connection"):
        assert hop not in seen["headers"]
    assert "spiffe://cluster.local/ns/shop/sa/waypoint" in wp.seen_identities


def test_a_header_match_picks_the_canary_backend(wp):
    _, _, body = get(wp.echo_port, "/x?format=json", {"x-canary": "yes"})
    assert report(body)["hostname"] == "echo-v2"


def test_a_weighted_split_lands_70_30(wp):
    conn = http.client.HTTPConnection("127.0.0.1", wp.echo_port, timeout=10)
    counts = {"echo-v1": 0, "echo-v2": 0}
    total = 1000
    for _ in range(total):
        conn.request("GET", "/split", headers={"host": HOST})
        response = conn.getresponse()
        response.read()
        counts[response.getheader("x-echo-hostname")] += 1
    conn.close()
    share = counts["echo-v1"] / total
    assert 0.65 <= share <= 0.75, counts  # the issue's ±5 points: 3.4 standard deviations for 1,000 draws


def test_a_redirect_answers_its_status_and_location(wp):
    status, headers, _ = get(wp.echo_port, "/old/a?x=1")
    assert status == 301
    assert headers["location"] == f"http://{HOST}/new/a?x=1"


def test_a_rewrite_and_header_modifiers_are_visible_at_the_echo_and_the_client(wp):
    status, headers, body = get(wp.echo_port, "/rewrite/a?format=json", {"x-drop-me": "1"})
    assert status == 200 and headers["x-resp"] == "yes"
    seen = report(body)
    assert seen["path"] == "/echoed/a?format=json"
    assert seen["headers"]["host"] == ["rewritten.example"]
    assert seen["headers"]["x-added"] == ["1"] and "x-drop-me" not in seen["headers"]


def test_a_denied_request_gets_403_rbac_access_denied(wp):
    status, _, body = get(wp.echo_port, "/anything", method="DELETE")
    assert (status, body) == (403, b"RBAC: access denied")
    assert get(wp.echo_port, "/anything", method="GET")[0] == 200


def test_keep_alive_reuses_one_upstream_connection(wp):
    conn = http.client.HTTPConnection("127.0.0.1", wp.echo_port, timeout=10)
    peers = set()
    for _ in range(3):
        conn.request("GET", "/ka?format=json", headers={"host": HOST})
        peers.add(report(conn.getresponse().read())["peer"])
    conn.close()
    assert len(peers) == 1  # the echo saw the same connection each time


def test_a_chunked_body_and_100_continue_reach_the_echo(wp):
    with socket.create_connection(("127.0.0.1", wp.echo_port), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: echo\r\ntransfer-encoding: chunked\r\n"
                     b"expect: 100-continue\r\nconnection: close\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    status, _, body = parse_response(raw)
    assert (status, body) == (200, b"hello world")


def test_bad_requests_are_answered_while_a_concurrent_request_succeeds(wp):
    healthy = http.client.HTTPConnection("127.0.0.1", wp.echo_port, timeout=10)
    healthy.request("GET", "/before", headers={"host": HOST})
    assert healthy.getresponse().read() and True
    answers = {}

    def bad(name: str, request: bytes) -> None:
        answers[name] = exchange(wp.echo_port, request)

    threads = [
        threading.Thread(target=bad, args=("line", b"GET /a b c HTTP/1.1\r\nhost: x\r\n\r\n")),
        threading.Thread(target=bad, args=("huge", b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 70000
                                          + b"\r\n\r\n")),
        threading.Thread(target=bad, args=("crlf", b"GET / HTTP/1.1\r\nhost: x\r\nx-a: 1\rinjected: 1\r\n\r\n")),
        threading.Thread(target=bad, args=("chunk", b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                                           b"zz\r\n")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert answers["line"].startswith(b"HTTP/1.1 400 ")
    assert answers["huge"].startswith(b"HTTP/1.1 431 ")
    assert answers["crlf"].startswith(b"HTTP/1.1 400 ")
    assert answers["chunk"].startswith(b"HTTP/1.1 400 ")
    healthy.request("GET", "/after", headers={"host": HOST})
    response = healthy.getresponse()
    assert response.status == 200 and response.read()
    healthy.close()


def test_a_client_that_stops_mid_body_gets_a_clean_close(wp):
    with socket.create_connection(("127.0.0.1", wp.echo_port), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: echo\r\ncontent-length: 100\r\n\r\nonly ten..")
        sock.shutdown(socket.SHUT_WR)
        rest = b""
        try:
            while chunk := sock.recv(65536):
                rest += chunk
        except ConnectionResetError:
            pass
    assert not rest.startswith(b"HTTP/1.1 200")
    assert get(wp.echo_port, "/still-fine")[0] == 200


def test_non_http_bytes_pass_through_as_tcp(wp):
    port = wp.client_port(f"{ECHO_TCP_VIP}:9000")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\x00\x01 raw bytes, not HTTP")
        got = b""
        while len(got) < 22:
            chunk = sock.recv(100)
            if not chunk:
                break
            got += chunk
    assert got == b"\x00\x01 raw bytes, not HTTP"


def test_requests_are_counted_with_reporter_waypoint(wp):
    get(wp.echo_port, "/counted")
    get(wp.echo_port, "/counted", method="DELETE")
    text = wp.metrics()

    def total(**labels: str) -> float:
        found = 0.0
        for line in text.splitlines():
            if line.startswith("istio_requests_total{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                found += float(line.rsplit(" ", 1)[1])
        return found

    assert total(reporter="waypoint", response_code="200", destination_service=HOST,
                 source_principal="spiffe://cluster.local/ns/shop/sa/client") >= 1
    assert total(reporter="waypoint", response_code="403") >= 1
    assert re.search(r'istio_request_duration_milliseconds_bucket\{[^}]*reporter="waypoint"', text)
    assert 'istio_tcp_connections_opened_total{' in text
    assert '"request complete"' in wp.log() and '"status": 403' in wp.log()


def test_keep_alive_reuses_one_upstream_connection_and_hbone_stream(wp):
    def counters() -> dict[str, float]:
        return {line.split()[0]: float(line.split()[1]) for line in wp.metrics().splitlines()
                if line.startswith("wisp_waypoint_")}

    before = counters()
    client = http.client.HTTPConnection("127.0.0.1", wp.echo_port, timeout=10)
    try:
        for n in range(20):
            client.request("GET", f"/reuse/{n}")
            response = client.getresponse()
            assert response.status == 200
            response.read()
    finally:
        client.close()
    after = counters()
    delta = {name: after[name] - before.get(name, 0.0) for name in after}
    # 20 requests in a row: at most one new HTTP/1.1 connection (one HBONE stream), the rest
    # reuse it, and no new HBONE connection is dialled.
    assert delta["wisp_waypoint_http1_upstream_connections_opened_total"] <= 1
    assert delta["wisp_waypoint_http1_upstream_requests_reused_total"] >= 19
    assert delta["wisp_waypoint_hbone_connections_dialled_total"] == 0
    assert after["wisp_waypoint_hbone_connections_open"] >= 1
