"""The resource model the control plane serves to ztunnels and waypoints.

Workload, Service and Authorization carry Istio's field names and semantics
(ztunnel's ``proto/workload.proto`` and ``proto/authorization.proto``), so a
config dump of ours reads like one of Istio's. Everything here is plain, frozen
data plus a stable JSON form: the config stream sends ``encode(obj)`` bytes and
clients rebuild objects with ``from_json``. ``diff`` turns two snapshots into
the delta the stream sends after its first full snapshot.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union

DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_SERVICE_ACCOUNT = "default"
HBONE_MTLS_PORT = 15008

TunnelProtocol = Literal["NONE", "HBONE"]
WorkloadStatus = Literal["HEALTHY", "UNHEALTHY"]
Scope = Literal["GLOBAL", "NAMESPACE", "WORKLOAD_SELECTOR"]
Action = Literal["ALLOW", "DENY"]
StringMatchKind = Literal["exact", "prefix", "suffix", "presence"]

TUNNEL_PROTOCOLS = ("NONE", "HBONE")
WORKLOAD_STATUSES = ("HEALTHY", "UNHEALTHY")
SCOPES = ("GLOBAL", "NAMESPACE", "WORKLOAD_SELECTOR")
ACTIONS = ("ALLOW", "DENY")
# ztunnel's AppProtocol enum; "" stands for UNKNOWN so the common case encodes to nothing.
APP_PROTOCOLS = ("", "HTTP11", "HTTP2", "GRPC")


class ModelError(ValueError):
    """A JSON document does not describe a valid model object."""


# --- workload and service -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PortMapping:
    """A service port and the workload port it forwards to (0 = named, resolved per workload)."""

    service_port: int
    target_port: int
    app_protocol: str = ""


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    """Where to reach a waypoint: its Service VIP and HBONE port."""

    address: str
    hbone_mtls_port: int = HBONE_MTLS_PORT


@dataclass(frozen=True, slots=True)
class Locality:
    region: str = ""
    zone: str = ""
    subzone: str = ""


@dataclass(frozen=True, slots=True)
class LoadBalancing:
    """Locality-aware routing as in Istio's LoadBalancing message (scopes and mode)."""

    routing_preference: tuple[str, ...] = ()
    mode: str = ""


@dataclass(frozen=True, slots=True)
class Workload:
    uid: str
    name: str
    namespace: str
    addresses: tuple[str, ...] = ()
    network: str = ""
    tunnel_protocol: str = "NONE"
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    service_account: str = DEFAULT_SERVICE_ACCOUNT
    waypoint: GatewayAddress | None = None
    node: str = ""
    canonical_name: str = ""
    canonical_revision: str = ""
    workload_type: str = "pod"
    workload_name: str = ""
    # "ns/hostname" -> ports. A plain dict (kept sorted by key) because the model is
    # rebuilt, never mutated; treat it as read-only.
    services: Mapping[str, tuple[PortMapping, ...]] = field(default_factory=dict)
    authorization_policies: tuple[str, ...] = ()
    status: str = "HEALTHY"
    cluster_id: str = ""
    locality: Locality | None = None
    capacity: int = 1

    def identity(self) -> str:
        """The workload's SPIFFE identity."""
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    namespace: str
    hostname: str
    addresses: tuple[str, ...] = ()
    ports: tuple[PortMapping, ...] = ()
    subject_alt_names: tuple[str, ...] = ()
    waypoint: GatewayAddress | None = None
    load_balancing: LoadBalancing | None = None


# --- authorization ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StringMatch:
    """One of exact/prefix/suffix/presence; ``value`` is empty for presence."""

    kind: str
    value: str = ""

    def matches(self, candidate: str) -> bool:
        if self.kind == "exact":
            return candidate == self.value
        if self.kind == "prefix":
            return candidate.startswith(self.value)
        if self.kind == "suffix":
            return candidate.endswith(self.value)
        return candidate != ""


@dataclass(frozen=True, slots=True)
class ServiceAccountMatch:
    namespace: str
    service_account: str


@dataclass(frozen=True, slots=True)
class Match:
    """Fields AND, values of one field OR; ``not_*`` passes only if none match.

    IP fields hold CIDR strings ("10.0.0.0/8", "10.1.2.3/32"). Principals are
    stored without ``spiffe://`` because ztunnel compares them that way.
    """

    namespaces: tuple[StringMatch, ...] = ()
    not_namespaces: tuple[StringMatch, ...] = ()
    principals: tuple[StringMatch, ...] = ()
    not_principals: tuple[StringMatch, ...] = ()
    source_ips: tuple[str, ...] = ()
    not_source_ips: tuple[str, ...] = ()
    destination_ips: tuple[str, ...] = ()
    not_destination_ips: tuple[str, ...] = ()
    destination_ports: tuple[int, ...] = ()
    not_destination_ports: tuple[int, ...] = ()
    service_accounts: tuple[ServiceAccountMatch, ...] = ()
    not_service_accounts: tuple[ServiceAccountMatch, ...] = ()

    def is_empty(self) -> bool:
        # An empty Match never matches in ztunnel; converters use this to avoid emitting one by accident.
        return not any(getattr(self, f) for f in _MATCH_FIELDS)


_MATCH_FIELDS = tuple(f.name for f in dataclasses.fields(Match))


@dataclass(frozen=True, slots=True)
class Clause:
    """Matches OR. An empty clause matches everything."""

    matches: tuple[Match, ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    """Clauses AND (typically one each for from, to, and every when)."""

    clauses: tuple[Clause, ...] = ()


@dataclass(frozen=True, slots=True)
class Authorization:
    """Rules OR; a policy without rules never matches."""

    name: str
    namespace: str
    scope: str
    action: str
    rules: tuple[Rule, ...] = ()
    dry_run: bool = False


Resource = Union[Workload, Service, Authorization]


# --- keys, snapshots and deltas ----------------------------------------------------------------

KIND_WORKLOAD = "workload"
KIND_SERVICE = "service"
KIND_AUTHORIZATION = "authorization"


@dataclass(frozen=True, slots=True, order=True)
class ResourceKey:
    """Resource kind plus its stable name; kinds keep service and policy keys apart."""

    kind: str
    key: str


def resource_key(obj: Resource) -> ResourceKey:
    """Workload uid, service "ns/hostname", authorization "ns/name"."""
    if isinstance(obj, Workload):
        return ResourceKey(KIND_WORKLOAD, obj.uid)
    if isinstance(obj, Service):
        return ResourceKey(KIND_SERVICE, f"{obj.namespace}/{obj.hostname}")
    if isinstance(obj, Authorization):
        return ResourceKey(KIND_AUTHORIZATION, f"{obj.namespace}/{obj.name}")
    raise TypeError(f"not a model resource: {type(obj).__name__}")


@dataclass(frozen=True, slots=True)
class ModelSnapshot:
    """The whole model at one moment, each kind keyed by its resource key."""

    workloads: Mapping[str, Workload] = field(default_factory=dict)
    services: Mapping[str, Service] = field(default_factory=dict)
    authorizations: Mapping[str, Authorization] = field(default_factory=dict)

    @classmethod
    def of(cls, resources: typing.Iterable[Resource]) -> ModelSnapshot:
        workloads: dict[str, Workload] = {}
        services: dict[str, Service] = {}
        authorizations: dict[str, Authorization] = {}
        for obj in resources:
            rk = resource_key(obj)
            target: dict[str, Any] = {
                KIND_WORKLOAD: workloads,
                KIND_SERVICE: services,
                KIND_AUTHORIZATION: authorizations,
            }[rk.kind]
            target[rk.key] = obj
        return cls(workloads, services, authorizations)

    def resources(self) -> typing.Iterator[Resource]:
        yield from self.workloads.values()
        yield from self.services.values()
        yield from self.authorizations.values()

    def __len__(self) -> int:
        return len(self.workloads) + len(self.services) + len(self.authorizations)


@dataclass(frozen=True, slots=True)
class Delta:
    """What changed between two snapshots: resources to add or replace, keys to drop."""

    upserts: tuple[Resource, ...] = ()
    removals: tuple[ResourceKey, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.upserts or self.removals)


def diff(old: ModelSnapshot, new: ModelSnapshot) -> Delta:
    """Upserts (new or changed, ordered by key) and removals (ordered) from ``old`` to ``new``."""
    upserts: list[tuple[ResourceKey, Resource]] = []
    removals: list[ResourceKey] = []
    for kind, before, after in (
        (KIND_WORKLOAD, old.workloads, new.workloads),
        (KIND_SERVICE, old.services, new.services),
        (KIND_AUTHORIZATION, old.authorizations, new.authorizations),
    ):
        for key, obj in after.items():
            prev = before.get(key)
            # Identity first: an unchanged object is usually the very same instance.
            if prev is None or (prev is not obj and prev != obj):
                upserts.append((ResourceKey(kind, key), obj))
        removals.extend(ResourceKey(kind, key) for key in before.keys() - after.keys())
    upserts.sort(key=lambda pair: pair[0])
    removals.sort()
    return Delta(tuple(obj for _, obj in upserts), tuple(removals))


def apply(snapshot: ModelSnapshot, delta: Delta) -> ModelSnapshot:
    """The snapshot a client holds after receiving ``delta`` (the inverse of ``diff``).

    Only the kinds the delta touches are copied; the others are shared with ``snapshot``
    (snapshots are never mutated), so a one-pod change copies one map, not three.
    """
    maps: dict[str, Mapping[str, Any]] = {
        KIND_WORKLOAD: snapshot.workloads,
        KIND_SERVICE: snapshot.services,
        KIND_AUTHORIZATION: snapshot.authorizations,
    }
    copied: set[str] = set()

    def writable(kind: str) -> dict[str, Any]:
        if kind not in copied:
            maps[kind] = dict(maps[kind])
            copied.add(kind)
        return maps[kind]  # type: ignore[return-value]

    for rk in delta.removals:
        writable(rk.kind).pop(rk.key, None)
    for obj in delta.upserts:
        rk = resource_key(obj)
        writable(rk.kind)[rk.key] = obj
    return ModelSnapshot(maps[KIND_WORKLOAD], maps[KIND_SERVICE], maps[KIND_AUTHORIZATION])


# --- JSON ---------------------------------------------------------------------------------------
#
# Encoding rules: field names as in the dataclasses (Istio's snake_case); fields equal to
# their default are left out so documents stay small and stable as fields are added;
# StringMatch uses protobuf's JSON oneof form ({"exact": "x"}, {"presence": {}}).

_KINDS: dict[str, type] = {
    KIND_WORKLOAD: Workload,
    KIND_SERVICE: Service,
    KIND_AUTHORIZATION: Authorization,
}


def to_json(obj: Any) -> Any:
    """The JSON-ready form (dicts, lists, strings, numbers) of a model object."""
    if isinstance(obj, StringMatch):
        return {obj.kind: {} if obj.kind == "presence" else obj.value}
    if isinstance(obj, (str, int)):
        return obj
    plan = _PLANS.get(type(obj))
    if plan is None and dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        plan = _PLANS[type(obj)] = _plan(type(obj))
    if plan is not None:
        out: dict[str, Any] = {}
        for name, default, has_default in plan:
            value = getattr(obj, name)
            if has_default and (value == default if default is not _EMPTY else not value):
                continue
            out[name] = to_json(value)
        return out
    if isinstance(obj, (tuple, list)):
        return [to_json(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in sorted(obj.items())}
    return obj


# Per class: (field name, default, has default); _EMPTY marks "default is an empty collection".
_EMPTY: Any = object()
_PLANS: dict[type, tuple[tuple[str, Any, bool], ...]] = {}


def _plan(cls: type) -> tuple[tuple[str, Any, bool], ...]:
    plan = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            plan.append((f.name, f.default, True))
        elif f.default_factory is not dataclasses.MISSING:
            plan.append((f.name, _EMPTY, True))
        else:
            plan.append((f.name, None, False))
    return tuple(plan)


def encode(obj: Any) -> bytes:
    """Compact, key-sorted UTF-8 JSON: equal objects give equal bytes."""
    return json.dumps(to_json(obj), sort_keys=True, separators=(",", ":")).encode()


def from_json(kind: str | type, data: Any) -> Any:
    """Rebuild a model object from ``to_json`` output; ``kind`` is "workload"/"service"/
    "authorization" or a model class. Raises ModelError on malformed input."""
    cls = _KINDS.get(kind) if isinstance(kind, str) else kind
    if cls is None:
        raise ModelError(f"unknown model kind {kind!r}; expected one of {sorted(_KINDS)}")
    return _decode(cls, data, cls.__name__)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _decode(tp: Any, data: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is StringMatch:
        return _decode_string_match(data, where)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise ModelError(f"{where}: expected an object, got {type(data).__name__}")
        hints = _hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = set(data) - names
        if unknown:
            raise ModelError(f"{where}: unknown field(s) {sorted(unknown)}")
        kwargs = {k: _decode(hints[k], v, f"{where}.{k}") for k, v in data.items()}
        try:
            return tp(**kwargs)
        except TypeError as exc:  # a required field is missing
            raise ModelError(f"{where}: {exc}") from None
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if data is None:
            return None
        return _decode(args[0], data, where)
    if origin is tuple:
        if not isinstance(data, list):
            raise ModelError(f"{where}: expected a list, got {type(data).__name__}")
        item = typing.get_args(tp)[0]
        return tuple(_decode(item, v, f"{where}[{i}]") for i, v in enumerate(data))
    if origin is Mapping or origin is dict:
        if not isinstance(data, dict):
            raise ModelError(f"{where}: expected an object, got {type(data).__name__}")
        _, vt = typing.get_args(tp)
        return {k: _decode(vt, v, f"{where}[{k!r}]") for k, v in sorted(data.items())}
    if tp is bool:
        if not isinstance(data, bool):
            raise ModelError(f"{where}: expected a boolean, got {data!r}")
        return data
    if tp is int:
        if not isinstance(data, int) or isinstance(data, bool):
            raise ModelError(f"{where}: expected an integer, got {data!r}")
        return data
    if tp is str:
        if not isinstance(data, str):
            raise ModelError(f"{where}: expected a string, got {data!r}")
        return data
    raise ModelError(f"{where}: cannot decode type {tp!r}")  # pragma: no cover - programming error


def _decode_string_match(data: Any, where: str) -> StringMatch:
    if not isinstance(data, dict) or len(data) != 1:
        raise ModelError(f"{where}: expected one of exact/prefix/suffix/presence, got {data!r}")
    ((kind, value),) = data.items()
    if kind == "presence":
        return StringMatch("presence")
    if kind not in ("exact", "prefix", "suffix") or not isinstance(value, str):
        raise ModelError(f"{where}: expected one of exact/prefix/suffix/presence, got {data!r}")
    return StringMatch(kind, value)
