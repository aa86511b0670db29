"""HTTPRoute and GRPCRoute objects → typed, compiled rules and the problems found on the way.

Input: the objects as the Kubernetes API (or the local store) returns them: dicts with
``apiVersion``/``kind``/``metadata``/``spec``, already checked against ``deploy/crds`` by
``operator/validation``. The local store keeps what the user wrote, not the defaulted object
(``operator/validation/structural.py``), so every schema default is applied here again:
``rules`` → one rule matching ``PathPrefix /``; a match's ``path`` → ``PathPrefix /``; match and
method types → ``Exact``; ``backendRef`` group/kind → core ``Service``, weight → 1; a parentRef's
group/kind → ``gateway.networking.k8s.io``/``Gateway`` (so a parentRef with only a name is a
Gateway, not ours); redirect status → 302. Input that is malformed all the same (a field of the
wrong type) is an ``UnsupportedValue`` problem, never an exception out of this module.

Only ``kind: Service`` parents in the core group (``""``, also spelled ``core``) are mesh
parents (GEP-1294); other parents belong to other controllers and are left alone. ``hostnames``
are ignored: "GAMMA implementations SHOULD NOT infer any functionality from the hostnames
field" (GEP-1294, "hostnames field").

Precedence keys are computed here, once per config, as tuples that sort ascending:

- HTTPRoute (``HTTPRouteRule.Matches``): Exact path, then PathPrefix by length (the trailing
  ``/`` ignored, as for matching), then RegularExpression — regex precedence is
  implementation-specific and this is Istio's order (``getURIRank``: Exact > Prefix > Regex,
  then length, in pilot/pkg/config/kube/gateway/conversion.go); then a method match; then more
  header matches; then more query-param matches; then the older route (creationTimestamp), then
  ``namespace/name``; then rule order, then match order.
- GRPCRoute (``GRPCRouteRule.Matches``): more characters in the service, then in the method,
  then more header matches; then age, name, rule, match as above.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ..resilience.policy import FaultPolicy, RetryPolicy, http_route_retry
from .backends import Backend, BackendChoice, weighted
from .filters import (
    HeaderModifier,
    PathModifier,
    PathModifierType,
    RequestMirror,
    RequestRedirect,
    URLRewrite,
)
from .regex import Regex, RegexError, compile_regex
from .status import (
    ACCEPTED,
    BACKEND_NOT_FOUND,
    INVALID_FILTER,
    INVALID_KIND,
    NO_MATCHING_PARENT,
    PARTIALLY_INVALID,
    RESOLVED_REFS,
    UNSUPPORTED_VALUE,
    Problem,
)

HTTP_ROUTE = "HTTPRoute"
GRPC_ROUTE = "GRPCRoute"

_CORE_GROUPS = ("", "core")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_SCHEMES = frozenset({"http", "https"})
# GEP-2257 Duration.
_DURATION = re.compile(r"^(?:[0-9]{1,5}(?:h|m|s|ms)){1,4}$")
_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# Filters we know of but do not implement: the rule is dropped (spec: "Route Rules with this
# configuration invalid"). Any other unknown type is an unsupported value.
_KNOWN_UNSUPPORTED_FILTERS = frozenset({"CORS", "ExternalAuth"})


class ServiceLike(Protocol):
    """What routing needs of a Service: ``wisp.model.Service`` has these fields."""

    name: str
    namespace: str
    hostname: str
    addresses: tuple[str, ...]

    @property
    def ports(self) -> tuple[Any, ...]: ...


ServiceLookup = Callable[[str, str], "ServiceLike | None"]


class _Invalid(Exception):
    """An unsupported value at ``path``; the whole route is not accepted."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")


class _DropRule(Exception):
    """A filter this implementation does not support; the rule is dropped."""


# --- compiled data ---------------------------------------------------------------------------


class PathType(enum.IntEnum):
    # Values are the precedence rank: lower sorts first.
    EXACT = 0
    PREFIX = 1
    REGEX = 2


@dataclass(frozen=True, slots=True)
class ValueMatch:
    """A header or query-param match: ``exact`` or ``regex`` against the value's bytes."""

    name: bytes
    exact: bytes | None
    regex: Regex | None

    def matches(self, value: bytes) -> bool:
        if self.regex is not None:
            return self.regex.fullmatch(value)
        return value == self.exact


@dataclass(frozen=True, slots=True)
class HttpMatch:
    """One ``HTTPRouteMatch``. ``path`` is the Exact value, the PathPrefix without its trailing
    ``/`` (``/`` for the root), or the regex's pattern."""

    path_type: PathType
    path: bytes
    path_regex: Regex | None = None
    method: bytes | None = None
    headers: tuple[ValueMatch, ...] = ()
    query: tuple[ValueMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class GrpcMatch:
    """One ``GRPCRouteMatch``; an absent service or method matches any."""

    service: bytes | None = None
    method: bytes | None = None
    service_regex: Regex | None = None
    method_regex: Regex | None = None
    headers: tuple[ValueMatch, ...] = ()
    # Characters in the service and method, for precedence.
    service_chars: int = 0
    method_chars: int = 0


@dataclass(frozen=True, slots=True)
class RouteRef:
    """Which rule of which route decided a request (for access logs and telemetry)."""

    kind: str
    namespace: str
    name: str
    rule: int


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule that survived parsing, with everything the per-request path needs."""

    ref: RouteRef
    matches: tuple[HttpMatch, ...] | tuple[GrpcMatch, ...]
    request_headers: tuple[HeaderModifier, ...] = ()
    response_headers: tuple[HeaderModifier, ...] = ()
    redirect: RequestRedirect | None = None
    rewrite: URLRewrite | None = None
    mirrors: tuple[RequestMirror, ...] = ()
    backends: tuple[Backend, ...] = ()
    choice: BackendChoice = BackendChoice((), (), 0)
    # An ExtensionRef nothing resolves: its requests get a 500 (the filter must not be skipped).
    unresolved_filter: bool = False
    # Seconds; None = unset, math.inf = "0s", which disables the timeout.
    request_timeout: float | None = None
    backend_timeout: float | None = None
    # A VirtualService ``directResponse``: answer this status and body instead of forwarding.
    direct_status: int | None = None
    direct_body: bytes = b""
    # None: the waypoint's default retry policy; HTTPRoute `retry` (GEP-1731) or VirtualService `retries`.
    retry: RetryPolicy | None = None
    fault: FaultPolicy | None = None  # VirtualService `fault`


@dataclass(frozen=True, slots=True)
class ParentRef:
    """A Service parentRef (mesh parent); ``index`` is its place in ``spec.parentRefs``."""

    index: int
    namespace: str
    name: str
    port: int | None
    section_name: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedRoute:
    kind: str
    namespace: str
    name: str
    # Epoch seconds; routes without a creationTimestamp sort after all that have one.
    created: float
    parents: tuple[ParentRef, ...]
    # In spec order; dropped rules are absent (``Rule.ref.rule`` keeps the spec index).
    rules: tuple[Rule, ...]
    # False: the route is not attached anywhere (an unsupported value, or every rule dropped).
    accepted: bool
    problems: tuple[Problem, ...]
    rule_count: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


# --- reading fields --------------------------------------------------------------------------


def _get(obj: Mapping[str, Any], key: str, path: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    value = obj.get(key, default)
    if value is None:
        return default
    # bool is an int to isinstance; a YAML `true` where a number belongs is still wrong.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Invalid(f"{path}.{key}", f"expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def _dicts(obj: Mapping[str, Any], key: str, path: str) -> list[tuple[str, Mapping[str, Any]]]:
    items = _get(obj, key, path, list, [])
    out = []
    for i, item in enumerate(items):
        where = f"{path}.{key}[{i}]"
        if not isinstance(item, Mapping):
            raise _Invalid(where, f"expected an object, got {type(item).__name__}")
        out.append((where, item))
    return out


def _port(obj: Mapping[str, Any], key: str, path: str) -> int | None:
    port = _get(obj, key, path, int)
    if port is not None and not 1 <= port <= 65535:
        raise _Invalid(f"{path}.{key}", f"port {port} is outside 1-65535")
    return port


def _timestamp(meta: Mapping[str, Any]) -> float:
    raw = meta.get("creationTimestamp")
    if isinstance(raw, datetime):
        return raw.timestamp()
    if isinstance(raw, str):
        try:
            return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return math.inf


def _regex(pattern: str, path: str) -> Regex:
    try:
        return compile_regex(pattern)
    except RegexError as exc:
        raise _Invalid(path, str(exc)) from None


def _duration(value: str | None, path: str) -> float | None:
    if value is None:
        return None
    if not _DURATION.match(value):
        raise _Invalid(path, f"{value!r} is not a Gateway API duration (GEP-2257)")
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(value))
    return math.inf if seconds == 0 else seconds


# --- matches ---------------------------------------------------------------------------------


def _value_matches(match: Mapping[str, Any], key: str, path: str, *, header: bool) -> tuple[ValueMatch, ...]:
    seen: set[bytes] = set()
    out = []
    for where, item in _dicts(match, key, path):
        name = _get(item, "name", where, str)
        value = _get(item, "value", where, str)
        if name is None or value is None:
            raise _Invalid(where, "name and value are required")
        # Header names are case-insensitive, query-param names are not; of equivalent names
        # only the first entry counts (HTTPHeaderMatch.Name, HTTPQueryParamMatch.Name).
        key_name = name.lower().encode("latin-1", "replace") if header else name.encode("utf-8")
        if key_name in seen:
            continue
        seen.add(key_name)
        type_ = _get(item, "type", where, str, "Exact")
        if type_ == "Exact":
            out.append(ValueMatch(key_name, value.encode("utf-8"), None))
        elif type_ == "RegularExpression":
            out.append(ValueMatch(key_name, None, _regex(value, f"{where}.value")))
        else:
            raise _Invalid(f"{where}.type", f"unsupported match type {type_!r}")
    return tuple(out)


def _http_match(match: Mapping[str, Any], path: str) -> HttpMatch:
    path_spec = _get(match, "path", path, Mapping, {})
    where = f"{path}.path"
    type_ = _get(path_spec, "type", where, str, "PathPrefix")
    value = _get(path_spec, "value", where, str, "/")
    regex = None
    if type_ == "Exact":
        path_type = PathType.EXACT
    elif type_ == "PathPrefix":
        path_type = PathType.PREFIX
        # "When specified, a trailing / is ignored": /foo/ matches as /foo does.
        if value != "/":
            value = value.removesuffix("/")
    elif type_ == "RegularExpression":
        path_type = PathType.REGEX
        regex = _regex(value, f"{where}.value")
    else:
        raise _Invalid(f"{where}.type", f"unsupported path match type {type_!r}")
    if path_type is not PathType.REGEX and not value.startswith("/"):
        raise _Invalid(f"{where}.value", f"{value!r} must start with '/'")
    method = _get(match, "method", path, str)
    if method is not None and method not in _METHODS:
        raise _Invalid(f"{path}.method", f"unsupported method {method!r}")
    return HttpMatch(
        path_type=path_type,
        path=value.encode("utf-8"),
        path_regex=regex,
        method=method.encode("ascii") if method else None,
        headers=_value_matches(match, "headers", path, header=True),
        query=_value_matches(match, "queryParams", path, header=False),
    )


def _grpc_match(match: Mapping[str, Any], path: str) -> GrpcMatch:
    method_spec = _get(match, "method", path, Mapping)
    headers = _value_matches(match, "headers", path, header=True)
    if method_spec is None:
        return GrpcMatch(headers=headers)
    where = f"{path}.method"
    type_ = _get(method_spec, "type", where, str, "Exact")
    service = _get(method_spec, "service", where, str) or None
    method = _get(method_spec, "method", where, str) or None
    if service is None and method is None:
        raise _Invalid(where, "one or both of 'service' or 'method' must be specified")
    service_chars = len(service) if service else 0
    method_chars = len(method) if method else 0
    if type_ == "Exact":
        if method is not None and "/" in method or service is not None and "/" in service:
            raise _Invalid(where, "Exact service and method must not contain '/'")
        return GrpcMatch(
            service=service.encode("utf-8") if service else None,
            method=method.encode("utf-8") if method else None,
            headers=headers,
            service_chars=service_chars,
            method_chars=method_chars,
        )
    if type_ == "RegularExpression":
        return GrpcMatch(
            service_regex=_regex(service, f"{where}.service") if service else None,
            method_regex=_regex(method, f"{where}.method") if method else None,
            headers=headers,
            service_chars=service_chars,
            method_chars=method_chars,
        )
    raise _Invalid(f"{where}.type", f"unsupported method match type {type_!r}")


# --- filters ---------------------------------------------------------------------------------


def _header_modifier(spec: Mapping[str, Any], path: str) -> HeaderModifier:
    def pairs(key: str) -> tuple[tuple[bytes, bytes], ...]:
        seen: set[bytes] = set()
        out = []
        for where, item in _dicts(spec, key, path):
            name = _get(item, "name", where, str)
            value = _get(item, "value", where, str)
            if name is None or value is None:
                raise _Invalid(where, "name and value are required")
            lowered = name.lower().encode("latin-1", "replace")
            # "If multiple entries specify equivalent header names, the first entry ... MUST be
            # considered"; later ones are ignored.
            if lowered not in seen:
                seen.add(lowered)
                out.append((lowered, value.encode("utf-8")))
        return tuple(out)

    remove = _get(spec, "remove", path, list, [])
    for i, name in enumerate(remove):
        if not isinstance(name, str):
            raise _Invalid(f"{path}.remove[{i}]", f"expected a header name, got {name!r}")
    return HeaderModifier(
        set=pairs("set"),
        add=pairs("add"),
        remove=tuple(dict.fromkeys(n.lower().encode("latin-1", "replace") for n in remove)),
    )


def _path_modifier(spec: Mapping[str, Any] | None, path: str, matches: tuple[HttpMatch, ...]) -> PathModifier | None:
    if spec is None:
        return None
    type_ = _get(spec, "type", path, str)
    if type_ == "ReplaceFullPath":
        value = _get(spec, "replaceFullPath", path, str)
        if value is None:
            raise _Invalid(path, "replaceFullPath must be specified when type is set to 'ReplaceFullPath'")
        return PathModifier(PathModifierType.FULL, value.encode("utf-8"))
    if type_ == "ReplacePrefixMatch":
        value = _get(spec, "replacePrefixMatch", path, str)
        if value is None:
            raise _Invalid(path, "replacePrefixMatch must be specified when type is set to 'ReplacePrefixMatch'")
        # "ReplacePrefixMatch is only compatible with a PathPrefix HTTPRouteMatch" and the CRD
        # asks for exactly one match: otherwise which prefix to replace is not defined.
        if len(matches) != 1 or matches[0].path_type is not PathType.PREFIX:
            raise _Invalid(path, "ReplacePrefixMatch needs exactly one PathPrefix match in the rule")
        return PathModifier(PathModifierType.PREFIX, value.encode("utf-8"))
    raise _Invalid(f"{path}.type", f"unsupported path modifier type {type_!r}")


def _redirect(spec: Mapping[str, Any], path: str, matches: tuple[HttpMatch, ...]) -> RequestRedirect:
    scheme = _get(spec, "scheme", path, str)
    if scheme is not None and scheme not in _SCHEMES:
        raise _Invalid(f"{path}.scheme", f"unsupported scheme {scheme!r}")
    status = _get(spec, "statusCode", path, int, 302)
    if status not in _REDIRECT_CODES:
        raise _Invalid(f"{path}.statusCode", f"unsupported status code {status}")
    hostname = _get(spec, "hostname", path, str)
    return RequestRedirect(
        scheme=scheme.encode("ascii") if scheme else None,
        hostname=hostname.encode("utf-8") if hostname else None,
        port=_port(spec, "port", path),
        path=_path_modifier(_get(spec, "path", path, Mapping), f"{path}.path", matches),
        status=status,
    )


def _rewrite(spec: Mapping[str, Any], path: str, matches: tuple[HttpMatch, ...]) -> URLRewrite:
    hostname = _get(spec, "hostname", path, str)
    return URLRewrite(
        hostname=hostname.encode("utf-8") if hostname else None,
        path=_path_modifier(_get(spec, "path", path, Mapping), f"{path}.path", matches),
    )


@dataclass(slots=True)
class _Filters:
    request_headers: list[HeaderModifier]
    response_headers: list[HeaderModifier]
    mirrors: list[RequestMirror]
    redirect: RequestRedirect | None = None
    rewrite: URLRewrite | None = None
    extension_ref: bool = False


def _fraction(spec: Mapping[str, Any], path: str) -> float:
    percent = _get(spec, "percent", path, int)
    fraction = _get(spec, "fraction", path, Mapping)
    if percent is not None and fraction is not None:
        raise _Invalid(path, "only one of percent or fraction may be specified")
    if percent is not None:
        if not 0 <= percent <= 100:
            raise _Invalid(f"{path}.percent", f"{percent} is outside 0-100")
        return percent / 100
    if fraction is not None:
        numerator = _get(fraction, "numerator", f"{path}.fraction", int)
        denominator = _get(fraction, "denominator", f"{path}.fraction", int, 100)
        if numerator is None or numerator < 0 or denominator <= 0 or numerator > denominator:
            raise _Invalid(f"{path}.fraction", "numerator must be 0..denominator and denominator > 0")
        return numerator / denominator
    return 1.0


class _Context:
    """Per-route parsing state: the route's namespace, the Service lookup, the problems."""

    def __init__(self, kind: str, namespace: str, lookup: ServiceLookup, domain_suffix: str) -> None:
        self.kind = kind
        self.namespace = namespace
        self.lookup = lookup
        self.domain_suffix = domain_suffix
        self.problems: list[Problem] = []
        self.rule: int | None = None

    def resolved_refs(self, reason: str, message: str) -> None:
        self.problems.append(Problem(RESOLVED_REFS, reason, message, rule=self.rule))

    def service_ref(self, spec: Mapping[str, Any], path: str, what: str) -> tuple[str, str, int | None, str | None]:
        """(namespace, name, port, problem reason) of a backend-like reference."""
        name = _get(spec, "name", path, str)
        if not name:
            raise _Invalid(f"{path}.name", "name is required")
        group = _get(spec, "group", path, str, "")
        kind = _get(spec, "kind", path, str, "Service")
        namespace = _get(spec, "namespace", path, str) or self.namespace
        port = _port(spec, "port", path)
        if group not in _CORE_GROUPS or kind != "Service":
            self.resolved_refs(INVALID_KIND, f"{what} {group or 'core'}/{kind} {namespace}/{name} is not a Service")
            return namespace, name, port, INVALID_KIND
        if port is None:
            self.resolved_refs(BACKEND_NOT_FOUND, f"{what} Service {namespace}/{name} has no port (required)")
            return namespace, name, port, BACKEND_NOT_FOUND
        if self.lookup(namespace, name) is None:
            self.resolved_refs(
                BACKEND_NOT_FOUND, f"backend({name}.{namespace}.svc.{self.domain_suffix}) not found"
            )
            return namespace, name, port, BACKEND_NOT_FOUND
        return namespace, name, port, None

    def filters(self, specs: list[tuple[str, Mapping[str, Any]]], matches: tuple[Any, ...]) -> _Filters:
        grpc = self.kind == GRPC_ROUTE
        out = _Filters([], [], [])
        for where, spec in specs:
            type_ = _get(spec, "type", where, str)
            if type_ == "RequestHeaderModifier":
                out.request_headers.append(_header_modifier(_get(spec, "requestHeaderModifier", where, Mapping, {}),
                                                            f"{where}.requestHeaderModifier"))
            elif type_ == "ResponseHeaderModifier":
                out.response_headers.append(_header_modifier(_get(spec, "responseHeaderModifier", where, Mapping, {}),
                                                             f"{where}.responseHeaderModifier"))
            elif type_ == "RequestMirror":
                mirror = _get(spec, "requestMirror", where, Mapping, {})
                ref = _get(mirror, "backendRef", f"{where}.requestMirror", Mapping)
                if ref is None:
                    raise _Invalid(f"{where}.requestMirror.backendRef", "backendRef is required")
                fraction = _fraction(mirror, f"{where}.requestMirror")
                namespace, name, port, problem = self.service_ref(ref, f"{where}.requestMirror.backendRef", "mirror")
                # An unresolvable mirror "must be dropped" (HTTPRequestMirrorFilter.BackendRef).
                if problem is None and port is not None:
                    out.mirrors.append(RequestMirror(namespace, name, port, fraction))
            elif type_ == "RequestRedirect" and not grpc:
                out.redirect = _redirect(_get(spec, "requestRedirect", where, Mapping, {}), f"{where}.requestRedirect",
                                         matches)
            elif type_ == "URLRewrite" and not grpc:
                out.rewrite = _rewrite(_get(spec, "urlRewrite", where, Mapping, {}), f"{where}.urlRewrite", matches)
            elif type_ == "ExtensionRef":
                ref = _get(spec, "extensionRef", where, Mapping, {})
                out.extension_ref = True
                self.resolved_refs(
                    INVALID_FILTER,
                    f"{where}: ExtensionRef {ref.get('group', '')}/{ref.get('kind', '')} {ref.get('name', '')} "
                    "is not supported; requests it would process get a 500",
                )
            elif type_ in _KNOWN_UNSUPPORTED_FILTERS and not grpc:
                raise _DropRule(f"{where}: filter {type_} is not supported")
            else:
                raise _Invalid(f"{where}.type", f"unsupported filter type {type_!r} for {self.kind}")
        if out.redirect is not None and out.rewrite is not None:
            raise _Invalid(specs[0][0], "RequestRedirect and URLRewrite cannot be used together")
        return out

    def backends(self, rule: Mapping[str, Any], path: str, matches: tuple[Any, ...]) -> tuple[Backend, ...]:
        out = []
        for where, ref in _dicts(rule, "backendRefs", path):
            weight = _get(ref, "weight", where, int, 1)
            if not 0 <= weight <= 1_000_000:
                raise _Invalid(f"{where}.weight", f"{weight} is outside 0-1000000")
            namespace, name, port, problem = self.service_ref(ref, where, "backendRef")
            filters = self.filters(_dicts(ref, "filters", where), matches)
            if filters.extension_ref and problem is None:
                problem = INVALID_FILTER
            out.append(Backend(
                namespace=namespace, name=name, port=port, weight=weight,
                kind=_get(ref, "kind", where, str, "Service"), problem=problem,
                request_headers=tuple(filters.request_headers),
                response_headers=tuple(filters.response_headers),
                rewrite=filters.rewrite, redirect=filters.redirect, mirrors=tuple(filters.mirrors),
            ))
        return tuple(out)


_DEFAULT_HTTP_RULES: list[dict[str, Any]] = [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}]


def _rule(ctx: _Context, name: str, index: int, rule: Mapping[str, Any], path: str) -> Rule:
    grpc = ctx.kind == GRPC_ROUTE
    match_specs = _dicts(rule, "matches", path)
    matches: tuple[Any, ...]
    if grpc:
        matches = tuple(_grpc_match(m, where) for where, m in match_specs) or (GrpcMatch(),)
    else:
        matches = tuple(_http_match(m, where) for where, m in match_specs) or (HttpMatch(PathType.PREFIX, b"/"),)
    filters = ctx.filters(_dicts(rule, "filters", path), matches)
    backends = ctx.backends(rule, path, matches)
    if filters.redirect is not None and backends:
        raise _Invalid(path, "RequestRedirect filter must not be used together with backendRefs")
    timeouts = _get(rule, "timeouts", path, Mapping, {}) if not grpc else {}
    return Rule(
        ref=RouteRef(ctx.kind, ctx.namespace, name, index),
        matches=matches,
        request_headers=tuple(filters.request_headers),
        response_headers=tuple(filters.response_headers),
        redirect=filters.redirect,
        rewrite=filters.rewrite,
        mirrors=tuple(filters.mirrors),
        backends=backends,
        choice=weighted(backends),
        unresolved_filter=filters.extension_ref,
        request_timeout=_duration(_get(timeouts, "request", f"{path}.timeouts", str), f"{path}.timeouts.request"),
        backend_timeout=_duration(_get(timeouts, "backendRequest", f"{path}.timeouts", str),
                                  f"{path}.timeouts.backendRequest"),
        retry=_retry(rule, path) if not grpc else None,
    )


def _retry(rule: Mapping[str, Any], path: str) -> RetryPolicy | None:
    """HTTPRoute `retry` (GEP-1731) → the policy the waypoint runs (`http_route_retry`)."""
    spec = _get(rule, "retry", path, Mapping)
    if spec is None:
        return None
    where = f"{path}.retry"
    attempts = _get(spec, "attempts", where, int)
    if attempts is not None and attempts < 0:
        raise _Invalid(f"{where}.attempts", f"{attempts!r} is not a number of retries (0 or more)")
    codes = []
    for i, code in enumerate(_get(spec, "codes", where, list, [])):
        if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
            raise _Invalid(f"{where}.codes[{i}]", f"{code!r} is not an HTTP status code from 400 to 599")
        codes.append(code)
    backoff = _duration(_get(spec, "backoff", where, str), f"{where}.backoff")
    return http_route_retry(attempts, tuple(codes), None if backoff in (None, math.inf) else backoff)


def _parents(spec: Mapping[str, Any], namespace: str, lookup: ServiceLookup,
             problems: list[Problem]) -> tuple[ParentRef, ...]:
    parents = []
    for i, (where, ref) in enumerate(_dicts(spec, "parentRefs", "spec")):
        group = _get(ref, "group", where, str, "gateway.networking.k8s.io")
        kind = _get(ref, "kind", where, str, "Gateway")
        if group not in _CORE_GROUPS or kind != "Service":
            continue
        name = _get(ref, "name", where, str)
        if not name:
            raise _Invalid(f"{where}.name", "name is required")
        parent = ParentRef(i, _get(ref, "namespace", where, str) or namespace, name, _port(ref, "port", where),
                           _get(ref, "sectionName", where, str))
        parents.append(parent)
        service = lookup(parent.namespace, parent.name)
        if service is None:
            problems.append(Problem(ACCEPTED, NO_MATCHING_PARENT,
                                    f"parent Service {parent.namespace}/{parent.name} not found", parent=i))
        elif parent.section_name is not None:
            problems.append(Problem(ACCEPTED, NO_MATCHING_PARENT,
                                    f"sectionName {parent.section_name!r} is not supported on a Service parent; "
                                    "scope the route with port", parent=i))
        elif parent.port is not None and parent.port not in {p.service_port for p in service.ports}:
            problems.append(Problem(ACCEPTED, NO_MATCHING_PARENT,
                                    f"Service {parent.namespace}/{parent.name} has no port {parent.port}", parent=i))
    return tuple(parents)


def parse_route(obj: Mapping[str, Any], lookup: ServiceLookup, domain_suffix: str = "cluster.local") -> ParsedRoute:
    """Parse one HTTPRoute or GRPCRoute; never raises on bad content (it becomes problems).

    ``lookup(namespace, name)`` returns the Service or None; it decides ``BackendNotFound`` and
    whether parents exist.
    """
    kind = obj.get("kind") if isinstance(obj, Mapping) else None
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    meta = meta if isinstance(meta, Mapping) else {}
    namespace = meta.get("namespace") if isinstance(meta.get("namespace"), str) else "default"
    name = meta.get("name") if isinstance(meta.get("name"), str) else ""
    kind = kind if kind in (HTTP_ROUTE, GRPC_ROUTE) else HTTP_ROUTE
    created = _timestamp(meta)
    problems: list[Problem] = []
    spec = obj.get("spec") if isinstance(obj, Mapping) else None
    if not isinstance(spec, Mapping):
        problem = Problem(ACCEPTED, UNSUPPORTED_VALUE, "spec: expected an object")
        return ParsedRoute(kind, namespace, name, created, (), (), False, (problem,))
    try:
        parents = _parents(spec, namespace, lookup, problems)
    except _Invalid as exc:
        problem = Problem(ACCEPTED, UNSUPPORTED_VALUE, str(exc))
        return ParsedRoute(kind, namespace, name, created, (), (), False, (problem,))
    ctx = _Context(kind, namespace, lookup, domain_suffix)
    rules = []
    try:
        if spec.get("rules") is None and kind == HTTP_ROUTE:
            rule_specs = [("spec.rules[0]", r) for r in _DEFAULT_HTTP_RULES]
        else:
            rule_specs = _dicts(spec, "rules", "spec")
        for index, (where, rule) in enumerate(rule_specs):
            ctx.rule = index
            try:
                rules.append(_rule(ctx, name, index, rule, where))
            except _DropRule as exc:
                ctx.problems.append(Problem(PARTIALLY_INVALID, INVALID_FILTER, str(exc), rule=index))
    except _Invalid as exc:
        problems.append(Problem(ACCEPTED, UNSUPPORTED_VALUE, str(exc)))
        return ParsedRoute(kind, namespace, name, created, parents, (), False,
                           tuple(problems) + tuple(ctx.problems))
    problems.extend(ctx.problems)
    accepted = True
    if rule_specs and not rules:
        accepted = False
        problems.append(Problem(ACCEPTED, INVALID_FILTER, "every rule uses a filter that is not supported"))
    return ParsedRoute(kind, namespace, name, created, parents, tuple(rules), accepted, tuple(problems),
                       len(rule_specs))


def http_precedence(match: HttpMatch, route: ParsedRoute, rule: int, index: int) -> tuple[Any, ...]:
    """Sort key of one HTTPRouteMatch (ascending = higher precedence); see the module docstring."""
    return (
        int(match.path_type),
        -len(match.path),
        0 if match.method is not None else 1,
        -len(match.headers),
        -len(match.query),
        route.created,
        f"{route.namespace}/{route.name}",
        rule,
        index,
    )


def grpc_precedence(match: GrpcMatch, route: ParsedRoute, rule: int, index: int) -> tuple[Any, ...]:
    """Sort key of one GRPCRouteMatch (ascending = higher precedence)."""
    return (
        -match.service_chars,
        -match.method_chars,
        -len(match.headers),
        route.created,
        f"{route.namespace}/{route.name}",
        rule,
        index,
    )
