"""Keys, CSRs and certificate bundles for workload identities.

A workload key is ECDSA P-256 and its CSR carries only a URI SAN with the SPIFFE ID and an empty
subject, as Istio's do. This is the `cryptography` side, for the CA, tools and tests; a proxy holds
a `bundle.CertBundle` (PEM and the leaf's facts) and makes its keys with `openssl.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .bundle import CertBundle
from .errors import IdentityError, InvalidSpiffeId, VerificationError
from .spiffe import SpiffeId

PrivateKey = ec.EllipticCurvePrivateKey


def generate_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_csr(key: PrivateKey, identity: SpiffeId) -> bytes:
    """A PEM CSR for `identity`: empty subject, the SPIFFE ID as the only (critical) URI SAN."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def load_pem_certificates(data: bytes, what: str = "certificate bundle") -> list[x509.Certificate]:
    """Every certificate in a PEM blob, in order; IdentityError if there is none or one is broken."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise IdentityError(f"{what} is not valid PEM: {exc}") from None
    if not certs:
        raise IdentityError(f"{what} contains no certificate")
    return certs


def certificates_to_pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def spiffe_ids_of(cert: x509.Certificate) -> list[SpiffeId]:
    """The SPIFFE IDs among a certificate's URI SANs, in order; URIs that do not parse are skipped."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    ids = []
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        try:
            ids.append(SpiffeId.parse(uri))
        except InvalidSpiffeId:
            continue
    return ids


def spiffe_id_of(cert: x509.Certificate) -> SpiffeId:
    """The peer identity of a leaf: its first SPIFFE URI SAN."""
    ids = spiffe_ids_of(cert)
    if not ids:
        raise VerificationError(f"certificate {cert.serial_number:x} has no SPIFFE URI SAN")
    return ids[0]


@dataclass(slots=True, frozen=True)
class IssuedCertificate:
    """What the CA returns for a CSR: the leaf, the intermediates above it, and the trust roots."""

    leaf: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]
    roots: tuple[x509.Certificate, ...]

    def chain_pem(self) -> list[bytes]:
        """Istio's response shape: leaf, intermediates, and last the root bundle."""
        return [certificates_to_pem([c]) for c in (self.leaf, *self.intermediates)] + [
            certificates_to_pem(list(self.roots))
        ]


def bundle_of(key: PrivateKey, leaf: x509.Certificate, intermediates: tuple[x509.Certificate, ...] | list,
              roots: tuple[x509.Certificate, ...] | list) -> CertBundle:
    """The PEM bundle a proxy holds, from the CA side's objects."""
    return CertBundle(
        key_to_pem(key), certificates_to_pem([leaf, *intermediates]), certificates_to_pem(list(roots)),
        spiffe_id_of(leaf), leaf.serial_number, leaf.not_valid_before_utc, leaf.not_valid_after_utc,
    )


def load_bundle(key_pem: bytes, chain_pem: bytes, roots_pem: bytes) -> CertBundle:
    """From PEM files: `chain_pem` is leaf followed by intermediates, `roots_pem` the trust
    bundle; IdentityError if one is broken or the key is not the leaf's."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise IdentityError(f"private key is not valid unencrypted PEM: {exc}") from None
    chain = load_pem_certificates(chain_pem, "certificate chain")
    roots = load_pem_certificates(roots_pem, "root bundle")
    # Compare encoded public keys: not every key type has public_numbers() (Ed25519 has none).
    if _public_key_der(chain[0].public_key()) != _public_key_der(key.public_key()):
        raise IdentityError("the private key does not belong to the leaf certificate")
    return bundle_of(key, chain[0], chain[1:], roots)


def certificates_of(bundle: CertBundle) -> tuple[x509.Certificate, list[x509.Certificate], list[x509.Certificate]]:
    """(leaf, intermediates, roots) of a bundle as objects, for checks on the CA side and in tests."""
    chain = load_pem_certificates(bundle.chain_pem, "certificate chain")
    return chain[0], chain[1:], load_pem_certificates(bundle.roots_pem, "root bundle")


def _public_key_der(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


