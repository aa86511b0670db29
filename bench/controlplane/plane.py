"""The control plane process: the operator's store, controller, distributor and HTTPS server.

Run in its own (spawned) process so that its peak RSS is the control plane's alone. It talks
to the runner over a multiprocessing pipe:

1. it builds the scenario, reconciles it, starts serving on 127.0.0.1 and sends
   ``{"address", "roots", "tokens", ...}`` (one ztunnel token per node);
2. on ``{"cmd": "changes", ...}`` it waits until every expected subscriber has acknowledged the
   current version, then flips one pod's readiness ``changes`` times, ``spacing`` apart,
   recording CLOCK_MONOTONIC stamps (shared by every process on the machine) for the store
   change, the reconcile and the publication; it answers with those and its resource use;
3. on ``{"cmd": "stop"}`` (or the pipe closing) it shuts down.
"""

from __future__ import annotations

import asyncio
import gc
import resource
import socket
import time
from multiprocessing.connection import Connection

from wisp import log as wisp_log
from wisp.identity import CertificateAuthority, SpiffeId
from wisp_operator import pods
from wisp_operator.auth import LocalCredentials
from wisp_operator.ca_service import CaService
from wisp_operator.controller import Controller
from wisp_operator.distributor import Distributor
from wisp_operator.errors import object_id
from wisp_operator.reconcile import Reconciler
from wisp_operator.server import ControlPlaneApp, serve
from wisp_operator.store import ObjectStore

from .gctime import GcClock
from .offline import CHANGED_POD
from .scenario import Scale, cluster, pod_ip, pod_name, pod_node


class StampedReconciler(Reconciler):
    """Records when each update started and ended, and whether it patched."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps: list[tuple[int, int, bool]] = []

    def update(self, state, changed):
        started = time.monotonic_ns()
        patches = self.patches
        result = super().update(state, changed)
        self.stamps.append((started, time.monotonic_ns(), self.patches > patches))
        return result


class StampedDistributor(Distributor):
    """Records when each version was published."""

    def __init__(self) -> None:
        self.published: dict[str, int] = {}
        super().__init__()

    def publish(self, snapshot, delta=None):
        version = super().publish(snapshot, delta)
        if version is not None:
            self.published[version] = time.monotonic_ns()
        return version


def memory() -> dict:
    """Peak and current resident set of this process, in MiB."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                fields[key] = int(value.split()[0]) / 1024
    return {"peak_rss_mib": fields.get("VmHWM"), "rss_mib": fields.get("VmRSS"),
            "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(conn: Connection, scale: Scale, nodes: int) -> None:
    wisp_log.configure("warning", json=True)
    try:
        asyncio.run(_run(conn, scale, nodes))
    except* (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass  # the runner went away (or stopped us): nothing left to report to
    finally:
        conn.close()


def _quiet_cancellation(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    # At shutdown hypercorn's connection callbacks report their own cancellation; that is expected.
    if not isinstance(context.get("exception"), asyncio.CancelledError):
        loop.default_exception_handler(context)


async def _run(conn: Connection, scale: Scale, nodes: int) -> None:
    asyncio.get_running_loop().set_exception_handler(_quiet_cancellation)
    objects = cluster(scale)
    store = ObjectStore()
    store.replace("bench", objects)
    del objects
    ca = CertificateAuthority.generate("cluster.local")
    credentials = LocalCredentials()
    tokens = {f"node{i}": credentials.issue_ztunnel(f"node{i}") for i in range(nodes)}
    bundle = ca.issue_serving(SpiffeId("cluster.local", "istio-system", "wisp-operator"),
                              ip_addresses=("127.0.0.1",))
    reconciler = StampedReconciler()
    distributor = StampedDistributor()
    controller = Controller(store, distributor, reconciler)
    app = ControlPlaneApp(CaService(ca), credentials, distributor, lambda: controller.state)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    shutdown = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(serve(app, listener, bundle, shutdown))
            reconciling = tasks.create_task(controller.run())
            await controller.synced.wait()
            gc.collect()
            started, ended, _ = reconciler.stamps[0]
            conn.send({
                "address": f"127.0.0.1:{listener.getsockname()[1]}",
                "roots": ca.roots_pem(),
                "tokens": tokens,
                "initial_build_s": (ended - started) / 1e9,
                "memory_after_build": memory(),
            })
            try:
                while True:
                    command = await asyncio.to_thread(conn.recv)
                    if command["cmd"] == "stop":
                        break
                    try:
                        report = await _changes(store, distributor, reconciler, scale, **command["args"])
                    except RuntimeError as exc:
                        report = {"error": str(exc)}
                    conn.send(report)
            finally:
                shutdown.set()
                reconciling.cancel()
    finally:
        listener.close()


async def _changes(store: ObjectStore, distributor: StampedDistributor, reconciler: StampedReconciler,
                   scale: Scale, *, subscribers: int, changes: int, spacing: float, sync_timeout: float) -> dict:
    synced_at = await _all_acked(distributor, subscribers, sync_timeout)
    gc.collect()
    memory_synced = memory()
    ns, name = pod_name(CHANGED_POD, scale)
    node, ip = pod_node(CHANGED_POD, scale), pod_ip(CHANGED_POD)
    records = []
    cpu_before = cpu_seconds()
    with GcClock() as gc_clock:
        await _flip(store, distributor, reconciler, subscribers, changes, spacing, records, ns, name, node, ip)
    return {"records": records, "cpu_s": cpu_seconds() - cpu_before, "t_synced": synced_at, "gc": gc_clock.report(),
            "memory_synced": memory_synced, "memory": memory(),
            "full_builds": reconciler.full_builds, "patches": reconciler.patches}


async def _flip(store: ObjectStore, distributor: StampedDistributor, reconciler: StampedReconciler, subscribers: int,
                changes: int, spacing: float, records: list, ns: str, name: str, node: str, ip: str) -> None:
    for i in range(changes):
        base = distributor.version
        stamps = len(reconciler.stamps)
        t_change = time.monotonic_ns()
        # Flip readiness, so every change is one workload's status and nothing else.
        pod = store.get("Pod", ns, name)
        ready = not pods.is_ready(pod, object_id(pod))
        store.set_pod_runtime(ns, name, node=node, pod_ip=ip, phase="Running", ready=ready)
        if not await distributor.wait_for_change(base, 5.0):
            raise RuntimeError(f"change {i} was not published within 5 s")
        version = distributor.version
        try:
            acked = await _all_acked(distributor, subscribers, 5.0, version)
        except RuntimeError:
            acked = None  # some subscriber was reconnecting; its stamps tell when it caught up
        started, ended, patched = reconciler.stamps[stamps]
        # When the server handed each subscriber's message to hypercorn (Distributor.sent).
        sent = sorted(int(s.sent_at[version] * 1e9) for s in distributor.subscribers.values() if version in s.sent_at)
        records.append({"version": version, "t_change": t_change, "t_reconcile_start": started,
                        "t_reconcile_end": ended, "patched": patched,
                        "t_published": distributor.published[version], "t_sent": sent, "t_all_acked": acked})
        await asyncio.sleep(max(0.0, (t_change + spacing * 1e9 - time.monotonic_ns()) / 1e9))


async def _all_acked(distributor: Distributor, expected: int, timeout: float, version: str | None = None) -> int:
    """Wait until ``expected`` subscribers have acknowledged ``version`` (default: the current one).

    Polls every 2 ms, which is also the resolution of the returned CLOCK_MONOTONIC stamp.
    """
    deadline = time.monotonic() + timeout
    while True:
        want = version or distributor.version
        if sum(1 for s in distributor.subscribers.values() if s.acked_version == want) >= expected:
            return time.monotonic_ns()
        if time.monotonic() > deadline:
            acked = sum(1 for s in distributor.subscribers.values() if s.acked_version == want)
            raise RuntimeError(f"{acked} of {expected} subscribers acknowledged {want} within {timeout:g} s")
        await asyncio.sleep(0.002)
