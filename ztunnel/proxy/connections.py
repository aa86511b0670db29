"""Live connections: counted for drain, and inbound ones re-authorized after each config change.

ztunnel closes a live inbound connection as soon as a policy change denies it (reference §9):
a re-check that now denies a tracked connection marks it denied and fails its splice, which
resets both sides. Connections are added and removed by the engine's handlers (synchronous);
`wait_empty` is for the drain on trio's side, woken through the engine's `notify`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog
import trio

from wisp.engine.splice import Splice
from wisp.sockets import original_dst

from ..state import rbac
from ..state.proxy_state import ProxyState

log = structlog.get_logger("ztunnel.connections")


@dataclass(slots=True, eq=False)
class Tracked:
    splice: Splice
    # Set for inbound connections: what authorization decided on.
    rbac: rbac.Connection | None = None
    # Whose connection it is (the pod's proxy waits for its own when draining).
    owner: object = None
    denied: bool = False


def _addresses(end: object) -> tuple[str, str] | None:
    """(local, remote) as ip:port of one end: its own socket, or its HBONE connection's."""
    sock = getattr(end, "sock", None)
    if sock is None:
        conn = getattr(end, "conn", None)
        sock = getattr(conn, "sock", None)
    try:
        local, remote = sock.getsockname(), sock.getpeername()
    except (AttributeError, OSError):
        return None
    return "%s:%d" % local[:2], "%s:%d" % remote[:2]


def describe(tracked: Tracked) -> dict:
    """One live connection as `istioctl ztunnel-config connections` shows it: the workload it
    belongs to, Inbound or Outbound, the local and remote addresses, the remote's target and
    whether it crossed HBONE. Read from the sockets as they are now (a closing one says less)."""
    # Inbound handlers name the pod's proxy as owner, outbound ones its PodContext.
    pod = getattr(tracked.owner, "info", None) or getattr(getattr(tracked.owner, "pod", None), "info", None)
    workload = "%s.%s" % (pod.name, pod.namespace) if pod is not None else ""
    conn = tracked.rbac
    if conn is not None:
        remote = _addresses(tracked.splice.client)
        return {"workload": workload, "direction": "Inbound",
                "local": "%s:%d" % (conn.dst_ip, conn.dst_port),
                "remote": remote[1] if remote and conn.src_identity is None else conn.src_ip,
                "remote_target": "", "protocol": "HBONE" if conn.src_identity is not None else "TCP",
                "identity": str(conn.src_identity) if conn.src_identity is not None else ""}
    client = _addresses(tracked.splice.client)
    server = _addresses(tracked.splice.server)
    hbone = hasattr(tracked.splice.server, "stream_id")
    return {"workload": workload, "direction": "Outbound",
            "local": client[1] if client else "", "remote": server[1] if server else "",
            "remote_target": _original_destination(tracked.splice.client), "protocol": "HBONE" if hbone else "TCP",
            "identity": ""}


def _original_destination(end: object) -> str:
    """The address the app dialled (before the in-pod redirect to 15001), as ip:port."""
    sock = getattr(end, "sock", None)
    try:
        return "%s:%d" % original_dst(sock)[:2]
    except (AttributeError, OSError, ValueError):
        return ""


class ConnectionTracker:
    def __init__(self, notify: Callable[[Callable[[], object]], None] | None = None) -> None:
        self.live: set[Tracked] = set()
        self._waiters: list[trio.Event] = []
        # How to run a trio call from the loop (the engine's notify); None: call directly.
        self._notify = notify

    def add(self, splice: Splice, conn: rbac.Connection | None = None, owner: object = None) -> Tracked:
        """Count a connection (for draining); with `conn`, an inbound one that a new policy
        may close (`recheck`)."""
        tracked = Tracked(splice, conn, owner)
        self.live.add(tracked)
        return tracked

    def remove(self, tracked: Tracked) -> None:
        self.live.discard(tracked)
        if not self.live and self._waiters:
            waiters, self._waiters = self._waiters, []
            for event in waiters:
                if self._notify is not None:
                    self._notify(event.set)
                else:
                    event.set()

    def count(self, owner: object) -> int:
        return sum(1 for tracked in self.live if tracked.owner is owner)

    async def wait_empty(self) -> None:
        while self.live:
            event = trio.Event()
            self._waiters.append(event)
            await event.wait()

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
            closed += 1
            log.info("connection closed due to policy rejection",
                     src_identity=str(conn.src_identity) if conn.src_identity else None,
                     src_ip=conn.src_ip, dst=f"{conn.dst_ip}:{conn.dst_port}",
                     policy=decision.policy, reason=decision.reason)
            tracked.splice.fail("connection closed due to policy rejection")
        return closed
