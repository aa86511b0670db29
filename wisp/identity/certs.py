"""Keys, CSRs and certificate bundles for workload identities.

A workload key is ECDSA P-256 and its CSR carries only a URI SAN with the SPIFFE ID and an empty
subject, as Istio's do. A CertBundle is what a proxy holds for one identity: key, leaf,
intermediates and the trust roots, and it knows when to rotate (half of its lifetime).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

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


@dataclass(slots=True, frozen=True)
class CertBundle:
    """One identity's key and certificates, as a proxy holds them."""

    key: PrivateKey
    leaf: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]
    roots: tuple[x509.Certificate, ...]

    @classmethod
    def from_issued(cls, key: PrivateKey, issued: IssuedCertificate) -> CertBundle:
        return cls(key, issued.leaf, issued.intermediates, issued.roots)

    @classmethod
    def from_pem(cls, key_pem: bytes, chain_pem: bytes, roots_pem: bytes) -> CertBundle:
        """From PEM: `chain_pem` is leaf followed by intermediates, `roots_pem` the trust bundle."""
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise IdentityError(f"private key is not valid unencrypted PEM: {exc}") from None
        chain = load_pem_certificates(chain_pem, "certificate chain")
        roots = load_pem_certificates(roots_pem, "root bundle")
        # Compare encoded public keys: not every key type has public_numbers() (Ed25519 has none).
        if _public_key_der(chain[0].public_key()) != _public_key_der(key.public_key()):
            raise IdentityError("the private key does not belong to the leaf certificate")
        return cls(key, chain[0], tuple(chain[1:]), tuple(roots))

    @property
    def identity(self) -> SpiffeId:
        return spiffe_id_of(self.leaf)

    @property
    def not_before(self) -> dt.datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    @property
    def rotation_time(self) -> dt.datetime:
        """Half of the lifetime, as Istio's proxies rotate."""
        return self.not_before + (self.not_after - self.not_before) / 2

    def needs_rotation(self, now: dt.datetime | None = None) -> bool:
        return (now or _now()) >= self.rotation_time

    def is_expired(self, now: dt.datetime | None = None) -> bool:
        return (now or _now()) >= self.not_after

    def key_pem(self) -> bytes:
        return key_to_pem(self.key)

    def chain_pem(self) -> bytes:
        """Leaf then intermediates: what a TLS endpoint presents."""
        return certificates_to_pem([self.leaf, *self.intermediates])

    def roots_pem(self) -> bytes:
        return certificates_to_pem(list(self.roots))

    @contextlib.contextmanager
    def pem_file(self) -> Iterator[str]:
        """A private file (mode 0600, on tmpfs when there is one) holding the key then the
        chain, for the moment of handing it to something that loads only files (the ssl
        module, hypercorn); removed on exit."""
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        with tempfile.TemporaryDirectory(prefix="wisp-key-", dir=base) as directory:
            path = os.path.join(directory, "bundle.pem")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(self.key_pem() + self.chain_pem())
            yield path


def _public_key_der(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
