"""The authn decision for one request: `authenticate(rules, request, keys, now) -> Authenticated | Rejected`.

Istio's semantics at the waypoint (the jwt_authn filter ``convertToEnvoyJwtConfig`` builds: every
provider OR ``allow_missing``, ``bypass_cors_preflight: true``), in order:

1. A CORS preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) passes
   without looking for a token.
2. Headers the rules write (``outputPayloadToHeader``, ``outputClaimToHeaders``) are removed from
   the request, so only the waypoint can set them.
3. Tokens are looked for where the rules say (`policy`): header locations first (a header whose
   value lacks the location's prefix holds no token; every value of a repeated header counts),
   then query parameters (the first value, percent-decoded), then cookies.
4. No token anywhere: the request passes with no principal (``request.auth.*`` empty), and
   AuthorizationPolicy decides (a rule with ``requestPrincipals: ["*"]`` then denies with 403).
5. Every token found must be valid, each under the rule of its ``iss`` among the rules that read its
   location: parsed (`token.parse_jwt`), issuer known there, within ``nbf``/``exp`` (60 s skew),
   an allowed audience (none configured: any), signed by a key of the rule's set. The first
   failure rejects the request: **401** with Envoy's status string as the body, a
   ``www-authenticate: Bearer realm="<url>", error="invalid_token"`` header and the response
   code detail ``jwt_authn_access_denied{<status with _ for spaces>}``; a disallowed audience is
   **403** (Envoy's jwt_authn answers ``JwtAudienceNotAllowed`` with Forbidden).
   Istio leaves a request with several tokens undefined (its output principal is
   nondeterministic); wisp requires all of them to be valid and takes the principal of the first.
6. Success: ``request.auth.principal`` is ``<iss>/<sub>``, ``audiences`` the ``aud`` values,
   ``presenter`` the ``azp`` claim, ``claims`` the payload with Istio's space-delimited claims
   (``scope``, ``permission``) split into lists. For each token's rule: the payload section goes
   to ``outputPayloadToHeader`` (base64url, as received), string/number/boolean claims to their
   ``outputClaimToHeaders`` headers (replacing any value), and unless ``forwardOriginalToken``
   the token is removed: its header whole, or its query parameter (cookies keep it, as Envoy's).

A key set fetched from ``jwksUri`` may not have a token's ``kid`` yet: the request is refused
with "Jwks doesn't have key to match kid or alg from Jwt" and `KeySource.unknown_kid` asks for a
refresh (rate-limited by the fetcher), so a rotation is picked up within a few seconds without a
request ever waiting on a fetch. Pure: no I/O, the clock and the key source are arguments.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote_plus

from .jwks import KeySet
from .policy import SPACE_DELIMITED_CLAIMS, JwtRule, RuleSet
from .token import Jwt, JwtError, Status, check_time, parse_jwt, verify_signature

UNAUTHORIZED = 401
FORBIDDEN = 403
DETAIL_PREFIX = "jwt_authn_access_denied"
MAX_REALM_PATH = 256
_JWT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


class KeySource(Protocol):
    """Key sets fetched from ``jwksUri`` (`waypoint.authn.fetch.RemoteJwks`)."""

    def keys(self, uri: str) -> KeySet | None: ...
    def unknown_kid(self, uri: str) -> None: ...


@dataclass(frozen=True, slots=True)
class RequestAuth:
    """What ``request.auth.*`` conditions and ``requestPrincipals`` see of a verified token."""

    principal: str
    audiences: tuple[str, ...] = ()
    presenter: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The request goes on; `auth` None when it carried no token. `headers`/`target` replace the
    request's when not None (sanitised, token removed, payload and claims added)."""

    auth: RequestAuth | None
    headers: list[tuple[bytes, bytes]] | None = None
    target: bytes | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    status: int
    message: str
    www_authenticate: bytes

    @property
    def body(self) -> bytes:
        return self.message.encode()

    @property
    def detail(self) -> str:
        return f"{DETAIL_PREFIX}{{{'_'.join(self.message.split())}}}"


@dataclass(slots=True)
class _Found:
    token: str
    rules: tuple[JwtRule, ...]
    header: bytes | None = None  # the header it came from (removed on success)
    param: str | None = None  # the query parameter it came from


def _jwt_after(value: str, start: int) -> str:
    """Envoy's extractJWT: skip to the first base64url-or-dot character after the prefix."""
    for index in range(start, len(value)):
        if value[index] in _JWT_CHARS:
            return value[index:]
    return value


def _query(target: str) -> list[tuple[str, str]]:
    _, sep, query = target.partition("?")
    if not sep:
        return []
    query = query.partition("#")[0]
    out = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        out.append((unquote_plus(name), unquote_plus(value)))
    return out


def _cookies(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        for item in value.split(";"):
            name, sep, cookie = item.strip().partition("=")
            if sep and name and name not in out:
                out[name] = cookie.strip().strip('"')
    return out


def _extract(rules: RuleSet, headers: list[tuple[bytes, bytes]], target: str) -> list[_Found]:
    found: list[_Found] = []
    by_name: dict[bytes, list[str]] | None = None
    if rules.headers or rules.cookies:
        by_name = {}
        for name, value in headers:
            by_name.setdefault(name.lower(), []).append(value.decode("latin-1"))
    for location, readers in rules.headers:
        for value in by_name.get(location.name.encode("latin-1"), ()) if by_name is not None else ():
            token = value
            if location.prefix:
                at = value.find(location.prefix)
                if at < 0:
                    continue
                token = _jwt_after(value, at + len(location.prefix))
            found.append(_Found(token, readers, header=location.name.encode("latin-1")))
    if rules.params and "?" in target:
        params = _query(target)
        for name, readers in rules.params:
            for key, value in params:
                if key == name:
                    found.append(_Found(value, readers, param=name))
                    break
    if rules.cookies and by_name is not None:
        jar = _cookies(by_name.get(b"cookie", []))
        for name, readers in rules.cookies:
            if name in jar:
                found.append(_Found(jar[name], readers))
    return found


def _sanitize_audience(value: str) -> str:
    # Envoy's CheckAudience compares audiences without an http(s):// scheme and a trailing "/".
    for scheme in ("https://", "http://"):
        if value.startswith(scheme):
            value = value[len(scheme):]
            break
    return value[:-1] if value.endswith("/") else value


def _audience_allowed(rule: JwtRule, token: Jwt) -> bool:
    if not rule.audiences:
        return True
    allowed = {_sanitize_audience(a) for a in rule.audiences}
    return any(_sanitize_audience(a) in allowed for a in token.audiences)


def _keys_of(rule: JwtRule, source: KeySource | None) -> KeySet:
    if rule.jwks is not None:
        return rule.jwks
    fetched = source.keys(rule.jwks_uri) if source is not None else None
    if fetched is None:
        raise JwtError(Status.FETCH_FAILED)
    return fetched


def _verify(found: _Found, source: KeySource | None, now: float) -> tuple[Jwt, JwtRule]:
    token = parse_jwt(found.token)
    rule = next((r for r in found.rules if r.allows_issuer(token.iss)), None)
    if rule is None:
        raise JwtError(Status.UNKNOWN_ISSUER)
    check_time(token, now)
    if not _audience_allowed(rule, token):
        raise JwtError(Status.AUDIENCE_NOT_ALLOWED)
    keys = _keys_of(rule, source)
    if not keys.usable:
        raise JwtError(Status.NO_VALID_KEYS)
    try:
        verify_signature(token, keys)
    except JwtError as exc:
        if exc.status == Status.KID_ALG_MISMATCH and rule.jwks_uri and source is not None:
            source.unknown_kid(rule.jwks_uri)
        raise
    return token, rule


def _claims(payload: Mapping[str, Any]) -> dict[str, Any]:
    claims = dict(payload)
    for name in SPACE_DELIMITED_CLAIMS:
        value = claims.get(name)
        if isinstance(value, str):
            claims[name] = value.split()
    return claims


def claim_value(claims: Mapping[str, Any], path: list[str] | tuple[str, ...]) -> Any:
    """The value at a nested claim path, or None."""
    value: Any = claims
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _claim_text(payload: Mapping[str, Any], claim: str) -> str | None:
    """Envoy's claim-to-header value: a string, a number (integral without a fraction) or a bool."""
    value = claim_value(payload, claim.split("."))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value or None
    if isinstance(value, int):
        return str(value) if value >= 0 else f"{float(value):f}"
    if isinstance(value, float) and math.isfinite(value):
        if value >= 0 and value.is_integer() and value < 2 ** 64:
            return str(int(value))
        return f"{value:f}"
    return None


def _realm(scheme: bytes, authority: bytes, target: str) -> bytes:
    path = target.partition("?")[0][:MAX_REALM_PATH]
    return b'Bearer realm="%s://%s%s", error="invalid_token"' % (
        scheme or b"http", authority, path.encode("latin-1", "replace"))


def is_cors_preflight(method: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
    if method != b"OPTIONS":
        return False
    names = {name.lower() for name, value in headers if value}
    return b"origin" in names and b"access-control-request-method" in names


def authenticate(rules: RuleSet, method: bytes, target: bytes, authority: bytes,
                 headers: list[tuple[bytes, bytes]], keys: KeySource | None, now: float,
                 scheme: bytes = b"http") -> Authenticated | Rejected:
    """The authn stage for one request under `rules` (see the module docstring)."""
    if rules.empty:
        return Authenticated(None)
    sanitized = headers
    if rules.sanitize and any(name.lower().decode("latin-1") in rules.sanitize for name, _ in headers):
        sanitized = [(n, v) for n, v in headers if n.lower().decode("latin-1") not in rules.sanitize]
    if is_cors_preflight(method, headers):
        return Authenticated(None, sanitized if sanitized is not headers else None)
    text_target = target.decode("latin-1")
    found = _extract(rules, sanitized, text_target)
    if not found:
        return Authenticated(None, sanitized if sanitized is not headers else None)
    verified: list[tuple[Jwt, JwtRule, _Found]] = []
    for item in found:
        try:
            token, rule = _verify(item, keys, now)
        except JwtError as exc:
            status = FORBIDDEN if exc.status == Status.AUDIENCE_NOT_ALLOWED else UNAUTHORIZED
            return Rejected(status, exc.status, _realm(scheme, authority, text_target))
        verified.append((token, rule, item))
    first = verified[0][0]
    azp = first.payload.get("azp")
    auth = RequestAuth(f"{first.iss}/{first.sub}", first.audiences, azp if isinstance(azp, str) else None,
                       _claims(first.payload))
    out = list(sanitized)
    new_target: bytes | None = None
    remove_headers: set[bytes] = set()
    remove_params: set[str] = set()
    set_headers: dict[bytes, bytes] = {}
    for token, rule, item in verified:
        if rule.payload_header:
            set_headers[rule.payload_header.encode("latin-1")] = token.payload_b64.encode("ascii")
        for header, claim in rule.claim_headers:
            text = _claim_text(token.payload, claim)
            if text is not None:
                set_headers[header.encode("latin-1")] = text.encode("utf-8")
        if not rule.forward:
            if item.header is not None:
                remove_headers.add(item.header)
            elif item.param is not None:
                remove_params.add(item.param)
    drop = remove_headers | set(set_headers)
    if drop:
        out = [(n, v) for n, v in out if n.lower() not in drop]
    out.extend(set_headers.items())
    if remove_params:
        new_target = _without_params(text_target, remove_params).encode("latin-1")
    return Authenticated(auth, out, new_target)


def _without_params(target: str, names: set[str]) -> str:
    path, sep, query = target.partition("?")
    if not sep:
        return target
    kept = [part for part in query.split("&") if part and unquote_plus(part.partition("=")[0]) not in names]
    return f"{path}?{'&'.join(kept)}" if kept else path

