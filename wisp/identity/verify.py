"""Verifying a peer's certificate chain to a SPIFFE identity.

TLS handshakes verify chains inside OpenSSL; this is the same check for certificates that arrive
some other way (a freshly issued bundle, a plugged-in CA) and the source of the trust-domain rule.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError as _X509Error

from .certs import spiffe_id_of
from .errors import VerificationError
from .spiffe import SpiffeId


def verify_chain(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate] | tuple[x509.Certificate, ...],
    roots: list[x509.Certificate] | tuple[x509.Certificate, ...],
    trust_domain: str | None = None,
    now: dt.datetime | None = None,
) -> SpiffeId:
    """Verify `leaf` up to one of `roots` at `now`; return its SPIFFE ID.

    Raises VerificationError naming the reason: untrusted chain, outside its validity, no SPIFFE
    ID, or (when `trust_domain` is given) an identity from another trust domain.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    if not roots:
        raise VerificationError("no trust roots to verify against")
    if now < leaf.not_valid_before_utc:
        raise VerificationError(f"certificate is not valid before {leaf.not_valid_before_utc.isoformat()}")
    if now >= leaf.not_valid_after_utc:
        raise VerificationError(f"certificate expired at {leaf.not_valid_after_utc.isoformat()}")
    verifier = PolicyBuilder().store(Store(list(roots))).time(now).build_client_verifier()
    try:
        verifier.verify(leaf, list(intermediates))
    except _X509Error as exc:
        raise VerificationError(f"certificate chain does not verify: {exc}") from None
    identity = spiffe_id_of(leaf)
    if trust_domain is not None and identity.trust_domain != trust_domain:
        raise VerificationError(
            f"peer identity {identity} is in trust domain {identity.trust_domain!r}, not {trust_domain!r}"
        )
    return identity
