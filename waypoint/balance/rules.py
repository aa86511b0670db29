"""DestinationRules (networking.istio.io v1, v1beta1, v1alpha3) → `TrafficPolicies` by Service.

`compile_destination_rules(rules, services)` reads each rule's `host` relative to its namespace
(wisp.istio_hosts: short name, `name.ns`, FQDN; a wildcard names no single Service and is
skipped with a note), then its `trafficPolicy` (`loadBalancer`, `connectionPool`,
`outlierDetection`, `portLevelSettings`) and `subsets` (`name`, `labels`, `trafficPolicy`) into
the frozen types of waypoint.balance.policy, with Istio's field semantics:

- `loadBalancer.simple`: ROUND_ROBIN, LEAST_REQUEST (LEAST_CONN, its deprecated name), RANDOM;
  UNSPECIFIED keeps the waypoint's default (peak-EWMA P2C); PASSTHROUGH is not supported (noted,
  default kept). `consistentHash`: `httpHeaderName`, `httpCookie` (`name`; the hash uses a cookie
  the request already has — with a `ttl` Envoy would also generate one, the waypoint does not,
  and says so), `useSourceIp`, `httpQueryParameterName`; `ringHash.minimumRingSize` (or the
  deprecated `minimumRingSize`); `maglev` balances on the ring instead (noted).
- `connectionPool`: `tcp.maxConnections`, `http.http1MaxPendingRequests`,
  `http.http2MaxRequests`, `http.maxRequestsPerConnection`; other fields noted as ignored.
- `outlierDetection`: `consecutive5xxErrors`, `consecutiveGatewayErrors`, `interval`,
  `baseEjectionTime`, `maxEjectionPercent`, `minHealthPercent` (the deprecated
  `consecutiveErrors` counts gateway errors, as Istio maps it); local-origin splitting is noted.
- Durations as Istio accepts them (`1h`, `1m`, `10s`, `1.5s`, `100ms`, at least 1 ms).

Several rules for one Service (Istio merges them in creation order): a rule in the Service's own
namespace before others, then the oldest; the first rule with a `trafficPolicy` provides it, and
subsets are collected from every rule, the first definition of a name winning. Fields the
waypoint does not apply (`tls`, `tunnel`, `proxyProtocol`, `workloadSelector`,
`localityLbSetting`, warm-up...) and values it cannot read are reported in `notes` (one line per
rule and field), never fatal: the rest of the rule applies. The control plane's status
conditions (operator side) report the same fields.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from wisp.istio_hosts import resolve_host
from wisp.model import Service

from .policy import (
    CONSISTENT_HASH,
    DEFAULT_RING_SIZE,
    HASH_COOKIE,
    HASH_HEADER,
    HASH_QUERY,
    HASH_SOURCE_IP,
    LEAST_REQUEST,
    MAX_RING_SIZE,
    PEAK_EWMA,
    RANDOM,
    ROUND_ROBIN,
    ConnectionPool,
    DestinationPolicy,
    HashKey,
    LevelPolicy,
    LoadBalancer,
    OutlierDetection,
    Subset,
    TrafficPolicies,
    TrafficPolicy,
)

_SIMPLE = {"UNSPECIFIED": PEAK_EWMA, "ROUND_ROBIN": ROUND_ROBIN, "LEAST_REQUEST": LEAST_REQUEST,
           "LEAST_CONN": LEAST_REQUEST, "RANDOM": RANDOM}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

# What the waypoint reads; anything else at these levels is reported as ignored.
_POLICY_FIELDS = {"loadBalancer", "connectionPool", "outlierDetection", "portLevelSettings"}
_PORT_FIELDS = {"port", "loadBalancer", "connectionPool", "outlierDetection"}
_LB_FIELDS = {"simple", "consistentHash"}
_HASH_FIELDS = {"httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName", "ringHash",
                "minimumRingSize", "maglev"}
_TCP_FIELDS = {"maxConnections"}
_HTTP_FIELDS = {"http1MaxPendingRequests", "http2MaxRequests", "maxRequestsPerConnection"}
_OUTLIER_FIELDS = {"consecutive5xxErrors", "consecutiveGatewayErrors", "consecutiveErrors", "interval",
                   "baseEjectionTime", "maxEjectionPercent", "minHealthPercent"}
_SPEC_FIELDS = {"host", "trafficPolicy", "subsets", "exportTo"}


class _Bad(ValueError):
    pass


def parse_duration(value: Any) -> float:
    """Seconds in an Istio duration (`10s`, `1m30s`, `100ms`, `1.5s`); at least 1 ms."""
    if not isinstance(value, str) or not value:
        raise _Bad(f"{value!r} is not a duration such as 10s or 100ms")
    at, total = 0, 0.0
    for match in _DURATION.finditer(value):
        if match.start() != at:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        at = match.end()
    if at != len(value):
        raise _Bad(f"{value!r} is not a duration such as 10s or 100ms")
    if total < 0.001:
        raise _Bad(f"{value!r} is shorter than 1ms")
    return total


def _count(value: Any, what: str, minimum: int = 0, maximum: int = 2**32 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        else:
            raise _Bad(f"{what} must be an integer, not {value!r}")
    if not minimum <= value <= maximum:
        raise _Bad(f"{what} must be between {minimum} and {maximum}, not {value}")
    return value


class _Reader:
    """Reads one rule, collecting notes as `Kind ns/name: path: message`."""

    def __init__(self, rule: str, notes: list[str]) -> None:
        self.rule = rule
        self.notes = notes

    def note(self, path: str, message: str) -> None:
        self.notes.append(f"DestinationRule {self.rule}: {path}: {message}")

    def extra(self, data: Mapping[str, Any], known: set[str], path: str) -> None:
        for key in sorted(set(data) - known):
            self.note(f"{path}.{key}", "not supported on the waypoint; ignored")

    def mapping(self, value: Any, path: str) -> Mapping[str, Any] | None:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.note(path, f"must be an object, not {type(value).__name__}; ignored")
            return None
        return value

    # -- trafficPolicy ---------------------------------------------------------------------------
    def level(self, data: Any, path: str) -> LevelPolicy:
        data = self.mapping(data, path)
        if data is None:
            return LevelPolicy()
        self.extra(data, _POLICY_FIELDS, path)
        policy = self.policy(data, path)
        ports: dict[int, TrafficPolicy] = {}
        settings = data.get("portLevelSettings")
        if settings is not None and not isinstance(settings, list):
            self.note(f"{path}.portLevelSettings", "must be a list; ignored")
            settings = None
        for i, entry in enumerate(settings or ()):
            where = f"{path}.portLevelSettings[{i}]"
            entry = self.mapping(entry, where)
            if entry is None:
                continue
            self.extra(entry, _PORT_FIELDS, where)
            port = entry.get("port")
            number = port.get("number") if isinstance(port, Mapping) else None
            try:
                number = _count(number, f"{where}.port.number", 1, 65535)
            except _Bad as exc:
                self.note(where, f"{exc}; ignored")
                continue
            if number in ports:
                self.note(where, f"port {number} already has settings; ignored")
                continue
            ports[number] = self.policy(entry, where)
        return LevelPolicy(policy, ports)

    def policy(self, data: Mapping[str, Any], path: str) -> TrafficPolicy:
        return TrafficPolicy(self.load_balancer(data.get("loadBalancer"), f"{path}.loadBalancer"),
                             self.connection_pool(data.get("connectionPool"), f"{path}.connectionPool"),
                             self.outlier(data.get("outlierDetection"), f"{path}.outlierDetection"))

    def load_balancer(self, value: Any, path: str) -> LoadBalancer | None:
        data = self.mapping(value, path)
        if data is None:
            return None
        self.extra(data, _LB_FIELDS, path)  # localityLbSetting, warmup...: Service.trafficDistribution instead
        simple, hashed = data.get("simple"), data.get("consistentHash")
        if simple is not None and hashed is not None:
            self.note(path, "simple and consistentHash are exclusive; consistentHash ignored")
            hashed = None
        if simple is not None:
            algorithm = _SIMPLE.get(simple) if isinstance(simple, str) else None
            if algorithm is None:
                self.note(f"{path}.simple", f"{simple!r} is not supported on the waypoint; the default "
                          "(peak-EWMA power of two choices) applies")
                return None
            return LoadBalancer(algorithm)
        if hashed is not None:
            return self.consistent_hash(hashed, f"{path}.consistentHash")
        return None

    def consistent_hash(self, value: Any, path: str) -> LoadBalancer | None:
        data = self.mapping(value, path)
        if data is None:
            return None
        self.extra(data, _HASH_FIELDS, path)
        keys = [k for k in ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName") if k in data]
        if len(keys) != 1:
            self.note(path, "needs exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName; "
                      "ignored")
            return None
        kind = keys[0]
        value = data[kind]
        if kind == "httpHeaderName":
            if not isinstance(value, str) or not value:
                self.note(f"{path}.httpHeaderName", "must be a header name; ignored")
                return None
            key = HashKey(HASH_HEADER, value.lower())
        elif kind == "httpQueryParameterName":
            if not isinstance(value, str) or not value:
                self.note(f"{path}.httpQueryParameterName", "must be a parameter name; ignored")
                return None
            key = HashKey(HASH_QUERY, value)
        elif kind == "useSourceIp":
            if value is not True:
                self.note(f"{path}.useSourceIp", "is not true: no hash key; ignored")
                return None
            key = HashKey(HASH_SOURCE_IP)
        else:
            cookie = self.mapping(value, f"{path}.httpCookie")
            name = cookie.get("name") if cookie is not None else None
            if not isinstance(name, str) or not name:
                self.note(f"{path}.httpCookie.name", "is required; ignored")
                return None
            self.extra(cookie, {"name", "path", "ttl"}, f"{path}.httpCookie")
            if "ttl" in cookie:
                self.note(f"{path}.httpCookie.ttl", "the waypoint hashes a cookie the request carries and does not "
                          "generate one; a request without it is placed at random")
            key = HashKey(HASH_COOKIE, name)
        ring = DEFAULT_RING_SIZE
        ring_hash = self.mapping(data.get("ringHash"), f"{path}.ringHash")
        size = ring_hash.get("minimumRingSize") if ring_hash is not None else data.get("minimumRingSize")
        if size is not None:
            try:
                ring = _count(size, f"{path}.ringHash.minimumRingSize", 1, MAX_RING_SIZE)
            except _Bad as exc:
                self.note(path, f"{exc}; the default 1024 applies")
        if "maglev" in data:
            self.note(f"{path}.maglev", "the waypoint hashes on a ring (RingHash) instead")
        return LoadBalancer(CONSISTENT_HASH, key, ring)

    def connection_pool(self, value: Any, path: str) -> ConnectionPool | None:
        data = self.mapping(value, path)
        if data is None:
            return None
        self.extra(data, {"tcp", "http"}, path)
        tcp = self.mapping(data.get("tcp"), f"{path}.tcp") or {}
        http = self.mapping(data.get("http"), f"{path}.http") or {}
        self.extra(tcp, _TCP_FIELDS, f"{path}.tcp")
        self.extra(http, _HTTP_FIELDS, f"{path}.http")
        values: dict[str, int | None] = {}
        for source, field, name, where in (
            (tcp, "maxConnections", "max_connections", "tcp"),
            (http, "http1MaxPendingRequests", "max_pending", "http"),
            (http, "http2MaxRequests", "max_requests", "http"),
            (http, "maxRequestsPerConnection", "max_requests_per_connection", "http"),
        ):
            raw = source.get(field)
            if raw is None:
                continue
            try:
                number = _count(raw, f"{path}.{where}.{field}", 0, 2**31 - 1)
            except _Bad as exc:
                self.note(f"{path}.{where}.{field}", f"{exc}; ignored")
                continue
            # Istio: 0 means the default (no limit) for each of these.
            values[name] = number or None
        return ConnectionPool(**values)

    def outlier(self, value: Any, path: str) -> OutlierDetection | None:
        data = self.mapping(value, path)
        if data is None:
            return None
        # splitExternalLocalOriginErrors, consecutiveLocalOriginFailures: reported by `extra`; a
        # failed connection always counts as a 503 here (Envoy's behaviour without the split).
        self.extra(data, _OUTLIER_FIELDS, path)
        values: dict[str, Any] = {}
        for field, name, low, high in (
            ("consecutive5xxErrors", "consecutive_5xx", 0, 2**32 - 1),
            ("consecutiveGatewayErrors", "consecutive_gateway", 0, 2**32 - 1),
            ("maxEjectionPercent", "max_ejection_percent", 0, 100),
            ("minHealthPercent", "min_health_percent", 0, 100),
        ):
            raw = data.get(field)
            if raw is None:
                continue
            try:
                values[name] = _count(raw, f"{path}.{field}", low, high)
            except _Bad as exc:
                self.note(f"{path}.{field}", f"{exc}; the default applies")
        if "consecutiveErrors" in data and "consecutive_gateway" not in values:
            try:  # deprecated: Istio maps it to consecutive gateway errors
                values["consecutive_gateway"] = _count(data["consecutiveErrors"], f"{path}.consecutiveErrors")
            except _Bad as exc:
                self.note(f"{path}.consecutiveErrors", f"{exc}; ignored")
        for field, name in (("interval", "interval"), ("baseEjectionTime", "base_ejection_time")):
            raw = data.get(field)
            if raw is None:
                continue
            try:
                values[name] = parse_duration(raw)
            except _Bad as exc:
                self.note(f"{path}.{field}", f"{exc}; the default applies")
        return OutlierDetection(**values)

    # -- subsets ---------------------------------------------------------------------------------
    def subsets(self, value: Any, path: str, into: dict[str, Subset], owners: dict[str, str]) -> None:
        if value is None:
            return
        if not isinstance(value, list):
            self.note(path, "must be a list; ignored")
            return
        for i, entry in enumerate(value):
            where = f"{path}[{i}]"
            entry = self.mapping(entry, where)
            if entry is None:
                continue
            self.extra(entry, {"name", "labels", "trafficPolicy"}, where)
            name = entry.get("name")
            if not isinstance(name, str) or not name:
                self.note(f"{where}.name", "is required; subset ignored")
                continue
            labels = entry.get("labels") or {}
            if not isinstance(labels, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                          for k, v in labels.items()):
                self.note(f"{where}.labels", "must map strings to strings; subset ignored")
                continue
            if name in into:
                self.note(where, f"subset {name!r} is already defined by DestinationRule {owners[name]}; ignored")
                continue
            into[name] = Subset(name, tuple(sorted(labels.items())), self.level(entry.get("trafficPolicy"),
                                                                                 f"{where}.trafficPolicy"))
            owners[name] = self.rule


def _age(rule: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = rule.get("metadata") or {}
    return (str(meta.get("creationTimestamp") or ""), str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def compile_destination_rules(rules: Iterable[Mapping[str, Any]], services: Iterable[Service]) -> TrafficPolicies:
    """The policies of `rules` by Service ("ns/hostname"); see the module docstring."""
    services = list(services)
    by_name = {(s.namespace, s.name): s for s in services}
    by_hostname = {s.hostname.lower(): s for s in services}
    notes: list[str] = []
    targets: dict[str, list[tuple[Mapping[str, Any], Service]]] = {}
    for rule in rules:
        meta = rule.get("metadata") if isinstance(rule.get("metadata"), Mapping) else {}
        namespace = str(meta.get("namespace") or "default")
        ref = f"{namespace}/{meta.get('name') or '?'}"
        spec = rule.get("spec")
        if not isinstance(spec, Mapping):
            notes.append(f"DestinationRule {ref}: spec must be an object; ignored")
            continue
        host = spec.get("host")
        if not isinstance(host, str) or not host:
            notes.append(f"DestinationRule {ref}: spec.host is required; ignored")
            continue
        service = resolve_host(host, namespace, lambda ns, name: by_name.get((ns, name)),
                               lambda name: by_hostname.get(name))
        if service is None:
            notes.append(f"DestinationRule {ref}: spec.host {host!r} names no Service (wildcards are not "
                         "supported on the waypoint); ignored")
            continue
        targets.setdefault(f"{service.namespace}/{service.hostname}", []).append((rule, service))
    by_service: dict[str, DestinationPolicy] = {}
    for key, found in targets.items():
        service = found[0][1]
        found.sort(key=lambda item: (_rule_namespace(item[0]) != service.namespace, _age(item[0])))
        level: LevelPolicy | None = None
        first = ""
        subsets: dict[str, Subset] = {}
        owners: dict[str, str] = {}
        for rule, _ in found:
            meta = rule.get("metadata") or {}
            ref = f"{meta.get('namespace') or 'default'}/{meta.get('name') or '?'}"
            reader = _Reader(ref, notes)
            spec = rule["spec"]
            reader.extra(spec, _SPEC_FIELDS | {"workloadSelector"}, "spec")
            if "workloadSelector" in spec:
                reader.note("spec.workloadSelector", "applies to sidecars only; the rule applies to the waypoint "
                            "without it")
            if spec.get("trafficPolicy") is not None:
                if level is None:
                    level, first = reader.level(spec.get("trafficPolicy"), "spec.trafficPolicy"), ref
                else:
                    reader.note("spec.trafficPolicy", f"DestinationRule {first} already sets the Service's policy; "
                                "ignored")
            reader.subsets(spec.get("subsets"), "spec.subsets", subsets, owners)
        by_service[key] = DestinationPolicy(first or _ref(found[0][0]), level or LevelPolicy(), subsets)
    return TrafficPolicies(by_service, tuple(notes))


def _rule_namespace(rule: Mapping[str, Any]) -> str:
    return str((rule.get("metadata") or {}).get("namespace") or "default")


def _ref(rule: Mapping[str, Any]) -> str:
    meta = rule.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name') or '?'}"
