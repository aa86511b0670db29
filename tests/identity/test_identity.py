"""Specification of workload identity: SPIFFE IDs, CSRs, the CA, chain verification, rotation and
Istio's plug-in CA layout (reference/ambient-dataplane.md §2 and §10)."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wisp.identity import (
    CACERTS_FILES,
    DEFAULT_TRUST_DOMAIN,
    DEFAULT_WORKLOAD_LIFETIME,
    CaLoadError,
    CertBundle,
    CertificateAuthority,
    IdentityError,
    InvalidCsr,
    InvalidSpiffeId,
    SpiffeId,
    VerificationError,
    certificates_of,
    generate_key,
    load_bundle,
    load_pem_certificates,
    make_csr,
    spiffe_id_of,
    spiffe_ids_of,
    verify_chain,
)

BOOKINFO = SpiffeId("cluster.local", "default", "bookinfo-productpage")
OTHER_SA = SpiffeId("cluster.local", "default", "reviews")
FOREIGN = SpiffeId("other.example", "default", "bookinfo-productpage")
PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER


def _now() -> dt.datetime:
    # Certificates store whole seconds; a truncated `now` makes dates comparable exactly.
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _csr(key, names: list[x509.GeneralName] | None) -> bytes:
    """A CSR with arbitrary SANs and key, for requests make_csr would never produce."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(PEM)


def _pem(der: bytes, label: str) -> bytes:
    body = base64.b64encode(der)
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return b"\n".join([f"-----BEGIN {label}-----".encode(), *lines, f"-----END {label}-----".encode(), b""])


def _tampered_csr() -> bytes:
    der = bytearray(x509.load_pem_x509_csr(make_csr(generate_key(), BOOKINFO)).public_bytes(DER))
    # The signature BIT STRING ends the encoding; its last byte is the low byte of ECDSA's `s`.
    der[-1] ^= 0x01
    return _pem(bytes(der), "CERTIFICATE REQUEST")


def _leaf(ca: CertificateAuthority, names: list[x509.GeneralName] | None) -> x509.Certificate:
    """A client/server leaf signed by `ca`'s key with the given SANs, built without the CA's checks."""
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "productpage")]))
        .issuer_name(ca.cert.subject)
        .public_key(generate_key().public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.cert.public_key()), critical=False)
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def _uri(identity: SpiffeId | str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(str(identity))


def _key_pem(key) -> bytes:
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(PEM) for c in certs)


# --- shared CAs (generated once: key generation dominates the run time) ---------------------------


@pytest.fixture(scope="module")
def root_ca() -> CertificateAuthority:
    return CertificateAuthority.generate()


@pytest.fixture(scope="module")
def other_ca() -> CertificateAuthority:
    """Same trust domain, unrelated root: its certificates must never verify against root_ca."""
    return CertificateAuthority.generate()


@pytest.fixture(scope="module")
def intermediate_ca(root_ca) -> CertificateAuthority:
    return root_ca.issue_intermediate(name="plugged-in intermediate")


@pytest.fixture(scope="module")
def cacerts_dir(tmp_path_factory, intermediate_ca) -> Path:
    directory = tmp_path_factory.mktemp("cacerts")
    intermediate_ca.write_cacerts(directory)
    return directory


@pytest.fixture(scope="module")
def plugged_in_ca(cacerts_dir) -> CertificateAuthority:
    return CertificateAuthority.load_cacerts(cacerts_dir)


@pytest.fixture(scope="module")
def bundle(root_ca) -> CertBundle:
    return root_ca.issue(BOOKINFO)


# --- 1. SPIFFE IDs ---------------------------------------------------------------------------------

VALID_IDS = [
    pytest.param("spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
                 "cluster.local", "default", "bookinfo-productpage", id="istio-default"),
    pytest.param("spiffe://example.org/ns/istio-system/sa/ztunnel",
                 "example.org", "istio-system", "ztunnel", id="custom-trust-domain"),
    pytest.param("spiffe://td_with-chars.0/ns/My.Namespace/sa/SA_1",
                 "td_with-chars.0", "My.Namespace", "SA_1", id="all-allowed-characters"),
    pytest.param("spiffe://a/ns/b/sa/c", "a", "b", "c", id="single-characters"),
    pytest.param("spiffe://cluster.local/ns/.../sa/..a", "cluster.local", "...", "..a",
                 id="dots-beyond-dot-and-dotdot"),
]


@pytest.mark.parametrize(("text", "trust_domain", "namespace", "service_account"), VALID_IDS)
def test_valid_spiffe_id_parses_into_its_fields(text, trust_domain, namespace, service_account):
    assert SpiffeId.parse(text) == SpiffeId(trust_domain, namespace, service_account)


@pytest.mark.parametrize(("text", "trust_domain", "namespace", "service_account"), VALID_IDS)
def test_valid_spiffe_id_round_trips_through_str(text, trust_domain, namespace, service_account):
    assert str(SpiffeId.parse(text)) == text


@pytest.mark.parametrize(("text", "trust_domain", "namespace", "service_account"), VALID_IDS)
def test_principal_is_the_id_without_the_scheme(text, trust_domain, namespace, service_account):
    assert SpiffeId.parse(text).principal == f"{trust_domain}/ns/{namespace}/sa/{service_account}"


def test_default_trust_domain_is_istios():
    assert DEFAULT_TRUST_DOMAIN == "cluster.local"


INVALID_IDS = [
    pytest.param("https://cluster.local/ns/a/sa/b", "does not start with 'spiffe://'", id="wrong-scheme"),
    pytest.param("SPIFFE://cluster.local/ns/a/sa/b", "does not start with 'spiffe://'", id="upper-case-scheme"),
    pytest.param("spiffe:/cluster.local/ns/a/sa/b", "does not start with 'spiffe://'", id="one-slash-scheme"),
    pytest.param("spiffe://Cluster.local/ns/a/sa/b", "trust domain 'Cluster.local'; only a-z",
                 id="upper-case-trust-domain"),
    pytest.param("spiffe:///ns/a/sa/b", "empty trust domain", id="empty-trust-domain"),
    pytest.param("spiffe://cluster.local:8080/ns/a/sa/b", "has a port", id="port"),
    pytest.param("spiffe://user@cluster.local/ns/a/sa/b", "has user info", id="user-info"),
    pytest.param("spiffe://cluster.local/ns/a/sa/b?x=1", "has a query", id="query"),
    pytest.param("spiffe://cluster.local/ns/a/sa/b#frag", "has a fragment", id="fragment"),
    pytest.param("spiffe://cluster.local", "has no path", id="missing-path"),
    pytest.param("spiffe://cluster.local/", "has path /; expected /ns/", id="root-path"),
    pytest.param("spiffe://cluster.local/ns/a/sa/b/", "has path /ns/a/sa/b/; expected", id="trailing-slash"),
    pytest.param("spiffe://cluster.local//ns/a/sa/b", "has path //ns/a/sa/b; expected", id="double-slash"),
    pytest.param("spiffe://cluster.local/ns/a/sa/b/extra", "has path /ns/a/sa/b/extra; expected",
                 id="extra-segments"),
    pytest.param("spiffe://cluster.local/ns/a", "has path /ns/a; expected", id="missing-service-account"),
    pytest.param("spiffe://cluster.local/namespace/a/serviceaccount/b", "has path /namespace/",
                 id="wrong-keywords"),
    pytest.param("spiffe://cluster.local/sa/b/ns/a", "has path /sa/b/ns/a", id="swapped-keywords"),
    pytest.param("spiffe://cluster.local/NS/a/SA/b", "has path /NS/a/SA/b", id="upper-case-keywords"),
    pytest.param("spiffe://cluster.local/ns//sa/b", "empty namespace", id="empty-namespace"),
    pytest.param("spiffe://cluster.local/ns/a/sa/", "empty service account", id="empty-service-account"),
    pytest.param("spiffe://cluster.local/ns/./sa/b", "namespace '.'; '.' and '..' are not allowed",
                 id="dot-namespace"),
    pytest.param("spiffe://cluster.local/ns/a/sa/..", "service account '..'; '.' and '..' are not allowed",
                 id="dotdot-service-account"),
    pytest.param("spiffe://cluster.local/ns/a/sa/b%2Fc", "service account 'b%2Fc'; only letters",
                 id="percent-encoded-segment"),
    pytest.param("spiffe://cluster%2Elocal/ns/a/sa/b", "trust domain 'cluster%2Elocal'; only a-z",
                 id="percent-encoded-trust-domain"),
    pytest.param("spiffe://cluster.local/ns/my ns/sa/b", "namespace 'my ns'; only letters", id="space"),
    pytest.param("spiffe://cluster.local/ns/a/sa/b ", "service account 'b '; only letters",
                 id="trailing-space"),
    pytest.param("spiffe://cluster.local/ns/a/sa/" + "b" * 2100, "the limit is 2048", id="id-too-long"),
    pytest.param("spiffe://" + "a" * 256 + "/ns/a/sa/b", "trust domain longer than 255",
                 id="trust-domain-too-long"),
    pytest.param("", "does not start with 'spiffe://'", id="empty-string"),
]


@pytest.mark.parametrize(("text", "problem"), INVALID_IDS)
def test_invalid_spiffe_id_is_rejected_naming_the_problem(text, problem):
    with pytest.raises(InvalidSpiffeId, match=re.escape(problem)):
        SpiffeId.parse(text)


@pytest.mark.parametrize("value", [None, 42, b"spiffe://cluster.local/ns/a/sa/b"], ids=repr)
def test_non_string_spiffe_id_is_rejected(value):
    with pytest.raises(InvalidSpiffeId, match="must be a string"):
        SpiffeId.parse(value)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        pytest.param(("Bad TD", "ns", "sa"), "trust domain 'Bad TD'", id="bad-trust-domain"),
        pytest.param(("", "ns", "sa"), "empty trust domain", id="empty-trust-domain"),
        pytest.param(("cluster.local", "", "sa"), "empty namespace", id="empty-namespace"),
        pytest.param(("cluster.local", "ns", "a/b"), "service account 'a/b'", id="slash-in-segment"),
        pytest.param(("cluster.local", "..", "sa"), "namespace '..'", id="dotdot-namespace"),
        pytest.param(("cluster.local", None, "sa"), "namespace must be a string", id="non-string-field"),
    ],
)
def test_constructing_an_invalid_spiffe_id_raises(fields, problem):
    with pytest.raises(InvalidSpiffeId, match=re.escape(problem)):
        SpiffeId(*fields)


def test_invalid_spiffe_id_is_an_identity_error_and_a_value_error():
    assert issubclass(InvalidSpiffeId, IdentityError)
    assert issubclass(InvalidSpiffeId, ValueError)


# --- 2. Keys and CSRs ------------------------------------------------------------------------------


def test_generated_key_is_ecdsa_p256():
    key = generate_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)


def test_csr_is_signed_with_sha256_by_the_workload_key():
    key = generate_key()
    csr = x509.load_pem_x509_csr(make_csr(key, BOOKINFO))
    assert isinstance(csr.signature_hash_algorithm, hashes.SHA256)
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()


def test_csr_subject_is_empty():
    csr = x509.load_pem_x509_csr(make_csr(generate_key(), BOOKINFO))
    assert len(csr.subject) == 0


def test_csr_has_exactly_one_uri_san_equal_to_the_identity():
    csr = x509.load_pem_x509_csr(make_csr(generate_key(), BOOKINFO))
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [_uri(BOOKINFO)]


def test_csr_san_is_critical_because_the_subject_is_empty():
    csr = x509.load_pem_x509_csr(make_csr(generate_key(), BOOKINFO))
    assert csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical


# --- 3. Signing ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issued(root_ca):
    return root_ca.sign_csr(make_csr(generate_key(), BOOKINFO), BOOKINFO)


def test_leaf_carries_the_spiffe_id_as_its_only_san(issued):
    san = issued.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert list(san.value) == [_uri(BOOKINFO)]
    assert san.critical
    assert spiffe_id_of(issued.leaf) == BOOKINFO


def test_leaf_subject_is_empty(issued):
    assert len(issued.leaf.subject) == 0


def test_leaf_is_not_a_ca(issued):
    constraints = issued.leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is False


def test_leaf_is_usable_for_server_and_client_auth(issued):
    eku = issued.leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_leaf_certifies_the_csr_key(root_ca):
    key = generate_key()
    leaf = root_ca.sign_csr(make_csr(key, BOOKINFO), BOOKINFO).leaf
    assert leaf.public_key() == key.public_key()


def test_leaf_is_signed_by_the_ca_with_sha256(root_ca, issued):
    issued.leaf.verify_directly_issued_by(root_ca.cert)
    assert isinstance(issued.leaf.signature_hash_algorithm, hashes.SHA256)


def test_default_workload_lifetime_is_24_hours():
    assert DEFAULT_WORKLOAD_LIFETIME == dt.timedelta(hours=24)


def test_leaf_lifetime_defaults_to_24_hours(root_ca):
    before = dt.datetime.now(dt.timezone.utc)
    leaf = root_ca.sign_csr(make_csr(generate_key(), BOOKINFO), BOOKINFO).leaf
    after = dt.datetime.now(dt.timezone.utc)
    expires_in = leaf.not_valid_after_utc - before
    assert dt.timedelta(hours=24) - dt.timedelta(seconds=1) <= expires_in
    assert leaf.not_valid_after_utc <= after + dt.timedelta(hours=24)


def test_leaf_starts_slightly_in_the_past_for_peers_with_skewed_clocks(root_ca):
    now = _now()
    leaf = root_ca.sign_csr(make_csr(generate_key(), BOOKINFO), BOOKINFO, now=now).leaf
    assert now - dt.timedelta(minutes=5) <= leaf.not_valid_before_utc < now


@pytest.mark.parametrize("lifetime", [dt.timedelta(minutes=10), dt.timedelta(hours=1), dt.timedelta(days=7)],
                         ids=str)
def test_custom_lifetime_is_honoured(root_ca, lifetime):
    now = _now()
    leaf = root_ca.sign_csr(make_csr(generate_key(), BOOKINFO), BOOKINFO, lifetime=lifetime, now=now).leaf
    assert leaf.not_valid_after_utc == now + lifetime


def test_lifetime_is_capped_at_the_cas_own_expiry():
    short_lived = CertificateAuthority.generate(lifetime=dt.timedelta(hours=2))
    leaf = short_lived.sign_csr(make_csr(generate_key(), BOOKINFO), BOOKINFO, lifetime=dt.timedelta(hours=24)).leaf
    assert leaf.not_valid_after_utc == short_lived.cert.not_valid_after_utc


def test_expired_ca_refuses_to_sign():
    short_lived = CertificateAuthority.generate(lifetime=dt.timedelta(hours=1))
    with pytest.raises(IdentityError, match="expired"):
        short_lived.sign_csr(make_csr(generate_key(), BOOKINFO), BOOKINFO, now=_now() + dt.timedelta(hours=2))


def test_chain_from_a_root_ca_is_leaf_then_root_bundle(root_ca, issued):
    chain = issued.chain_pem()
    assert chain == [_cert_pem(issued.leaf), root_ca.roots_pem()]


def test_chain_from_an_intermediate_is_leaf_then_intermediates_then_root_bundle(root_ca, intermediate_ca):
    issued = intermediate_ca.sign_csr(make_csr(generate_key(), BOOKINFO), BOOKINFO)
    assert issued.chain_pem() == [_cert_pem(issued.leaf), _cert_pem(intermediate_ca.cert), root_ca.roots_pem()]


def test_csr_without_san_is_signed_for_the_requested_identity(root_ca):
    leaf = root_ca.sign_csr(_csr(generate_key(), None), BOOKINFO).leaf
    assert spiffe_ids_of(leaf) == [BOOKINFO]


def test_csr_may_be_given_as_text(root_ca):
    leaf = root_ca.sign_csr(make_csr(generate_key(), BOOKINFO).decode(), BOOKINFO).leaf
    assert spiffe_id_of(leaf) == BOOKINFO


REJECTED_CSRS = [
    pytest.param(lambda: b"not a csr", "CSR is not a PEM certificate request", id="garbage"),
    pytest.param(lambda: b"", "CSR is not a PEM certificate request", id="empty"),
    pytest.param(_tampered_csr, "CSR signature does not verify", id="tampered-signature"),
    pytest.param(lambda: make_csr(generate_key(), OTHER_SA),
                 f"CSR asks for {OTHER_SA} but the caller may only have {BOOKINFO}", id="san-mismatch"),
    pytest.param(lambda: _csr(generate_key(), [_uri(BOOKINFO), _uri(OTHER_SA)]),
                 f"CSR asks for {OTHER_SA}", id="second-san-for-another-identity"),
    pytest.param(lambda: _csr(generate_key(), [_uri("https://productpage.example")]),
                 "is not a SPIFFE ID", id="non-spiffe-uri-san"),
    pytest.param(lambda: _csr(generate_key(), [_uri(BOOKINFO), x509.DNSName("productpage.default.svc")]),
                 "CSR asks for DNS or IP SANs", id="dns-san"),
    pytest.param(lambda: _csr(generate_key(), [x509.DNSName("productpage.default.svc")]),
                 "CSR asks for DNS or IP SANs", id="only-dns-san"),
    pytest.param(lambda: _csr(generate_key(), [_uri(BOOKINFO), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]),
                 "CSR asks for DNS or IP SANs", id="ip-san"),
    pytest.param(lambda: _csr(rsa.generate_private_key(65537, 1024), [_uri(BOOKINFO)]),
                 "CSR RSA key has 1024 bits; at least 2048", id="weak-rsa-1024"),
    pytest.param(lambda: _csr(ec.generate_private_key(ec.SECP521R1()), [_uri(BOOKINFO)]),
                 "curve secp521r1; use P-256", id="unsupported-curve-p521"),
    pytest.param(lambda: _csr(ec.generate_private_key(ec.SECP256K1()), [_uri(BOOKINFO)]),
                 "curve secp256k1; use P-256", id="unsupported-curve-secp256k1"),
    pytest.param(lambda: _csr(ed25519.Ed25519PrivateKey.generate(), [_uri(BOOKINFO)]),
                 "is not supported; use ECDSA P-256", id="ed25519-key"),
]


@pytest.mark.parametrize(("make_request", "problem"), REJECTED_CSRS)
def test_sign_csr_rejects_bad_request(root_ca, make_request, problem):
    with pytest.raises(InvalidCsr, match=re.escape(problem)):
        root_ca.sign_csr(make_request(), BOOKINFO)


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="p384"),
        pytest.param(lambda: rsa.generate_private_key(65537, 2048), id="rsa-2048"),
    ],
)
def test_sign_csr_accepts_other_strong_keys(root_ca, key):
    leaf = root_ca.sign_csr(_csr(key(), [_uri(BOOKINFO)]), BOOKINFO).leaf
    assert spiffe_id_of(leaf) == BOOKINFO


def test_sign_csr_rejects_identity_from_another_trust_domain(root_ca):
    with pytest.raises(InvalidCsr, match=re.escape("trust domain 'other.example'; this CA signs for 'cluster.local'")):
        root_ca.sign_csr(make_csr(generate_key(), FOREIGN), FOREIGN)


@pytest.mark.parametrize("lifetime", [dt.timedelta(0), dt.timedelta(hours=-1)], ids=str)
def test_sign_csr_rejects_non_positive_lifetime(root_ca, lifetime):
    with pytest.raises(InvalidCsr, match="is not positive"):
        root_ca.sign_csr(make_csr(generate_key(), BOOKINFO), BOOKINFO, lifetime=lifetime)


# --- 4. Chain verification -------------------------------------------------------------------------


def test_leaf_from_generated_root_verifies_to_its_identity(bundle):
    assert verify_chain(*certificates_of(bundle)) == BOOKINFO


def test_leaf_from_plugged_in_intermediate_verifies_with_the_intermediate(root_ca, plugged_in_ca):
    issued = plugged_in_ca.issue(BOOKINFO)
    assert verify_chain(*certificates_of(issued)[:2], root_ca.roots) == BOOKINFO


def test_leaf_without_its_intermediate_does_not_verify(root_ca, plugged_in_ca):
    issued = plugged_in_ca.issue(BOOKINFO)
    with pytest.raises(VerificationError, match="chain does not verify"):
        verify_chain(certificates_of(issued)[0], [], root_ca.roots)


def test_leaf_from_another_ca_does_not_verify(root_ca, other_ca):
    foreign = other_ca.issue(BOOKINFO)
    with pytest.raises(VerificationError, match="chain does not verify"):
        verify_chain(*certificates_of(foreign)[:2], root_ca.roots)


def test_leaf_with_intermediates_from_another_ca_does_not_verify(root_ca, other_ca):
    foreign = other_ca.issue_intermediate(name="foreign intermediate").issue(BOOKINFO)
    with pytest.raises(VerificationError, match="chain does not verify"):
        verify_chain(*certificates_of(foreign)[:2], root_ca.roots)


@pytest.mark.parametrize("after_expiry", [dt.timedelta(0), dt.timedelta(seconds=1), dt.timedelta(days=30)],
                         ids=str)
def test_expired_leaf_does_not_verify(bundle, after_expiry):
    with pytest.raises(VerificationError, match="certificate expired at"):
        verify_chain(*certificates_of(bundle), now=bundle.not_after + after_expiry)


@pytest.mark.parametrize("before_start", [dt.timedelta(seconds=1), dt.timedelta(days=1)], ids=str)
def test_not_yet_valid_leaf_does_not_verify(bundle, before_start):
    with pytest.raises(VerificationError, match="certificate is not valid before"):
        verify_chain(*certificates_of(bundle), now=bundle.not_before - before_start)


def test_leaf_verifies_at_the_edges_of_its_validity(bundle):
    for now in (bundle.not_before, bundle.not_after - dt.timedelta(seconds=1)):
        assert verify_chain(*certificates_of(bundle), now=now) == BOOKINFO


def test_identity_from_another_trust_domain_does_not_verify():
    foreign_ca = CertificateAuthority.generate(trust_domain="other.example")
    foreign = foreign_ca.issue(FOREIGN)
    with pytest.raises(VerificationError, match=re.escape("trust domain 'other.example', not 'cluster.local'")):
        verify_chain(*certificates_of(foreign), trust_domain="cluster.local")


def test_identity_in_the_expected_trust_domain_verifies(bundle):
    assert verify_chain(certificates_of(bundle)[0], (), certificates_of(bundle)[2], trust_domain="cluster.local") == BOOKINFO


@pytest.mark.parametrize(
    "names",
    [
        pytest.param([x509.DNSName("productpage.default.svc.cluster.local")], id="dns-san-only"),
        pytest.param([x509.UniformResourceIdentifier("https://productpage.example")], id="non-spiffe-uri"),
        pytest.param([_uri("spiffe://cluster.local/ns/default")], id="malformed-spiffe-uri"),
    ],
)
def test_leaf_without_a_spiffe_uri_san_does_not_verify(root_ca, names):
    leaf = _leaf(root_ca, names)
    with pytest.raises(VerificationError, match="has no SPIFFE URI SAN"):
        verify_chain(leaf, [], root_ca.roots)


def test_leaf_without_any_san_does_not_verify(root_ca):
    # Rejected already by the X.509 policy, which requires a SAN on end-entity certificates.
    with pytest.raises(VerificationError):
        verify_chain(_leaf(root_ca, None), [], root_ca.roots)


def test_peer_identity_is_the_first_spiffe_uri_san(root_ca):
    leaf = _leaf(root_ca, [_uri("https://productpage.example"), _uri(OTHER_SA), _uri(BOOKINFO)])
    assert spiffe_ids_of(leaf) == [OTHER_SA, BOOKINFO]
    assert verify_chain(leaf, [], root_ca.roots) == OTHER_SA


def test_verification_without_roots_fails(bundle):
    with pytest.raises(VerificationError, match="no trust roots"):
        verify_chain(*certificates_of(bundle)[:2], [])


# --- 5. Bundles and rotation -----------------------------------------------------------------------


def test_bundle_knows_its_identity(bundle):
    assert bundle.identity == BOOKINFO


def test_rotation_time_is_half_way_through_the_lifetime(bundle):
    leaf = certificates_of(bundle)[0]
    half = (leaf.not_valid_after_utc - leaf.not_valid_before_utc) / 2
    assert bundle.rotation_time == leaf.not_valid_before_utc + half


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        pytest.param(-dt.timedelta(hours=1), False, id="an-hour-before"),
        pytest.param(-dt.timedelta(seconds=1), False, id="just-before"),
        pytest.param(dt.timedelta(0), True, id="at"),
        pytest.param(dt.timedelta(seconds=1), True, id="just-after"),
    ],
)
def test_needs_rotation_from_the_rotation_time_on(bundle, offset, expected):
    assert bundle.needs_rotation(bundle.rotation_time + offset) is expected


def test_fresh_bundle_does_not_need_rotation(root_ca):
    assert root_ca.issue(BOOKINFO).needs_rotation() is False


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        pytest.param(-dt.timedelta(seconds=1), False, id="just-before"),
        pytest.param(dt.timedelta(0), True, id="at"),
        pytest.param(dt.timedelta(hours=1), True, id="after"),
    ],
)
def test_is_expired_from_not_after_on(bundle, offset, expected):
    assert bundle.is_expired(bundle.not_after + offset) is expected


def test_fresh_bundle_is_not_expired(bundle):
    assert bundle.is_expired() is False


def test_bundle_round_trips_through_pem(plugged_in_ca):
    original = plugged_in_ca.issue(BOOKINFO)
    loaded = load_bundle(original.key_pem, original.chain_pem, original.roots_pem)
    assert loaded == original
    assert certificates_of(loaded)[1] == [plugged_in_ca.cert]
    assert loaded.identity == BOOKINFO


def test_bundle_chain_pem_is_leaf_then_intermediates(plugged_in_ca):
    bundle = plugged_in_ca.issue(BOOKINFO)
    assert load_pem_certificates(bundle.chain_pem) == [certificates_of(bundle)[0], plugged_in_ca.cert]


@pytest.mark.parametrize(
    "other_key",
    [
        pytest.param(generate_key, id="another-ec-key"),
        pytest.param(lambda: rsa.generate_private_key(65537, 2048), id="rsa-key"),
        pytest.param(ed25519.Ed25519PrivateKey.generate, id="ed25519-key"),
    ],
)
def test_bundle_from_pem_rejects_a_key_that_does_not_match_the_leaf(bundle, other_key):
    with pytest.raises(IdentityError, match="private key does not belong to the leaf"):
        load_bundle(_key_pem(other_key()), bundle.chain_pem, bundle.roots_pem)


def test_bundle_from_pem_rejects_a_broken_key(bundle):
    with pytest.raises(IdentityError, match="private key is not valid unencrypted PEM"):
        load_bundle(b"garbage", bundle.chain_pem, bundle.roots_pem)


@pytest.mark.parametrize(("chain", "roots", "problem"), [
    pytest.param(b"garbage", None, "certificate chain is not valid PEM", id="broken-chain"),
    pytest.param(None, b"garbage", "root bundle is not valid PEM", id="broken-roots"),
])
def test_bundle_from_pem_rejects_broken_certificates(bundle, chain, roots, problem):
    with pytest.raises(IdentityError, match=problem):
        load_bundle(bundle.key_pem, chain or bundle.chain_pem, roots or bundle.roots_pem)


# --- 6. Istio's cacerts plug-in layout -------------------------------------------------------------


def test_write_cacerts_produces_istios_files(cacerts_dir):
    assert set(CACERTS_FILES) == {"ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"}
    assert set(CACERTS_FILES) <= {p.name for p in cacerts_dir.iterdir()}


def test_cacerts_key_is_readable_by_the_owner_only(cacerts_dir):
    assert stat.S_IMODE((cacerts_dir / "ca-key.pem").stat().st_mode) == 0o600


def test_write_cacerts_tightens_an_existing_key_file(tmp_path, intermediate_ca):
    key_file = tmp_path / "ca-key.pem"
    key_file.write_bytes(b"old")
    key_file.chmod(0o644)
    intermediate_ca.write_cacerts(tmp_path)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_cacerts_cert_chain_is_ca_cert_then_root(cacerts_dir, root_ca, intermediate_ca):
    chain = load_pem_certificates((cacerts_dir / "cert-chain.pem").read_bytes())
    assert chain == [intermediate_ca.cert, *root_ca.roots]


def test_plugged_in_ca_signs_leaves_that_verify_to_the_original_root(root_ca, plugged_in_ca):
    issued = plugged_in_ca.issue(BOOKINFO)
    assert verify_chain(*certificates_of(issued)[:2], root_ca.roots, trust_domain="cluster.local") == BOOKINFO


def test_plugged_in_ca_chain_contains_the_intermediate(root_ca, intermediate_ca, plugged_in_ca):
    issued = plugged_in_ca.sign_csr(make_csr(generate_key(), BOOKINFO), BOOKINFO)
    assert issued.intermediates == (intermediate_ca.cert,)
    assert issued.roots == root_ca.roots
    issued.leaf.verify_directly_issued_by(intermediate_ca.cert)


def test_plugged_in_ca_trusts_leaves_of_the_mesh_sharing_its_root(root_ca, plugged_in_ca):
    # §10: sharing a root with an existing mesh lets both trust each other.
    from_existing_mesh = root_ca.issue(OTHER_SA)
    assert verify_chain(certificates_of(from_existing_mesh)[0], (), plugged_in_ca.roots) == OTHER_SA


def test_cert_chain_pem_is_optional(tmp_path, root_ca, intermediate_ca):
    intermediate_ca.write_cacerts(tmp_path)
    (tmp_path / "cert-chain.pem").unlink()
    issued = CertificateAuthority.load_cacerts(tmp_path).issue(BOOKINFO)
    assert verify_chain(*certificates_of(issued)[:2], root_ca.roots) == BOOKINFO


def test_self_signed_root_round_trips_through_cacerts(tmp_path, root_ca):
    root_ca.write_cacerts(tmp_path)
    loaded = CertificateAuthority.load_cacerts(tmp_path)
    assert loaded.intermediates == ()
    issued = loaded.issue(BOOKINFO)
    assert verify_chain(*certificates_of(issued)[:2], root_ca.roots) == BOOKINFO


def test_two_level_intermediate_loads_and_verifies_to_the_root(tmp_path, root_ca, intermediate_ca):
    second = intermediate_ca.issue_intermediate(name="second-level intermediate")
    second.write_cacerts(tmp_path)
    loaded = CertificateAuthority.load_cacerts(tmp_path)
    issued = loaded.issue(BOOKINFO)
    assert certificates_of(issued)[1] == [second.cert, intermediate_ca.cert]
    assert verify_chain(*certificates_of(issued)[:2], root_ca.roots) == BOOKINFO


def test_default_intermediate_names_keep_stacked_chains_verifiable(root_ca):
    # An intermediate named like its issuer would look self-issued and break path building.
    second = root_ca.issue_intermediate().issue_intermediate()
    issued = second.issue(BOOKINFO)
    intermediates = certificates_of(issued)[1]
    assert intermediates[0].subject != intermediates[1].subject
    assert verify_chain(*certificates_of(issued)[:2], root_ca.roots) == BOOKINFO


def _unlink(name):
    return lambda directory, other: (directory / name).unlink()


def _write(name, content):
    return lambda directory, other: (directory / name).write_bytes(content(directory, other))


def _replace_ca_with_a_leaf(directory, other):
    leaf = other.issue(BOOKINFO)
    (directory / "ca-cert.pem").write_bytes(_cert_pem(certificates_of(leaf)[0]))
    (directory / "ca-key.pem").write_bytes(leaf.key_pem)


BROKEN_CACERTS = [
    pytest.param(_unlink("ca-key.pem"), "ca-key.pem", "cannot read", id="missing-ca-key"),
    pytest.param(_unlink("ca-cert.pem"), "ca-cert.pem", "cannot read", id="missing-ca-cert"),
    pytest.param(_unlink("root-cert.pem"), "root-cert.pem", "cannot read", id="missing-root-cert"),
    pytest.param(_write("root-cert.pem", lambda d, o: b"garbage"), "root-cert.pem", "is not valid PEM",
                 id="garbage-root-cert"),
    pytest.param(_write("ca-cert.pem", lambda d, o: b"garbage"), "ca-cert.pem", "is not valid PEM",
                 id="garbage-ca-cert"),
    pytest.param(_write("ca-key.pem", lambda d, o: b"garbage"), "ca-key.pem", "is not an unencrypted PEM key",
                 id="garbage-ca-key"),
    pytest.param(_write("ca-key.pem", lambda d, o: _key_pem(generate_key())), "ca-key.pem",
                 "does not belong to ca-cert.pem", id="key-of-another-cert"),
    pytest.param(_write("ca-key.pem", lambda d, o: _key_pem(ed25519.Ed25519PrivateKey.generate())),
                 "ca-key.pem", "must be an EC or RSA key", id="ed25519-key"),
    pytest.param(_replace_ca_with_a_leaf, "ca-cert.pem", "is not a CA certificate", id="ca-cert-not-a-ca"),
    pytest.param(_write("cert-chain.pem", lambda d, o: (d / "root-cert.pem").read_bytes()), "cert-chain.pem",
                 "must start with ca-cert.pem", id="chain-not-starting-with-ca-cert"),
    pytest.param(_write("cert-chain.pem", lambda d, o: (d / "ca-cert.pem").read_bytes() + o.roots_pem()),
                 "cert-chain.pem", "is broken", id="chain-with-foreign-parent"),
    pytest.param(_write("root-cert.pem", lambda d, o: o.roots_pem()), "root-cert.pem",
                 "does not lead to any certificate in", id="chain-not-reaching-root"),
]


@pytest.mark.parametrize(("corrupt", "file_name", "problem"), BROKEN_CACERTS)
def test_broken_cacerts_fail_to_load_naming_the_file(tmp_path, intermediate_ca, other_ca, corrupt, file_name,
                                                     problem):
    intermediate_ca.write_cacerts(tmp_path)
    corrupt(tmp_path, other_ca)
    with pytest.raises(CaLoadError, match=re.escape(problem)) as raised:
        CertificateAuthority.load_cacerts(tmp_path)
    assert file_name in str(raised.value)


def test_loaded_ca_uses_the_given_trust_domain(tmp_path):
    ca = CertificateAuthority.generate(trust_domain="other.example").issue_intermediate()
    ca.write_cacerts(tmp_path)
    loaded = CertificateAuthority.load_cacerts(tmp_path, trust_domain="other.example")
    assert loaded.issue(FOREIGN).identity == FOREIGN
    with pytest.raises(InvalidCsr, match="this CA signs for 'other.example'"):
        loaded.issue(BOOKINFO)


# Istio's samples/certs Makefile.selfsigned.mk output, rebuilt with cryptography: RSA root and
# intermediate (pathlen 0, DNS SAN for istiod), both RSA 4096, cert-chain.pem = ca-cert + root.


def _istio_ca_cert(subject, issuer, public_key, signing_key, issuer_public_key, path_length, san=None):
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=730))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=True, key_encipherment=True,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


@pytest.fixture(scope="module")
def istio_root_cert_and_dir(tmp_path_factory):
    root_key = rsa.generate_private_key(65537, 4096)
    root_name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Istio"),
        x509.NameAttribute(NameOID.COMMON_NAME, "Root CA"),
    ])
    root = _istio_ca_cert(root_name, root_name, root_key.public_key(), root_key, root_key.public_key(), None)
    ca_key = rsa.generate_private_key(65537, 4096)
    ca_name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Istio"),
        x509.NameAttribute(NameOID.COMMON_NAME, "Intermediate CA"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "cluster1"),
    ])
    ca = _istio_ca_cert(ca_name, root_name, ca_key.public_key(), root_key, root_key.public_key(), 0,
                        san=[x509.DNSName("istiod.istio-system.svc")])
    directory = tmp_path_factory.mktemp("istio-cacerts")
    (directory / "root-cert.pem").write_bytes(_cert_pem(root))
    (directory / "ca-cert.pem").write_bytes(_cert_pem(ca))
    # `openssl genrsa` from OpenSSL 1.x writes the traditional "RSA PRIVATE KEY" form.
    (directory / "ca-key.pem").write_bytes(ca_key.private_bytes(
        PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ))
    (directory / "cert-chain.pem").write_bytes(_cert_pem(ca, root))
    return root, directory


def test_istio_rsa_plug_in_ca_loads_and_signs_verifiable_leaves(istio_root_cert_and_dir):
    istio_root, directory = istio_root_cert_and_dir
    loaded = CertificateAuthority.load_cacerts(directory)
    assert isinstance(loaded.key, rsa.RSAPrivateKey)
    issued = loaded.issue(BOOKINFO)
    assert certificates_of(issued)[2] == [istio_root]
    assert verify_chain(*certificates_of(issued)[:2], [istio_root], trust_domain="cluster.local") == BOOKINFO


def test_intermediate_with_path_length_zero_refuses_to_issue_intermediates(istio_root_cert_and_dir):
    _, directory = istio_root_cert_and_dir
    loaded = CertificateAuthority.load_cacerts(directory)
    with pytest.raises(IdentityError, match="pathLenConstraint 0"):
        loaded.issue_intermediate()
