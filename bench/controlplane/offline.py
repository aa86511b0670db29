"""In-process figures: the full build, encoding a full snapshot, and one pod change's own cost.

Each is timed on its own (no server, no subscribers), so the end-to-end delivery figure can be
read against them: what reconciling costs, and what is left for the network fan-out.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Callable

from wisp.controlplane.protocol import encode_resource, encode_snapshot
from wisp_operator.cluster import ClusterState
from wisp_operator.distributor import ROLE_ZTUNNEL, Distributor, View
from wisp_operator.reconcile import Reconciler, reconcile
from wisp_operator.store import ObjectStore

from .scenario import Scale, cluster, pod_ip, pod_name, pod_node

CHANGED_POD = 1234  # any pod; ns34, node14


def _timed(fn: Callable[[], object], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        gc.collect()
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return seconds


def _summary(seconds: list[float]) -> dict:
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
            "runs": len(seconds)}


def measure(scale: Scale, repeats: int, pod_changes: int) -> dict:
    objects = cluster(scale)
    index = _timed(lambda: ClusterState.of(objects), repeats)
    state = ClusterState.of(objects)
    build = _timed(lambda: reconcile(state), repeats)
    model = reconcile(state).model

    def encode_cold() -> bytes:
        return encode_snapshot("e-1", (encode_resource(r) for r in model.resources()))

    encoded = [encode_resource(r) for r in model.resources()]
    size = len(encode_cold())
    cold = _timed(encode_cold, repeats)
    # What the distributor pays for the second and later subscribers: resources already encoded.
    warm = _timed(lambda: encode_snapshot("e-1", encoded), repeats)
    return {
        "objects": len(objects),
        "workloads": len(model.workloads),
        "services": len(model.services),
        "authorizations": len(model.authorizations),
        "index": _summary(index),
        "full_build": _summary(build),
        "encode_snapshot": _summary(cold),
        "encode_snapshot_cached_resources": _summary(warm),
        "snapshot_bytes": size,
        "pod_change": asyncio.run(_pod_change(objects, scale, pod_changes)),
    }


async def _pod_change(objects: list[dict], scale: Scale, changes: int) -> dict:
    """One pod's readiness flipping: store, snapshot, patch, publish, one delta message."""
    store = ObjectStore()
    store.replace("bench", objects)
    reconciler = Reconciler()
    distributor = Distributor()
    version = store.version
    distributor.publish(reconciler.update(store.snapshot(), None).model)
    ns, name = pod_name(CHANGED_POD, scale)
    view = View(ROLE_ZTUNNEL, pod_node(CHANGED_POD, scale))
    stages: dict[str, list[float]] = {k: [] for k in ("store", "snapshot", "patch", "publish", "message", "total")}
    for i in range(changes):
        base = distributor.version
        t0 = time.perf_counter()
        store.set_pod_runtime(ns, name, node=pod_node(CHANGED_POD, scale), pod_ip=pod_ip(CHANGED_POD),
                              phase="Running", ready=bool(i % 2))
        t1 = time.perf_counter()
        state = store.snapshot()
        t2 = time.perf_counter()
        changed = store.changes_since(version)
        version = store.version
        result = reconciler.update(state, changed)
        t3 = time.perf_counter()
        distributor.publish(result.model, result.delta)
        t4 = time.perf_counter()
        distributor.next_message(view, base)
        t5 = time.perf_counter()
        for key, a, b in (("store", t0, t1), ("snapshot", t1, t2), ("patch", t2, t3), ("publish", t3, t4),
                          ("message", t4, t5), ("total", t0, t5)):
            stages[key].append(b - a)
    assert reconciler.full_builds == 1 and reconciler.patches == changes, "pod changes must patch"
    return {key: _summary(values) for key, values in stages.items()}
