"""Workload identity: SPIFFE IDs, keys and CSRs, the CA, certificate bundles and verification."""

from .ca import CACERTS_FILES, DEFAULT_WORKLOAD_LIFETIME, CertificateAuthority
from .certs import (
    CertBundle,
    IssuedCertificate,
    generate_key,
    load_pem_certificates,
    make_csr,
    spiffe_id_of,
    spiffe_ids_of,
)
from .errors import CaLoadError, IdentityError, InvalidCsr, InvalidSpiffeId, VerificationError
from .spiffe import DEFAULT_TRUST_DOMAIN, SpiffeId
from .verify import verify_chain

__all__ = [
    "CACERTS_FILES", "DEFAULT_TRUST_DOMAIN", "DEFAULT_WORKLOAD_LIFETIME", "CaLoadError",
    "CertBundle", "CertificateAuthority", "IdentityError", "InvalidCsr", "InvalidSpiffeId",
    "IssuedCertificate", "SpiffeId", "VerificationError", "generate_key", "load_pem_certificates",
    "make_csr", "spiffe_id_of", "spiffe_ids_of", "verify_chain",
]
