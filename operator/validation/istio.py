"""Semantic checks of istiod's validating webhook for the security.istio.io kinds and Telemetry.

Rules and messages follow istio/istio ``pkg/config/validation/validation.go``
(``ValidateAuthorizationPolicy``, ``ValidatePeerAuthentication``, ``ValidateRequestAuthentication``,
``ValidateTelemetry``'s tracing part)
and ``pkg/config/security/security.go`` (``ValidateAttribute``, ``ValidateIPs``,
``ValidatePorts``, ``CheckEmptyValues``, ``CheckValidPathTemplate``). They run on an object that
already fits its CRD schema, so types are right. Each function returns (errors, warnings):
errors deny the object, warnings are shown to the user as ``kubectl`` shows webhook warnings.

As in Istio, an empty list counts as absent (protobuf cannot tell them apart), so
``rules: []`` on a DENY is "without rules".

One warning is wisp's own: a principal written with ``spiffe://`` never matches (Istio compares
principals without the scheme), so istiod accepts it silently; we say so.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any
from urllib.parse import urlsplit

from . import istio_networking

Problems = tuple[list[str], list[str]]

_ALLOWED_TARGET_REFS = (("", "Service"), ("networking.istio.io", "ServiceEntry"),
                        ("gateway.networking.k8s.io", "Gateway"), ("gateway.networking.k8s.io", "GatewayClass"))
_ALLOWED_TARGET_REFS_SHOWN = ("[core/v1/Service networking.istio.io/v1/ServiceEntry "
                              "gateway.networking.k8s.io/v1/Gateway gateway.networking.k8s.io/v1/GatewayClass]")
# Named variables {x=*}, {x}, {}, /* and /** are not supported inside a {*}/{**} path template.
_UNSUPPORTED_PATH_TEMPLATE = re.compile(r"/\{\w+=\*[*]?\}|\{\w*\}|/\*[*]?|\*[*]?/")
SPIFFE = "spiffe://"


def _list(obj: dict[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    return value if isinstance(value, list) else []


def _selector_errors(spec: dict[str, Any]) -> Problems:
    errors: list[str] = []
    warnings: list[str] = []
    selector = spec.get("selector")
    target_ref = spec.get("targetRef")
    target_refs = _list(spec, "targetRefs")
    if (selector is not None) + (target_ref is not None) + bool(target_refs) > 1:
        errors.append("only one of targetRefs or workloadSelector can be set")
    if isinstance(selector, dict):
        labels = selector.get("matchLabels") or {}
        for k, v in labels.items():
            if k == "":
                errors.append(f'empty key is not supported in selector: "{k}={v}"')
            if "*" in k or "*" in str(v):
                errors.append(f'wildcard is not supported in selector: "{k}={v}"')
        if not labels:
            warnings.append("workload selector specified without labels")
    for ref in ([target_ref] if isinstance(target_ref, dict) else []) + [r for r in target_refs if isinstance(r, dict)]:
        if not ref.get("name"):
            errors.append("targetRef name must be set")
        if ref.get("namespace"):
            errors.append("targetRef namespace must not be set; cross namespace referencing is not supported")
        group, kind = ref.get("group", ""), ref.get("kind", "")
        if (group, kind) not in _ALLOWED_TARGET_REFS:
            errors.append(f"targetRef must be to one of {_ALLOWED_TARGET_REFS_SHOWN} but was {group}/{kind}")
    return errors, warnings


def check_empty(name: str, values: list[Any]) -> str | None:
    return f"empty value not allowed, found in {name}" if any(v == "" for v in values) else None


def validate_ips(values: list[Any]) -> list[str]:
    errors = []
    for v in values:
        if "/" in v:
            try:
                ipaddress.ip_network(v, strict=False)
            except ValueError as exc:
                errors.append(f"bad CIDR range ({v}): {exc}")
        else:
            try:
                ipaddress.ip_address(v)
            except ValueError:
                errors.append(f"bad IP address ({v})")
    return errors


def validate_ports(values: list[Any]) -> list[str]:
    errors = []
    for v in values:
        if not (isinstance(v, str) and v.isascii() and v.isdigit()):
            errors.append(f'bad port ({v}): strconv.ParseUint: parsing "{v}": invalid syntax')
        elif int(v) > 65535:
            errors.append(f"bad port ({v}): <nil>")
    return errors


def _map_key(key: str) -> str | None:
    opening = key.find("[")
    if key.endswith("]") and 0 < opening < len(key) - 2:
        return None
    return f"bad key ({key}): should have format a[b]"


def validate_attribute(key: str, values: list[Any]) -> str | None:
    """security.ValidateAttribute: the first problem of a ``when`` condition, or None."""
    empty = check_empty(key, values)
    if empty:
        return empty
    if key.startswith("request.headers") or key.startswith("request.auth.claims") \
            or key.startswith("experimental.envoy.filters."):
        return _map_key(key)
    if key in ("source.ip", "remote.ip", "destination.ip"):
        problems = validate_ips(values)
        return "; ".join(problems) if problems else None
    if key == "destination.port":
        problems = validate_ports(values)
        return "; ".join(problems) if problems else None
    if key in ("source.namespace", "source.principal", "request.auth.principal", "request.auth.audiences",
               "request.auth.presenter", "connection.sni"):
        return None
    if key == "destination.namespace":
        return f"attribute {key} is replaced by the metadata.namespace"
    if key.startswith("destination.labels"):
        return f"attribute {key} is replaced by the workload selector"
    if key in ("destination.name", "destination.user"):
        return f"deprecated attribute {key}: only supported in v1alpha1"
    return f"unknown attribute: {key}"


_SOURCE_FIELDS = ("principals", "requestPrincipals", "namespaces", "ipBlocks", "remoteIpBlocks", "notPrincipals",
                  "notRequestPrincipals", "notNamespaces", "notIpBlocks", "notRemoteIpBlocks", "serviceAccounts",
                  "notServiceAccounts")
_L4_SOURCE_FIELDS = ("notPrincipals", "principals", "ipBlocks", "notIpBlocks", "namespaces", "notNamespaces",
                     "remoteIpBlocks", "notRemoteIpBlocks", "serviceAccounts", "notServiceAccounts")
_OPERATION_FIELDS = ("ports", "methods", "paths", "hosts", "notPorts", "notMethods", "notPaths", "notHosts")
_CUSTOM_UNSUPPORTED_SOURCE = ("namespaces", "notNamespaces", "serviceAccounts", "notServiceAccounts", "principals",
                              "notPrincipals", "requestPrincipals", "notRequestPrincipals")


def _title(field: str) -> str:
    return field[0].upper() + field[1:]


def authorization_policy(obj: dict[str, Any]) -> Problems:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    errors, warnings = _selector_errors(spec)
    action = spec.get("action") or "ALLOW"
    rules = _list(spec, "rules")
    provider = spec.get("provider")

    if action == "CUSTOM":
        if not rules:
            errors.append("CUSTOM action without `rules` is meaningless as it will never be triggered, "
                          "add an empty rule `{}` if you want it be triggered for every request")
        elif not isinstance(provider, dict) or not provider.get("name"):
            errors.append("`provider.name` must not be empty")
        for rule in rules:
            for frm in _list(rule or {}, "from"):
                src = (frm or {}).get("source") or {}
                for f in _CUSTOM_UNSUPPORTED_SOURCE:
                    if _list(src, f):
                        errors.append(f"From.{_title(f)} is currently not supported with CUSTOM action")
            for when in _list(rule or {}, "when"):
                key = (when or {}).get("key", "")
                if key in ("source.namespace", "source.serviceAccount", "source.principal") \
                        or key.startswith("request.auth."):
                    errors.append(f"{key} is currently not supported with CUSTOM action")
    if provider is not None and action != "CUSTOM":
        errors.append(f"`provider` must not be with non CUSTOM action, found {action}")
    if action == "DENY" and not rules:
        errors.append("DENY action without `rules` is meaningless as it will never be triggered, "
                      "add an empty rule `{}` if you want it be triggered for every request")

    for i, rule in enumerate(rules):
        if rule is None:
            errors.append(f"`rule` must not be nil, found at rule {i}")
            continue
        tcp_in_from = tcp_in_to = from_exists = to_exists = False
        for frm in _list(rule, "from"):
            if frm is None:
                errors.append(f"`from` must not be nil, found at rule {i}")
                continue
            src = frm.get("source")
            if src is None:
                errors.append(f"`from.source` must not be nil, found at rule {i}")
                continue
            from_exists = True
            if (_list(src, "principals") or _list(src, "notPrincipals") or _list(src, "namespaces")
                    or _list(src, "notNamespaces")) and (_list(src, "serviceAccounts") or _list(src, "notServiceAccounts")):
                errors.append(f"cannot set serviceAccounts with namespaces or principals, found at rule {i}")
            if not any(_list(src, f) for f in _SOURCE_FIELDS):
                errors.append(f"`from.source` must not be empty, found at rule {i}")
            for f in ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"):
                errors.extend(validate_ips(_list(src, f)))
            for f in _SOURCE_FIELDS:
                problem = check_empty(_title(f), _list(src, f))
                if problem:
                    errors.append(problem)
            if any(_list(src, f) for f in _L4_SOURCE_FIELDS):
                tcp_in_from = True
            for f in ("principals", "notPrincipals"):
                for value in _list(src, f):
                    if isinstance(value, str) and value.startswith(SPIFFE):
                        warnings.append(_spiffe_warning(f"rules[{i}] {f}", value))
        for to in _list(rule, "to"):
            if to is None:
                errors.append(f"`to` must not be nil, found at rule {i}")
                continue
            op = to.get("operation")
            if op is None:
                errors.append(f"`to.operation` must not be nil, found at rule {i}")
                continue
            to_exists = True
            if not any(_list(op, f) for f in _OPERATION_FIELDS):
                errors.append(f"`to.operation` must not be empty, found at rule {i}")
            errors.extend(validate_ports(_list(op, "ports")))
            errors.extend(validate_ports(_list(op, "notPorts")))
            for f in _OPERATION_FIELDS:
                problem = check_empty(_title(f), _list(op, f))
                if problem:
                    errors.append(problem)
            for f in ("paths", "notPaths"):
                for path in _list(op, f):
                    if ("{*}" in path or "{**}" in path) and _UNSUPPORTED_PATH_TEMPLATE.search(path):
                        errors.append(f"invalid or unsupported path template, found in {_title(f)}")
                        break
            if _list(op, "ports") or _list(op, "notPorts"):
                tcp_in_to = True
        for when in _list(rule, "when"):
            key = (when or {}).get("key") or ""
            if not key:
                errors.append("`key` must not be empty")
                continue
            values, not_values = _list(when, "values"), _list(when, "notValues")
            if not values and not not_values:
                errors.append(f"at least one of `values` or `notValues` must be set for key {key}")
                continue
            # As Istio: both lists are checked, even an absent one, so a bad key is reported twice.
            for name, given in (("value", values), ("notValue", not_values)):
                problem = validate_attribute(key, given)
                if problem:
                    errors.append(f"invalid `{name}` for `key` {key}: {problem}")
            if key == "source.principal":
                for value in values + not_values:
                    if isinstance(value, str) and value.startswith(SPIFFE):
                        warnings.append(_spiffe_warning(f"rules[{i}] when source.principal", value))
        if ((from_exists and not to_exists and not tcp_in_from) or (to_exists and not tcp_in_to)) and action == "DENY":
            warnings.append("configured AuthorizationPolicy will deny all traffic to TCP ports under its scope due "
                            "to the use of only HTTP attributes in a DENY rule; it is recommended to explicitly "
                            "specify the port")
    prefix = f"invalid policy {meta.get('name', '')}.{meta.get('namespace', '')}:"
    return [f"{prefix} {e}" for e in errors], warnings


def _spiffe_warning(where: str, value: str) -> str:
    return (f'{where}: principal "{value}" never matches: Istio compares principals without the spiffe:// '
            f'scheme; write "{value[len(SPIFFE):]}"')


def peer_authentication(obj: dict[str, Any]) -> Problems:
    spec = obj.get("spec") or {}
    errors: list[str] = []
    selector = spec.get("selector")
    empty_selector = not isinstance(selector, dict) or not selector.get("matchLabels")
    port_level = spec.get("portLevelMtls")
    if empty_selector and port_level:
        errors.append("mesh/namespace peer authentication cannot have port level mTLS")
    if port_level is not None and not port_level:
        errors.append("port level mTLS, if defined, must have at least one element")
    for port in port_level or {}:
        number = int(port) if str(port).isdigit() else 0
        if not 0 < number <= 65535:
            errors.append("port must be in range 1..65535")
    selector_errors, warnings = _selector_errors({"selector": selector} if selector is not None else {})
    return errors + selector_errors, warnings


def request_authentication(obj: dict[str, Any]) -> Problems:
    spec = obj.get("spec") or {}
    errors, warnings = _selector_errors(spec)
    for rule in _list(spec, "jwtRules"):
        if not isinstance(rule, dict):
            continue
        if any(a == "" for a in _list(rule, "audiences")):
            errors.append("audience must be non-empty string")
        jwks_uri = rule.get("jwksUri") or rule.get("jwks_uri") or ""
        if not rule.get("issuer") and not jwks_uri:
            errors.append("issuer or jwksUri must be non-empty string")
        if jwks_uri:
            scheme = urlsplit(jwks_uri).scheme
            if scheme not in ("http", "https"):
                errors.append(f'URI scheme "{scheme}" is not supported')
        if rule.get("jwks"):
            try:
                keys = json.loads(rule["jwks"])
                if not isinstance(keys, dict):
                    raise ValueError("a JWKS is a JSON object")
            except ValueError as exc:
                errors.append(f"jwks parse error: {exc}")
        for location in _list(rule, "fromHeaders"):
            if not isinstance(location, dict):
                errors.append("location header name must be non-null")
            elif not location.get("name"):
                errors.append("location header name must be non-empty string")
        if any(p == "" for p in _list(rule, "fromParams")):
            errors.append("location query must be non-empty string")
        if any(c == "" for c in _list(rule, "fromCookies")):
            errors.append("cookie name must be non-empty string")
        for claim in _list(rule, "outputClaimToHeaders"):
            if not isinstance(claim, dict):
                errors.append("outputClaimToHeaders must not be null")
            elif not claim.get("claim") or not claim.get("header"):
                errors.append("outputClaimToHeaders header and claim value must be non-empty string")
    return errors, warnings


def telemetry(obj: dict[str, Any]) -> Problems:
    """Istio's ValidateTelemetry for what a waypoint reads: the target and `tracing`."""
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    errors, warnings = _selector_errors(spec)
    tracing = _list(spec, "tracing")
    if len(tracing) > 1:
        warnings.append("multiple tracing is not currently supported")
    for entry in tracing:
        if not isinstance(entry, dict):
            errors.append("tracing entry must not be null")
            continue
        percentage = entry.get("randomSamplingPercentage")
        if isinstance(percentage, (int, float)) and not 0 <= percentage <= 100:
            errors.append("randomSamplingPercentage must be in range [0.0, 100.0]")
        for provider in _list(entry, "providers"):
            if not isinstance(provider, dict) or not provider.get("name"):
                errors.append("must specify provider name")
    return errors, warnings


SEMANTIC = {
    "Telemetry": telemetry,
    "AuthorizationPolicy": authorization_policy,
    "PeerAuthentication": peer_authentication,
    "RequestAuthentication": request_authentication,
    "VirtualService": istio_networking.virtual_service,
    "DestinationRule": istio_networking.destination_rule,
}
WEBHOOK = "validation.istio.io"
