"""Retry budgets: retries in flight to a backend capped relative to the requests in flight to it.

Envoy's `retry_budget` circuit breaker (cluster `circuit_breakers.thresholds.retry_budget`):
"the limit on concurrent retries as a percentage of the sum of active requests and active pending
requests", with a floor of `min_retry_concurrency` so a quiet backend can still be retried. Here
`budget_percent` is 20 and `min_retry_concurrency` 3, Envoy's defaults for a budget. When an
endpoint fails every request, each request wants its retries; without a budget, 2 retries each
triple the load on a backend that is already failing. With it, the retries in flight stay below
max(3, 20% of active requests), so the extra load is at most a fifth (plus three).

One `Budget` per backend cluster (Service namespace/name and port, as Envoy's outbound cluster;
a pod addressed directly is its own cluster), from `Budgets.get`. Every proxied request is
`enter`ed and `leave`s once; a retry asks `try_retry()` before it is scheduled and, if granted,
calls `retry_done()` once that attempt ends. A denied retry is counted in `overflow` (Envoy's
`upstream_rq_retry_overflow`); the request then answers with what the last attempt got.

Counters only, no clocks: nothing here allocates per request once a cluster's Budget exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BUDGET_PERCENT = 20.0
MIN_RETRY_CONCURRENCY = 3
MAX_CLUSTERS = 10_000  # Budgets kept; past it, idle ones are dropped (a config churns Services)


@dataclass(slots=True)
class Budget:
    budget_percent: float = BUDGET_PERCENT
    min_retry_concurrency: int = MIN_RETRY_CONCURRENCY
    active: int = 0  # requests in flight to the cluster (first attempts and retries alike)
    retries: int = 0  # retries in flight
    granted: int = 0  # retries allowed, ever (upstream_rq_retry)
    overflow: int = 0  # retries refused by the budget, ever (upstream_rq_retry_overflow)

    def enter(self) -> None:
        self.active += 1

    def leave(self) -> None:
        if self.active > 0:
            self.active -= 1

    @property
    def limit(self) -> float:
        return max(float(self.min_retry_concurrency), self.active * self.budget_percent / 100.0)

    def try_retry(self) -> bool:
        """Take a retry slot if the budget allows one more retry in flight."""
        if self.retries + 1 > self.limit:
            self.overflow += 1
            return False
        self.retries += 1
        self.granted += 1
        return True

    def retry_done(self) -> None:
        if self.retries > 0:
            self.retries -= 1

    def next_retry(self, holding: bool) -> bool:
        """An attempt ended and the request would retry: free the slot the attempt held if it
        was a retry (`holding`), then take one for the next retry; False when the budget is spent.
        What both shells do; they keep `holding` as whether their current attempt has a slot."""
        if holding:
            self.retry_done()
        return self.try_retry()


@dataclass(slots=True)
class Budgets:
    """The process's budgets by cluster key (see `cluster_key`)."""

    budget_percent: float = BUDGET_PERCENT
    min_retry_concurrency: int = MIN_RETRY_CONCURRENCY
    by_cluster: dict[tuple[str, str, int], Budget] = field(default_factory=dict)
    # Counts of budgets dropped as idle, so the totals (counters) never go down.
    dropped_granted: int = 0
    dropped_overflow: int = 0

    def get(self, key: tuple[str, str, int]) -> Budget:
        budget = self.by_cluster.get(key)
        if budget is None:
            if len(self.by_cluster) >= MAX_CLUSTERS:
                self._drop_idle()
            budget = self.by_cluster[key] = Budget(self.budget_percent, self.min_retry_concurrency)
        return budget

    def _drop_idle(self) -> None:
        for key in [k for k, b in self.by_cluster.items() if not b.active and not b.retries]:
            budget = self.by_cluster.pop(key)
            self.dropped_granted += budget.granted
            self.dropped_overflow += budget.overflow

    def totals(self) -> tuple[int, int]:
        """(retries granted, retries refused) over every cluster, for metrics."""
        granted, overflow = self.dropped_granted, self.dropped_overflow
        for budget in self.by_cluster.values():
            granted += budget.granted
            overflow += budget.overflow
        return granted, overflow


def cluster_key(namespace: str, name: str, port: int) -> tuple[str, str, int]:
    """A Service port's cluster; a pod addressed directly is `("", ip, port)`."""
    return (namespace, name, port)
