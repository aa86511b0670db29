"""The reconcile loop: store changes in, a published model and status conditions out.

The store says which keys changed since the last pass; when only a few Pods did, the
Reconciler patches the last build on the event loop (well under a millisecond per Pod) and
hands the distributor the delta, so a Pod becoming ready reaches the proxies without a
rebuild. Anything else takes a full build, which runs on a worker thread so the event loop
keeps serving streams and certificates while a large cluster is reconciled; publishing
happens back on the loop.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from wisp.model import ModelSnapshot

from .cluster import ClusterState
from .distributor import Distributor
from .errors import InvalidObject
from .gateways import StatusFieldsWrite, merge_status
from .reconcile import Reconciler, Reconciliation, StatusWrite
from .store import ObjectStore

log = structlog.get_logger("wisp.operator.controller")


class Controller:
    def __init__(self, store: ObjectStore, distributor: Distributor, reconciler: Reconciler | None = None) -> None:
        self.store = store
        self.distributor = distributor
        self.reconciler = reconciler or Reconciler()
        self.state: ClusterState = store.snapshot()
        self.status: dict[tuple[str, str, str, str], dict | None] = {}
        # Local mode: Gateway API status fields we own, by (kind, namespace, name), merged.
        self.status_fields: dict[tuple[str, str, str], dict] = {}
        self.synced = asyncio.Event()
        self._reported: set[str] = set()
        self._reconciled_version: int | None = None
        # What the distributor held after our last publish: a patch's delta is relative to it.
        self._published: ModelSnapshot | None = None
        self._last_status: tuple[StatusWrite | StatusFieldsWrite, ...] | None = None
        self._last_errors: tuple[InvalidObject, ...] | None = None
        # Counts published reconciliations, for writers that follow them (wait_for_reconciliation).
        self.reconciliations = 0
        self.last_status: tuple[StatusWrite | StatusFieldsWrite, ...] = ()
        self._reconciled = asyncio.Event()

    async def run(self) -> None:
        """Reconcile whenever the store changes; changes made meanwhile coalesce into one pass."""
        while True:
            seen = self.store.version
            state = self.store.snapshot()
            changed = None if self._reconciled_version is None else self.store.changes_since(self._reconciled_version)
            started = time.perf_counter()
            if self.reconciler.can_patch(state, changed):
                result = self.reconciler.update(state, changed)
            else:
                result = await asyncio.to_thread(self.reconciler.update, state, None)
            self._reconciled_version = seen
            self.apply(state, result)
            log.debug("reconciled", store_version=seen, patched=result.delta is not None,
                      seconds=round(time.perf_counter() - started, 4))
            await self.store.wait_for_change(seen)

    def apply(self, state: ClusterState, result: Reconciliation) -> None:
        """Publish one reconciliation (on the event loop's thread)."""
        self.state = state
        delta = result.delta
        if delta is not None and self.distributor.snapshot is not self._published:
            delta = None  # someone else published meanwhile: let the distributor compare
        version = self.distributor.publish(result.model, delta)
        self._published = self.distributor.snapshot
        if version is not None:
            log.info("config published", version=version, workloads=len(result.model.workloads),
                     services=len(result.model.services), authorizations=len(result.model.authorizations),
                     changed=len(delta.upserts) + len(delta.removals) if delta is not None else None)
        if result.status is not self._last_status:
            self._record_status(result.status)
            self._last_status = result.status
        if result.errors is not self._last_errors:
            self._report(result.errors)
            self._last_errors = result.errors
        self.last_status = result.status
        self.reconciliations += 1
        event, self._reconciled = self._reconciled, asyncio.Event()
        event.set()
        self.synced.set()

    async def wait_for_reconciliation(self, since: int) -> int:
        """Return ``reconciliations`` once it is greater than ``since`` (``state``/``last_status`` are its)."""
        while self.reconciliations <= since:
            await self._reconciled.wait()
        return self.reconciliations

    def _record_status(self, writes: tuple[StatusWrite | StatusFieldsWrite, ...]) -> None:
        # Local mode keeps conditions here for `wisp get`; the Kubernetes source writes them.
        # Local objects carry no status of ours, so one reconciliation's writes are the whole
        # desired set: replacing the table (not merging into it) drops the conditions of objects
        # that are gone or no longer get one, instead of showing stale ones.
        self.status = {(w.kind, w.namespace, w.name, w.condition_type): w.condition
                       for w in writes if isinstance(w, StatusWrite) and w.condition is not None}
        # Gateway API fields keep their lastTransitionTime while a condition's status holds.
        fields = {}
        for w in writes:
            if isinstance(w, StatusFieldsWrite):
                key = (w.kind, w.namespace, w.name)
                fields[key] = merge_status(w.kind, self.status_fields.get(key), w.fields)
        self.status_fields = fields

    def _report(self, errors: tuple[InvalidObject, ...]) -> None:
        current = {str(error) for error in errors}
        for message in sorted(current - self._reported):
            log.warning("object left out of the model", problem=message)
        self._reported = current
