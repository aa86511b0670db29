"""The resource model the control plane serves to ztunnels and waypoints.

Workload, Service and Authorization carry Istio's field names and semantics
(ztunnel's ``proto/workload.proto`` and ``proto/authorization.proto``), so a
config dump of ours reads like one of Istio's. ConfigObject carries the Gateway
API and AuthorizationPolicy objects a waypoint compiles itself (only waypoints
receive them; ztunnels never do), as the object's compact JSON text so the model
stays typed, hashable and comparable. Everything here is plain, frozen
data plus a stable JSON form: the config stream sends ``encode(obj)`` bytes and
clients rebuild objects with ``from_json``. ``diff`` turns two snapshots into
the delta the stream sends after its first full snapshot.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import immutables

DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_SERVICE_ACCOUNT = "default"
HBONE_MTLS_PORT = 15008


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
    """Where to reach a waypoint: its Service VIP and HBONE port, and which waypoint it is.

    ``namespace``/``hostname`` name the waypoint's Service as Istio's NamespacedHostname does
    (``<gateway>.<ns>.svc.<domain>``: the Service is named after its Gateway). An empty
    ``address`` marks a binding to a waypoint that is missing or not ready: traffic bound to
    it is refused (fails closed), never sent direct past the waypoint's L7 policy.
    """

    address: str
    hbone_mtls_port: int = HBONE_MTLS_PORT
    namespace: str = ""
    hostname: str = ""

    @property
    def usable(self) -> bool:
        return bool(self.address)

    @property
    def gateway(self) -> str:
        """The waypoint's Gateway as "ns/name" ("" when the address does not say)."""
        if not self.namespace or not self.hostname:
            return ""
        return f"{self.namespace}/{self.hostname.split('.', 1)[0]}"


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
    # The pod's labels: a waypoint selects DestinationRule subsets by them (Envoy gets them as
    # endpoint metadata from istiod). Read-only, as `services`.
    labels: Mapping[str, str] = field(default_factory=dict)

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


# --- Kubernetes objects for waypoints ----------------------------------------------------------

CONFIG_OBJECT_KINDS = frozenset({"Gateway", "HTTPRoute", "GRPCRoute", "AuthorizationPolicy",
                                 "RequestAuthentication", "VirtualService", "DestinationRule", "Telemetry"})
# What of an object's metadata a waypoint may need: labels (selectors), annotations,
# creationTimestamp and generation (route precedence ties are broken by age, then name).
_CONFIG_METADATA = ("labels", "annotations", "creationTimestamp", "generation")


@dataclass(frozen=True, slots=True)
class ConfigObject:
    """A Gateway, HTTPRoute, GRPCRoute or AuthorizationPolicy as a waypoint receives it.

    ``body`` is the Kubernetes object as compact, key-sorted JSON text: apiVersion, kind,
    metadata (name, namespace and `_CONFIG_METADATA`) and spec, never status, so a status write
    does not change the model. Build one with `config_object`; read it with `object`.
    """

    kind: str
    namespace: str
    name: str
    body: str

    def __post_init__(self) -> None:
        if self.kind not in CONFIG_OBJECT_KINDS:
            raise ModelError(f"ConfigObject kind {self.kind!r} is not one of {sorted(CONFIG_OBJECT_KINDS)}")

    def object(self) -> dict[str, Any]:
        """The object as a dict (a new one each call). Raises ModelError if the body is not a JSON object."""
        try:
            data = json.loads(self.body)
        except ValueError as exc:
            raise ModelError(f"{self.kind} {self.namespace}/{self.name}: body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ModelError(f"{self.kind} {self.namespace}/{self.name}: body is not a JSON object")
        return data


def config_object(obj: Mapping[str, Any]) -> ConfigObject:
    """The ConfigObject for a Kubernetes object (a dict as the API server returns it).

    Raises ModelError naming what is missing when the object has no kind, name or namespace,
    or its kind is not one a waypoint receives.
    """
    kind = obj.get("kind")
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        raise ModelError(f"{kind or 'object'} has no metadata")
    name, namespace = metadata.get("name"), metadata.get("namespace")
    if not isinstance(kind, str) or not isinstance(name, str) or not name \
            or not isinstance(namespace, str) or not namespace:
        raise ModelError(f"{kind or 'object'} needs a kind, metadata.name and metadata.namespace")
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    for key in _CONFIG_METADATA:
        if metadata.get(key):
            meta[key] = metadata[key]
    body: dict[str, Any] = {"apiVersion": obj.get("apiVersion", ""), "kind": kind, "metadata": meta,
                            "spec": obj.get("spec") or {}}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{kind} {namespace}/{name} is not JSON-serialisable: {exc}") from None
    return ConfigObject(kind, namespace, name, text)


Resource = Union[Workload, Service, Authorization, ConfigObject]


# --- keys, snapshots and deltas ----------------------------------------------------------------

KIND_WORKLOAD = "workload"
KIND_SERVICE = "service"
KIND_AUTHORIZATION = "authorization"
KIND_CONFIG_OBJECT = "object"


@dataclass(frozen=True, slots=True, order=True)
class ResourceKey:
    """Resource kind plus its stable name; kinds keep service and policy keys apart."""

    kind: str
    key: str


def resource_key(obj: Resource) -> ResourceKey:
    """Workload uid, service "ns/hostname", authorization "ns/name", object "Kind/ns/name"."""
    if isinstance(obj, Workload):
        return ResourceKey(KIND_WORKLOAD, obj.uid)
    if isinstance(obj, Service):
        return ResourceKey(KIND_SERVICE, f"{obj.namespace}/{obj.hostname}")
    if isinstance(obj, Authorization):
        return ResourceKey(KIND_AUTHORIZATION, f"{obj.namespace}/{obj.name}")
    if isinstance(obj, ConfigObject):
        return ResourceKey(KIND_CONFIG_OBJECT, f"{obj.kind}/{obj.namespace}/{obj.name}")
    raise TypeError(f"not a model resource: {type(obj).__name__}")


@dataclass(frozen=True, slots=True, eq=False)
class ModelSnapshot:
    """The whole model at one moment, each kind keyed by its resource key.

    The maps are any read-only Mapping: plain dicts where a snapshot is built whole, persistent
    maps (`immutables.Map`) once `apply` has patched it, so a delta costs O(log n) rather than a
    copy of every workload. Snapshots compare by content, whichever the maps are.
    """

    workloads: Mapping[str, Workload] = field(default_factory=dict)
    services: Mapping[str, Service] = field(default_factory=dict)
    authorizations: Mapping[str, Authorization] = field(default_factory=dict)
    objects: Mapping[str, ConfigObject] = field(default_factory=dict)

    @classmethod
    def of(cls, resources: typing.Iterable[Resource]) -> ModelSnapshot:
        workloads: dict[str, Workload] = {}
        services: dict[str, Service] = {}
        authorizations: dict[str, Authorization] = {}
        objects: dict[str, ConfigObject] = {}
        targets: dict[str, dict[str, Any]] = {
            KIND_WORKLOAD: workloads,
            KIND_SERVICE: services,
            KIND_AUTHORIZATION: authorizations,
            KIND_CONFIG_OBJECT: objects,
        }
        for obj in resources:
            rk = resource_key(obj)
            targets[rk.kind][rk.key] = obj
        return cls(workloads, services, authorizations, objects)

    def persistent(self) -> ModelSnapshot:
        """The same snapshot with persistent maps, which `apply` patches without copying."""
        return ModelSnapshot(*(m if isinstance(m, immutables.Map) else immutables.Map(m)
                               for m in (self.workloads, self.services, self.authorizations,
                                         self.objects)))

    def resources(self) -> typing.Iterator[Resource]:
        yield from self.workloads.values()
        yield from self.services.values()
        yield from self.authorizations.values()
        yield from self.objects.values()

    def __len__(self) -> int:
        return len(self.workloads) + len(self.services) + len(self.authorizations) + len(self.objects)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelSnapshot):
            return NotImplemented
        return all(_same_items(a, b) for a, b in (
            (self.workloads, other.workloads), (self.services, other.services),
            (self.authorizations, other.authorizations), (self.objects, other.objects)))

    __hash__ = None  # type: ignore[assignment]  # maps are not hashable


def _same_items(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if a is b:
        return True
    if len(a) != len(b):
        return False
    missing = object()
    return all(b.get(key, missing) == value for key, value in a.items())


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
        (KIND_CONFIG_OBJECT, old.objects, new.objects),
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

    Only the kinds the delta touches change, and those become persistent maps patched in
    O(log n) per resource: a one-pod change to 10,000 workloads neither copies nor frees the
    other 9,999 entries (a dict copy did both, ~40 µs each, per subscriber per change). A kind
    still held in a dict is converted first (3 ms for 10,000; subscribers convert snapshots as
    they decode them, see `persistent`). Others are shared with ``snapshot``, which is never
    mutated.
    """
    maps: dict[str, Mapping[str, Any]] = {
        KIND_WORKLOAD: snapshot.workloads,
        KIND_SERVICE: snapshot.services,
        KIND_AUTHORIZATION: snapshot.authorizations,
        KIND_CONFIG_OBJECT: snapshot.objects,
    }
    mutations: dict[str, Any] = {}

    def writable(kind: str):
        mutation = mutations.get(kind)
        if mutation is None:
            current = maps[kind]
            persistent = current if isinstance(current, immutables.Map) else immutables.Map(current)
            mutation = mutations[kind] = persistent.mutate()
        return mutation

    for rk in delta.removals:
        writable(rk.kind).pop(rk.key, None)
    for obj in delta.upserts:
        rk = resource_key(obj)
        writable(rk.kind)[rk.key] = obj
    for kind, mutation in mutations.items():
        maps[kind] = mutation.finish()
    return ModelSnapshot(maps[KIND_WORKLOAD], maps[KIND_SERVICE], maps[KIND_AUTHORIZATION],
                         maps[KIND_CONFIG_OBJECT])


# --- JSON ---------------------------------------------------------------------------------------
#
# Encoding rules: field names as in the dataclasses (Istio's snake_case); fields equal to
# their default are left out so documents stay small and stable as fields are added;
# StringMatch uses protobuf's JSON oneof form ({"exact": "x"}, {"presence": {}}).

_KINDS: dict[str, type] = {
    KIND_WORKLOAD: Workload,
    KIND_SERVICE: Service,
    KIND_AUTHORIZATION: Authorization,
    KIND_CONFIG_OBJECT: ConfigObject,
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
    "authorization"/"object" or a model class. Raises ModelError on malformed input, naming the field."""
    cls = _KINDS.get(kind) if isinstance(kind, str) else kind
    if cls is None:
        raise ModelError(f"unknown model kind {kind!r}; expected one of {sorted(_KINDS)}")
    try:
        return _decoder(cls)(data)
    except _Malformed as exc:
        raise ModelError(f"{cls.__name__}{''.join(reversed(exc.path))}: {exc.message}") from None


# Decoding runs for every resource of every config message a proxy receives, so each type's
# decoder is built once from its annotations, and the path to a bad field is put together
# only when one fails.

class _Malformed(Exception):
    def __init__(self, message: str) -> None:
        self.message = message
        self.path: list[str] = []  # innermost first


_DECODERS: dict[Any, Callable[[Any], Any]] = {}


def _decoder(tp: Any) -> Callable[[Any], Any]:
    decoder = _DECODERS.get(tp)
    if decoder is None:
        decoder = _DECODERS[tp] = _build_decoder(tp)
    return decoder


def _build_decoder(tp: Any) -> Callable[[Any], Any]:
    if tp is StringMatch:
        return _decode_string_match
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_decoder(tp)
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        (inner_type,) = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = _decoder(inner_type)
        return lambda data: None if data is None else inner(data)
    if origin is tuple:
        return _tuple_decoder(_decoder(typing.get_args(tp)[0]))
    if origin is Mapping or origin is dict:
        return _mapping_decoder(_decoder(typing.get_args(tp)[1]))
    if tp is bool:
        return _scalar_decoder(lambda v: isinstance(v, bool), "a boolean")
    if tp is int:
        return _scalar_decoder(lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer")
    if tp is str:
        return _scalar_decoder(lambda v: isinstance(v, str), "a string")
    raise TypeError(f"cannot decode type {tp!r}")  # a programming error, not bad input


def _dataclass_decoder(cls: type) -> Callable[[Any], Any]:
    hints = typing.get_type_hints(cls)
    names = frozenset(f.name for f in dataclasses.fields(cls))
    fields: dict[str, Callable[[Any], Any]] = {}  # filled on first use: types may refer to each other

    def decode(data: Any) -> Any:
        if not isinstance(data, dict):
            raise _Malformed(f"expected an object, got {type(data).__name__}")
        kwargs = {}
        for key, value in data.items():
            field_decoder = fields.get(key)
            if field_decoder is None:
                if key not in names:
                    raise _Malformed(f"unknown field(s) {sorted(set(data) - names)}")
                field_decoder = fields[key] = _decoder(hints[key])
            try:
                kwargs[key] = field_decoder(value)
            except _Malformed as exc:
                exc.path.append(f".{key}")
                raise
        try:
            return cls(**kwargs)
        except TypeError as exc:  # a required field is missing
            raise _Malformed(str(exc)) from None
        except ModelError as exc:  # the class's own check (ConfigObject's kind)
            raise _Malformed(str(exc)) from None
    return decode


def _tuple_decoder(item: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def decode(data: Any) -> tuple:
        if not isinstance(data, list):
            raise _Malformed(f"expected a list, got {type(data).__name__}")
        result = []
        for index, value in enumerate(data):
            try:
                result.append(item(value))
            except _Malformed as exc:
                exc.path.append(f"[{index}]")
                raise
        return tuple(result)
    return decode


def _mapping_decoder(value: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def decode(data: Any) -> dict:
        if not isinstance(data, dict):
            raise _Malformed(f"expected an object, got {type(data).__name__}")
        result = {}
        for k, v in sorted(data.items()):
            try:
                result[k] = value(v)
            except _Malformed as exc:
                exc.path.append(f"[{k!r}]")
                raise
        return result
    return decode


def _scalar_decoder(valid: Callable[[Any], bool], what: str) -> Callable[[Any], Any]:
    def decode(data: Any) -> Any:
        if valid(data):
            return data
        raise _Malformed(f"expected {what}, got {data!r}")
    return decode


def _decode_string_match(data: Any) -> StringMatch:
    if not isinstance(data, dict) or len(data) != 1:
        raise _Malformed(f"expected one of exact/prefix/suffix/presence, got {data!r}")
    ((kind, value),) = data.items()
    if kind == "presence":
        return StringMatch("presence")
    if kind not in ("exact", "prefix", "suffix") or not isinstance(value, str):
        raise _Malformed(f"expected one of exact/prefix/suffix/presence, got {data!r}")
    return StringMatch(kind, value)

