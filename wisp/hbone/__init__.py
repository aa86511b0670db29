"""HBONE: Istio's HTTP/2 CONNECT tunnel over mutual TLS, client, server and connection pool."""

from .client import dial, open_stream
from .connection import CLIENT_SETTINGS, SERVER_SETTINGS, H2Settings, HboneConnection, HboneStream
from .errors import (
    ConnectionClosed,
    ConnectRefused,
    HboneError,
    PeerIdentityError,
    StreamReset,
    TlsError,
)
from .headers import Authority, InvalidAuthority, connect_headers, parse_authority
from .pool import HbonePool, PoolKey
from .server import ConnectRequest, HboneServer
from .tls import ContextCache, make_context

HBONE_PORT = 15008

__all__ = [
    "CLIENT_SETTINGS", "HBONE_PORT", "SERVER_SETTINGS", "Authority", "ConnectRefused",
    "ConnectRequest", "ConnectionClosed", "ContextCache", "H2Settings", "HboneConnection",
    "HboneError", "HbonePool", "HboneServer", "HboneStream", "InvalidAuthority",
    "PeerIdentityError", "PoolKey", "StreamReset", "TlsError", "connect_headers", "dial",
    "make_context", "open_stream", "parse_authority",
]
