"""In-pod mode: the pod proxies' lifecycle, driven by ZDS (wisp.zds.workload's ZdsClient).

`PodManager` (istio/ztunnel's `inpod/statemanager.rs`) starts one PodProxy per pod, keyed by uid and netns identity: the same netns again is a no-op,
a different one replaces the proxy; a failed start is NACKed and retried every 5 s.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import structlog
import trio

from wisp import netns
from wisp.zds.protocol import WorkloadInfo
from wisp.zds.transport import close_fd
from wisp.zds.workload import WorkloadError

from ..proxy.inputs import ProxyInputs
from ..proxy.listeners import open_pod_listeners
from ..proxy.pod import PodProxy

log = structlog.get_logger("ztunnel.inpod")

RETRY_INTERVAL = 5.0


class PodStartError(WorkloadError):
    """A pod's proxy could not start (netns gone, listeners refused); the agent is told why."""


# -- pods ------------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Pending:
    info: WorkloadInfo
    fd: int


class PodManager:
    """The pod proxies of this ztunnel, by pod uid. Run `run` in a nursery before use."""

    def __init__(self) -> None:
        self.inputs: ProxyInputs | None = None  # given by `run`
        self.proxies: dict[str, PodProxy] = {}
        self.pending: dict[str, _Pending] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, inputs: ProxyInputs, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.inputs = inputs
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._retry_loop)
                task_status.started()
                await trio.sleep_forever()
        finally:
            for pending in self.pending.values():
                close_fd(pending.fd)
            self.pending.clear()

    async def add(self, uid: str, info: WorkloadInfo, fd: int) -> None:
        """Start (or keep, or replace) the proxy of `uid`; owns `fd` from here on."""
        try:
            ident = netns.identity(fd)
        except OSError as exc:
            close_fd(fd)
            raise PodStartError(f"netns fd for {uid} is unusable: {exc}") from None
        current = self.proxies.get(uid)
        if current is not None and current.pod.netns == ident:
            close_fd(fd)
            log.debug("pod already enrolled with this netns", uid=uid)
            return
        if current is not None:
            log.info("pod netns changed; replacing its proxy", uid=uid)
            await self.remove(uid)
        self._drop_pending(uid)
        try:
            await self._start(uid, info, fd, ident)
        except PodStartError:
            self.pending[uid] = _Pending(info, fd)
            raise

    async def _start(self, uid: str, info: WorkloadInfo, fd: int, ident: netns.NetnsId) -> None:
        assert self._nursery is not None and self.inputs is not None, "PodManager.run must be running"
        try:
            pod_listeners = await open_pod_listeners(fd)
        except OSError as exc:
            raise PodStartError(f"cannot open listeners in the netns of {uid}: {exc}") from None
        proxy = PodProxy(self.inputs, uid, info, ident, fd, pod_listeners)
        try:
            await self._nursery.start(proxy.run)
        except Exception as exc:
            raise PodStartError(f"proxy for {uid} failed to start: {exc}") from None
        self.proxies[uid] = proxy

    def keep(self, uid: str) -> None:
        if uid not in self.proxies and uid not in self.pending:
            raise PodStartError(f"keep for unknown pod {uid}; send Add with its netns")

    async def remove(self, uid: str) -> None:
        self._drop_pending(uid)
        proxy = self.proxies.pop(uid, None)
        if proxy is None:
            return
        proxy.stop()
        await proxy.stopped.wait()

    async def retain(self, uids: Iterable[str]) -> list[str]:
        """Remove every pod not in `uids` (after a snapshot); returns the removed uids."""
        keep = set(uids)
        gone = [uid for uid in (*self.proxies, *self.pending) if uid not in keep]
        for uid in gone:
            log.info("pod not in the node agent's snapshot; removing", uid=uid)
            await self.remove(uid)
        return gone

    async def drain(self, timeout: float) -> None:
        async with trio.open_nursery() as nursery:
            for proxy in list(self.proxies.values()):
                nursery.start_soon(proxy.drain, timeout)

    def _drop_pending(self, uid: str) -> None:
        pending = self.pending.pop(uid, None)
        if pending is not None:
            close_fd(pending.fd)

    async def _retry_loop(self) -> None:
        while True:
            await trio.sleep(RETRY_INTERVAL)
            for uid, pending in list(self.pending.items()):
                if self.pending.get(uid) is not pending:
                    continue
                try:
                    await self._start(uid, pending.info, pending.fd, netns.identity(pending.fd))
                except (PodStartError, OSError) as exc:
                    log.warning("pod proxy start failed again", uid=uid, error=str(exc))
                    continue
                del self.pending[uid]
                log.info("pod proxy started after retry", uid=uid)
