"""The mesh's certificate authority: a generated root, or a plugged-in CA in Istio's cacerts layout.

Istio's plug-in layout (secret `cacerts`): `ca-cert.pem` is the signing (intermediate) certificate,
`ca-key.pem` its key, `root-cert.pem` the trust root(s), and `cert-chain.pem` the chain from
`ca-cert` up to the root. Sharing a root with an existing mesh makes the two trust each other.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .bundle import CertBundle
from .certs import (
    IssuedCertificate,
    bundle_of,
    certificates_to_pem,
    generate_key,
    key_to_pem,
    load_pem_certificates,
    make_csr,
)
from .errors import CaLoadError, IdentityError, InvalidCsr, InvalidSpiffeId
from .spiffe import DEFAULT_TRUST_DOMAIN, SpiffeId

DEFAULT_WORKLOAD_LIFETIME = dt.timedelta(hours=24)
DEFAULT_ROOT_LIFETIME = dt.timedelta(days=3650)
# Leaves start a little in the past so a peer whose clock runs slightly behind accepts them.
_BACKDATE = dt.timedelta(minutes=1)
CACERTS_FILES = ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")


class CertificateAuthority:
    """Signs workload CSRs for one trust domain."""

    def __init__(
        self,
        key,
        cert: x509.Certificate,
        intermediates: tuple[x509.Certificate, ...],
        roots: tuple[x509.Certificate, ...],
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
    ) -> None:
        self.key = key
        self.cert = cert
        # Certificates between `cert` and a root, `cert` itself included unless it is a root.
        self.intermediates = intermediates
        self.roots = roots
        self.trust_domain = trust_domain

    @classmethod
    def generate(
        cls,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        lifetime: dt.timedelta = DEFAULT_ROOT_LIFETIME,
        organization: str = "wisp",
    ) -> CertificateAuthority:
        """A new self-signed root that signs workloads directly (Istio's self-signed default)."""
        key = generate_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{organization} root CA {trust_domain}"),
            ]
        )
        cert = _ca_certificate(name, key.public_key(), name, key, lifetime, path_length=None)
        return cls(key, cert, (), (cert,), trust_domain)

    def issue_intermediate(
        self, lifetime: dt.timedelta = dt.timedelta(days=365), name: str | None = None
    ) -> CertificateAuthority:
        """A CA one level below this one, as an operator would plug into a cluster.

        The default name carries the depth: a subject equal to its issuer's would make the
        certificate look self-issued and path building would fail.
        """
        parent_path_length = self.cert.extensions.get_extension_for_class(
            x509.BasicConstraints
        ).value.path_length
        if parent_path_length == 0:
            raise IdentityError(
                f"{self.cert.subject.rfc4514_string()} has pathLenConstraint 0 and may not issue "
                "intermediate CAs; issue from a CA above it"
            )
        # Unconstrained below an unconstrained CA, so intermediates can be stacked (root → int1 → int2).
        path_length = None if parent_path_length is None else parent_path_length - 1
        name = name or f"wisp intermediate CA {len(self.intermediates) + 1}"
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        if subject == self.cert.subject:
            raise IdentityError(f"intermediate name {name!r} equals its issuer's subject; choose another")
        key = generate_key()
        lifetime = min(lifetime, self.cert.not_valid_after_utc - _now())
        cert = _ca_certificate(
            subject, key.public_key(), self.cert.subject, self.key, lifetime, path_length=path_length,
            issuer_public_key=self.cert.public_key(),
        )
        return CertificateAuthority(
            key, cert, (cert, *self.intermediates), self.roots, self.trust_domain
        )

    @classmethod
    def load_cacerts(
        cls, directory: str | os.PathLike, trust_domain: str = DEFAULT_TRUST_DOMAIN
    ) -> CertificateAuthority:
        """Load Istio's cacerts layout; CaLoadError names the file and the problem."""
        directory = Path(directory)

        def read(name: str) -> bytes:
            try:
                return (directory / name).read_bytes()
            except OSError as exc:
                raise CaLoadError(f"cannot read {directory / name}: {exc.strerror}") from None

        def certs(name: str) -> list[x509.Certificate]:
            try:
                return load_pem_certificates(read(name), str(directory / name))
            except IdentityError as exc:
                raise CaLoadError(str(exc)) from None

        ca_cert = certs("ca-cert.pem")[0]
        roots = certs("root-cert.pem")
        chain = certs("cert-chain.pem") if (directory / "cert-chain.pem").exists() else [ca_cert]
        try:
            key = serialization.load_pem_private_key(read("ca-key.pem"), password=None)
        except (ValueError, TypeError) as exc:
            raise CaLoadError(f"{directory / 'ca-key.pem'} is not an unencrypted PEM key: {exc}") from None
        if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
            raise CaLoadError(f"{directory / 'ca-key.pem'} must be an EC or RSA key")
        if key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != ca_cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise CaLoadError(f"{directory / 'ca-key.pem'} does not belong to ca-cert.pem")
        if not _is_ca(ca_cert):
            raise CaLoadError(f"{directory / 'ca-cert.pem'} is not a CA certificate (basicConstraints)")
        if chain[0] != ca_cert:
            raise CaLoadError("cert-chain.pem must start with ca-cert.pem")
        root_set = set(roots)
        intermediates = tuple(c for c in chain if c not in root_set)
        _check_chain_reaches_root(list(intermediates) or [ca_cert], roots, directory)
        return cls(key, ca_cert, intermediates, tuple(roots), trust_domain)

    def write_cacerts(self, directory: str | os.PathLike) -> None:
        """Write this CA in Istio's cacerts layout (key file readable by the owner only)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ca-cert.pem").write_bytes(certificates_to_pem([self.cert]))
        # touch(mode=) leaves an existing file's mode alone; force 0600 before the key is written.
        fd = os.open(directory / "ca-key.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as key_file:
            os.fchmod(key_file.fileno(), 0o600)
            key_file.write(key_to_pem(self.key))
        (directory / "root-cert.pem").write_bytes(certificates_to_pem(list(self.roots)))
        chain = list(self.intermediates) or [self.cert]
        chain_roots = [r for r in self.roots if r not in chain][:1]
        (directory / "cert-chain.pem").write_bytes(certificates_to_pem(chain + chain_roots))

    def sign_csr(
        self,
        csr_pem: bytes,
        identity: SpiffeId,
        lifetime: dt.timedelta = DEFAULT_WORKLOAD_LIFETIME,
        now: dt.datetime | None = None,
    ) -> IssuedCertificate:
        """Sign a CSR for `identity`. InvalidCsr says what is wrong with the request."""
        if identity.trust_domain != self.trust_domain:
            raise InvalidCsr(
                f"identity {identity} is in trust domain {identity.trust_domain!r}; "
                f"this CA signs for {self.trust_domain!r}"
            )
        if lifetime <= dt.timedelta(0):
            raise InvalidCsr(f"requested lifetime {lifetime} is not positive")
        now = now or _now()
        if now >= self.cert.not_valid_after_utc:
            raise IdentityError(
                f"CA certificate {self.cert.subject.rfc4514_string()} expired at "
                f"{self.cert.not_valid_after_utc.isoformat()}; load a renewed CA"
            )
        csr = _parse_csr(csr_pem)
        _check_csr_names(csr, identity)
        names = [x509.UniformResourceIdentifier(str(identity))]
        leaf = self._sign_leaf(csr.public_key(), names, lifetime, now)
        return IssuedCertificate(leaf, self.intermediates, self.roots)

    def issue_serving(
        self,
        identity: SpiffeId,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
        lifetime: dt.timedelta = DEFAULT_WORKLOAD_LIFETIME,
    ) -> CertBundle:
        """A certificate for a control-plane endpoint: its SPIFFE ID plus the names clients dial.

        Workload CSRs may carry only their SPIFFE ID; the control plane's own HTTPS certificate
        also needs the DNS names and addresses its clients verify, as istiod's does.
        """
        key = generate_key()
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(identity))]
        names += [x509.DNSName(name) for name in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        leaf = self._sign_leaf(key.public_key(), names, lifetime, _now())
        return bundle_of(key, leaf, self.intermediates, self.roots)

    def _sign_leaf(self, public_key, names: list, lifetime: dt.timedelta, now: dt.datetime) -> x509.Certificate:
        not_before = now - _BACKDATE
        not_after = min(now + lifetime, self.cert.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            # An empty subject requires a critical SAN (RFC 5280 §4.2.1.6).
            .add_extension(x509.SubjectAlternativeName(names), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_encipherment=True, content_commitment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self, identity: SpiffeId, lifetime: dt.timedelta = DEFAULT_WORKLOAD_LIFETIME,
        now: dt.datetime | None = None,
    ) -> CertBundle:
        """Key, CSR and signature in one step, for components that hold the CA themselves."""
        key = generate_key()
        issued = self.sign_csr(make_csr(key, identity), identity, lifetime, now)
        return bundle_of(key, issued.leaf, issued.intermediates, issued.roots)

    def roots_pem(self) -> bytes:
        return certificates_to_pem(list(self.roots))


def _ca_certificate(subject, public_key, issuer, signing_key, lifetime, path_length, issuer_public_key=None):
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_encipherment=False, content_commitment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key or public_key),
            critical=False,
        )
    )
    return builder.sign(signing_key, hashes.SHA256())


def _parse_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    if isinstance(csr_pem, str):
        csr_pem = csr_pem.encode()
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except (ValueError, TypeError) as exc:
        raise InvalidCsr(f"CSR is not a PEM certificate request: {exc}") from None
    except x509.InvalidVersion as exc:  # not a ValueError (found by fuzzing: a 500 from the CA)
        raise InvalidCsr(f"CSR has an invalid version: {exc}") from None
    # The loader parses lazily: a public key that is not a valid point or an unknown algorithm
    # only raises here (found by fuzzing: "Invalid key" escaped as a 500 from the CA endpoint).
    try:
        signature_valid = csr.is_signature_valid
        key = csr.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidCsr(f"CSR public key or signature cannot be read: {exc}") from None
    if not signature_valid:
        raise InvalidCsr("CSR signature does not verify against its own public key")
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise InvalidCsr(f"CSR key uses curve {key.curve.name}; use P-256 or P-384")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise InvalidCsr(f"CSR RSA key has {key.key_size} bits; at least 2048 are required")
    else:
        raise InvalidCsr(f"CSR key type {type(key).__name__} is not supported; use ECDSA P-256")
    return csr


def _check_csr_names(csr: x509.CertificateSigningRequest, identity: SpiffeId) -> None:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return  # the CA names the certificate itself
    except ValueError as exc:
        raise InvalidCsr(f"CSR extensions cannot be parsed: {exc}") from None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        try:
            requested = SpiffeId.parse(uri)
        except InvalidSpiffeId as exc:
            raise InvalidCsr(f"CSR SAN {uri!r} is not a SPIFFE ID: {exc}") from None
        if requested != identity:
            raise InvalidCsr(f"CSR asks for {requested} but the caller may only have {identity}")
    if san.get_values_for_type(x509.DNSName) or san.get_values_for_type(x509.IPAddress):
        raise InvalidCsr("CSR asks for DNS or IP SANs; workload certificates carry only the SPIFFE ID")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _check_chain_reaches_root(chain: list[x509.Certificate], roots: list[x509.Certificate], directory) -> None:
    for child, parent in zip(chain, chain[1:]):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise CaLoadError(f"cert-chain.pem in {directory} is broken: {child.subject.rfc4514_string()} "
                              f"is not issued by {parent.subject.rfc4514_string()}") from None
    top = chain[-1]
    for root in roots:
        if top == root:
            return
        try:
            top.verify_directly_issued_by(root)
            return
        except (ValueError, TypeError, InvalidSignature):
            continue
    raise CaLoadError(f"the chain in {directory} does not lead to any certificate in root-cert.pem")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
