"""Weighted ``backendRefs``: which backend serves this request.

From ``HTTPRouteRule.BackendRefs`` and ``BackendRef.Weight`` (kubernetes-sigs/gateway-api
``apis/v1``): a backend's share is its weight over the sum of weights (default weight 1); weight
0 is never chosen; when the weights sum to 0, or the rule has no backends, every request gets a
500 (``httproute-all-backends-weight-zero`` in the conformance suite; gRPC: ``UNAVAILABLE``). An
invalid backend (a Service that does not exist, a kind we cannot route to) keeps its weight and
its share of requests gets a 500: "if two backends are specified with equal weights, and one is
invalid, 50 percent of traffic must receive a 500".

``choose`` takes the random source as an argument (``random.Random`` or anything with
``random()``), so tests draw with a seed and the waypoint with its own generator.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Protocol

from .filters import HeaderModifier, RequestMirror, RequestRedirect, URLRewrite


class RandomSource(Protocol):
    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Backend:
    """One backendRef; ``problem`` is the status reason when it cannot be routed to."""

    namespace: str
    name: str
    port: int | None
    weight: int = 1
    kind: str = "Service"
    problem: str | None = None
    # Filters on the backendRef apply only when this backend is chosen, after the rule's.
    request_headers: tuple[HeaderModifier, ...] = ()
    response_headers: tuple[HeaderModifier, ...] = ()
    rewrite: URLRewrite | None = None
    redirect: RequestRedirect | None = None
    mirrors: tuple[RequestMirror, ...] = ()
    # A DestinationRule subset of the Service (VirtualService ``destination.subset``); None: every
    # endpoint. The balancer resolves it (waypoint/balance).
    subset: str | None = None

    @property
    def valid(self) -> bool:
        return self.problem is None


@dataclass(frozen=True, slots=True)
class BackendChoice:
    """The backends with weight > 0 and their running weight sums, made once per config."""

    backends: tuple[Backend, ...]
    cumulative: tuple[int, ...]
    total: int


def weighted(backends: tuple[Backend, ...]) -> BackendChoice:
    chosen = tuple(b for b in backends if b.weight > 0)
    cumulative: list[int] = []
    total = 0
    for backend in chosen:
        total += backend.weight
        cumulative.append(total)
    return BackendChoice(chosen, tuple(cumulative), total)


def choose_index(choice: BackendChoice, rng: RandomSource) -> int | None:
    """The index in ``choice.backends`` drawn by weight, or None when no backend has weight."""
    if choice.total == 0:
        return None
    if len(choice.backends) == 1:
        return 0
    point = rng.random() * choice.total
    index = bisect.bisect_right(choice.cumulative, point)
    # random() < 1.0, but a product can round up to total; the last backend owns that edge.
    return min(index, len(choice.backends) - 1)


def choose(choice: BackendChoice, rng: RandomSource) -> Backend | None:
    """A backend drawn by weight, or None when no backend has weight (the request gets a 500)."""
    index = choose_index(choice, rng)
    return None if index is None else choice.backends[index]
