"""CPU time and memory of a proxy's whole process tree, read from /proc.

A proxy may fork workers (ztunnel's `--workers N`, HAProxy's master/worker), so every figure is
the sum over the root process and all its descendants. CPU comes from /proc/<pid>/stat (utime +
stime of every thread, in clock ticks), memory from /proc/<pid>/status (VmRSS now, VmHWM the
peak since the process started), both in KiB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(slots=True, frozen=True)
class Usage:
    """One reading of a process tree: CPU seconds so far, resident KiB now and at peak."""

    cpu_s: float
    rss_kib: int
    hwm_kib: int
    processes: int


def parse_stat(text: str) -> tuple[int, float]:
    """(parent pid, utime + stime in ticks) from the text of /proc/<pid>/stat.

    The command name (field 2) is in parentheses and may itself hold spaces or ')', so fields
    are counted from the last ')'.
    """
    fields = text.rsplit(")", 1)[1].split()
    # After the name: state(3) ppid(4) … utime(14) stime(15); fields[0] is field 3.
    return int(fields[1]), float(int(fields[11]) + int(fields[12]))


def parse_status(text: str) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB from the text of /proc/<pid>/status; kernel threads have neither."""
    values = {"VmRSS": 0, "VmHWM": 0}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in values:
            values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def descendants(root: int, parents: dict[int, int]) -> list[int]:
    """`root` and every process below it, given {pid: parent pid} of all processes."""
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return sorted(tree)


def processes(proc: Path = Path("/proc")) -> tuple[dict[int, int], dict[int, float]]:
    """Every process's parent pid and CPU ticks; processes that exit meanwhile are left out."""
    parents, ticks = {}, {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parents[int(entry.name)], ticks[int(entry.name)] = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
    return parents, ticks


def all_parents() -> dict[int, int]:
    return processes()[0]


def tree_usage(root: int, proc: Path = Path("/proc")) -> Usage:
    """Summed usage of `root`'s process tree; processes that exit meanwhile are skipped."""
    parents, ticks = processes(proc)
    if root not in parents:
        raise ProcessLookupError(f"process {root} is not running")
    cpu = rss = hwm = count = 0
    for pid in descendants(root, parents):
        try:
            pid_rss, pid_hwm = parse_status((proc / str(pid) / "status").read_text())
        except OSError:
            continue
        cpu += ticks[pid]
        rss += pid_rss
        hwm += pid_hwm
        count += 1
    return Usage(cpu / TICKS, rss, hwm, count)


def machine_busy(stat: Path = Path("/proc/stat")) -> float:
    """CPU seconds the whole machine has been busy since boot (all CPUs, steal excluded)."""
    with open(stat, "rb") as f:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / TICKS

