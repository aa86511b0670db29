"""Signing keys and tokens for the JWT tests, made in the test with `cryptography` and PyJWT.

`Signer.rsa(kid)` / `Signer.ec(kid)` make an RS256 (RSA 2048) or ES256 (P-256) key; `signer.jwk()` is
its public JWK, `jwks(*signers)` a key set document, `signer.token(**claims)` a signed token with
the signer's ``kid`` and sensible defaults (``iss`` ISSUER, ``sub`` alice, ``exp`` in an hour).
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://issuer.example/foo"
AUDIENCE = "shop-api"


@dataclass
class Signer:
    kid: str
    alg: str
    private: Any

    @classmethod
    def rsa(cls, kid: str = "rsa-1") -> Signer:
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str = "ec-1") -> Signer:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.alg.startswith("RS") else ECAlgorithm
        key = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**key, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def token(self, *, headers: dict[str, Any] | None = None, kid: str | None = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "sub": "alice", "iat": now, "exp": now + 3600}
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, self.private, algorithm=self.alg,
                          headers={"kid": self.kid if kid is None else kid, **(headers or {})})


def jwks(*signers: Signer) -> str:
    return json.dumps({"keys": [s.jwk() for s in signers]})


def b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A token laid out by hand (alg none, forged headers)."""
    return f"{b64(header)}.{b64(payload)}.{b64(signature) if signature else ''}"
