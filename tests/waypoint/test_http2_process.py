"""h2c and gRPC through the wisp-waypoint process: real clients (curl, h2load, grpcio), real servers
(wisp-echo's h2c, grpcio servers with unary and streaming methods) behind HBONE.

tests/waypoint/process_harness.py has the topology: test client → TCP → a CONNECT naming the
Service VIP:port ⇒ HBONE ⇒ wisp-waypoint ⇒ HBONE ⇒ the workload. One waypoint serves the module.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
from concurrent import futures

import pytest

from wisp.h2 import frames, testing
from wisp.model import PortMapping, Service

from .process_harness import Harness, free_port

grpc = pytest.importorskip("grpc")

HOST = "echo.shop.svc.cluster.local"
ECHO_VIP, GRPC_VIP, GRPC_PORT = "10.96.78.10", "10.96.78.20", 50051


def _identity(data: bytes) -> bytes:
    return data


class Server:
    """A grpcio server with unary, server-streaming and bidirectional methods, bytes in and out."""

    def __init__(self, name: str, ip: str) -> None:
        self.name = name.encode()
        self.port = free_port(ip)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary, _identity, _identity),
            "Count": grpc.unary_stream_rpc_method_handler(self.count, _identity, _identity),
            "Chat": grpc.stream_stream_rpc_method_handler(self.chat, _identity, _identity),
            "Forbidden": grpc.unary_unary_rpc_method_handler(self.unary, _identity, _identity),
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("wp.Test", handlers),))
        self.server.add_insecure_port(f"{ip}:{self.port}")
        self.server.start()

    def unary(self, request: bytes, context) -> bytes:
        metadata = dict(context.invocation_metadata())
        context.set_trailing_metadata((("x-served-by", self.name.decode()),))
        return self.name + b"|" + request + b"|" + metadata.get("x-route", "-").encode()

    def count(self, request: bytes, context):
        for i in range(int(request)):
            yield b"%s:%d" % (self.name, i)

    def chat(self, requests, context):
        for request in requests:
            yield self.name + b">" + request

    def stop(self) -> None:
        self.server.stop(0)


GRPC_ROUTE = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
    "metadata": {"name": "grpc", "namespace": "shop", "creationTimestamp": "2026-12-01T00:00:00Z"},
    "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "grpc", "port": GRPC_PORT}],
             "rules": [
                 # GRPCRoute precedence ranks a service match above header matches, so this rule
                 # names the service too and wins over the next one by its header.
                 {"matches": [{"method": {"service": "wp.Test"}, "headers": [{"name": "x-lane", "value": "v2"}]}],
                  "backendRefs": [{"name": "grpc-v2", "port": GRPC_PORT}]},
                 {"matches": [{"method": {"service": "wp.Test"}}],
                  "filters": [{"type": "RequestHeaderModifier",
                               "requestHeaderModifier": {"set": [{"name": "x-route", "value": "grpc"}]}}],
                  "backendRefs": [{"name": "grpc", "port": GRPC_PORT}]}]},
}
DENY_FORBIDDEN = {
    "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
    "metadata": {"name": "no-forbidden", "namespace": "shop"},
    "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "grpc"}], "action": "DENY",
             "rules": [{"to": [{"operation": {"paths": ["/wp.Test/Forbidden"]}}]}]},
}


@pytest.fixture(scope="module")
def wp(ca):
    harness = Harness(ca)
    servers: list[Server] = []
    try:
        echo = harness.add_echo("echo-h2", "127.77.0.2")
        harness.add_echo("grpc-v1", "127.77.0.4", sa="grpc")
        harness.add_echo("grpc-v2", "127.77.0.5", sa="grpc")
        servers += [Server("grpc-v1", "127.77.0.4"), Server("grpc-v2", "127.77.0.5")]
        keys = {n: f"shop/{n}.shop.svc.cluster.local" for n in ("echo", "grpc", "grpc-v2")}
        harness.service_map = {
            "echo-h2": {keys["echo"]: (PortMapping(80, echo.port),)},
            "grpc-v1": {keys["grpc"]: (PortMapping(GRPC_PORT, servers[0].port),)},
            "grpc-v2": {keys["grpc-v2"]: (PortMapping(GRPC_PORT, servers[1].port),)},
        }
        services = [
            Service("echo", "shop", HOST, (ECHO_VIP,), (PortMapping(80, echo.port),)),
            Service("grpc", "shop", "grpc.shop.svc.cluster.local", ("10.96.78.20",),
                    (PortMapping(GRPC_PORT, servers[0].port, "grpc"),)),
            Service("grpc-v2", "shop", "grpc-v2.shop.svc.cluster.local", ("10.96.78.21",),
                    (PortMapping(GRPC_PORT, servers[1].port, "grpc"),)),
        ]
        harness.start()
        harness.start_waypoint(services, [GRPC_ROUTE, DENY_FORBIDDEN])
        harness.echo_port = harness.client_port(f"{ECHO_VIP}:80")
        harness.grpc_port = harness.client_port(f"{GRPC_VIP}:{GRPC_PORT}")
        yield harness
    finally:
        for server in servers:
            server.stop()
        harness.close()


@pytest.fixture
def channel(wp):
    with grpc.insecure_channel(f"127.0.0.1:{wp.grpc_port}") as ch:
        yield ch


def unary(channel, method: str = "Unary"):
    return channel.unary_unary(f"/wp.Test/{method}", request_serializer=_identity, response_deserializer=_identity)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_with_http2_prior_knowledge_reaches_the_echo_over_h2c(wp):
    done = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-w", "\n%{http_version} %{http_code}",
                           "-H", f"host: {HOST}", f"http://127.0.0.1:{wp.echo_port}/h2?format=json"],
                          capture_output=True, text=True, timeout=30)
    body, _, tail = done.stdout.rpartition("\n")
    assert tail == "2 200", done.stderr
    seen = json.loads(body)
    assert seen["hostname"] == "echo-h2" and seen["path"] == "/h2?format=json"
    assert seen["headers"]["x-forwarded-for"] == ["127.0.0.1"]


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load is not installed")
def test_h2load_multiplexes_many_streams_through_the_waypoint_without_a_failure(wp):
    done = subprocess.run(["h2load", "-n", "400", "-c", "4", "-m", "20", f"http://127.0.0.1:{wp.echo_port}/"],
                          capture_output=True, text=True, timeout=60)
    assert "requests: 400 total, 400 started, 400 done, 400 succeeded, 0 failed" in done.stdout, done.stdout


def test_unary_grpc_call_is_routed_by_service_with_the_routes_header_modifier(wp, channel):
    reply, call = unary(channel).with_call(b"hello", timeout=10)
    assert reply == b"grpc-v1|hello|grpc"
    assert dict(call.trailing_metadata())["x-served-by"] == "grpc-v1"
    assert call.code() == grpc.StatusCode.OK


def test_a_header_match_sends_the_call_to_the_other_backend(wp, channel):
    reply = unary(channel)(b"hi", metadata=(("x-lane", "v2"),), timeout=10)
    assert reply.startswith(b"grpc-v2|hi|")


def test_server_streaming_call_delivers_every_message(wp, channel):
    count = channel.unary_stream("/wp.Test/Count", request_serializer=_identity, response_deserializer=_identity)
    assert list(count(b"50", timeout=10)) == [b"grpc-v1:%d" % i for i in range(50)]


def test_bidirectional_streaming_call_answers_each_message_in_turn(wp, channel):
    chat = channel.stream_stream("/wp.Test/Chat", request_serializer=_identity, response_deserializer=_identity)
    messages = [b"m%d" % i + b"x" * 50_000 for i in range(40)]  # 2 MB each way: the windows refill
    assert list(chat(iter(messages), timeout=20)) == [b"grpc-v1>" + m for m in messages]


def test_denied_grpc_call_fails_with_permission_denied_rbac_access_denied(wp, channel):
    with pytest.raises(grpc.RpcError) as caught:
        unary(channel, "Forbidden")(b"x", timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == "RBAC: access denied"
    assert 'request_protocol="grpc"' in wp.metrics()


def test_unknown_grpc_service_is_unimplemented(wp, channel):
    call = channel.unary_unary("/other.Svc/Do", request_serializer=_identity, response_deserializer=_identity)
    with pytest.raises(grpc.RpcError) as caught:
        call(b"x", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_client_breaking_flow_control_gets_goaway_while_a_concurrent_call_completes(wp, channel):
    chat = channel.stream_stream("/wp.Test/Chat", request_serializer=_identity, response_deserializer=_identity)
    started, release = threading.Event(), threading.Event()

    def slow_messages():
        yield b"first"
        started.set()
        release.wait(10)
        yield b"second"

    answers: list = []
    worker = threading.Thread(target=lambda: answers.extend(chat(slow_messages(), timeout=20)))
    worker.start()
    assert started.wait(10)
    peer = testing.RawPeer()
    with socket.create_connection(("127.0.0.1", wp.grpc_port), timeout=10) as sock:
        sock.sendall(peer.client_preface())
        request = [(":method", "POST"), (":scheme", "http"), (":authority", "grpc"), (":path", "/wp.Test/Chat"),
                   ("content-type", "application/grpc"), ("te", "trailers")]
        # A live upstream hands every byte on and returns the window at once, so a client cannot
        # easily outrun it with DATA here (the bytes-alone tests do); it can overflow the window
        # the waypoint may send in (RFC 9113 §6.9.1: above 2^31-1 is a FLOW_CONTROL_ERROR).
        sock.sendall(peer.headers(1, request) + peer.window_update(0, 2**31 - 1))
        received = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received += data
    goaways = [f for f in testing.parse_frames(received) if f.type == frames.GOAWAY]
    assert [f.error_code for f in goaways] == [frames.FLOW_CONTROL_ERROR]
    release.set()
    worker.join(20)
    assert answers == [b"grpc-v1>first", b"grpc-v1>second"]
