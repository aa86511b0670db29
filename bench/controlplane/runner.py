"""Runs the benchmark: offline figures here, then the control plane and the fleet as processes.

Both children are spawned (fresh interpreters) and always stopped, also on error or Ctrl-C:
asked over their pipe first, then terminated, then killed.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from . import fleet, offline, plane
from .scenario import Scale


class BenchError(RuntimeError):
    """A benchmark process failed or went silent; the message says which and where."""


@dataclass(frozen=True, slots=True)
class Plan:
    scale: Scale = field(default_factory=Scale)
    repeats: int = 5  # full builds and encodings timed
    pod_changes_offline: int = 200
    nodes: int = 10
    per_node: int = 10
    changes: int = 100
    spacing: float = 0.5

    @property
    def subscribers(self) -> int:
        return self.nodes * self.per_node

    def describe(self) -> dict:
        return {**asdict(self), "subscribers": self.subscribers}


def run(plan: Plan, progress=print) -> dict[str, Any]:
    progress(f"offline: {plan.repeats} full builds and encodings of {plan.scale.pods} pods, "
             f"{plan.pod_changes_offline} patched pod changes")
    results: dict[str, Any] = {"offline": offline.measure(plan.scale, plan.repeats, plan.pod_changes_offline)}
    progress("delivery: starting the control plane process")
    results["delivery"] = _delivery(plan, progress)
    return results


def _delivery(plan: Plan, progress) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    processes: list[BaseProcess] = []
    conns: list[Connection] = []
    try:
        plane_conn, child = ctx.Pipe()
        conns.append(plane_conn)
        cp = ctx.Process(target=plane.main, args=(child, plan.scale, plan.nodes), name="bench-control-plane",
                         daemon=True)
        cp.start()
        processes.append(cp)
        child.close()
        ready = _receive(plane_conn, cp, 300, "the control plane to build and start serving")
        progress(f"delivery: control plane on {ready['address']} (initial build {ready['initial_build_s']:.2f} s); "
                 f"connecting {plan.subscribers} subscribers")
        phases = {}
        # First one subscriber alone (the latency floor), then the full fleet.
        for label, nodes, per_node in (("single", 1, 1), ("fleet", plan.nodes, plan.per_node)):
            tokens = {node: ready["tokens"][node] for node in sorted(ready["tokens"])[:nodes]}
            phases[label] = _phase(ctx, plan, plane_conn, cp, ready["address"], ready["roots"], tokens, per_node,
                                   processes, conns, progress)
        plane_conn.send({"cmd": "stop"})
        return {"ready": {k: v for k, v in ready.items() if k not in ("roots", "tokens")}, **phases["fleet"],
                "single": phases["single"]}
    finally:
        for conn in conns:
            conn.close()
        for process in reversed(processes):
            _stop(process)


def _phase(ctx, plan: Plan, plane_conn: Connection, cp: BaseProcess, address: str, roots: bytes,
           tokens: dict[str, str], per_node: int, processes: list[BaseProcess], conns: list[Connection],
           progress) -> dict[str, Any]:
    subscribers = len(tokens) * per_node
    fleet_conn, child = ctx.Pipe()
    conns.append(fleet_conn)
    fp = ctx.Process(target=fleet.main, name=f"bench-fleet-{subscribers}", daemon=True,
                     args=(child, address, roots, tokens, per_node))
    fp.start()
    processes.append(fp)
    child.close()
    synced = _receive(fleet_conn, fp, 600, f"{subscribers} subscribers to get their first snapshot")
    progress(f"delivery: {subscribers} subscriber(s) synced in {synced['synced_s']:.1f} s; "
             f"{plan.changes} pod changes, {plan.spacing * 1000:.0f} ms apart")
    plane_conn.send({"cmd": "changes", "args": {
        "subscribers": subscribers, "changes": plan.changes, "spacing": plan.spacing, "sync_timeout": 120.0}})
    measured = _receive(plane_conn, cp, 180 + plan.changes * (plan.spacing + 5), "the pod changes")
    if "error" in measured:
        raise BenchError(f"control plane: {measured['error']}")
    fleet_conn.send({"cmd": "stop"})
    stamps = _receive(fleet_conn, fp, 60, "the subscribers' stamps")
    _stop(fp)
    return {"fleet_sync": synced, "plane": measured, "fleet": stamps}


def _receive(conn: Connection, process: BaseProcess, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while not conn.poll(1.0):
        if not process.is_alive():
            raise BenchError(f"{process.name} exited (code {process.exitcode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise BenchError(f"gave up after {timeout:.0f} s waiting for {what} ({process.name})")
    try:
        return conn.recv()
    except EOFError:
        raise BenchError(f"{process.name} closed its pipe while we waited for {what}") from None


def _stop(process: BaseProcess) -> None:
    process.join(10)
    if process.is_alive():
        process.terminate()
        process.join(5)
    if process.is_alive():
        process.kill()
        process.join()
