"""JSON Web Key Sets: `parse_jwks(text) -> KeySet`, as Envoy's jwt_verify_lib reads them.

A JWKS is a JSON object with a ``keys`` list (RFC 7517 §5). Each entry needs a string ``kty``;
``kid`` and ``alg`` are optional. Supported: ``RSA`` (``n``, ``e``; ``alg`` RS*/PS* if given),
``EC`` (``x``, ``y``, ``crv`` P-256/P-384/P-521; ``alg`` ES* matching the curve if given; a
missing ``crv`` is taken from ``alg``, P-256 by default), ``oct`` (``k``; ``alg`` HS* if given) and
``OKP`` (``crv`` Ed25519, ``x``; ``alg`` EdDSA if given). As in jwt_verify_lib
(``Jwks::createFromJwksCore``), an entry that is not an object or cannot be read is skipped, and
the set is unusable only when no key is left (``status`` then says why; `KeySet.keys` is empty).
Envoy's other forms (a PEM public key, Google's ``{kid: x509 PEM}`` map) are not read.

Keys are built with PyJWT's JWK readers (``jwt.algorithms``, on `cryptography`), imported on first
use so a waypoint without RequestAuthentication never loads them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# jwt_verify_lib's status strings for a key set that cannot be used.
JWKS_PARSE_ERROR = "Jwks is an invalid JSON"
JWKS_NO_KEYS = "Jwks does not have [keys] field"
JWKS_BAD_KEYS = "[keys] in Jwks is not an array"
JWKS_NO_VALID_KEYS = "Jwks doesn't have any valid public key"

_EC_CURVE_OF_ALG = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
# A JWKS larger than this is refused (a key set of ~1,000 RSA-4096 keys fits).
MAX_JWKS_BYTES = 1 << 20


class BadKey(ValueError):
    """One JWK that cannot be used."""


@dataclass(frozen=True, slots=True)
class Key:
    kty: str
    kid: str
    alg: str
    crv: str
    material: Any  # a cryptography public key, or the HMAC secret bytes

    def algorithm(self, alg: str) -> Any | None:
        """PyJWT's implementation of `alg` (None if PyJWT lacks it)."""
        return _algorithms().get(alg)


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: tuple[Key, ...] = ()
    status: str = ""  # why the set has no usable key ("" when it has some)
    skipped: tuple[str, ...] = ()  # why each skipped entry was skipped

    @property
    def usable(self) -> bool:
        return bool(self.keys)


_ALGORITHMS: dict[str, Any] | None = None


def _algorithms() -> dict[str, Any]:
    global _ALGORITHMS
    if _ALGORITHMS is None:
        from jwt.algorithms import get_default_algorithms

        _ALGORITHMS = {name: algo for name, algo in get_default_algorithms().items() if name != "none"}
    return _ALGORITHMS


def _string(jwk: dict[str, Any], name: str, what: str, required: bool = True) -> str:
    value = jwk.get(name)
    if value is None and not required:
        return ""
    if value is None:
        raise BadKey(f"[{name}] field is missing for {what}")
    if not isinstance(value, str):
        raise BadKey(f"[{name}] field is not string for {what}")
    return value


def _read_key(jwk: dict[str, Any]) -> Key:
    kty = jwk.get("kty")
    if kty is None:
        raise BadKey("[kty] is missing in [keys]")
    if not isinstance(kty, str):
        raise BadKey("[kty] is bad in [keys]")
    kid = jwk.get("kid") if isinstance(jwk.get("kid"), str) else ""
    alg = jwk.get("alg") if isinstance(jwk.get("alg"), str) else ""
    algorithms = _algorithms()
    from jwt.exceptions import InvalidKeyError

    try:
        if kty == "RSA":
            if alg and not alg.startswith(("RS", "PS")):
                raise BadKey("[alg] is not started with [RS] or [PS] for an RSA key")
            _string(jwk, "n", "a RSA key")
            _string(jwk, "e", "a RSA key")
            material = algorithms["RS256"].from_jwk(dict(jwk, alg="RS256"))
            return Key("RSA", kid, alg, "", material)
        if kty == "EC":
            if alg and not alg.startswith("ES"):
                raise BadKey("[alg] is not started with [ES] for an EC key")
            crv = jwk.get("crv")
            if crv is None:
                crv = _EC_CURVE_OF_ALG.get(alg, "P-256")
            if not isinstance(crv, str):
                raise BadKey("[crv] field is not string for an EC key")
            if crv not in _EC_CURVE_OF_ALG.values() or (alg and alg not in _EC_CURVE_OF_ALG):
                raise BadKey("[crv] or [alg] field is not supported for an EC key")
            if alg and _EC_CURVE_OF_ALG[alg] != crv:
                raise BadKey("[crv] field specified is not compatible with [alg] for an EC key")
            _string(jwk, "x", "an EC key")
            _string(jwk, "y", "an EC key")
            material = algorithms["ES256"].from_jwk(dict(jwk, crv=crv))
            return Key("EC", kid, alg, crv, material)
        if kty == "oct":
            if alg and not alg.startswith("HS"):
                raise BadKey("[alg] does not start with [HS] for an HMAC key")
            _string(jwk, "k", "an HMAC key")
            material = algorithms["HS256"].from_jwk(jwk)
            return Key("oct", kid, alg, "", material)
        if kty == "OKP":
            if alg and alg != "EdDSA":
                raise BadKey("[alg] is not [EdDSA] for an OKP key")
            crv = _string(jwk, "crv", "an OKP key")
            if crv != "Ed25519":
                raise BadKey("[crv] field is not supported for an OKP key")
            _string(jwk, "x", "an OKP key")
            material = algorithms["EdDSA"].from_jwk(jwk)
            return Key("OKP", kid, alg, crv, material)
    except BadKey:
        raise
    except (InvalidKeyError, ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise BadKey(f"{kty} key cannot be read: {exc}") from None
    raise BadKey("[kty] is not supported in [keys]")


def parse_jwks(text: str | bytes) -> KeySet:
    """The usable keys of a JWKS document (never raises)."""
    if len(text) > MAX_JWKS_BYTES:
        return KeySet(status=f"{JWKS_PARSE_ERROR}: larger than {MAX_JWKS_BYTES} bytes")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return KeySet(status=JWKS_PARSE_ERROR)
    if not isinstance(document, dict):
        return KeySet(status=JWKS_PARSE_ERROR)
    if "keys" not in document:
        return KeySet(status=JWKS_NO_KEYS)
    entries = document["keys"]
    if not isinstance(entries, list):
        return KeySet(status=JWKS_BAD_KEYS)
    keys: list[Key] = []
    skipped: list[str] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            skipped.append(f"keys[{index}]: not an object")
            continue
        try:
            keys.append(_read_key(entry))
        except BadKey as exc:
            skipped.append(f"keys[{index}]: {exc}")
    if not keys:
        return KeySet(status=JWKS_NO_VALID_KEYS, skipped=tuple(skipped))
    return KeySet(tuple(keys), "", tuple(skipped))


def kids(keys: KeySet) -> frozenset[str]:
    return frozenset(key.kid for key in keys.keys if key.kid)
