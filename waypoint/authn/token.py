"""One JWT: parsed as Envoy's jwt_verify_lib parses it, checked for time, verified against a key set.

`parse_jwt(text)` returns a `Jwt` or raises `JwtError` whose ``status`` is one of the `Status`
messages below (the exact strings Envoy answers in the 401 body and writes into the response code
details). The checks, in jwt_verify_lib's order (``source/common/jwt/jwt.cc`` in Envoy):

- three base64url sections separated by two dots, the header and payload JSON objects;
- header ``alg`` a string and one of RS/PS/ES/HS 256/384/512 or EdDSA (``none`` is refused, as
  is anything else), ``kid`` a string when present;
- payload ``iss``, ``sub``, ``jti`` strings when present, ``iat``/``nbf``/``exp`` non-negative
  integers when present (a JSON number with a fraction is refused), ``aud`` a string or a list of
  strings.

`check_time` applies ``nbf``/``exp`` with Envoy's default clock skew of 60 s (an absent ``exp``
never expires). `verify_signature` tries every key of the set that fits the token as
``verifyJwtWithoutTimeChecking`` does: a key whose ``kid`` differs from the token's (both
present) or whose ``alg`` differs (when the key names one) is skipped; no key left is "Jwks
doesn't have key to match kid or alg from Jwt"; keys left but none verifying is "Jwt verification
fails". The signature itself is checked with PyJWT's algorithm implementations (over
`cryptography`), chosen by the token's ``alg`` and only for a key of the matching type (RSA for
RS/PS, EC for ES, oct for HS, OKP for EdDSA), so an HMAC token can never be checked against an
RSA public key used as a secret.

Nothing here raises anything but `JwtError` for any input text.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from .jwks import Key, KeySet


class Status:
    """Envoy's status strings (``source/common/jwt/status.cc``) for the failures wisp reports."""

    MISSING = "Jwt is missing"
    NOT_YET_VALID = "Jwt not yet valid"
    EXPIRED = "Jwt is expired"
    BAD_FORMAT = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
    HEADER_BAD_BASE64 = "Jwt header is an invalid Base64url encoded"
    HEADER_BAD_JSON = "Jwt header is an invalid JSON"
    HEADER_BAD_ALG = "Jwt header [alg] field is required and must be a string"
    HEADER_ALG_NOT_IMPLEMENTED = "Jwt header [alg] is not supported"
    HEADER_BAD_KID = "Jwt header [kid] field is not a string"
    PAYLOAD_BAD_BASE64 = "Jwt payload is an invalid Base64url encoded"
    PAYLOAD_BAD_JSON = "Jwt payload is an invalid JSON"
    ISS_NOT_STRING = "Jwt payload [iss] field is not a string"
    SUB_NOT_STRING = "Jwt payload [sub] field is not a string"
    JTI_NOT_STRING = "Jwt payload [jti] field is not a string"
    AUD_NOT_STRING = "Jwt payload [aud] field is not a string or string list"
    SIGNATURE_BAD_BASE64 = "Jwt signature is an invalid Base64url encoded"
    ED25519_SIGNATURE_LENGTH = "Jwt ED25519 signature is wrong length"
    UNKNOWN_ISSUER = "Jwt issuer is not configured"
    AUDIENCE_NOT_ALLOWED = "Audiences in Jwt are not allowed"
    VERIFICATION_FAILS = "Jwt verification fails"
    KID_ALG_MISMATCH = "Jwks doesn't have key to match kid or alg from Jwt"
    NO_VALID_KEYS = "Jwks doesn't have any valid public key"
    FETCH_FAILED = "Jwks remote fetch is failed"

    @staticmethod
    def time_field(name: str, problem: str) -> str:
        if problem == "range":
            return f"Jwt payload [{name}] field is not a positive 64 bit integer"
        return f"Jwt payload [{name}] field is not an integer"


class JwtError(Exception):
    """A token that cannot be accepted; ``status`` is Envoy's message for why."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


SUPPORTED_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                            "HS256", "HS384", "HS512", "EdDSA"})
# The key type each algorithm family verifies with (RFC 7518 §3, RFC 8037).
_KTY_OF = {"RS": "RSA", "PS": "RSA", "ES": "EC", "HS": "oct", "Ed": "OKP"}
CLOCK_SKEW_SECONDS = 60
_U64 = 2 ** 64
_B64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def b64url_decode(text: str) -> bytes:
    """Base64url with or without padding, as absl's WebSafeBase64Unescape accepts it; ValueError otherwise."""
    if not text.isascii():
        raise ValueError("not base64url")
    raw = text.encode("ascii").rstrip(b"=")
    if not set(raw) <= _B64URL:
        raise ValueError("not base64url")
    if len(raw) % 4 == 1:
        raise ValueError("truncated base64url")
    try:
        return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


@dataclass(slots=True)
class Jwt:
    """A parsed token. ``header_b64``/``payload_b64`` are the sections as received (the signed input)."""

    header_b64: str
    payload_b64: str
    signature: bytes
    alg: str
    kid: str
    header: dict[str, Any]
    payload: dict[str, Any]
    iss: str = ""
    sub: str = ""
    audiences: tuple[str, ...] = ()
    nbf: int = 0
    exp: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def signed_input(self) -> bytes:
        return f"{self.header_b64}.{self.payload_b64}".encode("ascii")


def _json_object(section: str, bad_base64: str, bad_json: str) -> dict[str, Any]:
    try:
        raw = b64url_decode(section)
    except ValueError:
        raise JwtError(bad_base64) from None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise JwtError(bad_json) from None
    if not isinstance(value, dict):
        raise JwtError(bad_json)
    return value


def _optional_string(payload: dict[str, Any], name: str, status: str) -> str:
    value = payload.get(name, "")
    if not isinstance(value, str):
        raise JwtError(status)
    return value


def _time(payload: dict[str, Any], name: str) -> int:
    if name not in payload:
        return 0
    value = payload[name]
    # JSON numbers arrive as int or float; protobuf's Struct holds doubles, and jwt_verify_lib
    # accepts a double only if it is a whole number.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JwtError(Status.time_field(name, "type"))
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")) or not value.is_integer():
            raise JwtError(Status.time_field(name, "type"))
        value = int(value)
    if value < 0 or value >= _U64:
        raise JwtError(Status.time_field(name, "range"))
    return value


def parse_jwt(text: str) -> Jwt:
    """`text` as a JWT (compact JWS); raises JwtError."""
    parts = text.split(".")
    if len(parts) != 3:
        raise JwtError(Status.BAD_FORMAT)
    header_b64, payload_b64, signature_b64 = parts
    header = _json_object(header_b64, Status.HEADER_BAD_BASE64, Status.HEADER_BAD_JSON)
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise JwtError(Status.HEADER_BAD_ALG)
    if alg not in SUPPORTED_ALGS:
        raise JwtError(Status.HEADER_ALG_NOT_IMPLEMENTED)
    kid = header.get("kid", "")
    if not isinstance(kid, str):
        raise JwtError(Status.HEADER_BAD_KID)
    payload = _json_object(payload_b64, Status.PAYLOAD_BAD_BASE64, Status.PAYLOAD_BAD_JSON)
    iss = _optional_string(payload, "iss", Status.ISS_NOT_STRING)
    sub = _optional_string(payload, "sub", Status.SUB_NOT_STRING)
    _optional_string(payload, "jti", Status.JTI_NOT_STRING)
    aud = payload.get("aud", ())
    if isinstance(aud, str):
        audiences: tuple[str, ...] = (aud,)
    elif isinstance(aud, (list, tuple)) and all(isinstance(a, str) for a in aud):
        audiences = tuple(aud)
    else:
        raise JwtError(Status.AUD_NOT_STRING)
    _time(payload, "iat")
    nbf = _time(payload, "nbf")
    exp = _time(payload, "exp")
    try:
        signature = b64url_decode(signature_b64)
    except ValueError:
        raise JwtError(Status.SIGNATURE_BAD_BASE64) from None
    return Jwt(header_b64, payload_b64, signature, alg, kid, header, payload, iss, sub, audiences, nbf, exp)


def check_time(token: Jwt, now: float, skew: int = CLOCK_SKEW_SECONDS) -> None:
    """Raises JwtError if `token` is not valid at `now` (seconds since the epoch)."""
    seconds = int(now)
    if token.nbf and token.nbf > seconds + skew:
        raise JwtError(Status.NOT_YET_VALID)
    if token.exp and token.exp + skew < seconds:
        raise JwtError(Status.EXPIRED)


def _verifies(token: Jwt, key: Key) -> bool:
    family = token.alg[:2]
    if _KTY_OF.get(family) != key.kty:
        return False
    algorithm = key.algorithm(token.alg)
    if algorithm is None:
        return False
    try:
        return bool(algorithm.verify(token.signed_input, key.material, token.signature))
    except (ValueError, TypeError, ArithmeticError):
        # cryptography refuses some malformed signatures (wrong size) with ValueError
        return False


def verify_signature(token: Jwt, keys: KeySet) -> None:
    """Raises JwtError unless a key of `keys` verifies `token`'s signature."""
    matched = False
    for key in keys.keys:
        if token.kid and key.kid and key.kid != token.kid:
            continue
        if key.alg and key.alg != token.alg:
            continue
        matched = True
        if key.kty == "OKP" and token.alg == "EdDSA" and len(token.signature) != 64:
            raise JwtError(Status.ED25519_SIGNATURE_LENGTH)
        if _verifies(token, key):
            return
    raise JwtError(Status.VERIFICATION_FAILS if matched else Status.KID_ALG_MISMATCH)
