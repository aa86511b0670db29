"""Endpoint choice and traffic policy: which endpoint serves each request, and how hard to push it.

In the order a request meets them: `rules` reads DestinationRules (subsets, trafficPolicy,
portLevelSettings) into `policy` types once per config version (`compile_destination_rules`,
called by `waypoint.config.compile_config`); `balancer` picks an endpoint per attempt
(`Balancer.pick` → a `Lease`, None, or `OVERLOADED`), applying the cluster's load-balancing
algorithm (peak-EWMA power of two choices by default, Linkerd's), connection-pool limits,
outlier ejections and the Service's locality preference, and learns from each `Lease.finish`.
docs/load-balancing.md describes the behaviour and the measured results.

This package's `__init__` imports only the pure policy modules: `waypoint.config` imports it
while `balancer` imports `waypoint.config`.
"""

from .policy import (
    CONSISTENT_HASH,
    LEAST_REQUEST,
    PEAK_EWMA,
    RANDOM,
    ROUND_ROBIN,
    ConnectionPool,
    DestinationPolicy,
    HashKey,
    LoadBalancer,
    OutlierDetection,
    Subset,
    TrafficPolicies,
    TrafficPolicy,
)

__all__ = [
    "CONSISTENT_HASH",
    "LEAST_REQUEST",
    "PEAK_EWMA",
    "RANDOM",
    "ROUND_ROBIN",
    "ConnectionPool",
    "DestinationPolicy",
    "HashKey",
    "LoadBalancer",
    "OutlierDetection",
    "Subset",
    "TrafficPolicies",
    "TrafficPolicy",
]
