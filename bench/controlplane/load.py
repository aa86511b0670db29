"""What the rest of the machine used while a benchmark ran ("others"), from /proc/stat and rusage.

This machine's 2 cores are shared; a figure measured while other programs were busy is slower for
that reason alone, so each run records how busy they were: the machine's busy CPU seconds over
the run minus this process's and its waited-for children's (the spawned control plane, the
subscribers, the test bed), divided by the wall time — in cores, 1.0 being one core kept busy.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

from bench.mesh.procstat import machine_busy


def _own_cpu() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


@dataclass(slots=True)
class OtherLoad:
    """``start()`` before, ``report()`` after (once the children are joined)."""

    wall: float = 0.0
    busy: float = 0.0
    own: float = 0.0

    def start(self) -> OtherLoad:
        self.wall, self.busy, self.own = time.monotonic(), machine_busy(), _own_cpu()
        return self

    def report(self) -> dict[str, float]:
        wall = time.monotonic() - self.wall
        own = _own_cpu() - self.own
        others = max(0.0, machine_busy() - self.busy - own)
        return {"wall_s": wall, "own_cpu_s": own, "others_cpu_s": others, "others_cores": others / wall}
