"""The data plane's certificate path without `cryptography`: keys and CSRs from the `openssl`
command, the CA's answer read back into a bundle, and each way that answer can be unusable."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from wisp.identity import CertificateAuthority, IdentityError, SpiffeId, certificates_of, generate_key, openssl
from wisp.identity.certs import certificates_to_pem, key_to_pem

WEB = SpiffeId("cluster.local", "shop", "web")
DB = SpiffeId("cluster.local", "shop", "db")


@pytest.fixture(scope="module")
def ca():
    return CertificateAuthority.generate()


async def test_the_csr_asks_for_the_identity_alone_with_an_empty_subject(ca):
    key_pem, csr_pem = await openssl.new_key_and_csr(WEB)
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid
    assert len(csr.subject) == 0
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [str(WEB)]
    assert b"BEGIN PRIVATE KEY" in key_pem  # PKCS#8, as certs.key_to_pem writes it
    # The CA's own CSR checks accept it.
    assert ca.sign_csr(csr_pem, WEB).leaf.public_key() == csr.public_key()


async def test_a_bundle_from_the_cas_answer_has_the_leafs_facts(ca):
    key_pem, csr_pem = await openssl.new_key_and_csr(WEB)
    issued = ca.sign_csr(csr_pem, WEB, lifetime=dt.timedelta(hours=2))
    bundle = await openssl.make_bundle(key_pem, issued.chain_pem(), WEB)
    assert bundle.identity == WEB
    assert bundle.serial == issued.leaf.serial_number
    assert (bundle.not_before, bundle.not_after) == (issued.leaf.not_valid_before_utc, issued.leaf.not_valid_after_utc)
    leaf, intermediates, roots = certificates_of(bundle)
    assert (leaf, intermediates, roots) == (issued.leaf, [], list(ca.roots))


async def test_intermediates_go_into_the_chain_and_the_last_part_is_the_roots(ca):
    plugged = ca.issue_intermediate()
    key_pem, csr_pem = await openssl.new_key_and_csr(WEB)
    issued = plugged.sign_csr(csr_pem, WEB)
    bundle = await openssl.make_bundle(key_pem, issued.chain_pem(), WEB)
    assert certificates_of(bundle)[1] == [plugged.cert]
    assert certificates_of(bundle)[2] == list(ca.roots)


async def _answer(ca, identity=WEB):
    key_pem, csr_pem = await openssl.new_key_and_csr(identity)
    return key_pem, ca.sign_csr(csr_pem, identity).chain_pem()


async def test_a_certificate_for_another_identity_is_refused(ca):
    key_pem, chain = await _answer(ca, DB)
    with pytest.raises(IdentityError, match="the CA issued spiffe://cluster.local/ns/shop/sa/db, not"):
        await openssl.make_bundle(key_pem, chain, WEB)


async def test_a_certificate_for_another_key_is_refused(ca):
    _, chain = await _answer(ca)
    other_key, _ = await openssl.new_key_and_csr(WEB)
    with pytest.raises(IdentityError, match="does not load"):
        await openssl.make_bundle(other_key, chain, WEB)


@pytest.mark.parametrize("mangle, problem", [
    pytest.param(lambda chain: chain[:1], "needs a leaf and a root bundle", id="no-roots"),
    pytest.param(lambda chain: [b"garbage", chain[1]], "holds no PEM certificate", id="garbage-leaf"),
    pytest.param(lambda chain: [chain[0], b"garbage"], "holds no PEM certificate", id="garbage-roots"),
    pytest.param(lambda chain: [chain[0].replace(b"MI", b"QQ"), chain[1]], "openssl x509 failed", id="corrupt-leaf"),
    pytest.param(lambda chain: [chain[0], chain[1].replace(b"MI", b"QQ")], "does not load", id="corrupt-roots"),
])
async def test_an_unusable_answer_is_refused_with_a_reason(ca, mangle, problem):
    key_pem, chain = await _answer(ca)
    with pytest.raises(IdentityError, match=problem):
        await openssl.make_bundle(key_pem, mangle(chain), WEB)


async def test_a_leaf_without_a_spiffe_id_is_refused(ca):
    key = generate_key()
    now = dt.datetime.now(dt.timezone.utc)
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.cert.subject)
        .public_key(key.public_key()).serial_number(7)
        .not_valid_before(now).not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("example.test")]), critical=True)
        .sign(ca.key, hashes.SHA256())
    )
    with pytest.raises(IdentityError, match="no SPIFFE URI SAN"):
        await openssl.make_bundle(key_to_pem(key), [certificates_to_pem([leaf]), ca.roots_pem()], WEB)


async def test_a_missing_openssl_command_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(openssl, "OPENSSL", "/nonexistent/openssl")
    with pytest.raises(IdentityError, match="command is needed"):
        await openssl.new_key_and_csr(WEB)


def test_proxies_load_no_x509_library_or_httpx():
    """What ztunnel imports stays out of `cryptography` and httpx (11 MB of RSS between them)."""
    probe = ("import sys, ztunnel.main, wisp.engine.runtime; "
             "print(' '.join(m for m in ('cryptography', 'httpx') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []
