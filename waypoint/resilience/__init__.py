"""Resilience on the waypoint: retries, per-try timeouts, retry budgets and fault injection.

`policy` holds the policies routes carry (`RetryPolicy`, `FaultPolicy`) and the pure decisions
made from them; `budget` the retry budgets per backend cluster. The shells
(`waypoint.http1.downstream`, `waypoint.http2.exchange`) drive attempts with them; see
docs/resilience.md for the fields, their semantics and defaults.
"""

from .budget import Budget, Budgets, cluster_key
from .policy import (
    DEFAULT_RETRY,
    FaultPolicy,
    Injected,
    PolicyError,
    RetryPolicy,
    backoff_delay,
    decide_fault,
    http_route_retry,
    parse_retry_on,
    retry_on_failure,
    retry_on_response,
)

__all__ = [
    "DEFAULT_RETRY", "Budget", "Budgets", "FaultPolicy", "Injected", "PolicyError", "RetryPolicy",
    "backoff_delay", "cluster_key", "decide_fault", "http_route_retry", "parse_retry_on",
    "retry_on_failure", "retry_on_response",
]
