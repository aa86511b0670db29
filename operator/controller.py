"""The reconcile loop: store changes in, a published model and status conditions out.

The build runs on a worker thread so the event loop keeps serving streams and certificates
while a large cluster is reconciled; publishing happens back on the loop.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from .cluster import ClusterState
from .distributor import Distributor
from .errors import InvalidObject
from .reconcile import Reconciliation, StatusWrite, reconcile
from .store import ObjectStore

log = structlog.get_logger("wisp.operator.controller")


class Controller:
    def __init__(self, store: ObjectStore, distributor: Distributor) -> None:
        self.store = store
        self.distributor = distributor
        self.state: ClusterState = store.snapshot()
        self.status: dict[tuple[str, str, str, str], dict | None] = {}
        self.synced = asyncio.Event()
        self._reported: set[str] = set()

    async def run(self) -> None:
        """Reconcile whenever the store changes; changes made meanwhile coalesce into one pass."""
        while True:
            seen = self.store.version
            state = self.store.snapshot()
            started = time.perf_counter()
            result = await asyncio.to_thread(reconcile, state)
            self.apply(state, result)
            log.debug("reconciled", store_version=seen, seconds=round(time.perf_counter() - started, 3))
            await self.store.wait_for_change(seen)

    def apply(self, state: ClusterState, result: Reconciliation) -> None:
        """Publish one reconciliation (on the event loop's thread)."""
        self.state = state
        version = self.distributor.publish(result.model)
        if version is not None:
            log.info("config published", version=version, workloads=len(result.model.workloads),
                     services=len(result.model.services), authorizations=len(result.model.authorizations))
        self._record_status(result.status)
        self._report(result.errors)
        self.synced.set()

    def _record_status(self, writes: tuple[StatusWrite, ...]) -> None:
        # Local mode keeps conditions here for `wisp get`; the Kubernetes source writes them.
        for write in writes:
            self.status[(write.kind, write.namespace, write.name, write.condition_type)] = write.condition

    def _report(self, errors: tuple[InvalidObject, ...]) -> None:
        current = {str(error) for error in errors}
        for message in sorted(current - self._reported):
            log.warning("object left out of the model", problem=message)
        self._reported = current
