"""The config version in force, for everything that outlives one version (pod proxies, handlers).

`CurrentState.state` is the ProxyState a new connection starts with; `replace` installs the next
and wakes whoever waits for a change (an inbound connection for a pod whose workload is on its way).
"""

from __future__ import annotations

import trio

from wisp.model import Workload

from .proxy_state import ProxyState


class CurrentState:
    def __init__(self, state: ProxyState | None = None) -> None:
        self.state = state or ProxyState()
        self.changed = trio.Event()  # set, and replaced, by each `replace`

    def replace(self, state: ProxyState) -> None:
        self.state = state
        event, self.changed = self.changed, trio.Event()
        event.set()

    async def wait_for_workload(self, ip: str, timeout: float) -> Workload | None:
        """The workload with `ip`, waiting up to `timeout` for config that may be on its way."""
        with trio.move_on_after(timeout):
            while True:
                workload = self.state.workload_by_ip(ip)
                if workload is not None:
                    return workload
                await self.changed.wait()
        return None
