"""Which core runs what during the fixed-rate runs: layouts, and pinning process trees to them.

On a 2-core machine shared by the load generator, the server, two proxies, the mesh's own
control processes and other people's work, a request now and then waits for a core, and those
waits (milliseconds) are what a p99 at 1,000 req/s measures. A layout puts each role on one core:
the load generator (started under `taskset`), the server pod's processes and each node's proxy
tree (every thread of every process, set with sched_setaffinity, and put back afterwards).
Layout indexes 0 and 1 are the first two CPUs this process may use. A layout named `<name>+rt`
also runs the pinned processes SCHED_FIFO for the run (`chrt -f 1` for the load generator), so
their wake-ups preempt other programs' CPU-bound work instead of waiting out its time slice; the
kernel's real-time throttling (95% of each second) keeps a runaway from taking a core, and at
1,000 req/s the path uses well under one.

`python -m bench.mesh.layouts` measured the layouts against each other (docs/performance.md has
the figures): no pinned layout, real-time or not, gave direct a lower or steadier p99 than
leaving placement to the scheduler; every layout that puts the load generator and the server on
different cores doubled direct's p50 while the machine was quiet (a wake-up on the other, idle
vCPU costs ~0.1 ms each way); and while other programs loaded the machine every layout gave every
contender, direct included, a p99 of 5-8 ms. So the default is `none`, and the spread the report
prints beside each latency is what says how far to trust it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace

from .procstat import all_parents, descendants

ROLES = ("generator", "server", "node1", "node2")


class PinError(RuntimeError):
    """A layout cannot be applied here (unknown name, too few CPUs); the message says which."""


@dataclass(slots=True, frozen=True)
class Layout:
    """Core index (into the usable CPUs) per role; None leaves that role to the scheduler."""

    name: str
    generator: int | None
    server: int | None
    node1: int | None
    node2: int | None
    description: str
    # "+rt": the pinned processes also run SCHED_FIFO (priority 1), so a wake-up on the request
    # path preempts other programs' work on that core instead of waiting out their time slice.
    realtime: bool = False

    def core(self, role: str) -> int | None:
        return getattr(self, role)

    @property
    def pinned(self) -> bool:
        return any(self.core(role) is not None for role in ROLES)


LAYOUTS = {layout.name: layout for layout in (
    Layout("none", None, None, None, None, "nothing pinned: the scheduler places every process"),
    Layout("sides", 0, 1, 0, 1, "client side (load generator, node1's proxy) on CPU 0, "
                                "server side (server pod, node2's proxy) on CPU 1"),
    Layout("generator-alone", 0, 1, 1, 1, "load generator alone on CPU 0; server pod and both proxies on CPU 1"),
    Layout("apps-apart", 0, 0, 1, 1, "load generator and server pod on CPU 0, both proxies on CPU 1"),
    Layout("one-core", 1, 1, 1, 1, "the whole request path (load generator, server pod, both proxies) on CPU 1; "
                                   "CPU 0 left to everything else"),
)}
# Chosen by measurement (see above): pinning did not steady direct's p99 on this machine.
DEFAULT_LAYOUT = "none"


REALTIME_SUFFIX = "+rt"
REALTIME_PRIORITY = 1


def layout(name: str) -> Layout:
    """A layout by name; `<name>+rt` is the same cores with real-time scheduling."""
    base, realtime = (name[: -len(REALTIME_SUFFIX)], True) if name.endswith(REALTIME_SUFFIX) else (name, False)
    try:
        chosen = LAYOUTS[base]
    except KeyError:
        known = ", ".join(f"{n}[{REALTIME_SUFFIX}]" for n in LAYOUTS)
        raise PinError(f"unknown layout {name!r}; choose from {known}") from None
    if realtime and not chosen.pinned:
        raise PinError(f"layout {base!r} pins nothing, so there is nothing to run in real time")
    if not realtime:
        return chosen
    return replace(chosen, name=name, realtime=True,
                   description=f"{chosen.description}; pinned processes SCHED_FIFO {REALTIME_PRIORITY}")


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def cpu_of(chosen: Layout, role: str, cpus: list[int]) -> int | None:
    """The CPU number for a role under a layout, given the usable CPUs (sorted)."""
    index = chosen.core(role)
    if index is None:
        return None
    if index >= len(cpus):
        raise PinError(f"layout {chosen.name!r} needs {index + 1} CPUs; this process may use {len(cpus)}")
    return cpus[index]


def generator_prefix(chosen: Layout, cpus: list[int]) -> list[str]:
    """What to put before a load generator's command line: `taskset -c N`, or nothing."""
    cpu = cpu_of(chosen, "generator", cpus)
    if cpu is None:
        return []
    rt = ["chrt", "-f", str(REALTIME_PRIORITY)] if chosen.realtime else []
    return [*rt, "taskset", "-c", str(cpu)]


def _threads(pid: int) -> list[int]:
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


class Pinned:
    """`with Pinned({cpu: [root pids]})`: every thread of every process in those trees runs on its
    CPU until the block ends; then each thread gets back its process's affinity from before
    (threads and processes born meanwhile get their root's)."""

    def __init__(self, placement: dict[int, Iterable[int]], realtime: bool = False) -> None:
        self.placement = {cpu: list(roots) for cpu, roots in placement.items()}
        self.realtime = realtime
        self._before: dict[int, set[int]] = {}
        self._roots: dict[int, set[int]] = {}

    def __enter__(self) -> Pinned:
        if not self.placement:
            return self
        parents = all_parents()
        for cpu, roots in self.placement.items():
            for root in roots:
                original = self._affinity(root)
                if original is None:
                    continue
                self._roots[root] = original
                for pid in descendants(root, parents):
                    self._before.setdefault(pid, self._affinity(pid) or original)
                    self._set_all(pid, {cpu}, self.realtime)
        return self

    def __exit__(self, *exc) -> None:
        if not self._roots:
            return
        parents = all_parents()
        for root, original in self._roots.items():
            for pid in descendants(root, parents) if root in parents else []:
                self._set_all(pid, self._before.get(pid, original), False)

    @staticmethod
    def _affinity(pid: int) -> set[int] | None:
        try:
            return os.sched_getaffinity(pid)
        except OSError:
            return None

    @staticmethod
    def _set_all(pid: int, cpus: set[int], realtime: bool) -> None:
        policy, priority = (os.SCHED_FIFO, REALTIME_PRIORITY) if realtime else (os.SCHED_OTHER, 0)
        for tid in _threads(pid):
            try:
                os.sched_setaffinity(tid, cpus)
                os.sched_setscheduler(tid, policy, os.sched_param(priority))
            except OSError:
                # A thread that exited meanwhile needs no affinity.
                continue


def placement(chosen: Layout, cpus: list[int], server: list[int], proxies: dict[str, int]) -> dict[int, list[int]]:
    """{cpu: root pids} for a layout: the server pod's processes and each node's proxy tree."""
    out: dict[int, list[int]] = {}
    cpu = cpu_of(chosen, "server", cpus)
    if cpu is not None:
        out.setdefault(cpu, []).extend(server)
    for node, pid in proxies.items():
        cpu = cpu_of(chosen, node, cpus) if node in ROLES else None
        if cpu is not None:
            out.setdefault(cpu, []).append(pid)
    return out
