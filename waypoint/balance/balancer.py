"""Endpoint choice for every request the waypoint forwards, and what each attempt teaches it.

`Balancer.pick(config, service, port, subset, exclude, ctx=, head=)` answers one of:
- a `Lease`: the attempt's endpoint (`lease.endpoint`); the shell finishes it exactly once with
  `lease.finish(status, connect_failed, latency_s)` when the attempt ends (further calls are
  ignored). `status` is the response status the endpoint gave, or the one the waypoint answered
  for it (503 reset, 504 timeout); None when the attempt ended for a reason that is not the
  endpoint's (the client went away). `connect_failed` marks a connection that could not be
  made. `latency_s` None: the time since the pick, on the balancer's clock.
- None: no usable endpoint (no HEALTHY workload with that port, every one ejected, an undefined
  subset) — the pipeline answers 503 "no healthy upstream", as before.
- `OVERLOADED`: the cluster's connection pool is full — the pipeline answers 503 with
  `x-envoy-overloaded: true`, Envoy's circuit-breaker overflow answer.

A cluster is what Envoy calls one: a Service port and a subset (the DestinationRule subset's
labels select workloads by `Workload.labels`), with its merged `TrafficPolicy`
(waypoint.balance.policy). Clusters are built on first use per config version; what is learnt
about an endpoint (its latency estimate, requests outstanding, consecutive errors, ejection)
lives in an `EndpointState` keyed by (address, port) that outlives config versions, so a
config change elsewhere in the mesh does not reset it. The budget of a cluster's connection
pool (requests active and waiting) outlives versions the same way.

The algorithms (`LoadBalancer.algorithm`):
- PEAK_EWMA (default): Linkerd's balancer (linkerd2-proxy, tower's `PeakEwma`, from Finagle):
  two distinct endpoints drawn at random, the one with the lower cost wins; cost = the
  endpoint's RTT estimate × (outstanding requests + 1). The estimate jumps to any sample above
  it (peak) and otherwise moves toward the sample by 1 − e^(−Δt/τ), τ = `DECAY` (10 s); it also
  decays toward 0 as time passes without samples, so a once-slow endpoint is tried again. A new
  endpoint starts at `DEFAULT_RTT` (30 ms, linkerd2-proxy's). Failures and cancellations can only
  raise the estimate, so an endpoint that fails fast does not look fast.
- LEAST_REQUEST: the same two draws, fewer outstanding requests wins (Envoy's default
  choice_count 2). ROUND_ROBIN: in turn from a random start. RANDOM: uniform.
- CONSISTENT_HASH: a ring (`ring_size` points, Istio's minimumRingSize default 1024) over the
  usable endpoints, keyed by a header, a cookie that the request carries, a query parameter or
  the client's address. A request without the key (no such header or cookie — the waypoint
  does not generate cookies, unlike Envoy with a `ttl`) is placed at random, as Envoy does
  when no hash is computed.

Outlier detection (`OutlierDetection`, Envoy's semantics): a 5xx counts toward
consecutive5xxErrors, a 502/503/504 or a failed connection (mapped to 503 as Envoy does without
split_external_local_origin_errors) toward consecutiveGatewayErrors; any other status resets both.
Reaching a threshold ejects the endpoint unless the cluster's ejected share is already at
maxEjectionPercent (so one endpoint can always be ejected). An ejection lasts
baseEjectionTime × its ejection count (the count grows by one per ejection, capped at
`MAX_EJECTION_TIME`, and drops by one at each interval the endpoint stays healthy); the endpoint
returns at the first interval sweep after that (sweeps every `interval` from the balancer's
start, computed, no timer). Ejected endpoints are not picked; when fewer than minHealthPercent of a
cluster's endpoints are usable it balances over all of them (Envoy's panic mode; Istio's default
0 % never panics: with every endpoint ejected the answer is "no healthy upstream").

Connection pool (`ConnectionPool`, Envoy circuit breakers per cluster): a request is admitted
while the cluster has fewer than http2MaxRequests active and, over HTTP/1.1, fewer than
maxConnections (each HTTP/1.1 request in flight holds one connection); an HTTP/1.1 request beyond
that waits (the shell's `Http1Pool.acquire` asks `lease.ready`) while fewer than
http1MaxPendingRequests are waiting; anything else is `OVERLOADED` at once.

Locality (`Service.load_balancing`, from `trafficDistribution: PreferClose`): endpoints are ranked
by how many of the routing preference's scopes (network, region, zone, subzone — then node,
which the local mesh always has) they share with the client's workload, in order; the
best-ranked usable endpoints are balanced over (FAILOVER: lower ranks only when no better one is
usable; STRICT: only full matches).

Per pick: O(1) work — two random draws and two cost computations (a bisect for a hash); lists
are rebuilt only when a cluster's membership or usable set changes. Nothing here blocks or logs
per request; time comes from the clock given (the loop's, `time.monotonic`).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Collection

from wisp.identity import SpiffeId
from wisp.model import Service, Workload

from ..config import Endpoint, WaypointConfig, service_key, target_port
from .policy import (
    CONSISTENT_HASH,
    DEFAULT_LOAD_BALANCER,
    DEFAULT_POLICY,
    HASH_COOKIE,
    HASH_HEADER,
    HASH_QUERY,
    HASH_SOURCE_IP,
    LEAST_REQUEST,
    MAX_EJECTION_TIME,
    PEAK_EWMA,
    ROUND_ROBIN,
    ConnectionPool,
    OutlierDetection,
    TrafficPolicy,
)

DEFAULT_RTT = 0.030  # seconds: linkerd2-proxy's EWMA default RTT for an endpoint without samples
DECAY = 10.0  # seconds: linkerd2-proxy's EWMA decay time constant
# Envoy's host_selection_retry_max_attempts as Istio sets it for retries (previous_hosts predicate).
HOST_SELECTION_ATTEMPTS = 5
INF = float("inf")

SCOPE_NETWORK = "NETWORK"
SCOPE_REGION = "REGION"
SCOPE_ZONE = "ZONE"
SCOPE_SUBZONE = "SUBZONE"
SCOPE_NODE = "NODE"
SCOPE_CLUSTER = "CLUSTER"
MODE_STRICT = "STRICT"


class Overloaded:
    """The marker `pick` returns when the cluster's connection pool is full."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "OVERLOADED"


OVERLOADED = Overloaded()
OVERLOADED_HEADERS = ((b"x-envoy-overloaded", b"true"),)


class EndpointState:
    """What the balancer knows of one endpoint (address, port), across config versions."""

    __slots__ = ("key", "endpoint", "outstanding", "rtt", "rtt_at", "consecutive_5xx", "consecutive_gateway",
                 "ejected", "ejected_at", "return_at", "backoff", "returned_at", "ejections")

    def __init__(self, key: tuple[str, int], endpoint: Endpoint, now: float) -> None:
        self.key = key
        self.endpoint = endpoint
        self.outstanding = 0
        self.rtt = DEFAULT_RTT
        self.rtt_at = now
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.ejected = False
        self.ejected_at = 0.0
        self.return_at = INF
        self.backoff = 0  # Envoy's eject time backoff: the multiplier of baseEjectionTime
        self.returned_at: float | None = None
        self.ejections = 0  # total, for metrics and tests

    def estimate(self, now: float) -> float:
        """The peak-EWMA RTT estimate at `now`, decayed toward 0 since the last update (tower's
        `decay`, which also stores it)."""
        elapsed = now - self.rtt_at
        if elapsed > 0.0:
            self.rtt *= math.exp(-elapsed / DECAY)
            self.rtt_at = now
        return self.rtt

    def observe(self, rtt: float, now: float, only_raise: bool = False) -> None:
        """A sample (tower's `RttEstimate::update`): above the estimate it becomes the estimate;
        below, the estimate moves toward it by 1 − e^(−Δt/τ), Δt since the last update (reads
        count: they decay the estimate and store it). `only_raise`: a failure's sample may raise
        the estimate, never lower it."""
        if rtt > self.rtt:
            self.rtt = rtt
            self.rtt_at = now
            return
        elapsed = now - self.rtt_at
        decay = math.exp(-elapsed / DECAY) if elapsed > 0.0 else 1.0
        self.rtt = self.rtt * decay if only_raise else self.rtt * decay + rtt * (1.0 - decay)
        self.rtt_at = now


class Budget:
    """A cluster's connection-pool counts (outlive config versions, as its key does)."""

    __slots__ = ("active", "waiting", "waiting_count")

    def __init__(self) -> None:
        self.active = 0
        self.waiting: deque[Lease] = deque()
        self.waiting_count = 0


class Cluster:
    """One Service port and subset in one config version: its members and policy."""

    __slots__ = ("balancer", "key", "service", "port", "subset", "policy", "algorithm", "hash_key", "ring_size",
                 "pool", "outlier", "members", "views", "epoch", "next_return", "rr", "budget", "scopes", "strict")

    def __init__(self, balancer: Balancer, key: tuple, service: Service | None, port: int, subset: str | None,
                 policy: TrafficPolicy, members: list[EndpointState]) -> None:
        self.balancer = balancer
        self.key = key
        self.service = service
        self.port = port
        self.subset = subset
        self.policy = policy
        lb = policy.load_balancer or DEFAULT_LOAD_BALANCER
        self.algorithm = lb.algorithm
        self.hash_key = lb.hash_key
        self.ring_size = lb.ring_size
        self.pool: ConnectionPool | None = policy.connection_pool
        self.outlier: OutlierDetection | None = policy.outlier
        self.members = members
        # client locality (or None) -> (usable states, hash ring points, ring owners)
        self.views: dict[object, tuple[list[EndpointState], list[int] | None, list[EndpointState] | None]] = {}
        self.epoch = -1
        self.next_return = INF
        self.rr = balancer.rng.randrange(1 << 30)
        self.budget = balancer.budget(key)
        self.scopes: tuple[str, ...] = ()
        self.strict = False
        lbs = service.load_balancing if service is not None else None
        if lbs is not None and lbs.routing_preference:
            scopes = tuple(lbs.routing_preference)
            if SCOPE_NODE not in scopes and lbs.mode != MODE_STRICT:
                scopes += (SCOPE_NODE,)
            self.scopes = scopes
            self.strict = lbs.mode == MODE_STRICT

    # -- the usable endpoints --------------------------------------------------------------------
    def view(self, client: Workload | None, now: float):
        balancer = self.balancer
        if self.epoch != balancer.epoch or now >= self.next_return:
            self._refresh(now)
        # One view per client locality (not per client): as many as the mesh has nodes.
        key = (client.network, client.locality, client.node, client.cluster_id) \
            if self.scopes and client is not None else None
        view = self.views.get(key)
        if view is None:
            view = self.views[key] = self._build_view(client if key is not None else None)
        return view

    def _refresh(self, now: float) -> None:
        balancer = self.balancer
        next_return = INF
        for state in self.members:
            if state.ejected:
                if state.return_at <= now:
                    balancer.uneject(state)
                elif state.return_at < next_return:
                    next_return = state.return_at
        self.next_return = next_return
        self.views.clear()
        self.epoch = balancer.epoch

    def _build_view(self, client: Workload | None):
        members = self.members
        usable = [m for m in members if not m.ejected]
        outlier = self.outlier
        if outlier is not None and outlier.min_health_percent > 0 and members \
                and len(usable) * 100 < outlier.min_health_percent * len(members):
            usable = list(members)  # panic: too few healthy to be choosy
        if client is not None and usable:
            ranked = [(_locality_rank(self.scopes, client, m.endpoint.workload), m) for m in usable]
            best = max(rank for rank, _ in ranked)
            if self.strict and best < len(self.scopes):
                usable = []
            else:
                usable = [m for rank, m in ranked if rank == best]
        ring = owners = None
        if self.algorithm == CONSISTENT_HASH and usable:
            ring, owners = _build_ring(usable, self.ring_size)
        return usable, ring, owners

    # -- choosing --------------------------------------------------------------------------------
    def choose(self, usable: list[EndpointState], ring, owners, hash_value: int | None,
               exclude: Collection[str], now: float) -> EndpointState:
        algorithm = self.algorithm
        attempts = HOST_SELECTION_ATTEMPTS if exclude else 1
        state = usable[0]
        rng = self.balancer.random
        n = len(usable)
        for attempt in range(attempts):
            if n == 1:
                state = usable[0]
            elif algorithm == PEAK_EWMA or algorithm == LEAST_REQUEST:
                i = int(rng() * n)
                j = int(rng() * (n - 1))
                if j >= i:
                    j += 1
                a, b = usable[i], usable[j]
                if exclude:  # of the two draws, one the retry predicate accepts if there is one
                    if a.endpoint.address in exclude:
                        a = b
                    elif b.endpoint.address in exclude:
                        b = a
                if algorithm == PEAK_EWMA:
                    cost_a = a.estimate(now) * (a.outstanding + 1)
                    cost_b = b.estimate(now) * (b.outstanding + 1)
                else:
                    cost_a, cost_b = a.outstanding, b.outstanding
                state = b if cost_b < cost_a else a
            elif algorithm == ROUND_ROBIN:
                self.rr += 1
                state = usable[self.rr % n]
            elif algorithm == CONSISTENT_HASH and ring is not None:
                value = hash_value if hash_value is not None and attempt == 0 else int(rng() * (1 << 64))
                at = bisect_left(ring, value)
                state = owners[at if at < len(ring) else 0]
            else:  # RANDOM
                state = usable[int(rng() * n)]
            if not exclude or state.endpoint.address not in exclude:
                return state
        return state

    # -- the connection pool ---------------------------------------------------------------------
    def admit(self, http1: bool) -> int:
        """1: admitted now; 0: waits for a slot; -1: overflow."""
        pool = self.pool
        budget = self.budget
        if pool is None:
            budget.active += 1
            return 1
        if pool.max_requests is not None and budget.active >= pool.max_requests:
            return -1
        if http1 and pool.max_connections is not None and budget.active >= pool.max_connections:
            if pool.max_pending is not None and budget.waiting_count >= pool.max_pending:
                return -1
            return 0
        budget.active += 1
        return 1

    def release(self) -> None:
        budget = self.budget
        budget.active -= 1
        waiting = budget.waiting
        pool = self.pool
        while waiting and budget.waiting_count:
            if pool is not None and pool.max_connections is not None and budget.active >= pool.max_connections:
                return
            lease = waiting.popleft()
            if lease.done or lease.admitted:
                continue
            budget.waiting_count -= 1
            budget.active += 1
            lease.admitted = True
            lease.started = self.balancer.clock()
            lease.state.outstanding += 1
            waiter, lease.waiter = lease.waiter, None
            if waiter is not None:
                self.balancer.call_soon(waiter)
            return


class Lease:
    """One attempt's hold on an endpoint (see the module docstring)."""

    __slots__ = ("cluster", "state", "endpoint", "started", "admitted", "done", "waiter", "per_connection",
                 "source_ip", "http1")

    def __init__(self, cluster: Cluster | None, state: EndpointState | None, endpoint: Endpoint, started: float,
                 admitted: bool = True) -> None:
        self.cluster = cluster
        self.state = state
        self.endpoint = endpoint
        self.started = started
        self.admitted = admitted
        self.done = False
        self.waiter: Callable[[], None] | None = None
        self.source_ip: str | None = None  # for a retry's pick (locality, hash)
        self.http1 = True
        pool = cluster.pool if cluster is not None else None
        self.per_connection = pool.max_requests_per_connection if pool is not None else None

    def ready(self, then: Callable[[], None]) -> bool:
        """True when the attempt may start now; else `then()` runs (on the loop) once it may."""
        if self.admitted or self.done:
            return True
        self.waiter = then
        return False

    def finish(self, status: int | None, connect_failed: bool = False, latency_s: float | None = None) -> None:
        if self.done:
            return
        self.done = True
        cluster = self.cluster
        if cluster is None:
            return
        state = self.state
        if not self.admitted:
            cluster.budget.waiting_count -= 1
            return
        balancer = cluster.balancer
        now = balancer.clock()
        state.outstanding -= 1
        rtt = latency_s if latency_s is not None else now - self.started
        failed = connect_failed or status is None or status >= 500
        state.observe(rtt, now, only_raise=failed)
        outlier = cluster.outlier
        if outlier is not None and (status is not None or connect_failed):
            code = 503 if connect_failed else status
            if code >= 500:
                state.consecutive_5xx += 1
                if code == 502 or code == 503 or code == 504:
                    state.consecutive_gateway += 1
                else:
                    state.consecutive_gateway = 0
                if not state.ejected:
                    if outlier.consecutive_gateway and state.consecutive_gateway == outlier.consecutive_gateway:
                        balancer.eject(cluster, state, now)
                        state.consecutive_gateway = 0
                    elif outlier.consecutive_5xx and state.consecutive_5xx == outlier.consecutive_5xx:
                        balancer.eject(cluster, state, now)
                        state.consecutive_5xx = 0
            else:
                state.consecutive_5xx = 0
                state.consecutive_gateway = 0
        cluster.release()


class Balancer:
    """One per waypoint process (see the module docstring)."""

    def __init__(self, rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic,
                 call_soon: Callable[[Callable[[], None]], None] | None = None) -> None:
        self.rng = rng or random.Random()
        self.random = self.rng.random
        self.clock = clock
        self.call_soon = call_soon or (lambda callback: callback())
        self.started = clock()
        self.epoch = 0
        self._config: WaypointConfig | None = None
        self._clusters: dict[tuple, Cluster | None] = {}
        self._states: dict[tuple[str, int], EndpointState] = {}
        self._budgets: dict[tuple, Budget] = {}
        # Counters for the metrics endpoint (Envoy's upstream_rq_pending_overflow and
        # outlier_detection.ejections_enforced_total).
        self.overflows = 0
        self.ejections = 0

    # -- the pipeline's calls --------------------------------------------------------------------
    def pick(self, config: WaypointConfig, service: Service, port: int, subset: str | None = None,
             exclude: Collection[str] = frozenset(), *, client: Workload | None = None,
             source_ip: str | None = None, head=None, http1: bool = True) -> Lease | Overloaded | None:
        cluster = self.cluster(config, service, port, subset)
        if cluster is None:
            return None
        now = self.clock()
        if cluster.scopes and client is None and source_ip is not None:
            client = config.workload_at(source_ip)
        usable, ring, owners = cluster.view(client, now)
        if not usable:
            return None
        hash_value = None
        if ring is not None:
            hash_value = _hash_of(cluster.hash_key, source_ip, head)
        state = cluster.choose(usable, ring, owners, hash_value, exclude, now)
        admitted = cluster.admit(http1)
        if admitted < 0:
            self.overflows += 1
            return OVERLOADED
        lease = Lease(cluster, state, state.endpoint, now, admitted == 1)
        lease.source_ip = source_ip
        lease.http1 = http1
        if admitted == 1:
            state.outstanding += 1
        else:
            budget = cluster.budget
            budget.waiting_count += 1
            budget.waiting.append(lease)
            if len(budget.waiting) > 2 * budget.waiting_count + 64:
                budget.waiting = deque(w for w in budget.waiting if not w.done and not w.admitted)
        return lease

    def choose(self, config: WaypointConfig, service: Service, port: int, subset: str | None = None, *,
               client: Workload | None = None, source_ip: str | None = None, head=None) -> Endpoint | None:
        """An endpoint without a lease (mirrors, TCP pass-through): no limits, nothing learnt."""
        cluster = self.cluster(config, service, port, subset)
        if cluster is None:
            return None
        now = self.clock()
        if cluster.scopes and client is None and source_ip is not None:
            client = config.workload_at(source_ip)
        usable, ring, owners = cluster.view(client, now)
        if not usable:
            return None
        hash_value = _hash_of(cluster.hash_key, source_ip, head) if ring is not None else None
        return cluster.choose(usable, ring, owners, hash_value, (), now).endpoint

    def lease_for(self, endpoint: Endpoint) -> Lease:
        """A lease on an endpoint the balancer did not choose (a dialled pod IP): nothing to count."""
        return Lease(None, None, endpoint, self.clock())

    # -- clusters --------------------------------------------------------------------------------
    def cluster(self, config: WaypointConfig, service: Service, port: int, subset: str | None) -> Cluster | None:
        if config is not self._config:
            self._reconfigure(config)
        key = (service.namespace, service.hostname, port, subset)
        try:
            return self._clusters[key]
        except KeyError:
            pass
        cluster = self._clusters[key] = self._build(config, service, port, subset, key)
        return cluster

    def _reconfigure(self, config: WaypointConfig) -> None:
        self._config = config
        self._clusters = {}
        addresses = config.workloads_by_ip
        stale = [key for key, state in self._states.items()
                 if key[0] not in addresses and state.outstanding == 0]
        for key in stale:
            del self._states[key]
        idle = [key for key, budget in self._budgets.items() if not budget.active and not budget.waiting_count]
        for key in idle:
            del self._budgets[key]

    def _build(self, config: WaypointConfig, service: Service, port: int, subset: str | None,
               key: tuple) -> Cluster | None:
        traffic = getattr(config, "traffic", None)
        destination = traffic.get(service_key(service)) if traffic is not None else None
        if destination is not None:
            policy = destination.resolve(port, subset)
            if policy is None:
                return None  # a subset the DestinationRule does not define: Envoy has no such cluster
            selector = destination.subsets[subset] if subset is not None else None
        else:
            if subset is not None:
                return None
            policy, selector = DEFAULT_POLICY, None
        members: list[EndpointState] = []
        now = self.clock()
        cache = config.endpoint_cache
        for workload, ports in config.endpoints.get(service_key(service), ()):
            if selector is not None and not selector.selects(getattr(workload, "labels", None) or {}):
                continue
            target = target_port(service, ports, port)
            if target is None:
                continue
            ekey = (id(workload), target)
            endpoint = cache.get(ekey)
            if endpoint is None:
                endpoint = cache[ekey] = Endpoint(workload.addresses[0], target, SpiffeId.parse(workload.identity()),
                                                  workload.tunnel_protocol == "HBONE", workload)
            skey = (endpoint.address, target)
            state = self._states.get(skey)
            if state is None:
                state = self._states[skey] = EndpointState(skey, endpoint, now)
            else:
                state.endpoint = endpoint
            members.append(state)
        return Cluster(self, key, service, port, subset, policy, members)

    def budget(self, key: tuple) -> Budget:
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = Budget()
        return budget

    def state_of(self, address: str, port: int) -> EndpointState | None:
        return self._states.get((address, port))

    def ejected_now(self) -> int:
        """Endpoints ejected at this moment (a gauge; those due back count until a pick returns them)."""
        return sum(1 for state in self._states.values() if state.ejected)

    # -- outlier detection -----------------------------------------------------------------------
    def eject(self, cluster: Cluster, state: EndpointState, now: float) -> bool:
        outlier = cluster.outlier
        members = cluster.members
        ejected = sum(1 for m in members if m.ejected)
        if not members or 100.0 * ejected / len(members) >= min(100, outlier.max_ejection_percent):
            return False
        interval = outlier.interval
        if state.backoff and state.returned_at is not None:
            # Envoy takes one off the multiplier at each sweep the endpoint stayed healthy.
            sweeps = _sweeps_between(self.started, interval, state.returned_at, now)
            state.backoff = max(0, state.backoff - sweeps)
        base = outlier.base_ejection_time
        cap = max(MAX_EJECTION_TIME, base)
        if state.backoff * base < cap + base:
            state.backoff += 1
        duration = min(base * state.backoff, cap)
        state.ejected = True
        state.ejected_at = now
        state.ejections += 1
        self.ejections += 1
        state.return_at = _next_sweep(self.started, interval, now + duration)
        self.epoch += 1
        return True

    def uneject(self, state: EndpointState) -> None:
        state.ejected = False
        state.returned_at = state.return_at
        state.return_at = INF
        state.consecutive_5xx = 0
        state.consecutive_gateway = 0
        self.epoch += 1


def _next_sweep(start: float, interval: float, due: float) -> float:
    """The first interval sweep (start + k·interval) at or after `due`."""
    if interval <= 0:
        return due
    k = math.ceil((due - start) / interval - 1e-9)
    return start + max(k, 0) * interval


def _sweeps_between(start: float, interval: float, after: float, until: float) -> int:
    if interval <= 0:
        return 0
    return max(0, math.floor((until - start) / interval) - math.floor((after - start) / interval + 1e-9))


def _locality_rank(scopes: tuple[str, ...], client: Workload, endpoint: Workload | None) -> int:
    """How many of `scopes`, in order, the endpoint shares with the client (ztunnel's ranking)."""
    if endpoint is None:
        return 0
    rank = 0
    for scope in scopes:
        if scope == SCOPE_NETWORK:
            same = client.network == endpoint.network
        elif scope == SCOPE_NODE:
            same = bool(client.node) and client.node == endpoint.node
        elif scope == SCOPE_CLUSTER:
            same = client.cluster_id == endpoint.cluster_id
        else:
            a, b = client.locality, endpoint.locality
            if scope == SCOPE_REGION:
                same = (a.region if a else "") == (b.region if b else "")
            elif scope == SCOPE_ZONE:
                same = (a.zone if a else "") == (b.zone if b else "")
            elif scope == SCOPE_SUBZONE:
                same = (a.subzone if a else "") == (b.subzone if b else "")
            else:
                same = False
        if not same:
            break
        rank += 1
    return rank


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _build_ring(usable: list[EndpointState], ring_size: int) -> tuple[list[int], list[EndpointState]]:
    """Envoy's ring hash: each endpoint gets ring_size/n points (at least one), hashed from
    "address:port_i"; a key goes to the first point at or after its hash, wrapping."""
    per = max(1, -(-ring_size // len(usable)))
    points = []
    for state in usable:
        base = ("%s:%d_" % state.key).encode()
        for i in range(per):
            points.append((_hash64(base + str(i).encode()), state))
    points.sort(key=lambda point: point[0])
    return [p[0] for p in points], [p[1] for p in points]


def _hash_of(key, source_ip: str | None, head) -> int | None:
    if key is None:
        return None
    kind = key.kind
    if kind == HASH_SOURCE_IP:
        return _hash64(source_ip.encode()) if source_ip else None
    if head is None:
        return None
    if kind == HASH_HEADER:
        name = key.name.lower().encode("latin-1")
        if name == b"host" or name == b":authority":
            return _hash64(head.authority) if head.authority else None
        value = head.header(name)
        return _hash64(value) if value is not None else None
    if kind == HASH_COOKIE:
        wanted = key.name.encode("latin-1")
        for name, value in head.headers:
            if name == b"cookie":
                for part in value.split(b";"):
                    cname, sep, cvalue = part.strip().partition(b"=")
                    if sep and cname == wanted:
                        return _hash64(cvalue)
        return None
    if kind == HASH_QUERY:
        _, sep, query = head.target.partition(b"?")
        if not sep:
            return None
        wanted = key.name.encode("latin-1")
        for part in query.split(b"&"):
            qname, sep, qvalue = part.partition(b"=")
            if qname == wanted:
                return _hash64(qvalue)
        return None
    return None


# Envoy's Grpc::Utility::grpcToHttpStatus: what a gRPC answer counts as for outlier detection.
_GRPC_TO_HTTP = (200, 499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500, 503, 500, 401)


def attempt_status(status: int, grpc_status: int | None) -> int | None:
    """The status an attempt counts as: a gRPC call's grpc-status mapped as Envoy maps it (an
    HTTP 200 with UNAVAILABLE is a 503), else the HTTP status; None for no status at all."""
    if grpc_status is not None and status == 200 and 0 <= grpc_status < len(_GRPC_TO_HTTP):
        return _GRPC_TO_HTTP[grpc_status]
    return status or None
