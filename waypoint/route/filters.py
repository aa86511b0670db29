"""HTTPRoute filters as data, and the pure functions the HTTP shells apply them with.

Semantics from kubernetes-sigs/gateway-api ``apis/v1/httproute_types.go``:

- ``HTTPHeaderFilter`` (RequestHeaderModifier, ResponseHeaderModifier): ``set`` overwrites,
  ``add`` appends to existing values, ``remove`` drops every value; names are case-insensitive,
  and of several entries with equivalent names only the first counts. The API allows one action
  per header name per filter, so the order of set/add/remove inside one filter does not matter.
- ``HTTPRequestRedirectFilter``: ``Location`` is built from the request with ``scheme``,
  ``hostname``, ``port`` and ``path`` replaced when set. Port, when not set: the scheme's
  well-known port if ``scheme`` is set, else the listener's port — for a mesh route the port the
  client dialled on the Service. The port is left out of ``Location`` for http on 80 and https
  on 443 (the conformance test ``httproute-redirect-port-and-scheme.go`` checks exactly these
  cases). Status: 301, 302 (default), 303, 307, 308. The query string is kept.
- ``HTTPPathModifier``: ``ReplaceFullPath`` replaces the path; ``ReplacePrefixMatch`` replaces
  the matched ``PathPrefix`` element-wise, as the table in ``ReplacePrefixMatch``'s comment
  shows (``/foo/bar`` with prefix ``/foo`` and replacement ``/xyz`` → ``/xyz/bar``, with the
  empty string → ``/bar``, with ``/`` → ``/bar``). The query string is kept.
- ``HTTPURLRewriteFilter``: ``hostname`` replaces ``Host``/``:authority`` when forwarding;
  ``path`` as above.
- ``HTTPRequestMirrorFilter``: a copy of the request goes to one endpoint of ``backendRef``;
  ``percent`` or ``fraction`` (experimental channel, GEP-3171) pick the share mirrored,
  100% when neither is set. Responses of mirrors are ignored.

Headers here are ``(name, value)`` byte pairs, the form h11 and h2 use. ``Host`` on HTTP/2 is
``:authority``; a shell that lets a header modifier touch ``host`` maps it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from .request import HttpRequest

_WELL_KNOWN_PORTS = {b"http": 80, b"https": 443}


@dataclass(frozen=True, slots=True)
class HeaderModifier:
    """One RequestHeaderModifier or ResponseHeaderModifier; names are lower-case."""

    set: tuple[tuple[bytes, bytes], ...] = ()
    add: tuple[tuple[bytes, bytes], ...] = ()
    remove: tuple[bytes, ...] = ()


def apply_header_modifiers(
    headers: Iterable[tuple[bytes, bytes]], modifiers: Iterable[HeaderModifier]
) -> list[tuple[bytes, bytes]]:
    """The header list after each modifier in turn (a later modifier sees the earlier's output).

    ``set`` keeps the header where it first appeared and drops its other occurrences; ``add``
    appends a line, which is the same as appending ``,value`` (RFC 9110 §5.3).
    """
    result = list(headers)
    for modifier in modifiers:
        for name, value in modifier.set:
            replaced = False
            kept: list[tuple[bytes, bytes]] = []
            for pair in result:
                if pair[0].lower() == name:
                    if not replaced:
                        kept.append((name, value))
                        replaced = True
                else:
                    kept.append(pair)
            if not replaced:
                kept.append((name, value))
            result = kept
        for name, value in modifier.add:
            result.append((name, value))
        if modifier.remove:
            dropped = set(modifier.remove)
            result = [pair for pair in result if pair[0].lower() not in dropped]
    return result


class PathModifierType(enum.Enum):
    FULL = "ReplaceFullPath"
    PREFIX = "ReplacePrefixMatch"
    # VirtualService ``rewrite.uri``: Envoy's ``prefix_rewrite``, the matched part of the path
    # replaced character for character (no element or trailing-slash rules).
    MATCHED = "rewrite.uri"


@dataclass(frozen=True, slots=True)
class PathModifier:
    type: PathModifierType
    value: bytes


@dataclass(frozen=True, slots=True)
class RequestRedirect:
    """A RequestRedirect filter; None fields keep the request's value."""

    scheme: bytes | None = None
    hostname: bytes | None = None
    port: int | None = None
    path: PathModifier | None = None
    status: int = 302


@dataclass(frozen=True, slots=True)
class URLRewrite:
    hostname: bytes | None = None
    path: PathModifier | None = None


@dataclass(frozen=True, slots=True)
class RequestMirror:
    """Mirror to a Service port; ``fraction`` in [0, 1] is the share of requests mirrored;
    ``subset`` a DestinationRule subset (VirtualService mirrors), None for any endpoint."""

    namespace: str
    name: str
    port: int
    fraction: float = 1.0
    subset: str | None = None


def replace_prefix(path: bytes, prefix: bytes, replacement: bytes) -> bytes:
    """``path`` with its element-wise ``prefix`` replaced (``ReplacePrefixMatch``).

    ``prefix`` is the PathPrefix the request matched, so ``path`` starts with it on an element
    boundary. A trailing ``/`` of the prefix or the replacement is ignored, which gives the
    table of ``HTTPPathModifier.ReplacePrefixMatch``: ``/foo/`` with ``/foo`` → ``/xyz`` gives
    ``/xyz/``; ``/foo`` with ``/foo`` → ``/`` gives ``/``.
    """
    prefix = prefix.removesuffix(b"/")
    rest = path[len(prefix):]
    replaced = replacement.removesuffix(b"/") + rest
    return replaced if replaced.startswith(b"/") else b"/" + replaced


def modified_path(modifier: PathModifier, path: bytes, matched_prefix: bytes) -> bytes:
    if modifier.type is PathModifierType.FULL:
        return modifier.value or b"/"
    if modifier.type is PathModifierType.MATCHED:
        return modifier.value + path[len(matched_prefix):] or b"/"
    return replace_prefix(path, matched_prefix, modifier.value)


def _with_query(path: bytes, query: bytes) -> bytes:
    return path + b"?" + query if query else path


def rewrite_target(rewrite: URLRewrite, path: bytes, query: bytes, matched_prefix: bytes) -> bytes | None:
    """The request target after ``rewrite``'s path modifier, or None when it has none."""
    if rewrite.path is None:
        return None
    return _with_query(modified_path(rewrite.path, path, matched_prefix), query)


def authority_host(authority: bytes) -> bytes:
    """The host of a ``Host``/``:authority`` value, without its port (``[v6]`` kept bracketed)."""
    if authority.startswith(b"["):
        end = authority.find(b"]")
        return authority if end < 0 else authority[: end + 1]
    return authority.rpartition(b":")[0] if b":" in authority else authority


def redirect_location(
    redirect: RequestRedirect,
    request: HttpRequest,
    path: bytes,
    query: bytes,
    matched_prefix: bytes,
    listener_port: int,
    default_host: bytes = b"",
) -> bytes:
    """The exact ``Location`` value of a redirect.

    ``listener_port`` is the port the client dialled on the Service: the mesh's "Gateway
    Listener port". ``default_host`` stands in for a request without ``Host``/``:authority``.
    """
    scheme = redirect.scheme or request.scheme
    host = redirect.hostname or authority_host(request.authority) or default_host
    if redirect.port is not None:
        port = redirect.port
    elif redirect.scheme is not None:
        port = _WELL_KNOWN_PORTS.get(redirect.scheme, listener_port)
    else:
        port = listener_port
    if _WELL_KNOWN_PORTS.get(scheme) == port:
        netloc = host
    else:
        netloc = host + b":" + str(port).encode()
    new_path = path if redirect.path is None else modified_path(redirect.path, path, matched_prefix)
    return scheme + b"://" + netloc + _with_query(new_path, query)
