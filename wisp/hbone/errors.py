"""HBONE errors raised to trio callers: one hierarchy, each message says what went wrong and with whom.

The engine's HBONE (wisp.engine) reports failures as text to its callbacks instead; what raises
here is the trio TLS transport (`wisp.hbone.tls.TlsStream`).
"""

from __future__ import annotations


class HboneError(Exception):
    """Base class for every HBONE failure."""


class TlsError(HboneError):
    """The mutual-TLS handshake failed or the peer closed it (bad certificate, no ALPN h2, not TLS)."""
