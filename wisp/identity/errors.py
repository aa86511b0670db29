"""Errors raised by the identity layer, one hierarchy so callers can answer them precisely."""


class IdentityError(Exception):
    """Base class: something about an identity, key or certificate is wrong."""


class InvalidSpiffeId(IdentityError, ValueError):
    """A string is not a SPIFFE ID of the form spiffe://<td>/ns/<ns>/sa/<sa>."""


class InvalidCsr(IdentityError, ValueError):
    """A certificate signing request cannot be parsed, is badly signed or asks for the wrong thing."""


class CaLoadError(IdentityError):
    """A plugged-in CA (Istio's cacerts layout) is incomplete or inconsistent."""


class VerificationError(IdentityError):
    """A certificate chain does not verify: untrusted, expired, no SPIFFE ID, or foreign trust domain."""
