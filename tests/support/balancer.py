"""A balancer made of a plain function, for waypoint tests that choose the endpoint themselves.

`Pipeline` takes a `waypoint.balance.balancer.Balancer`; a test that wants to name the endpoint
(or draw it with a seeded `choose_endpoint`) wraps its `choose(config, service, port)` in this.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from waypoint.balance.balancer import Lease
from waypoint.config import Endpoint, WaypointConfig
from wisp.model import Service


class FunctionBalancer:
    """A plain `choose(config, service, port) -> Endpoint | None` as a balancer (tests and tools
    that choose themselves): no policy, no limits, nothing learnt; leases only mark the attempt."""

    def __init__(self, choose: Callable[[WaypointConfig, Service, int], Endpoint | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._choose = choose
        self.clock = clock

    def pick(self, config: WaypointConfig, service: Service, port: int, subset: str | None = None,
             exclude: Collection[str] = frozenset(), **_: object) -> Lease | None:
        endpoint = self._choose(config, service, port)
        return Lease(None, None, endpoint, self.clock()) if endpoint is not None else None

    def choose(self, config: WaypointConfig, service: Service, port: int, subset: str | None = None,
               **_: object) -> Endpoint | None:
        return self._choose(config, service, port)

    def lease_for(self, endpoint: Endpoint) -> Lease:
        return Lease(None, None, endpoint, self.clock())
