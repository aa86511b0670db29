"""AuthorizationPolicy (security.istio.io/v1) -> the L4 Authorization ztunnel enforces.

Follows Istio's ambient conversion:
- ``targetRefs``/``targetRef`` policies belong to waypoints and never reach ztunnel
  (no ZtunnelAccepted condition either).
- Only ALLOW and DENY reach ztunnel; CUSTOM and AUDIT are refused with
  ZtunnelAccepted=False/UnsupportedValue.
- Scope: root namespace without selector = GLOBAL, no selector = NAMESPACE,
  selector = WORKLOAD_SELECTOR.
- Each AuthorizationPolicy rule becomes one Rule whose clauses AND: one clause for
  all ``to`` entries, one for all ``from`` entries, one per ``when`` condition.
- Values: ``*`` -> presence, ``*x`` -> suffix, ``x*`` -> prefix, else exact.
- HTTP-only attributes (hosts, methods, paths, requestPrincipals, remoteIpBlocks, their
  ``not`` forms and non-L4 ``when`` keys) cannot be enforced by ztunnel: an ALLOW rule that
  uses them is dropped (the policy allows less; with every rule dropped it allows nothing),
  a DENY rule is kept without them (it denies more). The policy is still accepted, with
  ZtunnelAccepted=True/UnsupportedValue naming the ignored attributes.

One deliberate difference: for DENY, Istio leaves an empty match where only HTTP attributes
were, and ztunnel treats an empty match as "never matches", so the DENY silently stops
applying. We drop the whole clause instead, so the rule really becomes broader, as Istio's
own status message promises.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from wisp.model import (
    Authorization,
    Clause,
    Match,
    Rule,
    ServiceAccountMatch,
    StringMatch,
)
from wisp.kube import ObjectId, dicts, get, integer, mapping, string, string_map, strings
from wisp_operator.errors import InvalidObject, object_id
from wisp_operator.selectors import is_subset

CONDITION_ZTUNNEL_ACCEPTED = "ZtunnelAccepted"

_HTTP_OPERATION_FIELDS = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")
_HTTP_SOURCE_FIELDS = ("remoteIpBlocks", "notRemoteIpBlocks", "requestPrincipals", "notRequestPrincipals")
L4_WHEN_KEYS = frozenset(
    {"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"}
)

_HTTP_RULE_FMT = (
    "ztunnel does not support HTTP attributes (found: {found}). "
    "In ambient mode you must use a waypoint proxy to enforce HTTP rules. {boilerplate}"
)
_DENY_BOILERPLATE = (
    "DENY policy with HTTP attributes is enforced without the HTTP rules. "
    "This will be more restrictive than requested."
)
_ALLOW_BOILERPLATE = (
    "Within an ALLOW policy, rules matching HTTP attributes are omitted. "
    "This will be more restrictive than requested."
)


@dataclass(frozen=True, slots=True)
class PolicyConversion:
    """What one AuthorizationPolicy gives ztunnel.

    ``authorization`` is None when the policy does not reach ztunnel; ``reason`` then says why.
    ``condition`` is the ZtunnelAccepted condition to write (None for waypoint policies).
    ``selector`` is the workload selector (None unless scope is WORKLOAD_SELECTOR).
    """

    authorization: Authorization | None
    condition: dict[str, Any] | None
    reason: str = ""
    selector: dict[str, str] | None = None
    ignored_http: tuple[str, ...] = field(default=())


def _condition(status: bool, reason: str, message: str, generation: int) -> dict[str, Any]:
    cond: dict[str, Any] = {
        "type": CONDITION_ZTUNNEL_ACCEPTED,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
    }
    if generation:
        cond["observedGeneration"] = generation
    return cond


def string_match(value: str) -> StringMatch:
    """Istio's wildcard forms: "*" presence, "*x" suffix, "x*" prefix, otherwise exact."""
    if value == "*":
        return StringMatch("presence")
    if value.startswith("*"):
        return StringMatch("suffix", value[1:])
    if value.endswith("*"):
        return StringMatch("prefix", value[:-1])
    return StringMatch("exact", value)


def principal_match(value: str) -> StringMatch:
    # As in Istio: the value is compared as written with the peer's principal, which has no
    # "spiffe://"; so "spiffe://..." never matches (the condition says so, see _spiffe_principals).
    return string_match(value)


def _spiffe_principals(spec: dict[str, Any]) -> list[str]:
    """Principals (in from.source or a source.principal condition) written with the scheme."""
    found = []
    for rule in spec.get("rules") or ():
        if not isinstance(rule, dict):
            continue
        for frm in rule.get("from") or ():
            src = frm.get("source") if isinstance(frm, dict) else None
            if isinstance(src, dict):
                for field_name in ("principals", "notPrincipals"):
                    found += [v for v in src.get(field_name) or () if isinstance(v, str) and v.startswith("spiffe://")]
        for when in rule.get("when") or ():
            if isinstance(when, dict) and when.get("key") == "source.principal":
                found += [v for v in (when.get("values") or []) + (when.get("notValues") or [])
                          if isinstance(v, str) and v.startswith("spiffe://")]
    return found


def convert_authorization_policy(ap: dict[str, Any], root_namespace: str) -> PolicyConversion:
    """Convert one AuthorizationPolicy. Raises InvalidObject for a malformed manifest."""
    oid = object_id(ap, "AuthorizationPolicy")
    spec = mapping(ap, "spec", oid)
    generation = integer(ap, "metadata.generation", oid)

    if get(spec, "targetRefs", oid, list, None, at="spec") or get(spec, "targetRef", oid, dict, None, at="spec"):
        return PolicyConversion(None, None, "targets a waypoint or Service (targetRefs); enforced by waypoints")

    selector_obj = get(spec, "selector", oid, dict, None, at="spec")
    selector = string_map(selector_obj, "matchLabels", oid, at="spec.selector") if selector_obj is not None else None
    if selector is not None:
        scope = "WORKLOAD_SELECTOR"
    elif oid.namespace == root_namespace:
        scope = "GLOBAL"
    else:
        scope = "NAMESPACE"

    action = string(spec, "action", oid, "ALLOW", at="spec")
    if action in ("CUSTOM", "AUDIT"):
        message = f"ztunnel does not support the {action} action"
        return PolicyConversion(None, _condition(False, "UnsupportedValue", message, generation), message)
    if action not in ("ALLOW", "DENY"):
        raise oid.invalid(f"spec.action must be ALLOW, DENY, AUDIT or CUSTOM, got {action!r}")

    rules: list[Rule] = []
    http_found: set[str] = set()
    for where, rule in dicts(spec, "rules", oid, at="spec"):
        converted = _convert_rule(rule, where, action, oid, http_found)
        if converted is not None:
            rules.append(converted)

    authorization = Authorization(
        name=oid.name, namespace=oid.namespace, scope=scope, action=action, rules=tuple(rules)
    )
    notes = []
    if http_found:
        found = ", ".join(sorted(http_found))
        boilerplate = _DENY_BOILERPLATE if action == "DENY" else _ALLOW_BOILERPLATE
        notes.append(_HTTP_RULE_FMT.format(found=found, boilerplate=boilerplate))
    spiffe = _spiffe_principals(spec)
    if spiffe:
        shown = ", ".join(f'"{v}"' for v in sorted(set(spiffe)))
        notes.append(f"principals {shown} never match: principals are written without the spiffe:// scheme "
                     f'(e.g. "{spiffe[0].removeprefix("spiffe://")}").')
    if notes:
        condition = _condition(True, "UnsupportedValue", " ".join(notes), generation)
    else:
        condition = _condition(True, "Accepted", "attached to ztunnel", generation)
    return PolicyConversion(authorization, condition, "", selector, tuple(sorted(http_found)))


def rejected_policy(ap: dict[str, Any], error: InvalidObject, root_namespace: str) -> PolicyConversion | None:
    """A fail-closed stand-in for a policy we cannot read.

    Dropping a broken ALLOW policy would open the workloads it guards, and dropping a
    broken DENY would let through what it denies, so we keep the policy's place with a
    safe meaning: an ALLOW without rules (allows nothing) or a DENY that matches all.
    Returns None when not even the policy's identity or scope can be read.
    """
    try:
        oid = object_id(ap, "AuthorizationPolicy")
        spec = ap.get("spec") if isinstance(ap.get("spec"), dict) else {}
        if spec.get("targetRefs") or spec.get("targetRef"):
            return None
        action = spec.get("action", "ALLOW")
        if action not in ("ALLOW", "DENY"):
            action = "DENY"
        selector_obj = spec.get("selector")
        selector = None
        if isinstance(selector_obj, dict):
            raw = selector_obj.get("matchLabels") or {}
            selector = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(raw, dict) else {}
        scope = "WORKLOAD_SELECTOR" if selector is not None else ("GLOBAL" if oid.namespace == root_namespace else "NAMESPACE")
        rules = () if action == "ALLOW" else (Rule(()),)
        generation = ap.get("metadata", {}).get("generation", 0)
        generation = generation if isinstance(generation, int) else 0
    except InvalidObject:
        return None
    message = f"policy is invalid and enforced as {'deny-all' if action == 'DENY' else 'allow-nothing'}: {error.problem}"
    return PolicyConversion(
        Authorization(oid.name, oid.namespace, scope, action, rules),
        _condition(False, "Invalid", message, generation),
        message,
        selector,
    )


def _convert_rule(
    rule: dict[str, Any], at: str, action: str, oid: ObjectId, http_found: set[str]
) -> Rule | None:
    rule_http: set[str] = set()
    clauses: list[Clause] = []

    # A from/to entry left with nothing L4 once its HTTP attributes are gone would match
    # anything at L4, so the whole clause stops constraining (matters for DENY only,
    # since an ALLOW rule with HTTP attributes is dropped anyway).
    to_matches: list[Match] = []
    to_unconstrained = False
    for where, to in dicts(rule, "to", oid, at=at):
        op = mapping(to, "operation", oid, at=where)
        op_at = f"{where}.operation"
        http = [f for f in _HTTP_OPERATION_FIELDS if get(op, f, oid, list, None, at=op_at)]
        rule_http.update(http)
        match = Match(
            destination_ports=_ports(op, "ports", oid, op_at),
            not_destination_ports=_ports(op, "notPorts", oid, op_at),
        )
        if http and match.is_empty():
            to_unconstrained = True
        to_matches.append(match)
    if to_matches and not to_unconstrained:
        clauses.append(Clause(tuple(to_matches)))

    from_matches: list[Match] = []
    from_unconstrained = False
    for where, frm in dicts(rule, "from", oid, at=at):
        src = mapping(frm, "source", oid, at=where)
        src_at = f"{where}.source"
        http = [f for f in _HTTP_SOURCE_FIELDS if get(src, f, oid, list, None, at=src_at)]
        rule_http.update(http)
        match = Match(
            source_ips=_ips(src, "ipBlocks", oid, src_at),
            not_source_ips=_ips(src, "notIpBlocks", oid, src_at),
            namespaces=tuple(string_match(v) for v in strings(src, "namespaces", oid, src_at)),
            not_namespaces=tuple(string_match(v) for v in strings(src, "notNamespaces", oid, src_at)),
            service_accounts=_service_accounts(src, "serviceAccounts", oid, src_at),
            not_service_accounts=_service_accounts(src, "notServiceAccounts", oid, src_at),
            principals=tuple(principal_match(v) for v in strings(src, "principals", oid, src_at)),
            not_principals=tuple(principal_match(v) for v in strings(src, "notPrincipals", oid, src_at)),
        )
        if http and match.is_empty():
            from_unconstrained = True
        from_matches.append(match)
    if from_matches and not from_unconstrained:
        clauses.append(Clause(tuple(from_matches)))

    for where, when in dicts(rule, "when", oid, at=at):
        key = string(when, "key", oid, at=where)
        if not key:
            raise oid.invalid(f"{where}.key is required")
        if key not in L4_WHEN_KEYS:
            rule_http.add(key)
            continue  # an HTTP condition constrains nothing at L4
        clauses.append(Clause((_when_match(key, when, oid, where),)))

    http_found.update(rule_http)
    if rule_http and action == "ALLOW":
        return None
    return Rule(tuple(clauses))


def _when_match(key: str, when: dict[str, Any], oid: ObjectId, at: str) -> Match:
    values = strings(when, "values", oid, at)
    not_values = strings(when, "notValues", oid, at)
    if key == "source.namespace":
        return Match(
            namespaces=tuple(map(string_match, values)), not_namespaces=tuple(map(string_match, not_values))
        )
    if key == "source.principal":
        return Match(
            principals=tuple(map(principal_match, values)),
            not_principals=tuple(map(principal_match, not_values)),
        )
    if key == "source.ip":
        return Match(source_ips=_parse_ips(values, oid, f"{at}.values"),
                     not_source_ips=_parse_ips(not_values, oid, f"{at}.notValues"))
    if key == "destination.ip":
        return Match(destination_ips=_parse_ips(values, oid, f"{at}.values"),
                     not_destination_ips=_parse_ips(not_values, oid, f"{at}.notValues"))
    return Match(destination_ports=_parse_ports(values, oid, f"{at}.values"),
                 not_destination_ports=_parse_ports(not_values, oid, f"{at}.notValues"))


def _ports(obj: dict[str, Any], key: str, oid: ObjectId, at: str) -> tuple[int, ...]:
    values = get(obj, key, oid, list, [], at=at)
    return _parse_ports(values, oid, f"{at}.{key}")


def _parse_ports(values: list[Any], oid: ObjectId, at: str) -> tuple[int, ...]:
    out = []
    for i, v in enumerate(values):
        # Policies write ports as strings ("8080"); YAML may turn them into integers.
        if isinstance(v, int) and not isinstance(v, bool):
            port = v
        elif isinstance(v, str) and v.isdigit():
            port = int(v)
        else:
            raise oid.invalid(f"{at}[{i}] must be a port number, got {v!r}")
        if not 0 <= port <= 65535:
            raise oid.invalid(f"{at}[{i}] must be a port number (0-65535), got {v!r}")
        out.append(port)
    return tuple(out)


def _ips(obj: dict[str, Any], key: str, oid: ObjectId, at: str) -> tuple[str, ...]:
    return _parse_ips(strings(obj, key, oid, at), oid, f"{at}.{key}")


def _parse_ips(values: list[str], oid: ObjectId, at: str) -> tuple[str, ...]:
    out = []
    for i, v in enumerate(values):
        try:
            out.append(str(ipaddress.ip_network(v, strict=False)))
        except ValueError:
            raise oid.invalid(f"{at}[{i}] must be an IP address or CIDR, got {v!r}") from None
    return tuple(out)


def _service_accounts(obj: dict[str, Any], key: str, oid: ObjectId, at: str) -> tuple[ServiceAccountMatch, ...]:
    # "ns/sa", or a bare "sa" meaning the policy's own namespace.
    out = []
    for v in strings(obj, key, oid, at):
        ns, sep, sa = v.partition("/")
        out.append(ServiceAccountMatch(ns, sa) if sep else ServiceAccountMatch(oid.namespace, v))
    return tuple(out)


class SelectorPolicyIndex:
    """Selector-scoped policies by namespace, for the Workload.authorization_policies list."""

    def __init__(self, root_namespace: str) -> None:
        self.root_namespace = root_namespace
        self._by_ns: dict[str, list[tuple[dict[str, str], str]]] = {}

    def add(self, namespace: str, selector: dict[str, str], key: str) -> None:
        self._by_ns.setdefault(namespace, []).append((selector, key))

    def keys_for(self, namespace: str, pod_labels: dict[str, str]) -> list[str]:
        """Sorted keys of selector policies in the pod's namespace and the root namespace
        whose matchLabels the pod carries."""
        keys = []
        for ns in (namespace, self.root_namespace) if namespace != self.root_namespace else (namespace,):
            for selector, key in self._by_ns.get(ns, ()):
                if is_subset(selector, pod_labels):
                    keys.append(key)
        keys.sort()
        return keys
