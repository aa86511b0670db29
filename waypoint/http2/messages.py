"""HTTP/2 header blocks ↔ the pipeline's request head, and the answers the waypoint makes itself.

Pure functions. The codec (wisp.h2) has already refused what RFC 9113 §8.2–8.3 calls malformed
(pseudo-headers out of place, connection-specific fields, `te` other than "trailers", CR/LF/NUL in
values), so what arrives here is well-formed; what is left to check is what a proxy needs.

gRPC (content-type `application/grpc`, `application/grpc+proto`, `application/grpc;…`: what
Envoy's `Grpc::Common::isGrpcRequestHeaders` accepts) is HTTP/2 with its status in trailers.
A reply the waypoint makes itself to a gRPC request is *trailers-only*, as Envoy's
`Http::Utility::sendLocalReply` makes it (envoy source/common/http/utility.cc): one HEADERS
frame with END_STREAM, `:status 200`, `content-type: application/grpc`, `grpc-status` (the
decision's gRPC status, else the HTTP status mapped by `Grpc::Utility::httpToGrpcStatus`,
source/common/grpc/status.cc, which follows grpc/doc/http-grpc-status-mapping.md) and
`grpc-message` (the body text, percent-encoded as the gRPC spec says). So an L7 policy denial is
`grpc-status: 7` (PERMISSION_DENIED) with `grpc-message: RBAC: access denied` on a gRPC call, and
HTTP 403 `RBAC: access denied` on plain HTTP/2.
"""

from __future__ import annotations

from waypoint.pipeline import PROTOCOL_GRPC, PROTOCOL_HTTP2, RequestHead, Respond

GRPC_OK = 0
GRPC_UNKNOWN = 2
GRPC_INTERNAL = 13
GRPC_UNAVAILABLE = 14
GRPC_UNIMPLEMENTED = 12
GRPC_PERMISSION_DENIED = 7
GRPC_UNAUTHENTICATED = 16

# Envoy's Grpc::Utility::httpToGrpcStatus.
_HTTP_TO_GRPC = {400: GRPC_INTERNAL, 401: GRPC_UNAUTHENTICATED, 403: GRPC_PERMISSION_DENIED,
                 404: GRPC_UNIMPLEMENTED, 429: GRPC_UNAVAILABLE, 502: GRPC_UNAVAILABLE,
                 503: GRPC_UNAVAILABLE, 504: GRPC_UNAVAILABLE}

Fields = list[tuple[bytes, bytes]]


class RequestProblem(ValueError):
    """A request the waypoint does not forward; `status` is the answer (e.g. 400)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def http_to_grpc_status(status: int) -> int:
    return _HTTP_TO_GRPC.get(status, GRPC_UNKNOWN)


def is_grpc(content_type: bytes | None) -> bool:
    if content_type is None or not content_type.startswith(b"application/grpc"):
        return False
    rest = content_type[len(b"application/grpc"):]
    return not rest or rest[:1] in (b"+", b";")


def request_head(fields: list[tuple[str, str]]) -> RequestHead:
    """The pipeline's view of a request header block (the codec's latin-1 strings as bytes).

    `:authority` is the authority; a `host` field is used only when `:authority` is absent and
    is dropped from the fields (RFC 9113 §8.3.1: the two must agree, and a proxy sends one).
    CONNECT inside the tunnel is not proxied: RequestProblem(405), as the HTTP/1.1 shell answers it;
    other pseudo-headers (extended CONNECT's :protocol) RequestProblem(400)."""
    method = target = authority = host = b""
    scheme = b"http"
    headers: Fields = []
    content_type = None
    for name, value in fields:
        n = name.encode("latin-1")
        v = value.encode("latin-1")
        if n[:1] == b":":
            if n == b":method":
                method = v
            elif n == b":path":
                target = v
            elif n == b":authority":
                authority = v
            elif n == b":scheme":
                scheme = v
            else:
                raise RequestProblem(400, f"pseudo-header {name} is not proxied")
            continue
        if n == b"host":
            host = host or v
            continue
        if n == b"content-type":
            content_type = v
        headers.append((n, v))
    if method == b"CONNECT":
        # As the HTTP/1.1 shell answers it (waypoint/http1/downstream.py).
        raise RequestProblem(405, "CONNECT is not supported inside the mesh tunnel")
    if not authority:
        authority = host
    protocol = PROTOCOL_GRPC if is_grpc(content_type) else PROTOCOL_HTTP2
    return RequestHead(method, target, authority, headers, scheme, protocol)


def upstream_request(head: RequestHead) -> Fields:
    """The header block sent to the endpoint for `head` (pseudo-headers first)."""
    out: Fields = [(b":method", head.method), (b":scheme", head.scheme or b"http")]
    if head.authority:
        out.append((b":authority", head.authority))
    out.append((b":path", head.target or b"/"))
    # A header modifier may have set a field HTTP/2 forbids or a name in capitals: send what
    # HTTP/2 can carry, lower-case (RFC 9113 §8.2.2), never connection-specific fields.
    for name, value in head.headers:
        name = name.lower()
        if name in _CONNECTION_SPECIFIC or (name == b"te" and value.lower() != b"trailers"):
            continue
        out.append((name, value))
    return out


_CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                  b"upgrade", b"host"})


def response_fields(fields: list[tuple[str, str]]) -> Fields:
    """A response or trailer block from the endpoint as byte pairs (the codec checked it)."""
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in fields]


def clean_response(fields: Fields) -> Fields:
    """What a ResponseHeaderModifier may have added that HTTP/2 forbids, removed; names lower-case."""
    out: Fields = []
    for name, value in fields:
        name = name.lower()
        if name in _CONNECTION_SPECIFIC:
            continue
        out.append((name, value))
    return out


def status_of(fields: Fields) -> int:
    for name, value in fields:
        if name == b":status":
            return int(value)
    return 0


def grpc_status_of(fields: Fields) -> int | None:
    for name, value in fields:
        if name == b"grpc-status":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def percent_encode(text: bytes) -> bytes:
    """gRPC's grpc-message encoding: bytes outside 0x20–0x7E and '%' as %XX (PROTOCOL-HTTP2.md)."""
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in text):
        return text
    return b"".join(bytes([b]) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in text)


def local_reply(respond: Respond, grpc: bool) -> tuple[Fields, bytes]:
    """The response block and body for a reply the waypoint makes itself (see the module docstring);
    for gRPC the body is empty and the block ends the stream."""
    if grpc:
        code = respond.grpc_status if respond.grpc_status is not None else http_to_grpc_status(respond.status)
        fields: Fields = [(b":status", b"200"), (b"content-type", b"application/grpc"),
                          (b"grpc-status", b"%d" % code)]
        message = respond.body.strip()
        if message:
            fields.append((b"grpc-message", percent_encode(message)))
        return fields, b""
    fields = [(b":status", b"%d" % respond.status)]
    fields += clean_response([(n, v) for n, v in respond.headers if n.lower() != b"content-length"])
    if respond.body:
        fields.append((b"content-length", b"%d" % len(respond.body)))
    return fields, respond.body
