"""What the echo app answers to an HTTP request, as plain data: the protocol shells only move bytes.

Every protocol (HTTP/1.1, HTTP/2) turns a request into a `Request`, asks `respond` for a
`Response`, and writes it. Large bodies (`/size/<n>`) are not built: a `Response` carries a count
of filler bytes that the shells send as slices of one shared block.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass

from .faults import Plan

MiB = 1024 * 1024
# The largest body `/size/<n>` sends and `/echo` sends back.
MAX_BODY = 100 * MiB
FILLER = memoryview(b"x" * (256 * 1024))


@dataclass(slots=True, frozen=True)
class Request:
    protocol: str  # "HTTP/1.1", "HTTP/2"
    method: str
    target: str  # path and query, as sent
    headers: tuple[tuple[str, str], ...]  # lower-case names, in the order received
    peer: str  # "ip:port" of the caller
    body: bytes = b""  # kept only when `keeps_body(target)`, and then at most MAX_BODY bytes
    body_bytes: int = 0  # how many body bytes arrived

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


@dataclass(slots=True, frozen=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    filler: int = 0  # bytes of FILLER to send after `body`

    @property
    def length(self) -> int:
        return len(self.body) + self.filler

    def chunks(self, size: int = len(FILLER)) -> Iterator[bytes | memoryview]:
        """The body in pieces of at most `size` bytes, filler included, without building it."""
        if self.body:
            yield self.body
        left = self.filler
        while left > 0:
            piece = min(left, size, len(FILLER))
            yield FILLER[:piece]
            left -= piece


def keeps_body(target: str) -> bool:
    """Whether the request body must be kept (to echo it) rather than only counted."""
    return target.partition("?")[0] == "/echo"


def format_peer(address: tuple) -> str:
    """`ip:port`, `[ipv6]:port`; an IPv4 client seen on a dual-stack socket shows as IPv4."""
    host, port = address[0], address[1]
    ip = ipaddress.ip_address(host)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return f"{ip.ipv4_mapped}:{port}"
    return f"[{host}]:{port}" if ip.version == 6 else f"{host}:{port}"


def respond(request: Request, hostname: str) -> Response:
    """The answer to one request: a report of who called, or one of the special paths."""
    path = request.path
    if path == "/healthz":
        return _plain(200, b"ok\n", hostname)
    if path.startswith("/status/"):
        code = _int_or_none(path[len("/status/"):])
        if code is None or not 200 <= code <= 599:
            return _plain(400, b"/status/<code> takes a status code from 200 to 599\n", hostname)
        if code in (204, 304):
            return Response(code, (("x-echo-hostname", hostname),))
        return _report(request, hostname, code)
    if path.startswith("/size/"):
        size = _int_or_none(path[len("/size/"):])
        if size is None or not 0 <= size <= MAX_BODY:
            return _plain(400, b"/size/<n> takes a byte count from 0 to %d\n" % MAX_BODY, hostname)
        return Response(200, _headers("application/octet-stream", size, hostname), filler=size)
    if path == "/echo":
        if request.body_bytes > len(request.body):
            return _plain(413, b"/echo sends back at most %d bytes\n" % MAX_BODY, hostname)
        content_type = _header(request, "content-type") or "application/octet-stream"
        return Response(200, _headers(content_type, len(request.body), hostname), request.body)
    return _report(request, hostname, 200)


def stats(served: int, failed: int, hostname: str) -> Response:
    """`GET /stats`: the requests this process answered and how many a failure switch failed."""
    body = json.dumps({"served": served, "failed": failed, "hostname": hostname}).encode() + b"\n"
    return Response(200, _headers("application/json", len(body), hostname), body)


def with_plan(response: Response, plan: Plan, hostname: str) -> Response:
    """`response` as the failure and delay switches (`echo.faults`) say: a bad switch header
    is a 400, an injected failure replaces the status; either way `x-echo-fault` says what."""
    if plan.error:
        return _plain(400, f"{plan.error}\n".encode(), hostname)
    if not plan.fault:
        return response
    status = response.status if plan.status is None else plan.status
    headers = (*response.headers, ("x-echo-fault", plan.fault))
    if status in (204, 304):  # statuses that never have a body
        headers = tuple(item for item in headers if item[0] != "content-length")
        return Response(status, headers)
    return Response(status, headers, response.body, response.filler)


def report_text(request: Request, hostname: str) -> str:
    lines = [
        f"hostname={hostname}",
        f"peer={request.peer}",
        f"method={request.method} path={request.target}",
        f"protocol={request.protocol}",
    ]
    lines.extend(f"header {name}={value}" for name, value in request.headers)
    lines.append(f"body_bytes={request.body_bytes}")
    return "\n".join(lines) + "\n"


def report_json(request: Request, hostname: str) -> str:
    headers: dict[str, list[str]] = {}
    for name, value in request.headers:
        headers.setdefault(name, []).append(value)
    return json.dumps({
        "hostname": hostname,
        "peer": request.peer,
        "method": request.method,
        "path": request.target,
        "protocol": request.protocol,
        "headers": headers,
        "body_bytes": request.body_bytes,
    }) + "\n"


def wants_json(request: Request) -> bool:
    query = request.target.partition("?")[2]
    if "format=json" in query.split("&"):
        return True
    return any(name == "accept" and "application/json" in value for name, value in request.headers)


def _report(request: Request, hostname: str, status: int) -> Response:
    if wants_json(request):
        body = report_json(request, hostname).encode()
        return Response(status, _headers("application/json", len(body), hostname), body)
    body = report_text(request, hostname).encode()
    return Response(status, _headers("text/plain; charset=utf-8", len(body), hostname), body)


def _plain(status: int, body: bytes, hostname: str) -> Response:
    return Response(status, _headers("text/plain; charset=utf-8", len(body), hostname), body)


def _headers(content_type: str, length: int, hostname: str) -> tuple[tuple[str, str], ...]:
    # The hostname header tells which replica answered even when the body is not a report.
    return (("content-type", content_type), ("content-length", str(length)),
            ("x-echo-hostname", hostname))


def _header(request: Request, name: str) -> str | None:
    for key, value in request.headers:
        if key == name:
            return value
    return None


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None
