"""Semantic checks of istiod's validating webhook for VirtualService and DestinationRule.

Rules and messages follow istio/istio ``pkg/config/validation/validation.go``
(``ValidateVirtualService``, ``validateHTTPRoute``, ``validateHTTPRedirect``,
``validateHTTPFaultInjection``, ``validateHTTPRetry``, ``validateDestination``,
``ValidateDestinationRule``). They run on an object that already fits its CRD schema (types
are right, durations are at least 1 ms, the oneOfs hold). Only the checks whose breach would
otherwise reach a waypoint as a route it cannot use are here; what the waypoint accepts but does
not carry out is not an error but a status condition (``operator/networking.py``).
Returns (errors, warnings) as ``istio.py``'s functions do.
"""

from __future__ import annotations

import re
from typing import Any

from waypoint.route.regex import RegexError, compile_regex

Problems = tuple[list[str], list[str]]

MESH_GATEWAY = "mesh"
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_STRING_MATCHES = ("uri", "scheme", "method", "authority")


def _list(obj: dict[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    return value if isinstance(value, list) else []


def _dict(obj: Any, key: str) -> dict[str, Any] | None:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else None


def _regex_error(match: Any, where: str) -> str | None:
    pattern = match.get("regex") if isinstance(match, dict) else None
    if not isinstance(pattern, str) or not pattern:
        return None
    try:
        compile_regex(pattern)
    except RegexError as exc:
        return f"{where!r}: {exc}; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)"
    return None


def _destination(destination: Any) -> list[str]:
    errors: list[str] = []
    if not isinstance(destination, dict):
        return errors
    if destination.get("host") == "*":
        errors.append("invalid destination host *")
    subset = destination.get("subset")
    if isinstance(subset, str) and subset and not _DNS1123_LABEL.match(subset):
        errors.append(f"subset name is invalid: {subset}")
    return errors


def _http_route(http: dict[str, Any], applies_to_gateway: bool) -> list[str]:
    errors: list[str] = []
    if http.get("delegate") is not None and not applies_to_gateway:
        errors.append("http delegate only applies to gateway")
    routes = _list(http, "route")
    if http.get("redirect") is not None:
        if routes:
            errors.append("HTTP route cannot contain both route and redirect")
        if http.get("fault") is not None:
            errors.append("HTTP route cannot contain both fault and redirect")
        if http.get("rewrite") is not None:
            errors.append("HTTP route rule cannot contain both rewrite and redirect")
        if http.get("directResponse") is not None:
            errors.append("HTTP route cannot contain both redirect and direct response")
    elif http.get("directResponse") is not None:
        if routes:
            errors.append("HTTP route cannot contain both route and direct response")
    elif not routes and http.get("delegate") is None:
        errors.append("HTTP route, redirect or direct response is required")
    for match in _list(http, "match"):
        if not isinstance(match, dict):
            continue
        for key in _STRING_MATCHES:
            problem = _regex_error(match.get(key), key)
            if problem:
                errors.append(problem)
        for key in ("headers", "queryParams", "withoutHeaders"):
            for value in (_dict(match, key) or {}).values():
                problem = _regex_error(value, key)
                if problem:
                    errors.append(problem)
    redirect = _dict(http, "redirect")
    if redirect is not None:
        if not any(redirect.get(k) for k in ("uri", "authority", "scheme", "port", "derivePort")):
            errors.append("redirect must specify URI, authority, scheme, or port")
        code = redirect.get("redirectCode")
        if isinstance(code, int) and code and not 300 <= code <= 399:
            errors.append(f"{code} is not a valid redirect code, must be 3xx")
    fault = _dict(http, "fault")
    if fault is not None:
        if fault.get("abort") is None and fault.get("delay") is None:
            errors.append("HTTP fault injection must have an abort and/or a delay")
        status = (_dict(fault, "abort") or {}).get("httpStatus")
        if isinstance(status, int) and not 200 <= status <= 599:
            errors.append(f"HTTP status {status} is not in range 200-599")
    retries = _dict(http, "retries")
    if retries is not None and isinstance(retries.get("attempts"), int) and retries["attempts"] < 0:
        errors.append("attempts cannot be negative")
    direct = _dict(http, "directResponse")
    if direct is not None:
        status = direct.get("status")
        if isinstance(status, int) and not 200 <= status <= 599:
            errors.append(f"directResponse.status must be between 200 and 599, got {status}")
    for item in routes:
        if isinstance(item, dict):
            errors.extend(_destination(item.get("destination")))
    errors.extend(_destination(http.get("mirror")))
    return errors


def virtual_service(obj: dict[str, Any]) -> Problems:
    spec = obj.get("spec") or {}
    errors: list[str] = []
    warnings: list[str] = []
    gateways = [g for g in _list(spec, "gateways") if isinstance(g, str)]
    applies_to_mesh = not gateways or MESH_GATEWAY in gateways
    applies_to_gateway = any(g != MESH_GATEWAY for g in gateways)
    hosts = _list(spec, "hosts")
    if not hosts:
        errors.append("virtual service must have at least one host")
    for host in hosts:
        if applies_to_mesh and host == "*":
            errors.append("wildcard host * is not allowed for virtual services bound to the mesh gateway")
    if not (_list(spec, "http") or _list(spec, "tcp") or _list(spec, "tls")):
        errors.append("http, tcp or tls must be provided in virtual service")
    for http in _list(spec, "http"):
        if isinstance(http, dict):
            errors.extend(_http_route(http, applies_to_gateway))
    return errors, warnings


def destination_rule(obj: dict[str, Any]) -> Problems:
    spec = obj.get("spec") or {}
    errors: list[str] = []
    seen: set[str] = set()
    for subset in _list(spec, "subsets"):
        name = subset.get("name") if isinstance(subset, dict) else None
        if not isinstance(name, str) or not name:
            errors.append("subset name cannot be empty")
            continue
        if not _DNS1123_LABEL.match(name):
            errors.append(f"subset name is invalid: {name}")
        if name in seen:
            errors.append(f"duplicate subset names: {name}")
        seen.add(name)
    return errors, []
