"""The operator's Kubernetes mode in its own process, for `python -m bench.controlplane --kube`.

``KubeSource`` → ``ObjectStore`` → ``Controller`` → ``Distributor``, as ``wisp-operator
--kubeconfig`` wires them (operator/main.py ``run_kube``), with two stamps added: when a followed
pod's changed object reached the store (its watch event applied), and when a model holding the
changed workload was published. Over the pipe from kube.py:

1. once every kind is listed and the first model is published it sends the counts, the list
   timings and its memory;
2. ``{"cmd": "follow", "pods": [[ns, name], ...], "label": [key, value]}``: stamp those pods;
3. ``{"cmd": "report", "timeout": s}``: wait until every followed pod is published (or the
   timeout), then send the stamps, CPU and memory; ``{"cmd": "stop"}`` (or EOF) ends it.
"""

from __future__ import annotations

import asyncio
import gc
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from wisp import log as wisp_log
from wisp_operator.controller import Controller
from wisp_operator.distributor import Distributor
from wisp_operator.kube.client import KubeApi
from wisp_operator.kube.source import KubeSource
from wisp_operator.reconcile import Reconciler
from wisp_operator.store import ObjectStore
from wisp_operator.workloads import workload_uid

from .plane import cpu_seconds, memory


class Followed:
    """The pods of a burst and when each change reached the store and the published model."""

    def __init__(self) -> None:
        self.label: tuple[str, str] | None = None
        self.uids: dict[str, tuple[str, str]] = {}
        self.pending: set[str] = set()
        self.applied: dict[tuple[str, str], int] = {}
        self.published: dict[tuple[str, str], int] = {}
        self.done = asyncio.Event()

    def follow(self, pods: list[tuple[str, str]], label: tuple[str, str], cluster_id: str) -> None:
        self.label = label
        self.uids = {workload_uid(cluster_id, ns, name): (ns, name) for ns, name in pods}
        self.pending = set(self.uids)
        self.done.clear()


class StampedStore(ObjectStore):
    def __init__(self, followed: Followed) -> None:
        self.followed = followed
        super().__init__()

    def apply(self, source: str, obj: dict[str, Any]) -> Any:
        result = super().apply(source, obj)
        followed = self.followed
        if followed.label is not None and obj.get("kind") == "Pod":
            meta = obj.get("metadata") or {}
            pod = (meta.get("namespace"), meta.get("name"))
            key, value = followed.label
            if pod not in followed.applied and (meta.get("labels") or {}).get(key) == value:
                followed.applied[pod] = time.monotonic_ns()
        return result


class StampedDistributor(Distributor):
    def __init__(self, followed: Followed) -> None:
        self.followed = followed
        self.publications = 0
        super().__init__()

    def publish(self, snapshot, delta=None):
        version = super().publish(snapshot, delta)
        followed = self.followed
        if version is not None:
            self.publications += 1
            if followed.pending:
                now = time.monotonic_ns()
                workloads = snapshot.workloads
                for uid in [u for u in followed.pending if (w := workloads.get(u)) is not None
                            and w.canonical_revision == followed.label[1]]:
                    followed.pending.discard(uid)
                    followed.published[followed.uids[uid]] = now
                if not followed.pending:
                    followed.done.set()
        return version


class CountingReconciler(Reconciler):
    """Counts, for each full build after the first, what had changed (kinds, or too many keys)."""

    def __init__(self) -> None:
        super().__init__()
        self.rebuild_causes: dict[str, int] = {}

    def can_patch(self, state, changed) -> bool:
        # The controller asks first, then calls update(state, None) for a full build.
        patchable = super().can_patch(state, changed)
        if not patchable and self._build is not None and changed is not None:
            if len(changed) > self.max_patch:
                cause = f"more than {self.max_patch} keys"
            else:
                cause = ",".join(sorted({key[0] for key in changed}))
            self.rebuild_causes[cause] = self.rebuild_causes.get(cause, 0) + 1
        return patchable


def main(conn: Connection, kubeconfig: str, expected_workloads: int) -> None:
    wisp_log.configure("warning", json=True)
    try:
        asyncio.run(_run(conn, Path(kubeconfig), expected_workloads))
    except* (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    except* Exception as group:  # noqa: BLE001 - reported to the runner, which names the process
        try:
            conn.send({"error": "; ".join(repr(e) for e in group.exceptions)})
        except (OSError, ValueError):
            pass
    finally:
        conn.close()


async def _run(conn: Connection, kubeconfig: Path, expected_workloads: int) -> None:
    followed = Followed()
    store = StampedStore(followed)
    distributor = StampedDistributor(followed)
    reconciler = CountingReconciler()
    controller = Controller(store, distributor, reconciler)
    api = await KubeApi.connect(kubeconfig)
    source = KubeSource(api, store)
    t_start = time.monotonic_ns()
    try:
        async with asyncio.TaskGroup() as tasks:
            running = [tasks.create_task(source.run()), tasks.create_task(controller.run())]
            await source.synced.wait()
            t_listed = time.monotonic_ns()
            # The first model holding every pod's workload (the pods all run before we start).
            while distributor.snapshot is None or len(distributor.snapshot.workloads) < expected_workloads:
                await controller.wait_for_reconciliation(controller.reconciliations)
            t_published = time.monotonic_ns()
            model = distributor.snapshot
            gc.collect()
            conn.send({"t_source_start": t_start, "t_listed": t_listed, "t_published": t_published,
                       "listed_s": (t_listed - t_start) / 1e9, "published_s": (t_published - t_start) / 1e9,
                       "workloads": len(model.workloads), "services": len(model.services),
                       "authorizations": len(model.authorizations), "lists": source.lists,
                       "full_builds": reconciler.full_builds, "memory": memory()})
            cluster_id = store.snapshot().settings.cluster_id
            builds, patches, cpu_before = reconciler.full_builds, reconciler.patches, cpu_seconds()
            while True:
                command = await asyncio.to_thread(conn.recv)
                if command["cmd"] == "stop":
                    break
                if command["cmd"] == "follow":
                    builds, patches = reconciler.full_builds, reconciler.patches
                    reconciler.rebuild_causes = {}  # the burst's own
                    followed.follow([tuple(p) for p in command["pods"]], tuple(command["label"]), cluster_id)
                    cpu_before = cpu_seconds()
                    conn.send({"following": len(followed.uids)})
                elif command["cmd"] == "report":
                    try:
                        await asyncio.wait_for(followed.done.wait(), command["timeout"])
                    except asyncio.TimeoutError:
                        pass
                    conn.send({"published": [[list(p), t] for p, t in followed.published.items()],
                               "applied": [[list(p), t] for p, t in followed.applied.items()],
                               "publications": distributor.publications, "events": source.events,
                               "full_builds": reconciler.full_builds - builds, "patches": reconciler.patches - patches,
                               "rebuild_causes": reconciler.rebuild_causes,
                               "cpu_s": cpu_seconds() - cpu_before, "memory": memory()})
            for task in running:
                task.cancel()
    finally:
        await api.close()
