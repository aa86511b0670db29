"""Workload identity: SPIFFE IDs, keys and CSRs, the CA, certificate bundles and verification.

Names are imported on first use (PEP 562): `from wisp.identity import SpiffeId, CertBundle` in a
proxy loads neither `cryptography` nor the CA, which only the control plane and tools need.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "CACERTS_FILES": "ca", "DEFAULT_WORKLOAD_LIFETIME": "ca", "CertificateAuthority": "ca",
    "CertBundle": "bundle",
    "IssuedCertificate": "certs", "bundle_of": "certs", "certificates_of": "certs", "generate_key": "certs",
    "load_bundle": "certs", "load_pem_certificates": "certs", "make_csr": "certs", "spiffe_id_of": "certs",
    "spiffe_ids_of": "certs",
    "CaLoadError": "errors", "IdentityError": "errors", "InvalidCsr": "errors", "InvalidSpiffeId": "errors",
    "VerificationError": "errors",
    "DEFAULT_TRUST_DOMAIN": "spiffe", "SpiffeId": "spiffe",
    "verify_chain": "verify",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
