"""What routing reads of a request, as the HTTP codecs deliver it: bytes, lower-case names.

The HTTP/1.1 and HTTP/2 shells build one ``HttpRequest`` per request. Everything is bytes as
received (h11 and h2 hand out bytes, and header names already lower-case), so matching never
decodes: paths are compared percent-encoded, as Envoy compares them, and regexes run on the
bytes (see ``regex``).

What is *not* here is as important: the destination. The route is chosen by the Service VIP and
port the client dialled (``RouteTable.route``), never by ``Host``/``:authority``, which is kept
only to build a redirect's ``Location`` (GEP-1294: "the mesh should apply a particular xRoute's
configuration if the destination ip address for a given connection is the ClusterIP of that
parentRef Service").

Repeated headers are joined with ``,`` before matching, as RFC 9110 §5.3 allows and Envoy's
header matcher does (``HeaderUtility::getAllOfHeaderAsString``). For HTTP/2 the shell puts
``:authority`` in ``headers`` as ``host`` (Envoy treats the two as one header), so a ``Host``
header match means the same on both protocols; other pseudo-headers are not matchable (the
API's header-name pattern has no ``:``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """``target`` is the origin-form request target (``:path``): path and optional query."""

    method: bytes
    target: bytes
    headers: Mapping[bytes, bytes]
    authority: bytes = b""
    scheme: bytes = b"http"


def header_map(pairs: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """Header pairs as matching reads them: names lower-cased, repeats joined with ``,``."""
    headers: dict[bytes, bytes] = {}
    for name, value in pairs:
        name = name.lower()
        seen = headers.get(name)
        headers[name] = value if seen is None else seen + b"," + value
    return headers


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """(path, query) of a request target; the query is empty when there is none."""
    path, _, query = target.partition(b"?")
    # A fragment never belongs on the wire, but a client may send one; it is not part of the path.
    path = path.partition(b"#")[0]
    return path, query


def first_query_value(query: bytes, name: bytes) -> bytes | None:
    """The first value of query parameter ``name`` (raw, not percent-decoded), or None.

    The first value is what the Gateway API recommends for repeated parameters
    (``HTTPQueryParamMatch.Name``); matching the raw text is what Envoy's route matcher does
    (``QueryParamsMulti::parseQueryString``, no decoding). A parameter without ``=`` has the
    empty value.
    """
    if not query:
        return None
    for item in query.split(b"&"):
        key, _, value = item.partition(b"=")
        if key == name:
            return value.partition(b"#")[0]
    return None


def grpc_service_method(path: bytes) -> tuple[bytes, bytes] | None:
    """(service, method) of a gRPC ``:path`` ``/package.Service/Method``, or None if not one.

    gRPC over HTTP/2 (PROTOCOL-HTTP2.md): ``Path → ":path" "/" Service-Name "/" {method name}``.
    """
    if not path.startswith(b"/"):
        return None
    service, sep, method = path[1:].partition(b"/")
    if not sep or not service or not method or b"/" in method or b"?" in method:
        return None
    return service, method
