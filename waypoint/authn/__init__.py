"""RequestAuthentication (JWT) at the waypoint: pure decisions, plus the key sets fetched from ``jwksUri``.

The waypoint's authn stage, which runs before authorize (`waypoint.pipeline`). Once per config the
waypoint compiles the RequestAuthentication objects that apply to it (`compile_authn`, Istio's
``targetRefs`` attachment for waypoints) and tells its `RemoteJwks` which ``jwksUri``s to keep
fetched; per request the pipeline picks the `RuleSet` for the Service the client dialled and calls
`authenticate`: `Rejected` is answered at once (401, or 403 for a disallowed audience), and
`Authenticated` carries the `RequestAuth` that ``requestPrincipals`` and ``request.auth.*`` match
in `waypoint.authz`, with the request's headers and target as the rules leave them.

Layout, in the order a config and then a request pass through it: ``policy`` (objects → rules,
attachment, token locations), ``jwks`` (JSON Web Key Sets), ``fetch`` (``jwksUri`` through the
mesh: cache, refresh, refetch on an unknown ``kid``), ``token`` (one JWT: parse, time, signature,
with Envoy's status strings), ``authenticate`` (the decision). docs/jwt.md has the fields, the
results table and what is not supported.
"""

from .authenticate import Authenticated, KeySource, Rejected, RequestAuth, authenticate, claim_value
from .fetch import RemoteJwks, mesh_fetch, parse_uri, service_for_host
from .jwks import Key, KeySet, parse_jwks
from .policy import KIND, JwtRule, RuleSet, WaypointAuthn, compile_authn
from .token import Jwt, JwtError, Status, parse_jwt

__all__ = [
    "KIND",
    "Authenticated",
    "Jwt",
    "JwtError",
    "JwtRule",
    "Key",
    "KeySet",
    "KeySource",
    "Rejected",
    "RemoteJwks",
    "RequestAuth",
    "RuleSet",
    "Status",
    "WaypointAuthn",
    "authenticate",
    "claim_value",
    "compile_authn",
    "mesh_fetch",
    "parse_jwks",
    "parse_jwt",
    "parse_uri",
    "service_for_host",
]
