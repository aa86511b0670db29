"""The echo app: who called, with what, over HTTP/1.1, HTTP/2, gRPC and raw TCP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from functools import partial

import h2.config
import h2.connection
import h2.events
import h11
import pytest
import trio

from wisp import protobuf, sockets
from echo import EchoConfig, serve
from echo import grpc as echo_grpc
from echo.report import Request, format_peer, respond

NAME = "web-7d9f-abcde"
MiB = 1024 * 1024


@dataclass
class Ports:
    http: int
    grpc: int
    tcp: int


@pytest.fixture
async def echo(nursery) -> Ports:
    socks = {kind: sockets.listener(("127.0.0.1", 0), reuse_port=False)
             for kind in ("http", "grpc", "tcp")}
    await nursery.start(partial(serve, EchoConfig(name=NAME), **socks))
    return Ports(**{kind: sock.getsockname()[1] for kind, sock in socks.items()})


# -- clients ----------------------------------------------------------------------------------

@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    trailers: dict[str, str] | None = None

    @property
    def text(self) -> str:
        return self.body.decode()


def local_peer(stream: trio.SocketStream) -> str:
    host, port = stream.socket.getsockname()[:2]
    return f"{host}:{port}"


async def h1_request(stream: trio.SocketStream, conn: h11.Connection, method: str, target: str,
                     headers: list[tuple[str, str]] = (), body: bytes = b"") -> Reply:
    head = [("host", "web.shop"), *headers]
    if body:
        head.append(("content-length", str(len(body))))
    await stream.send_all(conn.send(h11.Request(method=method, target=target, headers=head))
                          + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
    response, chunks = None, []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(MiB))
        elif type(event) is h11.Response:
            response = event
        elif type(event) is h11.Data:
            chunks.append(event.data)
        elif type(event) is h11.EndOfMessage:
            headers = {k.decode(): v.decode() for k, v in response.headers}
            return Reply(response.status_code, headers, b"".join(chunks))
        else:
            raise AssertionError(f"unexpected {event!r}")


async def h1_get(port: int, target: str, headers: list[tuple[str, str]] = ()) -> Reply:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        return await h1_request(stream, h11.Connection(h11.CLIENT), "GET", target, headers)


async def h2_request(stream: trio.SocketStream, headers: list[tuple[str, str]],
                     body: bytes = b"") -> Reply:
    """One request on a new HTTP/2 connection with prior knowledge."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                header_encoding="utf-8"))
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(stream_id, headers, end_stream=not body)
    unsent = memoryview(body)
    reply = Reply(0, {}, b"")
    chunks = []
    while True:
        # Send what the server's window allows; the rest after it grants more.
        while unsent and (size := min(conn.local_flow_control_window(stream_id),
                                      conn.max_outbound_frame_size, len(unsent))):
            conn.send_data(stream_id, unsent[:size], end_stream=size == len(unsent))
            unsent = unsent[size:]
        await stream.send_all(conn.data_to_send())
        data = await stream.receive_some(MiB)
        assert data, "server closed the connection mid-response"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                reply.headers = dict(event.headers)
                reply.status = int(reply.headers[":status"])
            elif isinstance(event, h2.events.DataReceived):
                chunks.append(event.data)
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                reply.trailers = dict(event.headers)
            elif isinstance(event, h2.events.StreamEnded):
                reply.body = b"".join(chunks)
                return reply


def h2_get_headers(path: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [(":method", "GET"), (":scheme", "http"), (":authority", "web.shop"),
            (":path", path), *extra]


async def grpc_call(port: int, method: str, message: str) -> Reply:
    headers = [(":method", "POST"), (":scheme", "http"), (":authority", "web.shop:9090"),
               (":path", method), ("content-type", "application/grpc"), ("te", "trailers")]
    body = echo_grpc.frame(echo_grpc.encode_strings({1: message}))
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        return await h2_request(stream, headers, body)


async def read_to_eof(stream: trio.abc.ReceiveStream) -> bytes:
    chunks = []
    while chunk := await stream.receive_some(MiB):
        chunks.append(chunk)
    return b"".join(chunks)


# -- HTTP/1.1 ---------------------------------------------------------------------------------

async def test_http1_reports_hostname_caller_address_and_headers(echo):
    async with await trio.open_tcp_stream("127.0.0.1", echo.http) as stream:
        reply = await h1_request(stream, h11.Connection(h11.CLIENT), "GET", "/hello",
                                 [("user-agent", "curl/8"), ("x-trace", "abc")])
        peer = local_peer(stream)
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain")
    assert reply.text.splitlines() == [
        f"hostname={NAME}", f"peer={peer}", "method=GET path=/hello", "protocol=HTTP/1.1",
        "header host=web.shop", "header user-agent=curl/8", "header x-trace=abc", "body_bytes=0",
    ]


async def test_http1_keep_alive_serves_two_requests_on_one_connection(echo):
    async with await trio.open_tcp_stream("127.0.0.1", echo.http) as stream:
        conn = h11.Connection(h11.CLIENT)
        first = await h1_request(stream, conn, "GET", "/one")
        conn.start_next_cycle()
        second = await h1_request(stream, conn, "POST", "/two", body=b"12345")
        peer = local_peer(stream)
    assert "path=/one" in first.text and f"peer={peer}" in first.text
    assert "method=POST path=/two" in second.text and "body_bytes=5" in second.text
    assert f"peer={peer}" in second.text


async def test_http1_connection_close_is_honoured(echo):
    async with await trio.open_tcp_stream("127.0.0.1", echo.http) as stream:
        reply = await h1_request(stream, h11.Connection(h11.CLIENT), "GET", "/",
                                 [("connection", "close")])
        assert reply.status == 200
        assert await read_to_eof(stream) == b""


async def test_post_to_echo_returns_the_body(echo):
    body = os.urandom(200_000)
    async with await trio.open_tcp_stream("127.0.0.1", echo.http) as stream:
        reply = await h1_request(stream, h11.Connection(h11.CLIENT), "POST", "/echo",
                                 [("content-type", "application/x-test")], body)
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/x-test"
    assert reply.body == body


async def test_status_path_returns_that_status(echo):
    reply = await h1_get(echo.http, "/status/503")
    assert reply.status == 503
    assert f"hostname={NAME}" in reply.text


async def test_size_path_returns_that_many_bytes(echo):
    reply = await h1_get(echo.http, "/size/1048576")
    assert reply.status == 200
    assert int(reply.headers["content-length"]) == len(reply.body) == 1048576


async def test_healthz_answers_ok(echo):
    reply = await h1_get(echo.http, "/healthz")
    assert (reply.status, reply.text) == (200, "ok\n")


async def test_accept_json_gets_the_report_as_json(echo):
    async with await trio.open_tcp_stream("127.0.0.1", echo.http) as stream:
        reply = await h1_request(stream, h11.Connection(h11.CLIENT), "GET", "/a",
                                 [("accept", "application/json"),
                                  ("x-multi", "1"), ("x-multi", "2")])
        peer = local_peer(stream)
    assert reply.headers["content-type"] == "application/json"
    assert json.loads(reply.body) == {
        "hostname": NAME, "peer": peer, "method": "GET", "path": "/a", "protocol": "HTTP/1.1",
        "headers": {"host": ["web.shop"], "accept": ["application/json"], "x-multi": ["1", "2"]},
        "body_bytes": 0,
    }


async def test_format_json_query_gets_the_report_as_json(echo):
    reply = await h1_get(echo.http, "/a?format=json")
    assert json.loads(reply.body)["path"] == "/a?format=json"


# -- HTTP/2 -----------------------------------------------------------------------------------

async def test_http2_prior_knowledge_reports_the_same_caller_address(echo):
    async with await trio.open_tcp_stream("127.0.0.1", echo.http) as stream:
        reply = await h2_request(stream, h2_get_headers("/hello", ("x-trace", "abc")))
        peer = local_peer(stream)
    assert reply.status == 200
    lines = reply.text.splitlines()
    assert lines[:4] == [f"hostname={NAME}", f"peer={peer}", "method=GET path=/hello",
                         "protocol=HTTP/2"]
    assert "header host=web.shop" in lines and "header x-trace=abc" in lines


async def test_http2_size_body_is_sent_within_flow_control(echo):
    # h2's default client window is 64 KiB, so this needs the server to wait for WINDOW_UPDATEs.
    async with await trio.open_tcp_stream("127.0.0.1", echo.http) as stream:
        reply = await h2_request(stream, h2_get_headers("/size/3000000"))
    assert reply.status == 200 and len(reply.body) == 3000000


async def test_http2_post_to_echo_returns_the_body(echo):
    body = os.urandom(100_000)
    headers = [(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/echo")]
    async with await trio.open_tcp_stream("127.0.0.1", echo.http) as stream:
        reply = await h2_request(stream, headers, body)
    assert reply.body == body


# -- gRPC -------------------------------------------------------------------------------------

async def test_grpc_echo_returns_the_message_the_caller_and_the_hostname(echo):
    async with await trio.open_tcp_stream("127.0.0.1", echo.grpc) as stream:
        headers = [(":method", "POST"), (":scheme", "http"), (":authority", "echo"),
                   (":path", echo_grpc.METHOD), ("content-type", "application/grpc")]
        reply = await h2_request(stream, headers,
                                 echo_grpc.frame(echo_grpc.encode_strings({1: "héllo"})))
        peer = local_peer(stream)
    assert reply.status == 200 and reply.headers["content-type"] == "application/grpc"
    assert reply.trailers == {"grpc-status": "0"}
    [message] = echo_grpc.unframe(reply.body)
    assert echo_grpc.decode_strings(message, {1, 2, 3}) == {1: "héllo", 2: peer, 3: NAME}


async def test_grpc_unknown_method_is_unimplemented(echo):
    reply = await grpc_call(echo.grpc, "/wisp.echo.Echo/Nope", "x")
    assert reply.status == 200
    assert reply.headers["grpc-status"] == "12"
    assert "unknown method" in reply.headers["grpc-message"]


async def test_grpc_is_served_on_the_http_port_too(echo):
    reply = await grpc_call(echo.http, echo_grpc.METHOD, "hi")
    assert reply.trailers == {"grpc-status": "0"}


async def test_grpc_port_refuses_plain_http2_requests_with_415(echo):
    async with await trio.open_tcp_stream("127.0.0.1", echo.grpc) as stream:
        reply = await h2_request(stream, h2_get_headers("/hello"))
    assert reply.status == 415


def test_protobuf_strings_round_trip_and_unknown_fields_are_skipped():
    message = echo_grpc.encode_strings({1: "a" * 300, 2: "peer"})
    extra = protobuf.encode_varint(4 << 3 | 0) + protobuf.encode_varint(2**40)
    assert echo_grpc.decode_strings(extra + message, {1, 2}) == {1: "a" * 300, 2: "peer"}


def test_grpc_malformed_request_is_internal_error():
    body = echo_grpc.frame(b"\x0a\x05ab")  # field 1 claims 5 bytes, has 2
    reply = echo_grpc.call(echo_grpc.METHOD, body, body_bytes=len(body), peer="p", hostname="h")
    assert reply.status is echo_grpc.Status.INTERNAL


def test_grpc_message_is_percent_encoded():
    assert echo_grpc.grpc_message("100% é") == "100%25 %C3%A9"


# -- raw TCP ----------------------------------------------------------------------------------

async def test_tcp_echoes_a_mebibyte_and_closes_after_the_client_half_closes(echo):
    payload = os.urandom(MiB)
    async with await trio.open_tcp_stream("127.0.0.1", echo.tcp) as stream:
        received = []

        async def send():
            await stream.send_all(payload)
            await stream.send_eof()

        async def receive():
            received.append(await read_to_eof(stream))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            nursery.start_soon(receive)
    assert received == [payload]


# -- robustness -------------------------------------------------------------------------------

GARBAGE = b"\x16\x03\x01\x00\xff garbage \r\n\r\n" * 4
H2_GARBAGE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x04\x09\x00\x00\x00\x00\x07junk"


@pytest.mark.parametrize("port_kind, data", [
    ("http", GARBAGE), ("http", H2_GARBAGE), ("grpc", GARBAGE), ("grpc", H2_GARBAGE),
])
async def test_bad_bytes_close_that_connection_while_another_client_is_served(
        echo, port_kind, data):
    port = getattr(echo, port_kind)
    async with await trio.open_tcp_stream("127.0.0.1", port) as good:
        # The good client connects first and is mid-conversation when the bad one arrives.
        async with await trio.open_tcp_stream("127.0.0.1", port) as bad:
            await bad.send_all(data)
            with trio.fail_after(2):
                await read_to_eof(bad)  # an error answer (400, GOAWAY) at most, then EOF
        if port_kind == "http":
            reply = await h1_request(good, h11.Connection(h11.CLIENT), "GET", "/still-here")
        else:
            reply = await h2_request(good, h2_get_headers("/still-here")
                                     + [("content-type", "application/grpc")])
        assert reply.status == 200


async def test_clients_vanishing_mid_request_do_not_disturb_the_server(echo):
    async with await trio.open_tcp_stream("127.0.0.1", echo.http) as stream:
        await stream.send_all(
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\nabc")
    async with await trio.open_tcp_stream("127.0.0.1", echo.http) as stream:
        await stream.send_all(b"GET /size/50000000 HTTP/1.1\r\nhost: x\r\n\r\n")
        await stream.receive_some(1000)
    async with await trio.open_tcp_stream("127.0.0.1", echo.tcp) as stream:
        await stream.send_all(b"x" * 100_000)
    assert (await h1_get(echo.http, "/healthz")).status == 200


# -- pure parts -------------------------------------------------------------------------------

def test_ipv6_and_ipv4_mapped_peers_are_formatted_for_humans():
    assert format_peer(("::1", 80, 0, 0)) == "[::1]:80"
    assert format_peer(("::ffff:10.244.1.5", 43120, 0, 0)) == "10.244.1.5:43120"


@pytest.mark.parametrize("target, status", [
    ("/status/99", 400), ("/status/abc", 400), ("/size/-1", 400), (f"/size/{101 * MiB}", 400),
    ("/status/204", 204),
])
def test_special_paths_validate_their_argument(target, status):
    request = Request("HTTP/1.1", "GET", target, (), "127.0.0.1:1")
    assert respond(request, NAME).status == status


def test_echo_refuses_a_body_too_large_to_send_back():
    request = Request("HTTP/1.1", "POST", "/echo", (), "127.0.0.1:1", body=b"", body_bytes=10)
    assert respond(request, NAME).status == 413


def test_grpc_request_over_the_message_limit_is_resource_exhausted():
    reply = echo_grpc.call(echo_grpc.METHOD, b"", body_bytes=echo_grpc.MAX_MESSAGE + 6,
                           peer="p", hostname="h")
    assert reply.status is echo_grpc.Status.RESOURCE_EXHAUSTED


# -- the command --------------------------------------------------------------------------------

def test_command_needs_at_least_one_listener(capsys):
    from echo import main

    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "at least one of" in capsys.readouterr().err


def test_command_exits_cleanly_on_sigterm():
    env = {**os.environ, "HOSTNAME": "pod-a"}
    proc = subprocess.Popen([sys.executable, "-m", "echo", "--bind", "127.0.0.1",
                             "--http", "0", "--tcp", "0"],
                            stderr=subprocess.PIPE, env=env, text=True)
    try:
        line = proc.stderr.readline()
        assert "echo app listening" in line and "pod-a" in line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.wait()
