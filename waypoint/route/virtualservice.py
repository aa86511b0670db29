"""Istio VirtualService ``http`` routes → the same ``Rule``s the HTTPRoute compiler builds.

Input: ``networking.istio.io`` VirtualService objects (v1, v1beta1, v1alpha3 share one schema),
already checked against ``deploy/crds`` by ``operator/validation``. ``parse_virtual_service``
returns a ``ParsedRoute`` of kind ``VirtualService`` whose ``parents`` are the ``hosts`` that name
a Service (``wisp.istio_hosts``: short names relative to the VirtualService's namespace,
``name.ns``, ``name.ns.svc``, the FQDN), one ``Rule`` per ``http`` entry, and the problems found,
never an exception. ``RouteTable`` (``table.compile_table``) serves the rules of a Service port
from ``VsRoutes``: Istio's semantics, **the first http route whose match matches wins, in the
order written** ("Rules are evaluated in sequential order from top to bottom, with the first rule
in the virtual service definition being given highest priority", virtual-service reference) —
not the Gateway API precedence sort.

What each field becomes (virtual-service reference, istio/api ``networking/v1alpha3``):

- ``match`` (ORed; none = everything): ``uri``/``scheme``/``method``/``authority`` exact, prefix
  (a plain string prefix, unlike PathPrefix) or regex (RE2, whole value, ``regex``);
  ``ignoreUriCase`` (exact and prefix uri only, as Envoy's ``case_sensitive``); ``headers`` and
  ``withoutHeaders`` (an empty match = present); ``queryParams`` (exact, prefix, regex; empty =
  present); ``port`` (the Service port the client dialled).
- ``route``: weighted destinations (a single destination takes every request whatever its
  weight; of several, weight 0 or unset is never chosen) with ``subset`` (``Backend.subset``,
  resolved by the balancer against the host's DestinationRule) and ``port.number`` (unset: the
  port the client dialled); per-destination ``headers``.
- ``timeout`` → the rule's request timeout (``0s`` disables it); ``retries`` → ``RetryPolicy``
  as Istio's ``retry.ConvertPolicy`` builds it (absent: the default policy; ``attempts: 0``: no
  retries; ``retryOn`` replaces the default conditions and codes); ``fault`` → ``FaultPolicy``
  (``fixedDelay`` and ``httpStatus``/``grpcStatus`` with ``percentage.value``, or the deprecated
  integer ``percent``; neither set → 100%) (``waypoint/resilience/policy.py``).
- ``mirror`` + ``mirrorPercentage`` (or the deprecated ``mirrorPercent``), ``mirrors`` →
  ``RequestMirror``s (100% when no percentage), with their ``subset``.
- ``headers.request``/``headers.response``: remove first, then set and add, as Envoy's header
  parser does ("headers_to_remove" before "headers_to_add").
- ``rewrite.uri`` replaces the matched part of the path (Envoy ``prefix_rewrite``: the prefix of
  a prefix match; the whole path of an exact or regex match; ``/`` when there is no uri match);
  ``rewrite.authority`` the authority.
- ``redirect`` (``uri`` replaces the path, ``authority``, ``scheme``, ``port`` or ``derivePort``,
  ``redirectCode`` default 301); ``directResponse`` (status and ``body.string``/``body.bytes``).

Fields a waypoint does not carry out are reported as ``UnsupportedFields`` problems naming the
field (the control plane writes them to the VirtualService's status), and handled the safe way:

- ignored (the rest of the route applies): ``gateways`` other than ``mesh``, ``exportTo``,
  ``tcp``, ``tls``, ``corsPolicy``, ``match.statPrefix``, ``retries.retryRemoteLocalities``, ``fault.delay.exponentialDelay``, ``fault.abort.http2Error``;
- a match condition wisp cannot evaluate (``sourceLabels``, ``sourceNamespace``, ``gateways``
  without ``mesh``) makes that match never match, so a route never applies more widely than
  written;
- an action it cannot perform (``delegate``, ``rewrite.uriRegexRewrite``) answers 500 for the
  requests the route matches, as an unresolved HTTPRoute ExtensionRef does: skipping it would
  send them somewhere the author did not say.

A VirtualService whose ``gateways`` are set and do not include ``mesh`` does not apply to mesh
traffic at all (Istio's rule) and is not accepted here.
"""

from __future__ import annotations

import base64
import binascii
import enum
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from wisp.istio_hosts import host_key

from ..resilience.policy import DEFAULT_RETRY, FaultPolicy, PolicyError, RetryPolicy, parse_retry_on
from .backends import Backend, weighted
from .filters import HeaderModifier, PathModifier, PathModifierType, RequestMirror, RequestRedirect, URLRewrite
from .match import Entry
from .parse import ParentRef, ParsedRoute, Rule, RouteRef, ServiceLike, _timestamp
from .regex import Regex, RegexError, compile_regex
from .request import HttpRequest, first_query_value
from .status import (
    ACCEPTED,
    BACKEND_NOT_FOUND,
    NO_MATCHING_PARENT,
    RESOLVED_REFS,
    UNSUPPORTED_VALUE,
    Problem,
)

VIRTUAL_SERVICE = "VirtualService"
MESH_GATEWAY = "mesh"
# Problems about fields the waypoint does not carry out; they never change acceptance.
UNSUPPORTED_FIELDS = "UnsupportedFields"
IGNORED = "FieldIgnored"
NOT_FOR_MESH = "NotForMesh"

_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# google.rpc.Code names, which `fault.abort.grpcStatus` is written in.
GRPC_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
    "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
    "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}
# Go's time.ParseDuration units, which the CRD's CEL `duration()` accepts.
_GO_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

ServiceByName = Callable[[str, str], "ServiceLike | None"]
ServiceByHostname = Callable[[str], "ServiceLike | None"]


class _Invalid(Exception):
    """A value this module cannot use at ``path``; the whole VirtualService is not accepted."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")


# --- compiled matches ------------------------------------------------------------------------


class MatchType(enum.Enum):
    EXACT = "exact"
    PREFIX = "prefix"
    REGEX = "regex"
    PRESENT = "present"


@dataclass(frozen=True, slots=True)
class StringMatch:
    """Istio's ``StringMatch`` on bytes; ``value`` is lower-case when ``ignore_case``."""

    type: MatchType
    value: bytes = b""
    regex: Regex | None = None
    ignore_case: bool = False

    def matches(self, candidate: bytes) -> bool:
        kind = self.type
        if kind is MatchType.REGEX:
            assert self.regex is not None
            return self.regex.fullmatch(candidate)
        if kind is MatchType.PRESENT:
            return True
        if self.ignore_case:
            candidate = candidate.lower()
        if kind is MatchType.EXACT:
            return candidate == self.value
        return candidate.startswith(self.value)


@dataclass(frozen=True, slots=True)
class VsMatch:
    """One ``HTTPMatchRequest``: every condition must hold (``never``: one wisp cannot evaluate)."""

    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: tuple[tuple[bytes, StringMatch], ...] = ()
    without_headers: tuple[tuple[bytes, StringMatch], ...] = ()
    query: tuple[tuple[bytes, StringMatch], ...] = ()
    port: int | None = None
    never: bool = False

    def matches(self, request: HttpRequest, path: bytes, query: bytes) -> bool:
        if self.never:
            return False
        if self.uri is not None and not self.uri.matches(path):
            return False
        if self.method is not None and not self.method.matches(request.method):
            return False
        if self.authority is not None and not self.authority.matches(request.authority):
            return False
        if self.scheme is not None and not self.scheme.matches(request.scheme):
            return False
        headers = request.headers
        for name, check in self.headers:
            value = headers.get(name)
            if value is None or not check.matches(value):
                return False
        for name, check in self.without_headers:
            value = headers.get(name)
            if value is not None and check.matches(value):
                return False
        for name, check in self.query:
            value = first_query_value(query, name)
            if value is None or not check.matches(value):
                return False
        return True


@dataclass(frozen=True, slots=True)
class VsRoutes:
    """The rules of the VirtualService that serves one Service port, in the order written.

    ``entries`` pairs each match with the ``Entry`` the table acts on; its ``prefix`` is the part
    of the path ``rewrite.uri`` replaces (a regex match replaces the request's whole path, so its
    entry is made per request).
    """

    entries: tuple[tuple[VsMatch, Entry], ...] = ()
    grpc: bool = False

    def match(self, request: HttpRequest, path: bytes, query: bytes) -> Entry | None:
        for match, entry in self.entries:
            if match.matches(request, path, query):
                if match.uri is not None and match.uri.type is MatchType.REGEX:
                    return Entry(entry.rule, prefix=path)
                return entry
        return None


def build_vs(route: ParsedRoute, port: int) -> VsRoutes:
    """The matches of ``route`` that apply on Service port ``port``, in order."""
    entries: list[tuple[VsMatch, Entry]] = []
    for rule in route.rules:
        for match in rule.matches:
            if not isinstance(match, VsMatch) or (match.port is not None and match.port != port):
                continue
            if match.uri is None:
                prefix = b"/"
            elif match.uri.type in (MatchType.EXACT, MatchType.PREFIX):
                prefix = match.uri.value
            else:
                prefix = b""
            entries.append((match, Entry(rule, prefix=prefix)))
    return VsRoutes(tuple(entries))


# --- reading fields --------------------------------------------------------------------------


def _get(obj: Mapping[str, Any], key: str, path: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    value = obj.get(key, default)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Invalid(f"{path}.{key}", f"expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def _regex(pattern: str, path: str) -> Regex:
    try:
        return compile_regex(pattern)
    except RegexError as exc:
        raise _Invalid(path, str(exc)) from None


def go_duration(value: str, path: str) -> float:
    """Seconds in a Go duration (``1.5s``, ``300ms``, ``1h30m``), which the CRD's CEL accepts."""
    text = value.strip()
    if text in ("0", ""):
        return 0.0
    total = 0.0
    at = 0
    while at < len(text):
        found = _GO_DURATION.match(text, at)
        if found is None:
            raise _Invalid(path, f"{value!r} is not a duration (e.g. 1.5s, 300ms, 1m)")
        total += float(found.group(1)) * _GO_UNITS[found.group(2)]
        at = found.end()
    return total


def _percentage(spec: Mapping[str, Any], key: str, path: str) -> float | None:
    """A ``Percent`` message (``{value: 0..100}``) as a fraction, or None when absent."""
    holder = _get(spec, key, path, Mapping)
    if holder is None:
        return None
    value = _get(holder, "value", f"{path}.{key}", (int, float), 0.0)
    if isinstance(value, bool) or not 0.0 <= value <= 100.0:
        raise _Invalid(f"{path}.{key}.value", f"{value} is outside 0-100")
    return float(value) / 100.0


def _string_match(spec: Any, path: str, *, ignore_case: bool = False) -> StringMatch:
    if not isinstance(spec, Mapping):
        raise _Invalid(path, f"expected an object, got {type(spec).__name__}")
    for key in ("exact", "prefix", "regex"):
        value = spec.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise _Invalid(f"{path}.{key}", f"expected str, got {type(value).__name__}")
        if key == "regex":
            return StringMatch(MatchType.REGEX, regex=_regex(value, f"{path}.regex"))
        data = value.encode("utf-8")
        if ignore_case:
            data = data.lower()
        if key == "prefix" and not data:
            return StringMatch(MatchType.PRESENT)
        return StringMatch(MatchType.EXACT if key == "exact" else MatchType.PREFIX, data, ignore_case=ignore_case)
    return StringMatch(MatchType.PRESENT)


def _named_matches(spec: Mapping[str, Any], key: str, path: str, *, lower: bool) -> tuple[tuple[bytes, StringMatch], ...]:
    items = _get(spec, key, path, Mapping, {})
    out = []
    for name, match in items.items():
        where = f"{path}.{key}.{name}"
        encoded = name.lower().encode("latin-1", "replace") if lower else str(name).encode("utf-8")
        out.append((encoded, _string_match(match if match is not None else {}, where)))
    return tuple(out)


def _header_ops(spec: Mapping[str, Any] | None, path: str) -> tuple[HeaderModifier, ...]:
    """Istio ``HeaderOperations`` as modifiers: remove first, then set and add (Envoy's order)."""
    if not spec:
        return ()

    def pairs(key: str) -> tuple[tuple[bytes, bytes], ...]:
        items = _get(spec, key, path, Mapping, {})
        out = []
        for name, value in items.items():
            if not isinstance(value, str):
                raise _Invalid(f"{path}.{key}.{name}", f"expected str, got {type(value).__name__}")
            out.append((str(name).lower().encode("latin-1", "replace"), value.encode("utf-8")))
        return tuple(out)

    remove = _get(spec, "remove", path, list, [])
    for i, name in enumerate(remove):
        if not isinstance(name, str):
            raise _Invalid(f"{path}.remove[{i}]", f"expected a header name, got {name!r}")
    modifiers = []
    if remove:
        modifiers.append(HeaderModifier(remove=tuple(dict.fromkeys(n.lower().encode("latin-1", "replace")
                                                                   for n in remove))))
    set_, add = pairs("set"), pairs("add")
    if set_ or add:
        modifiers.append(HeaderModifier(set=set_, add=add))
    return tuple(modifiers)


# --- the parse -------------------------------------------------------------------------------


class _Context:
    def __init__(self, namespace: str, by_name: ServiceByName, by_hostname: ServiceByHostname) -> None:
        self.namespace = namespace
        self.by_name = by_name
        self.by_hostname = by_hostname
        self.problems: list[Problem] = []
        self.rule: int | None = None

    def service(self, host: str) -> ServiceLike | None:
        key = host_key(host, self.namespace)
        if key is None:
            return None
        if isinstance(key, tuple):
            return self.by_name(key[0], key[1])
        return self.by_hostname(key)

    def ignored(self, path: str, why: str) -> None:
        self.problems.append(Problem(UNSUPPORTED_FIELDS, IGNORED, f"{path}: {why}", rule=self.rule))

    def unresolved(self, message: str) -> None:
        self.problems.append(Problem(RESOLVED_REFS, BACKEND_NOT_FOUND, message, rule=self.rule))

    def destination(self, spec: Any, path: str) -> tuple[ServiceLike | None, str, int | None, str | None]:
        """(Service or None, the host as written, port, subset) of a ``Destination``."""
        if not isinstance(spec, Mapping):
            raise _Invalid(path, "destination is required")
        host = _get(spec, "host", path, str)
        if not host:
            raise _Invalid(f"{path}.host", "host is required")
        port_spec = _get(spec, "port", path, Mapping, {})
        port = _get(port_spec, "number", f"{path}.port", int)
        if port is not None and not 1 <= port <= 65535:
            raise _Invalid(f"{path}.port.number", f"port {port} is outside 1-65535")
        subset = _get(spec, "subset", path, str) or None
        service = self.service(host)
        if service is None:
            self.unresolved(f"{path}.host: {host!r} is not a Service known to the mesh")
        return service, host, port, subset

    def match(self, spec: Mapping[str, Any], path: str) -> VsMatch:
        never = False
        for key in ("sourceLabels", "sourceNamespace"):
            if spec.get(key):
                self.ignored(f"{path}.{key}", "not supported on a waypoint; this match never matches")
                never = True
        gateways = _get(spec, "gateways", path, list, [])
        if gateways and MESH_GATEWAY not in gateways:
            self.ignored(f"{path}.gateways", "names no 'mesh'; this match never matches on a waypoint")
            never = True
        if spec.get("statPrefix"):
            self.ignored(f"{path}.statPrefix", "not supported; ignored")
        ignore_case = bool(_get(spec, "ignoreUriCase", path, bool, False))
        uri = spec.get("uri")
        port = _get(spec, "port", path, int)
        return VsMatch(
            uri=_string_match(uri, f"{path}.uri", ignore_case=ignore_case) if uri is not None else None,
            scheme=_string_match(spec["scheme"], f"{path}.scheme") if spec.get("scheme") is not None else None,
            method=_string_match(spec["method"], f"{path}.method") if spec.get("method") is not None else None,
            authority=(_string_match(spec["authority"], f"{path}.authority")
                       if spec.get("authority") is not None else None),
            headers=_named_matches(spec, "headers", path, lower=True),
            without_headers=_named_matches(spec, "withoutHeaders", path, lower=True),
            query=_named_matches(spec, "queryParams", path, lower=False),
            port=port,
            never=never,
        )

    def mirrors(self, spec: Mapping[str, Any], path: str) -> tuple[RequestMirror, ...]:
        items: list[tuple[str, Any, float]] = []
        if spec.get("mirror") is not None:
            fraction = _percentage(spec, "mirrorPercentage", path)
            if fraction is None:
                legacy = spec.get("mirrorPercent", spec.get("mirror_percent"))
                fraction = 1.0 if legacy is None else _legacy_percent(legacy, f"{path}.mirrorPercent")
            items.append((f"{path}.mirror", spec["mirror"], fraction))
        for i, mirror in enumerate(_get(spec, "mirrors", path, list, [])):
            where = f"{path}.mirrors[{i}]"
            if not isinstance(mirror, Mapping):
                raise _Invalid(where, "expected an object")
            fraction = _percentage(mirror, "percentage", where)
            items.append((f"{where}.destination", mirror.get("destination"), 1.0 if fraction is None else fraction))
        out = []
        for where, destination, fraction in items:
            service, host, port, subset = self.destination(destination, where)
            if service is None:
                continue  # reported; a mirror that cannot be resolved is dropped
            if port is None:
                ports = sorted({p.service_port for p in service.ports})
                if len(ports) != 1:
                    self.unresolved(f"{where}.port: Service {service.namespace}/{service.name} has "
                                    f"{len(ports)} ports; a mirror must name one")
                    continue
                port = ports[0]
            out.append(RequestMirror(service.namespace, service.name, port, fraction, subset))
        return tuple(out)

    def backends(self, spec: Mapping[str, Any], path: str) -> tuple[Backend, ...]:
        routes = _get(spec, "route", path, list, [])
        out = []
        for i, item in enumerate(routes):
            where = f"{path}.route[{i}]"
            if not isinstance(item, Mapping):
                raise _Invalid(where, "expected an object")
            service, host, port, subset = self.destination(item.get("destination"), f"{where}.destination")
            weight = _get(item, "weight", where, int, 0)
            if weight < 0:
                raise _Invalid(f"{where}.weight", f"{weight} is negative")
            headers = _get(item, "headers", where, Mapping, {})
            namespace, name = (service.namespace, service.name) if service is not None else (self.namespace, host)
            out.append(Backend(
                namespace=namespace, name=name, port=port,
                weight=1 if len(routes) == 1 else weight,
                problem=None if service is not None else BACKEND_NOT_FOUND,
                request_headers=_header_ops(_get(headers, "request", f"{where}.headers", Mapping),
                                            f"{where}.headers.request"),
                response_headers=_header_ops(_get(headers, "response", f"{where}.headers", Mapping),
                                             f"{where}.headers.response"),
                subset=subset,
            ))
        return tuple(out)


def _legacy_percent(value: Any, path: str) -> float:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100:
        raise _Invalid(path, f"{value!r} is not a percentage 0-100")
    return value / 100.0


def _redirect(spec: Mapping[str, Any], path: str) -> RequestRedirect:
    code = _get(spec, "redirectCode", path, int, 301)
    if code not in _REDIRECT_CODES:
        raise _Invalid(f"{path}.redirectCode", f"unsupported redirect code {code}")
    scheme = _get(spec, "scheme", path, str)
    uri = _get(spec, "uri", path, str)
    authority = _get(spec, "authority", path, str)
    port = _get(spec, "port", path, int)
    derive = _get(spec, "derivePort", path, str)
    if port is None and derive == "FROM_PROTOCOL_DEFAULT":
        port = 443 if scheme == "https" else 80
    return RequestRedirect(
        scheme=scheme.encode("ascii") if scheme else None,
        hostname=authority.encode("utf-8") if authority else None,
        port=port,
        path=PathModifier(PathModifierType.FULL, uri.encode("utf-8")) if uri else None,
        status=code,
    )


def _direct_body(spec: Mapping[str, Any], path: str) -> bytes:
    body = _get(spec, "body", path, Mapping, {})
    text = _get(body, "string", f"{path}.body", str)
    if text is not None:
        return text.encode("utf-8")
    raw = _get(body, "bytes", f"{path}.body", str)
    if raw is None:
        return b""
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise _Invalid(f"{path}.body.bytes", "not base64") from None


def _retry(ctx: _Context, spec: Mapping[str, Any] | None, path: str) -> RetryPolicy | None:
    """``retries`` as Istio's ``retry.ConvertPolicy`` makes it: absent → None (the waypoint's
    default, ``DEFAULT_RETRY``); ``attempts`` 0 or less → no retries; else the default policy with
    ``attempts``, and ``retryOn`` (its conditions and status codes, replacing the default's),
    ``perTryTimeout``, ``backoff`` and ``retryIgnorePreviousHosts`` when set."""
    if spec is None:
        return None
    attempts = _get(spec, "attempts", path, int, 0)
    if attempts <= 0:
        return RetryPolicy(attempts=0, on=frozenset())
    on, codes = DEFAULT_RETRY.on, DEFAULT_RETRY.codes
    retry_on = _get(spec, "retryOn", path, str)
    if retry_on:
        on, codes, unsupported = parse_retry_on(retry_on)
        if unsupported:
            ctx.ignored(f"{path}.retryOn", f"condition(s) {', '.join(unsupported)} not supported; ignored")
    per_try = _get(spec, "perTryTimeout", path, str)
    backoff = _get(spec, "backoff", path, str)
    if spec.get("retryRemoteLocalities") is not None:
        ctx.ignored(f"{path}.retryRemoteLocalities", "not supported; ignored")
    try:
        return RetryPolicy(
            attempts=attempts, on=on, codes=codes,
            per_try_timeout=go_duration(per_try, f"{path}.perTryTimeout") or None if per_try else None,
            backoff=go_duration(backoff, f"{path}.backoff") or DEFAULT_RETRY.backoff if backoff else DEFAULT_RETRY.backoff,
            previous_hosts=_get(spec, "retryIgnorePreviousHosts", path, bool, True),
        )
    except PolicyError as exc:
        raise _Invalid(path, str(exc)) from None


def _fault_percent(ctx: _Context, spec: Mapping[str, Any], path: str) -> float:
    """``percentage.value`` (or the deprecated integer ``percent``); 100 when neither is set."""
    fraction = _percentage(spec, "percentage", path)
    if fraction is not None:
        return fraction * 100.0
    legacy = spec.get("percent")
    return 100.0 if legacy is None else _legacy_percent(legacy, f"{path}.percent") * 100.0


def _fault(ctx: _Context, spec: Mapping[str, Any] | None, path: str) -> FaultPolicy | None:
    """``fault``: a fixed delay and an HTTP or gRPC abort, each for its percentage of requests."""
    if spec is None:
        return None
    delay = delay_percent = abort_percent = 0.0
    abort_status = abort_grpc = None
    delay_spec = _get(spec, "delay", path, Mapping)
    if delay_spec is not None:
        fixed = _get(delay_spec, "fixedDelay", f"{path}.delay", str)
        if fixed is not None:
            delay = go_duration(fixed, f"{path}.delay.fixedDelay")
            delay_percent = _fault_percent(ctx, delay_spec, f"{path}.delay")
        elif delay_spec.get("exponentialDelay") is not None:
            ctx.ignored(f"{path}.delay.exponentialDelay", "not supported (Istio does not program it either); "
                        "no delay is injected")
    abort_spec = _get(spec, "abort", path, Mapping)
    if abort_spec is not None:
        where = f"{path}.abort"
        abort_status = _get(abort_spec, "httpStatus", where, int)
        grpc = _get(abort_spec, "grpcStatus", where, str)
        if grpc is not None:
            abort_grpc = int(grpc) if grpc.isdigit() else GRPC_CODES.get(grpc.upper())
            if abort_grpc is None:
                raise _Invalid(f"{where}.grpcStatus", f"{grpc!r} is not a gRPC status code name")
        if abort_spec.get("http2Error") is not None:
            ctx.ignored(f"{where}.http2Error", "not supported; no abort is injected")
        if abort_status is not None or abort_grpc is not None:
            abort_percent = _fault_percent(ctx, abort_spec, where)
    try:
        return FaultPolicy(delay=delay, delay_percent=delay_percent, abort_status=abort_status,
                           abort_grpc_status=abort_grpc, abort_percent=abort_percent)
    except PolicyError as exc:
        raise _Invalid(path, str(exc)) from None


def _rule(ctx: _Context, name: str, index: int, spec: Mapping[str, Any], path: str) -> Rule:
    unresolved = False
    if spec.get("delegate") is not None:
        ctx.ignored(f"{path}.delegate", "delegation is not supported on a waypoint; matching requests get a 500")
        unresolved = True
    if spec.get("corsPolicy") is not None:
        ctx.ignored(f"{path}.corsPolicy", "CORS is not enforced on a waypoint; ignored")
    matches = tuple(ctx.match(m, f"{path}.match[{i}]") if isinstance(m, Mapping) else _bad(f"{path}.match[{i}]")
                    for i, m in enumerate(_get(spec, "match", path, list, []))) or (VsMatch(),)
    rewrite = None
    rewrite_spec = _get(spec, "rewrite", path, Mapping)
    if rewrite_spec is not None:
        if rewrite_spec.get("uriRegexRewrite") is not None:
            ctx.ignored(f"{path}.rewrite.uriRegexRewrite",
                        "not supported on a waypoint; matching requests get a 500")
            unresolved = True
        uri = _get(rewrite_spec, "uri", f"{path}.rewrite", str)
        authority = _get(rewrite_spec, "authority", f"{path}.rewrite", str)
        if uri or authority:
            rewrite = URLRewrite(
                hostname=authority.encode("utf-8") if authority else None,
                path=PathModifier(PathModifierType.MATCHED, uri.encode("utf-8")) if uri else None,
            )
    redirect_spec = _get(spec, "redirect", path, Mapping)
    direct_spec = _get(spec, "directResponse", path, Mapping)
    backends = ctx.backends(spec, path)
    if sum(x is not None for x in (redirect_spec, direct_spec)) + bool(backends) + unresolved == 0:
        raise _Invalid(path, "one of route, redirect or directResponse is required")
    headers = _get(spec, "headers", path, Mapping, {})
    timeout = _get(spec, "timeout", path, str)
    request_timeout = None
    if timeout is not None:
        seconds = go_duration(timeout, f"{path}.timeout")
        request_timeout = math.inf if seconds == 0 else seconds
    direct_status = None
    direct_body = b""
    if direct_spec is not None:
        direct_status = _get(direct_spec, "status", f"{path}.directResponse", int)
        if direct_status is None or not 100 <= direct_status <= 599:
            raise _Invalid(f"{path}.directResponse.status", f"{direct_status} is not an HTTP status")
        direct_body = _direct_body(direct_spec, f"{path}.directResponse")
    return Rule(
        ref=RouteRef(VIRTUAL_SERVICE, ctx.namespace, name, index),
        matches=matches,  # type: ignore[arg-type]  # VsMatch: served by VsRoutes, not the HTTPRoute index
        request_headers=_header_ops(_get(headers, "request", f"{path}.headers", Mapping), f"{path}.headers.request"),
        response_headers=_header_ops(_get(headers, "response", f"{path}.headers", Mapping),
                                     f"{path}.headers.response"),
        redirect=_redirect(redirect_spec, f"{path}.redirect") if redirect_spec is not None else None,
        rewrite=rewrite,
        mirrors=ctx.mirrors(spec, path),
        backends=backends,
        choice=weighted(backends),
        unresolved_filter=unresolved,
        request_timeout=request_timeout,
        direct_status=direct_status,
        direct_body=direct_body,
        retry=_retry(ctx, _get(spec, "retries", path, Mapping), f"{path}.retries"),
        fault=_fault(ctx, _get(spec, "fault", path, Mapping), f"{path}.fault"),
    )


def _bad(path: str) -> VsMatch:
    raise _Invalid(path, "expected an object")


def _top_level(spec: Mapping[str, Any], ctx: _Context) -> bool:
    """Report the ignored top-level fields; False when the VirtualService is not for the mesh."""
    gateways = _get(spec, "gateways", "spec", list, [])
    for_mesh = not gateways or MESH_GATEWAY in gateways
    if gateways and for_mesh and len(gateways) > 1:
        ctx.ignored("spec.gateways", "only 'mesh' applies on a waypoint; the other gateways are ignored")
    if spec.get("exportTo"):
        ctx.ignored("spec.exportTo", "visibility is not scoped on a waypoint; ignored")
    for key in ("tcp", "tls"):
        if spec.get(key):
            ctx.ignored(f"spec.{key}", f"{key} routes are not supported on a waypoint; ignored")
    return for_mesh


def parse_virtual_service(obj: Mapping[str, Any], by_name: ServiceByName, by_hostname: ServiceByHostname
                          ) -> ParsedRoute:
    """Parse one VirtualService; never raises on bad content (it becomes problems).

    ``by_name(namespace, name)`` and ``by_hostname(fqdn)`` find Services; a host that names none
    is an Accepted problem of that host (``parent`` = its index in ``spec.hosts``).
    """
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    meta = meta if isinstance(meta, Mapping) else {}
    namespace = meta.get("namespace") if isinstance(meta.get("namespace"), str) else "default"
    name = meta.get("name") if isinstance(meta.get("name"), str) else ""
    created = _timestamp(meta)
    spec = obj.get("spec") if isinstance(obj, Mapping) else None
    if not isinstance(spec, Mapping):
        problem = Problem(ACCEPTED, UNSUPPORTED_VALUE, "spec: expected an object")
        return ParsedRoute(VIRTUAL_SERVICE, namespace, name, created, (), (), False, (problem,))
    ctx = _Context(namespace, by_name, by_hostname)
    problems: list[Problem] = []
    parents: list[ParentRef] = []
    rules: list[Rule] = []
    try:
        for_mesh = _top_level(spec, ctx)
        hosts = _get(spec, "hosts", "spec", list, [])
        for i, host in enumerate(hosts):
            service = ctx.service(host) if isinstance(host, str) else None
            if service is None:
                problems.append(Problem(ACCEPTED, NO_MATCHING_PARENT,
                                        f"spec.hosts[{i}]: {host!r} names no Service of the mesh", parent=i))
            else:
                parents.append(ParentRef(i, service.namespace, service.name, None))
        for index, rule in enumerate(_get(spec, "http", "spec", list, [])):
            where = f"spec.http[{index}]"
            if not isinstance(rule, Mapping):
                raise _Invalid(where, "expected an object")
            ctx.rule = index
            _get(rule, "name", where, str)  # a label for Envoy's route; checked, not used
            rules.append(_rule(ctx, name, index, rule, where))
    except _Invalid as exc:
        problems.append(Problem(ACCEPTED, UNSUPPORTED_VALUE, str(exc)))
        return ParsedRoute(VIRTUAL_SERVICE, namespace, name, created, tuple(parents), (), False,
                           tuple(problems) + tuple(ctx.problems))
    problems.extend(ctx.problems)
    accepted = bool(parents) and for_mesh
    if not for_mesh:
        problems.append(Problem(ACCEPTED, NOT_FOR_MESH,
                                "spec.gateways does not include 'mesh': the VirtualService does not apply "
                                "to mesh traffic, so no waypoint uses it"))
    if not hosts:
        problems.append(Problem(ACCEPTED, NO_MATCHING_PARENT, "spec.hosts is empty"))
    return ParsedRoute(VIRTUAL_SERVICE, namespace, name, created, tuple(parents), tuple(rules), accepted,
                       tuple(problems), len(rules))


# --- status ----------------------------------------------------------------------------------


def _condition(type_: str, ok: bool, reason: str, message: str) -> dict[str, str]:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason, "message": message}


def status_conditions(problems: tuple[Problem, ...] | list[Problem], applied: list[str]) -> list[dict[str, str]]:
    """``Accepted``, ``ResolvedRefs`` and ``UnsupportedFields`` conditions of one VirtualService.

    ``applied`` says where it is in force ("Service ns/x port 80"); when empty and nothing else
    is wrong, Accepted is False with the first Accepted problem's reason. The control plane adds
    ``lastTransitionTime`` and ``observedGeneration``.
    """
    accepted = [p for p in problems if p.condition == ACCEPTED]
    resolved = [p for p in problems if p.condition == RESOLVED_REFS]
    ignored = [p for p in problems if p.condition == UNSUPPORTED_FIELDS]
    conditions = []
    if applied:
        message = "applied to " + ", ".join(applied)
        if accepted:
            message += "; " + "; ".join(p.message for p in accepted)
        conditions.append(_condition(ACCEPTED, True, "Accepted", message))
    else:
        reason = accepted[0].reason if accepted else NO_MATCHING_PARENT
        message = "; ".join(p.message for p in accepted) or "no host names a Service of the mesh"
        conditions.append(_condition(ACCEPTED, False, reason, message))
    if resolved:
        conditions.append(_condition(RESOLVED_REFS, False, resolved[0].reason, "; ".join(p.message for p in resolved)))
    else:
        conditions.append(_condition(RESOLVED_REFS, True, "ResolvedRefs", "All references resolved"))
    if ignored:
        conditions.append(_condition(UNSUPPORTED_FIELDS, True, IGNORED, "; ".join(p.message for p in ignored)))
    else:
        conditions.append(_condition(UNSUPPORTED_FIELDS, False, "AllFieldsSupported",
                                     "every field is carried out by the waypoint"))
    return conditions


__all__ = [
    "MatchType",
    "StringMatch",
    "UNSUPPORTED_FIELDS",
    "VIRTUAL_SERVICE",
    "VsMatch",
    "VsRoutes",
    "build_vs",
    "go_duration",
    "parse_virtual_service",
    "status_conditions",
]
