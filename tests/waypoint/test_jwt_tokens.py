"""One JWT and one key set (waypoint/authn/token.py, jwks.py): Envoy's checks and status strings,
RS256 and ES256 signatures with keys made here, and garbage that is refused with a status, never
with a crash."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.waypoint.jwt_keys import ISSUER, Signer, b64, jwks, unsigned
from waypoint.authn.jwks import JWKS_BAD_KEYS, JWKS_NO_KEYS, JWKS_NO_VALID_KEYS, JWKS_PARSE_ERROR, parse_jwks
from waypoint.authn.token import JwtError, Status, check_time, parse_jwt, verify_signature

RSA = Signer.rsa("rsa-1")
EC = Signer.ec("ec-1")
KEYS = parse_jwks(jwks(RSA, EC))


def status_of(token: str, keys=KEYS, now: float | None = None) -> str:
    try:
        parsed = parse_jwt(token)
        check_time(parsed, time.time() if now is None else now)
        verify_signature(parsed, keys)
    except JwtError as exc:
        return exc.status
    return "OK"


@pytest.mark.parametrize("signer", [RSA, EC], ids=["RS256", "ES256"])
def test_a_signed_token_verifies_and_its_claims_are_read(signer):
    token = signer.token(aud=["a", "b"], sub="bob")
    assert status_of(token) == "OK"
    parsed = parse_jwt(token)
    assert (parsed.alg, parsed.kid, parsed.iss, parsed.sub, parsed.audiences) == (signer.alg, signer.kid, ISSUER,
                                                                                   "bob", ("a", "b"))


@pytest.mark.parametrize("signer", [RSA, EC], ids=["RS256", "ES256"])
def test_a_tampered_payload_fails_verification(signer):
    header, _, signature = signer.token().split(".")
    forged = f"{header}.{b64({'iss': ISSUER, 'sub': 'admin', 'exp': int(time.time()) + 60})}.{signature}"
    assert status_of(forged) == Status.VERIFICATION_FAILS


def test_expiry_and_not_before_allow_envoys_60_seconds_of_clock_skew():
    now = int(time.time())
    assert status_of(RSA.token(exp=now - 30)) == "OK"
    assert status_of(RSA.token(exp=now - 120)) == Status.EXPIRED
    assert status_of(RSA.token(nbf=now + 30)) == "OK"
    assert status_of(RSA.token(nbf=now + 600)) == Status.NOT_YET_VALID


def test_a_token_without_exp_never_expires():
    assert status_of(RSA.token(exp=None)) == "OK"


def test_a_kid_the_set_lacks_is_a_kid_mismatch_and_a_token_without_kid_tries_every_key():
    assert status_of(RSA.token(kid="rotated-away")) == Status.KID_ALG_MISMATCH
    assert status_of(RSA.token(kid="")) == "OK"
    assert status_of(EC.token(kid="")) == "OK"


def test_a_key_of_another_algorithm_is_not_tried():
    only_ec = parse_jwks(jwks(EC))
    assert status_of(RSA.token(kid=""), only_ec) == Status.KID_ALG_MISMATCH


def test_alg_none_is_refused_even_without_a_signature():
    token = unsigned({"alg": "none", "typ": "JWT"}, {"iss": ISSUER, "sub": "alice"})
    assert status_of(token) == Status.HEADER_ALG_NOT_IMPLEMENTED


def test_an_hmac_token_keyed_with_the_rsa_public_key_is_not_accepted():
    """The classic algorithm confusion: HS256 with the public key's PEM as the secret."""
    from cryptography.hazmat.primitives import serialization

    pem = RSA.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64({'alg': 'HS256', 'kid': 'rsa-1'})}.{b64({'iss': ISSUER, 'sub': 'admin'})}"
    token = f"{signing_input}.{b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())}"
    without_algs = parse_jwks(json.dumps({"keys": [{k: v for k, v in RSA.jwk().items() if k != "alg"}]}))
    assert status_of(token) == Status.KID_ALG_MISMATCH  # the key says RS256
    assert status_of(token, without_algs) == Status.VERIFICATION_FAILS  # tried, never as an HMAC secret


@pytest.mark.parametrize(("token", "status"), [
    ("", Status.BAD_FORMAT),
    ("abc", Status.BAD_FORMAT),
    ("a.b", Status.BAD_FORMAT),
    ("a.b.c.d", Status.BAD_FORMAT),
    ("!!!.e30.", Status.HEADER_BAD_BASE64),
    (f"{b64(b'not json')}.e30.", Status.HEADER_BAD_JSON),
    (f"{b64(b'[1]')}.e30.", Status.HEADER_BAD_JSON),
    (f"{b64({'typ': 'JWT'})}.e30.", Status.HEADER_BAD_ALG),
    (f"{b64({'alg': 7})}.e30.", Status.HEADER_BAD_ALG),
    (f"{b64({'alg': 'XS256'})}.e30.", Status.HEADER_ALG_NOT_IMPLEMENTED),
    (f"{b64({'alg': 'RS256', 'kid': 1})}.e30.", Status.HEADER_BAD_KID),
    (f"{b64({'alg': 'RS256'})}.%%%.", Status.PAYLOAD_BAD_BASE64),
    (f"{b64({'alg': 'RS256'})}.{b64(b'{')}.", Status.PAYLOAD_BAD_JSON),
    (f"{b64({'alg': 'RS256'})}.{b64({'iss': 5})}.", Status.ISS_NOT_STRING),
    (f"{b64({'alg': 'RS256'})}.{b64({'sub': []})}.", Status.SUB_NOT_STRING),
    (f"{b64({'alg': 'RS256'})}.{b64({'aud': [1]})}.", Status.AUD_NOT_STRING),
    (f"{b64({'alg': 'RS256'})}.{b64({'exp': 'soon'})}.", "Jwt payload [exp] field is not an integer"),
    (f"{b64({'alg': 'RS256'})}.{b64({'exp': 1.5})}.", "Jwt payload [exp] field is not an integer"),
    (f"{b64({'alg': 'RS256'})}.{b64({'nbf': -1})}.", "Jwt payload [nbf] field is not a positive 64 bit integer"),
    (f"{b64({'alg': 'RS256'})}.{b64({'iat': 2 ** 70})}.", "Jwt payload [iat] field is not a positive 64 bit integer"),
    (f"{b64({'alg': 'RS256'})}.e30.!!", Status.SIGNATURE_BAD_BASE64),
    (f"{b64({'alg': 'RS256'})}.e30.", Status.VERIFICATION_FAILS),
    (f"{b64({'alg': 'ES256', 'kid': 'ec-1'})}.e30.{b64(b'x' * 7)}", Status.VERIFICATION_FAILS),
])
def test_garbage_is_refused_with_envoys_status(token, status):
    assert status_of(token) == status


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.builds(lambda parts: ".".join(parts), st.lists(st.text(max_size=80), max_size=5)))
def test_any_text_is_a_jwt_error_or_a_token_never_another_exception(text):
    try:
        parsed = parse_jwt(text)
        check_time(parsed, time.time())
        verify_signature(parsed, KEYS)
    except JwtError as exc:
        assert exc.status
    else:
        pytest.fail(f"{text!r} verified")


def test_a_key_set_skips_keys_it_cannot_read_and_keeps_the_rest():
    document = {"keys": [RSA.jwk(), {"kty": "RSA", "n": 5}, {"kty": "EC", "crv": "P-256", "alg": "ES384",
                                                              "x": "AA", "y": "AA"}, {"kty": "XYZ"}, "nope", EC.jwk()]}
    keys = parse_jwks(json.dumps(document))
    assert [k.kid for k in keys.keys] == ["rsa-1", "ec-1"]
    assert len(keys.skipped) == 4 and "[kty] is not supported in [keys]" in keys.skipped[2]


@pytest.mark.parametrize(("text", "status"), [
    ("not json", JWKS_PARSE_ERROR),
    ("[]", JWKS_PARSE_ERROR),
    ("{}", JWKS_NO_KEYS),
    ('{"keys": {}}', JWKS_BAD_KEYS),
    ('{"keys": [{"kty": "RSA"}]}', JWKS_NO_VALID_KEYS),
])
def test_an_unusable_key_set_says_why(text, status):
    keys = parse_jwks(text)
    assert not keys.usable and keys.status == status


def test_an_hmac_key_set_verifies_hs256_tokens():
    secret = b"0123456789abcdef0123456789abcdef"
    keys = parse_jwks(json.dumps({"keys": [{"kty": "oct", "kid": "h", "alg": "HS256", "k": b64(secret)}]}))
    token = jwt.encode({"iss": ISSUER, "sub": "svc"}, secret, algorithm="HS256", headers={"kid": "h"})
    assert status_of(token, keys) == "OK"
    assert status_of(jwt.encode({"iss": ISSUER}, b"x" * 32, algorithm="HS256", headers={"kid": "h"}), keys) \
        == Status.VERIFICATION_FAILS
