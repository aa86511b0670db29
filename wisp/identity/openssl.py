"""Keys, CSRs and certificate facts for the data plane, made by the `openssl` command.

A proxy needs X.509 work only when it asks for a certificate: a new key and CSR, then, of the
leaf the CA returns, its identity, serial and validity. Doing that in a short `openssl`
subprocess keeps `cryptography` (8.7 MB of RSS) out of proxies that run for days; each call
costs about 5 ms of a process start, once per identity per rotation. Everything else a proxy
does with certificates goes through the `ssl` module, which links the same OpenSSL.

The key is ECDSA P-256 in PKCS#8 and the CSR has an empty subject and the SPIFFE ID as its only
(critical) URI SAN, as `certs.make_csr` and Istio's proxies make them.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import ssl
from dataclasses import dataclass

import trio

from .bundle import CertBundle
from .errors import IdentityError, InvalidSpiffeId
from .spiffe import SpiffeId

OPENSSL = os.environ.get("WISP_OPENSSL", "openssl")
_TIMEOUT = 10.0
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?\r?\n-----END \1-----\r?\n?", re.S)
_FIELD = re.compile(r"^(serial|notBefore|notAfter)=(.*)$", re.M)


@dataclass(slots=True, frozen=True)
class LeafFacts:
    """What a proxy reads of its own leaf certificate."""

    identities: tuple[SpiffeId, ...]
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime


async def new_key_and_csr(identity: SpiffeId) -> tuple[bytes, bytes]:
    """(PKCS#8 PEM key, PEM CSR) for `identity`, from one `openssl req` run."""
    # SpiffeId admits only [A-Za-z0-9._-] in its parts, so the SAN cannot break -addext's syntax.
    out = await _run(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "-", "-subj", "/", "-sha256",
        "-addext", f"subjectAltName=critical,URI:{identity}",
    )
    key, csr = _blocks(out, b"PRIVATE KEY"), _blocks(out, b"CERTIFICATE REQUEST")
    if len(key) != 1 or len(csr) != 1:
        raise IdentityError("openssl req did not print one key and one CSR")
    return key[0], csr[0]


async def leaf_facts(leaf_pem: bytes) -> LeafFacts:
    """Identity, serial and validity of the first certificate in `leaf_pem`; IdentityError if
    OpenSSL cannot read it or it names no SPIFFE ID."""
    text = (await _run("x509", "-noout", "-serial", "-startdate", "-enddate", "-ext", "subjectAltName",
                       stdin=leaf_pem)).decode("ascii", "replace")
    fields = dict(_FIELD.findall(text))
    try:
        serial = int(fields["serial"], 16)
        not_before = _openssl_time(fields["notBefore"])
        not_after = _openssl_time(fields["notAfter"])
    except (KeyError, ValueError) as exc:
        raise IdentityError(f"openssl x509 printed no usable serial or validity: {exc}") from None
    identities = []
    for uri in re.findall(r"URI:([^,\s]+)", text):
        try:
            identities.append(SpiffeId.parse(uri))
        except InvalidSpiffeId:
            continue  # not ours to use, as certs.spiffe_ids_of skips it
    return LeafFacts(tuple(identities), serial, not_before, not_after)


async def make_bundle(key_pem: bytes, chain: list[bytes], identity: SpiffeId) -> CertBundle:
    """A bundle from a key and the CA's answer for it (leaf, intermediates…, then the root
    bundle, each PEM); IdentityError if it is unusable or not for `identity`."""
    if len(chain) < 2:
        raise IdentityError("a certificate chain needs a leaf and a root bundle")
    groups = [_blocks(part, b"CERTIFICATE") for part in chain]
    if not all(groups):
        raise IdentityError("a part of the certificate chain holds no PEM certificate")
    leaf = groups[0][0]
    chain_pem = b"".join(block for group in groups[:-1] for block in group)
    roots_pem = b"".join(groups[-1])
    facts = await leaf_facts(leaf)
    if not facts.identities:
        raise IdentityError("the issued certificate has no SPIFFE URI SAN")
    if facts.identities[0] != identity:
        raise IdentityError(f"the CA issued {facts.identities[0]}, not {identity}")
    bundle = CertBundle(key_pem, chain_pem, roots_pem, identity, facts.serial, facts.not_before,
                        facts.not_after)
    await trio.to_thread.run_sync(check_loads, bundle)
    return bundle


def check_loads(bundle: CertBundle) -> None:
    """OpenSSL takes the roots, the chain and the key, and the key is the leaf's (IdentityError
    if not). Writes a private temporary file: call it off the event loop."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cadata=bundle.roots_pem.decode("ascii"))
        with bundle.pem_file() as path:
            ctx.load_cert_chain(path)
    except (ssl.SSLError, ValueError) as exc:
        raise IdentityError(f"certificate bundle does not load: {exc}") from None


def _blocks(data: bytes, label: bytes) -> list[bytes]:
    return [m.group(0) if m.group(0).endswith(b"\n") else m.group(0) + b"\n"
            for m in _PEM_BLOCK.finditer(data) if m.group(1) == label]


def _openssl_time(text: str) -> dt.datetime:
    """`Dec  4 18:44:05 2026 GMT`, as `openssl x509 -startdate` prints it."""
    return dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(text.strip()), dt.timezone.utc)


async def _run(*args: str, stdin: bytes = b"") -> bytes:
    try:
        with trio.fail_after(_TIMEOUT):
            done = await trio.run_process([OPENSSL, *args], stdin=stdin, capture_stdout=True,
                                          capture_stderr=True, check=False)
    except FileNotFoundError:
        raise IdentityError(f"the {OPENSSL!r} command is needed to make keys and read certificates") from None
    except trio.TooSlowError:
        raise IdentityError(f"openssl {args[0]} did not finish within {_TIMEOUT:g} s") from None
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise IdentityError(f"openssl {args[0]} failed: {detail[-1] if detail else done.returncode}")
    return done.stdout
