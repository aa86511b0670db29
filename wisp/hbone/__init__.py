"""HBONE's CONNECT semantics, shared by every side that speaks it (Istio's ambient tunnel).

What an HBONE CONNECT means lives here: its request headers and `:authority` syntax (`headers`),
who the peers are and how each side checks the other (`peers`: PoolKey, check_peer,
check_client), mutual-TLS contexts from certificate bundles (`tls`) and the errors. The bytes move
in the data-path engine (`wisp.engine.hbone`, `.pool`, `.server`) over the sans-IO HTTP/2 codec
(`wisp.h2`); see docs/hbone.md.
"""

from .errors import HboneError, TlsError
from .headers import Authority, InvalidAuthority, connect_headers, parse_authority
from .peers import PoolKey, check_client, check_peer
from .tls import ContextCache, describe_ssl_error, make_context

HBONE_PORT = 15008

__all__ = [
    "HBONE_PORT", "Authority", "ContextCache", "HboneError", "InvalidAuthority", "PoolKey", "TlsError",
    "check_client", "check_peer", "connect_headers", "describe_ssl_error", "make_context",
    "parse_authority",
]
