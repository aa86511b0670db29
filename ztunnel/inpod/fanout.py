"""The main process's pods and its workers' as one: what its ZdsClient acts on with workers > 1.

The node agent's request succeeds only when this process and every running worker did it;
otherwise its NACK names who failed, and the agent offers the pod again later.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import trio

from wisp.zds.protocol import WorkloadInfo

from .manager import PodManager, PodStartError
from .supervisor import WorkerPool


class PodFanOut:
    """This process's PodManager and every worker of `pool`, as wisp.zds.workload.Pods."""

    def __init__(self, local: PodManager, pool: WorkerPool) -> None:
        self.local = local
        self.pool = pool

    async def add(self, uid: str, info: WorkloadInfo, fd: int) -> None:
        duplicate = os.dup(fd)  # both adds own the fd they are given
        await self._both(lambda: self.local.add(uid, info, fd), lambda: self.pool.add(uid, info, duplicate))

    def keep(self, uid: str) -> None:
        # Keep only comes in a snapshot; every worker already has what this process has.
        self.local.keep(uid)

    async def remove(self, uid: str) -> None:
        await self._both(lambda: self.local.remove(uid), lambda: self.pool.remove(uid))

    async def retain(self, uids: Iterable[str]) -> list[str]:
        keep = set(uids)
        gone: list[str] = []

        async def local() -> None:
            gone.extend(await self.local.retain(keep))

        await self._both(local, lambda: self.pool.retain(keep))
        return gone

    @staticmethod
    async def _both(local, workers) -> None:
        errors: list[str] = []

        async def run_local() -> None:
            try:
                await local()
            except PodStartError as exc:
                errors.insert(0, str(exc))

        async def run_workers() -> None:
            errors.extend(await workers())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_local)
            nursery.start_soon(run_workers)
        if errors:
            raise PodStartError("; ".join(errors))
