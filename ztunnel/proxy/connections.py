"""Live connections: counted for drain, and inbound ones re-authorized after each config change.

ztunnel closes a live inbound connection as soon as a policy change denies it (reference §9).
Each tracked connection runs its splice inside its own cancel scope; a re-check that now
denies it marks it denied and cancels the scope, and the handler resets both sides.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import structlog
import trio

from ..state import rbac
from ..state.proxy_state import ProxyState

log = structlog.get_logger("ztunnel.connections")


@dataclass(slots=True, eq=False)
class Tracked:
    # Set for inbound connections: what authorization decided on.
    rbac: rbac.Connection | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    denied: bool = False


class ConnectionTracker:
    def __init__(self) -> None:
        self.live: set[Tracked] = set()
        self._empty = trio.Event()
        self._empty.set()

    @contextmanager
    def track(self, conn: rbac.Connection | None = None) -> Iterator[Tracked]:
        """Count a connection (for draining); with `conn`, an inbound one that a new policy
        may close (`recheck`)."""
        tracked = Tracked(conn)
        self.live.add(tracked)
        self._empty = trio.Event() if self._empty.is_set() else self._empty
        try:
            yield tracked
        finally:
            self.live.discard(tracked)
            if not self.live:
                self._empty.set()

    async def wait_empty(self) -> None:
        await self._empty.wait()

    def recheck(self, state: ProxyState) -> int:
        """Close inbound connections the new policies deny; returns how many."""
        closed = 0
        for tracked in list(self.live):
            conn = tracked.rbac
            if conn is None or tracked.denied:
                continue
            workload = state.workload_by_ip(conn.dst_ip)
            if workload is None:
                continue
            decision = rbac.authorize(state.policies_for(workload), conn)
            if decision.allowed:
                continue
            tracked.denied = True
            tracked.scope.cancel()
            closed += 1
            log.info("connection closed due to policy rejection",
                     src_identity=str(conn.src_identity) if conn.src_identity else None,
                     src_ip=conn.src_ip, dst=f"{conn.dst_ip}:{conn.dst_port}",
                     policy=decision.policy, reason=decision.reason)
        return closed
