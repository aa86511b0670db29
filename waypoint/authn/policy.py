"""RequestAuthentication objects → the JWT rules one waypoint applies, per Service, built once per config.

Input: ``security.istio.io/v1`` (or v1beta1) RequestAuthentication objects as the API returns them.
Output: `WaypointAuthn`, whose `for_service` gives the `RuleSet` for a request's Service, plus notes
to log once.

Attachment is Istio's for waypoints (``ShouldAttachPolicy`` with a waypoint proxy, the same rule as
AuthorizationPolicy's, `waypoint.authz.targets`): a policy applies only through ``targetRefs`` (a
``selector`` or namespace-wide policy, even in the root namespace, is left to sidecars and
gateways: Istio's waypoints never use selectors); ``kind: Gateway`` naming this waypoint in its
namespace, ``kind: GatewayClass`` ``istio-waypoint`` from the root namespace (every waypoint), or
``kind: Service``/``ServiceEntry`` in the Service's namespace (requests addressed to it).

The rules of every policy that applies are merged into one set and sorted by issuer (Istio's
``newPolicyApplier``), and each becomes one Envoy JWT provider (``convertToEnvoyJwtConfig``):
``issuer``; ``audiences`` (empty: any audience); the key set, inline ``jwks`` (which wins over
``jwksUri`` when both are given) or ``jwksUri`` fetched by the waypoint (`waypoint.authn.fetch`);
where tokens are looked for: ``fromHeaders`` (name and value prefix), ``fromParams``,
``fromCookies``, or, when none is given, ``Authorization: Bearer <token>`` and the
``access_token`` query parameter; ``forwardOriginalToken``; ``outputPayloadToHeader``;
``outputClaimToHeaders``. A rule whose ``jwks`` cannot be read keeps no key, so a token for its
issuer is refused (istiod inlines a key set that verifies nothing in that case), while requests
without a token still pass. Not read: ``timeout`` (the fetch has its own, see fetch.py) and
``spaceDelimitedClaims`` beyond Istio's defaults (``scope`` and ``permission``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..authz.targets import DEFAULT_ROOT_NAMESPACE, BadTarget, ServiceRef, WaypointRef, attachment
from .jwks import KeySet, parse_jwks

KIND = "RequestAuthentication"
DEFAULT_HEADER = "authorization"
DEFAULT_PREFIX = "Bearer "
DEFAULT_PARAM = "access_token"
SPACE_DELIMITED_CLAIMS = ("permission", "scope")


@dataclass(frozen=True, slots=True)
class HeaderLocation:
    name: str  # lower case
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class JwtRule:
    """One ``jwtRules`` entry: one issuer, its keys, where its tokens are, what to forward."""

    issuer: str
    policy: str  # "ns/name" of the RequestAuthentication
    audiences: tuple[str, ...] = ()
    jwks: KeySet | None = None  # inline keys; None when they come from jwks_uri
    jwks_uri: str = ""
    headers: tuple[HeaderLocation, ...] = ()
    params: tuple[str, ...] = ()
    cookies: tuple[str, ...] = ()
    forward: bool = False
    payload_header: str = ""  # lower case
    claim_headers: tuple[tuple[str, str], ...] = ()  # (header in lower case, claim path)

    def allows_issuer(self, issuer: str) -> bool:
        # Envoy: a provider without issuer accepts any `iss`.
        return not self.issuer or self.issuer == issuer


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Every JWT rule that applies to one kind of request, ready for `authenticate`.

    ``headers``/``params``/``cookies`` are the token locations of all rules, each with the rules
    that read it (Envoy's extractor shares a location between providers that name it).
    ``sanitize`` are the headers the rules write (payload and claim headers): a client's copies
    are removed before anything is verified, so a backend never sees a forged one.
    """

    rules: tuple[JwtRule, ...] = ()
    headers: tuple[tuple[HeaderLocation, tuple[JwtRule, ...]], ...] = ()
    params: tuple[tuple[str, tuple[JwtRule, ...]], ...] = ()
    cookies: tuple[tuple[str, tuple[JwtRule, ...]], ...] = ()
    sanitize: frozenset[str] = frozenset()
    policies: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.rules


EMPTY = RuleSet()


@dataclass(frozen=True, slots=True)
class WaypointAuthn:
    default: RuleSet = EMPTY
    by_service: Mapping[ServiceRef, RuleSet] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    # Every jwksUri a rule here needs (the waypoint keeps these fetched).
    remote: frozenset[str] = frozenset()

    def for_service(self, service: ServiceRef | None) -> RuleSet:
        if service is None:
            return self.default
        return self.by_service.get(service, self.default)


def _strings(value: Any, at: str, notes: list[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        notes.append(f"{at} must be a list of strings: ignored")
        return ()
    out = []
    for item in value:
        if isinstance(item, str) and item:
            out.append(item)
        else:
            notes.append(f"{at}: {item!r} is not a non-empty string: ignored")
    return tuple(out)


def compile_rule(raw: Mapping[str, Any], policy: str, at: str, notes: list[str]) -> JwtRule | None:
    """One ``jwtRules`` entry; None (with a note) when it cannot be read."""
    if not isinstance(raw, Mapping):
        notes.append(f"{at} is not an object: ignored")
        return None
    issuer = raw.get("issuer") or ""
    if not isinstance(issuer, str):
        notes.append(f"{at}.issuer is not a string: rule ignored")
        return None
    jwks_text = raw.get("jwks") or ""
    jwks_uri = raw.get("jwksUri") or raw.get("jwks_uri") or ""
    if not isinstance(jwks_text, str) or not isinstance(jwks_uri, str):
        notes.append(f"{at}: jwks and jwksUri must be strings: rule ignored")
        return None
    if not issuer and not jwks_uri:
        notes.append(f"{at}: issuer or jwksUri must be set: rule ignored")
        return None
    keys: KeySet | None = None
    if jwks_text:
        keys = parse_jwks(jwks_text)
        if not keys.usable:
            notes.append(f"{at}.jwks: {keys.status}; tokens of issuer {issuer!r} will be refused")
        jwks_uri = ""
    elif not jwks_uri:
        # Istio would discover the keys with OpenID Connect discovery from the issuer; the waypoint
        # only fetches URLs of Services inside the mesh, and an issuer is no such URL.
        notes.append(f"{at}: neither jwks nor jwksUri is set (OpenID discovery is not supported); "
                     f"tokens of issuer {issuer!r} will be refused")
        keys = KeySet(status="Jwks doesn't have any valid public key")
    headers = []
    for i, location in enumerate(raw.get("fromHeaders") or []):
        if not isinstance(location, Mapping) or not isinstance(location.get("name"), str) or not location["name"]:
            notes.append(f"{at}.fromHeaders[{i}] needs a name: ignored")
            continue
        prefix = location.get("prefix") or ""
        headers.append(HeaderLocation(location["name"].lower(), prefix if isinstance(prefix, str) else ""))
    params = _strings(raw.get("fromParams"), f"{at}.fromParams", notes)
    cookies = _strings(raw.get("fromCookies"), f"{at}.fromCookies", notes)
    if not headers and not params and not cookies:
        headers = [HeaderLocation(DEFAULT_HEADER, DEFAULT_PREFIX)]
        params = (DEFAULT_PARAM,)
    claim_headers = []
    for i, item in enumerate(raw.get("outputClaimToHeaders") or []):
        if (not isinstance(item, Mapping) or not isinstance(item.get("header"), str) or not item["header"]
                or not isinstance(item.get("claim"), str) or not item["claim"]):
            notes.append(f"{at}.outputClaimToHeaders[{i}] needs a header and a claim: ignored")
            continue
        claim_headers.append((item["header"].lower(), item["claim"]))
    payload_header = raw.get("outputPayloadToHeader") or ""
    return JwtRule(
        issuer=issuer, policy=policy,
        audiences=_strings(raw.get("audiences"), f"{at}.audiences", notes),
        jwks=keys, jwks_uri=jwks_uri, headers=tuple(headers), params=params, cookies=cookies,
        forward=raw.get("forwardOriginalToken") is True,
        payload_header=payload_header.lower() if isinstance(payload_header, str) else "",
        claim_headers=tuple(claim_headers),
    )


def build_set(rules: Iterable[JwtRule], policies: Iterable[str] = ()) -> RuleSet:
    ordered = tuple(sorted(rules, key=lambda r: r.issuer))
    headers: dict[HeaderLocation, list[JwtRule]] = {}
    params: dict[str, list[JwtRule]] = {}
    cookies: dict[str, list[JwtRule]] = {}
    sanitize: set[str] = set()
    for rule in ordered:
        for location in rule.headers:
            headers.setdefault(location, []).append(rule)
        for param in rule.params:
            params.setdefault(param, []).append(rule)
        for cookie in rule.cookies:
            cookies.setdefault(cookie, []).append(rule)
        if rule.payload_header:
            sanitize.add(rule.payload_header)
        sanitize.update(header for header, _ in rule.claim_headers)
    # Envoy visits header locations in the order of its std::map key (name + prefix).
    return RuleSet(
        rules=ordered,
        headers=tuple((loc, tuple(rs)) for loc, rs in sorted(headers.items(), key=lambda i: i[0].name + i[0].prefix)),
        params=tuple((name, tuple(rs)) for name, rs in sorted(params.items())),
        cookies=tuple((name, tuple(rs)) for name, rs in sorted(cookies.items())),
        sanitize=frozenset(sanitize),
        policies=tuple(sorted(set(policies))),
    )


def compile_authn(objects: Iterable[Mapping[str, Any]], waypoint: WaypointRef, *,
                  root_namespace: str = DEFAULT_ROOT_NAMESPACE) -> WaypointAuthn:
    """The RequestAuthentication rules in `objects` that apply at `waypoint`."""
    notes: list[str] = []
    whole: list[tuple[str, list[JwtRule]]] = []
    per_service: dict[ServiceRef, list[tuple[str, list[JwtRule]]]] = {}
    for obj in objects:
        meta = obj.get("metadata") if isinstance(obj, Mapping) else None
        namespace = meta.get("namespace") if isinstance(meta, Mapping) else None
        name = meta.get("name") if isinstance(meta, Mapping) else None
        if not (isinstance(namespace, str) and namespace and isinstance(name, str) and name):
            notes.append("RequestAuthentication without metadata.namespace and metadata.name: ignored")
            continue
        key = f"{namespace}/{name}"
        spec = obj.get("spec")
        spec = spec if isinstance(spec, Mapping) else {}
        try:
            attached = attachment(namespace, dict(spec), waypoint, root_namespace)
        except BadTarget as exc:
            notes.append(f"RequestAuthentication {key}: ignored: {exc}")
            continue
        if not attached.applies:
            continue
        raw_rules = spec.get("jwtRules") or []
        if not isinstance(raw_rules, list):
            notes.append(f"RequestAuthentication {key}: spec.jwtRules must be a list: ignored")
            continue
        policy_notes: list[str] = []
        rules = [rule for i, raw in enumerate(raw_rules)
                 if (rule := compile_rule(raw, key, f"spec.jwtRules[{i}]", policy_notes)) is not None]
        notes.extend(f"RequestAuthentication {key}: {note}" for note in policy_notes)
        entry = (key, rules)
        if attached.whole_waypoint:
            whole.append(entry)
        else:
            for service in attached.services:
                per_service.setdefault(service, []).append(entry)

    def merged(entries: list[tuple[str, list[JwtRule]]]) -> RuleSet:
        return build_set([r for _, rules in entries for r in rules], [k for k, _ in entries])

    by_service = {service: merged(whole + entries) for service, entries in per_service.items()}
    default = merged(whole)
    remote = frozenset(r.jwks_uri for s in (default, *by_service.values()) for r in s.rules if r.jwks_uri)
    return WaypointAuthn(default, by_service, tuple(notes), remote)
