"""Traffic policy as the balancer applies it: load balancer, connection pool, outlier detection.

Plain frozen data, one `TrafficPolicy` per (Service, port, subset) once `resolve` has merged a
DestinationRule's levels the way Istio does (`MergeTrafficPolicy` in istio/istio
`pilot/pkg/networking/core/cluster_traffic_policy.go`): the rule's top-level `trafficPolicy`, then its
`portLevelSettings` entry for the Service port, then the subset's `trafficPolicy`, then the subset's
own `portLevelSettings` entry — each level replaces whole fields (`loadBalancer`,
`connectionPool`, `outlierDetection`) of the one before, never merges inside a field.

Defaults when nothing says otherwise: Linkerd's balancer (`PEAK_EWMA`: power of two choices over a
peak-EWMA of latency times outstanding requests), no connection limits, no outlier detection.
An `OutlierDetection` present with unset fields takes Istio's defaults (consecutive5xxErrors 5,
consecutiveGatewayErrors off, interval 10 s, baseEjectionTime 30 s, maxEjectionPercent 10 %,
minHealthPercent 0 %).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

# The balancing algorithms (`LoadBalancer.algorithm`). PEAK_EWMA is ours (Istio has no name for
# it); the others are Istio's `SimpleLB` values; CONSISTENT_HASH is `consistentHash`.
PEAK_EWMA = "PEAK_EWMA"
ROUND_ROBIN = "ROUND_ROBIN"
LEAST_REQUEST = "LEAST_REQUEST"
RANDOM = "RANDOM"
CONSISTENT_HASH = "CONSISTENT_HASH"

HASH_HEADER = "header"
HASH_COOKIE = "cookie"
HASH_SOURCE_IP = "source_ip"
HASH_QUERY = "query"

DEFAULT_RING_SIZE = 1024  # Istio's RingHash minimumRingSize default
MAX_RING_SIZE = 8 * 1024 * 1024  # Envoy's maximum_ring_size default

# Envoy's max_ejection_time default: Istio has no field for it, so its clusters get this.
MAX_EJECTION_TIME = 300.0


@dataclass(slots=True, frozen=True)
class HashKey:
    """What a consistent hash is computed over: a header, a cookie, a query parameter (by `name`)
    or the client's address."""

    kind: str
    name: str = ""


@dataclass(slots=True, frozen=True)
class LoadBalancer:
    algorithm: str = PEAK_EWMA
    hash_key: HashKey | None = None
    ring_size: int = DEFAULT_RING_SIZE


@dataclass(slots=True, frozen=True)
class ConnectionPool:
    """Envoy circuit breakers for one cluster (None: no limit).

    `max_connections` (tcp.maxConnections): HTTP/1.1 requests in flight at once, one connection
    each; `max_pending` (http.http1MaxPendingRequests): requests waiting for one of those;
    `max_requests` (http.http2MaxRequests): requests in flight over every protocol;
    `max_requests_per_connection` (http.maxRequestsPerConnection): 1 turns keep-alive off."""

    max_connections: int | None = None
    max_pending: int | None = None
    max_requests: int | None = None
    max_requests_per_connection: int | None = None


@dataclass(slots=True, frozen=True)
class OutlierDetection:
    """Envoy's consecutive-error ejection, with Istio's defaults. 0 turns a detector off."""

    consecutive_5xx: int = 5
    consecutive_gateway: int = 0
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10
    min_health_percent: int = 0


@dataclass(slots=True, frozen=True)
class TrafficPolicy:
    """What applies to one cluster; a None field means "not set at this level"."""

    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None
    outlier: OutlierDetection | None = None

    def over(self, base: TrafficPolicy) -> TrafficPolicy:
        """This level's fields where set, `base`'s elsewhere (Istio replaces whole fields)."""
        return TrafficPolicy(
            self.load_balancer if self.load_balancer is not None else base.load_balancer,
            self.connection_pool if self.connection_pool is not None else base.connection_pool,
            self.outlier if self.outlier is not None else base.outlier,
        )


DEFAULT_POLICY = TrafficPolicy()
DEFAULT_LOAD_BALANCER = LoadBalancer()


@dataclass(slots=True, frozen=True)
class LevelPolicy:
    """One level of a DestinationRule: its `trafficPolicy` and `portLevelSettings` by port."""

    policy: TrafficPolicy = DEFAULT_POLICY
    ports: Mapping[int, TrafficPolicy] = field(default_factory=dict)

    def for_port(self, port: int) -> TrafficPolicy:
        at_port = self.ports.get(port)
        return at_port.over(self.policy) if at_port is not None else self.policy


@dataclass(slots=True, frozen=True)
class Subset:
    name: str
    labels: tuple[tuple[str, str], ...]
    level: LevelPolicy = LevelPolicy()

    def selects(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.labels:
            if labels.get(key) != value:
                return False
        return True


@dataclass(slots=True, frozen=True)
class DestinationPolicy:
    """One DestinationRule as it applies to one Service."""

    rule: str  # "namespace/name", for notes and status
    level: LevelPolicy = LevelPolicy()
    subsets: Mapping[str, Subset] = field(default_factory=dict)

    def resolve(self, port: int, subset: str | None) -> TrafficPolicy | None:
        """The merged policy for `port` and `subset`; None when the subset is not defined."""
        policy = self.level.for_port(port)
        if subset is None:
            return policy
        found = self.subsets.get(subset)
        if found is None:
            return None
        return found.level.for_port(port).over(policy)


@dataclass(slots=True, frozen=True)
class TrafficPolicies:
    """The DestinationRules of one config version, by the Service they apply to ("ns/hostname")."""

    by_service: Mapping[str, DestinationPolicy] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def get(self, service_key: str) -> DestinationPolicy | None:
        return self.by_service.get(service_key)


EMPTY_POLICIES = TrafficPolicies()


def with_algorithm(policy: TrafficPolicy, algorithm: str) -> TrafficPolicy:
    """`policy` balancing with `algorithm` (tests and the benchmark's variants)."""
    return replace(policy, load_balancer=LoadBalancer(algorithm))
