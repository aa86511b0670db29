"""What one proxied HTTP/1.1 exchange costs in parsing and serialising, per library (issue 11).

A waypoint parses the client's request, writes it upstream, parses the upstream's response and
writes it back: four steps per exchange. This times those four steps for a 1 KiB request (a
POST, 11 header fields, body to 1,024 bytes in all) and a 1 KiB response (Content-Length body),
on a kept-alive connection, with:

- `h11` (python-hyper, sans-IO, pure Python): server and client `h11.Connection`s;
- `httptools` (llhttp, C): request and response parsers with callbacks, heads written by hand;
- `wisp` (waypoint/http1/codec.py): the hand-written head parser and writer the waypoint uses.

Each also drops the hop-by-hop fields, as the proxy must. Run: `.venv/bin/python -m
bench.http1_parse` (under the benchmark lock); prints µs per exchange, best of 7 × 2,000.
docs/architecture.md, "Waypoint HTTP/1.1", has the figures and the decision.
"""

from __future__ import annotations

import sys
import timeit

REQUEST_HEAD = (
    b"POST /api/v1/items?id=42&view=full HTTP/1.1\r\n"
    b"Host: echo.shop.svc.cluster.local\r\n"
    b"User-Agent: curl/8.5.0\r\n"
    b"Accept: application/json\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Content-Type: application/json\r\n"
    b"X-Request-Id: 8a4f2b6e-1c3d-4e5f-9a8b-7c6d5e4f3a2b\r\n"
    b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
    b"X-Forwarded-For: 10.244.1.7\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=abcdef0123456789\r\n"
)


def _message(head: bytes, filler: bytes, total: int = 1024) -> bytes:
    """`head` with a Content-Length body of `filler` bytes making `total` bytes in all."""
    size = total - len(head) - len(b"Content-Length: \r\n\r\n")
    size -= len(str(size))
    return head + b"Content-Length: %d\r\n\r\n" % size + filler * size


REQUEST = _message(REQUEST_HEAD, b"r")
RESPONSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"Date: Fri, 04 Dec 2026 21:00:00 GMT\r\n"
    b"Server: echo\r\n"
    b"X-Served-By: echo-1\r\n"
)
RESPONSE = _message(RESPONSE_HEAD, b"s")
assert len(REQUEST) == 1024 and len(RESPONSE) == 1024

HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding", b"upgrade",
                 b"content-length", b"host"})


def h11_exchange():
    import h11

    server = h11.Connection(h11.SERVER)
    client = h11.Connection(h11.CLIENT)

    def once() -> None:
        server.receive_data(REQUEST)
        request = server.next_event()
        headers = [(n, v) for n, v in request.headers if n not in HOP]
        host = next(v for n, v in request.headers if n == b"host")
        body = b""
        while True:
            event = server.next_event()
            if type(event) is h11.Data:
                body += event.data
            elif type(event) is h11.EndOfMessage:
                break
        out = client.send(h11.Request(method=request.method, target=request.target,
                                      headers=[(b"host", host), *headers, (b"content-length", b"%d" % len(body))]))
        out += client.send(h11.Data(data=body))
        out += client.send(h11.EndOfMessage())
        client.receive_data(RESPONSE)
        response = client.next_event()
        rbody = b""
        while True:
            event = client.next_event()
            if type(event) is h11.Data:
                rbody += event.data
            elif type(event) is h11.EndOfMessage:
                break
        rheaders = [(n, v) for n, v in response.headers if n not in HOP]
        back = server.send(h11.Response(status_code=response.status_code,
                                        headers=[*rheaders, (b"content-length", b"%d" % len(rbody))]))
        back += server.send(h11.Data(data=rbody))
        back += server.send(h11.EndOfMessage())
        server.start_next_cycle()
        client.start_next_cycle()

    return once


def httptools_exchange():
    import httptools

    class Request:
        def __init__(self) -> None:
            self.headers: list = []
            self.body: list = []
            self.url = b""
            self.done = False

        def on_url(self, url: bytes) -> None:
            self.url = url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name.lower(), value))

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            self.done = True

    def once() -> None:
        req = Request()
        parser = httptools.HttpRequestParser(req)
        parser.feed_data(REQUEST)
        headers = [(n, v) for n, v in req.headers if n not in HOP]
        host = next(v for n, v in req.headers if n == b"host")
        parts = [parser.get_method(), b" ", req.url, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
        for n, v in headers:
            parts += (n, b": ", v, b"\r\n")
        body = b"".join(req.body)
        parts.append(b"content-length: %d\r\n\r\n" % len(body))
        out = b"".join(parts)
        resp = Request()
        rparser = httptools.HttpResponseParser(resp)
        rparser.feed_data(RESPONSE)
        rheaders = [(n, v) for n, v in resp.headers if n not in HOP]
        rbody = b"".join(resp.body)
        parts = [b"HTTP/1.1 %d OK\r\n" % rparser.get_status_code()]
        for n, v in rheaders:
            parts += (n, b": ", v, b"\r\n")
        parts.append(b"content-length: %d\r\n\r\n" % len(rbody))
        back = b"".join(parts)

    return once


def wisp_exchange():
    from waypoint.http1 import codec

    server = codec.Parser(request=True)
    client = codec.Parser(request=False)

    def once() -> None:
        events = server.receive(memoryview(REQUEST))
        head = events[0][1]
        headers = codec.hop_by_hop([p for p in head.headers if p[0] != b"host"], head.connection)
        out = codec.encode_request_head(head.method, head.target, head.authority, headers, head.framing, head.length)
        for kind, value in events[1:]:
            if kind == codec.DATA:
                data = bytes(value)
        server.next_message()
        client.expect_response_to(head.method)
        revents = client.receive(memoryview(RESPONSE))
        rhead = revents[0][1]
        rheaders = codec.hop_by_hop(rhead.headers, rhead.connection)
        back = codec.encode_response_head(rhead.status, rheaders, rhead.framing, rhead.length, reason=rhead.reason)
        for kind, value in revents[1:]:
            if kind == codec.DATA:
                data = bytes(value)
        client.next_message()

    return once


def main() -> int:
    contenders = {"h11": h11_exchange, "httptools": httptools_exchange, "wisp": wisp_exchange}
    for name, build in contenders.items():
        try:
            once = build()
        except ImportError as exc:
            print(f"{name:10s} not installed ({exc})")
            continue
        once()
        best = min(timeit.repeat(once, number=2000, repeat=7)) / 2000
        print(f"{name:10s} {best * 1e6:7.2f} µs per exchange (parse + write request, parse + write response)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
