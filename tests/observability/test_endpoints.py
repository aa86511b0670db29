"""wisp.endpoints: the proxies' probe, metrics and admin server, over a real loopback socket."""

from __future__ import annotations

import trio

from wisp import sockets
from wisp.endpoints import serve_http


async def _ask(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        out = b""
        while chunk := await stream.receive_some(65536):
            out += chunk
    return out


async def _handler(method: str, path: str):
    if path == "/boom":
        raise RuntimeError("handler bug")
    return 200, "text/plain", f"{method} {path}\n".encode()


async def test_answers_requests_and_survives_a_failing_handler_and_garbage():
    sock = sockets.listener(("127.0.0.1", 0), reuse_port=False)
    port = sock.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_http, sock, _handler)
        ok = await _ask(port, b"GET /healthz/ready?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"GET /healthz/ready\n")
        head = await _ask(port, b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")  # no body
        boom = await _ask(port, b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\n")
        assert boom.startswith(b"HTTP/1.1 500 Internal Server Error\r\n") and boom.endswith(b"internal error\n")
        garbage = await _ask(port, b"\x00\x01 not http\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        again = await _ask(port, b"GET /still-here HTTP/1.1\r\nHost: a\r\n\r\n")
        assert again.endswith(b"GET /still-here\n")
        nursery.cancel_scope.cancel()
