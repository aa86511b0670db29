"""What L7 authorization sees of one request: `RequestAttributes`, filled by the HTTP shells.

Each attribute is the one Istio's waypoint (Envoy's RBAC filter) reads:

- ``source_identity``: the client's SPIFFE ID from the HBONE tunnel's certificate; None for
  plaintext. Principals are compared without ``spiffe://``; the source namespace and service
  account come from it, so a request without one matches no positive identity field.
- ``source_ip``: the client's address (Envoy's ``direct_remote_ip``: ``ipBlocks``, ``source.ip``).
  ``remote.ip``/``remoteIpBlocks`` read Envoy's ``remote_ip`` instead, which at a waypoint
  (``use_remote_address: false``, no trusted hops) is the last ``X-Forwarded-For`` address when
  that is an IP address, else ``source_ip``.
- ``destination_ip``/``destination_port``: the address the client dialled (a Service VIP and
  Service port, or a pod IP), as carried by the tunnel's CONNECT authority.
- ``host``: ``:authority`` (HTTP/2) or ``Host`` (HTTP/1.1) as received, port included; None when
  absent. Hosts match case-insensitively and, as in Istio's waypoints, ports are not stripped.
- ``method``: as received (Istio refuses a lower-case method with 400 before authorization).
- ``path``: the request target as received; evaluation normalises it (see ``normalize``).
- ``headers``: (name, value) pairs in any case, str or bytes; duplicates are joined with ``,`` as
  Envoy does, and lookups ignore case.
- ``sni``: the SNI of the TLS the request arrived in; None for the plaintext HTTP a waypoint
  reads inside the tunnel, so ``connection.sni`` values never match there.
- ``request_auth``: what the authn stage verified of the request's JWT
  (`waypoint.authn.RequestAuth`: ``principal`` ``<iss>/<sub>``, ``audiences``, ``presenter``,
  ``claims``); None without a valid token, so ``requestPrincipals`` and ``request.auth.*`` values
  then match nothing (and their ``not`` forms pass).

Derived values are computed once per request, on first use.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from wisp.identity import SpiffeId

if TYPE_CHECKING:
    from ..authn import RequestAuth

# (IP version, address as an integer); None when the text is not an IP address.
Address = tuple[int, int]

_UNSET: object = object()


@functools.lru_cache(maxsize=65536)
def parse_address(text: str | None) -> Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    return address.version, int(address)


def _text(value: str | bytes) -> str:
    # Header bytes are ISO-8859-1 on the wire (RFC 9110 §5.5); h11 and h2 hand us bytes.
    return value.decode("latin-1") if isinstance(value, bytes) else value


@dataclass(slots=True)
class RequestAttributes:
    source_identity: SpiffeId | None
    source_ip: str
    destination_ip: str
    destination_port: int
    host: str | None
    method: str
    path: str
    headers: Iterable[tuple[str | bytes, str | bytes]] = ()
    sni: str | None = None
    request_auth: RequestAuth | None = None

    principal: str | None = field(init=False, repr=False)
    namespace: str | None = field(init=False, repr=False)
    service_account: str | None = field(init=False, repr=False)
    host_lower: str | None = field(init=False, repr=False)
    request_principal: str | None = field(init=False, repr=False)
    # Set by `authorize` before matching: the normalised path without query (None if rejected).
    match_path: str | None = field(init=False, repr=False, default=None)
    _headers: dict[str, str] | None = field(init=False, repr=False, default=None)
    _source: object = field(init=False, repr=False, default=_UNSET)
    _remote: object = field(init=False, repr=False, default=_UNSET)
    _destination: object = field(init=False, repr=False, default=_UNSET)

    @classmethod
    def for_connection(cls, source_identity: SpiffeId | None, source_ip: str, destination_ip: str,
                       destination_port: int, sni: str | None = None) -> RequestAttributes:
        """A connection the waypoint passes through as TCP: no host, method, path or headers."""
        return cls(source_identity, source_ip, destination_ip, destination_port, None, "", "", (), sni)

    def __post_init__(self) -> None:
        identity = self.source_identity
        if identity is None:
            self.principal = self.namespace = self.service_account = None
        else:
            self.principal = identity.principal
            self.namespace = identity.namespace
            self.service_account = identity.service_account
        self.host_lower = self.host.lower() if self.host is not None else None
        self.request_principal = self.request_auth.principal if self.request_auth is not None else None

    def header(self, name: str) -> str | None:
        """The value of a header (``name`` in lower case), duplicates joined with ``,``."""
        headers = self._headers
        if headers is None:
            headers = self._headers = {}
            for raw_name, raw_value in self.headers:
                key = _text(raw_name).lower()
                value = _text(raw_value)
                headers[key] = f"{headers[key]},{value}" if key in headers else value
            # Envoy keeps these as pseudo-headers; a condition may still name them.
            headers.setdefault(":method", self.method)
            headers.setdefault(":path", self.path)
            if self.host is not None:
                headers.setdefault(":authority", self.host)
                headers.setdefault("host", self.host)
        return headers.get(name)

    def source_address(self) -> Address | None:
        if self._source is _UNSET:
            self._source = parse_address(self.source_ip)
        return self._source  # type: ignore[return-value]

    def destination_address(self) -> Address | None:
        if self._destination is _UNSET:
            self._destination = parse_address(self.destination_ip)
        return self._destination  # type: ignore[return-value]

    def remote_address(self) -> Address | None:
        if self._remote is _UNSET:
            forwarded = self.header("x-forwarded-for")
            detected = parse_address(forwarded.rsplit(",", 1)[-1]) if forwarded else None
            self._remote = detected if detected is not None else self.source_address()
        return self._remote  # type: ignore[return-value]
