"""py-spy on a ztunnel during a fixed-rate run: where its CPU goes, as `py-spy top` would list it.

`py-spy record --native --function --format raw` writes one line per distinct stack, frames
root first separated by ';', then the number of samples (`a (f.py:1);b (g.py:9) 12`). py-spy
means to leave out threads it finds asleep, but it stops its target to sample it, and a thread
stopped inside epoll_wait then reads as running: in a ztunnel at 1,000 req/s those samples were
38% of all, more than the process's whole CPU share allowed. So stacks whose innermost frame is a
wait (epoll_wait, poll, select, a futex wait) are counted apart as idle and left out of the
shares, which are then of the samples where the process was working (Python or native). An
entry's *own* samples are those where it is the innermost frame, its *total* samples those where
it is anywhere on the stack (once per stack, however deep it recurses). Native frames with no
symbol (`0x7f… (libcrypto.so.3)`) are counted per library, `[libcrypto.so.3]`.

The profiled run is extra, after the measured rounds: py-spy pauses its target at every sample,
which would add its own latency and CPU to the figures.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import procstat
from .procstat import descendants

RATE = 200
TOP = 15
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]+ \((.+)\)$")
# Innermost frames of a thread that is waiting, not working (libc's names for the calls).
WAITS = frozenset({"epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "__poll", "ppoll", "select", "__select",
                   "pselect", "pselect6", "futex_wait", "__futex_abstimed_wait_common",
                   "__futex_abstimed_wait_common64", "pthread_cond_wait", "pthread_cond_timedwait",
                   "sem_timedwait", "sem_clockwait", "do_futex_wait", "PyThread_acquire_lock_timed"})
_LINE = re.compile(r"^(.*) (\d+)$")


class ProfileError(RuntimeError):
    """py-spy failed or wrote something we cannot read; the message has its output."""


@dataclass(slots=True, frozen=True)
class Entry:
    frame: str
    own: int
    total: int


def frame_name(frame: str) -> str:
    """A frame as it is counted: unnamed native code collapses to its library."""
    found = _ADDRESS.match(frame)
    return f"[{found.group(1)}]" if found else frame


def parse_raw(text: str) -> Counter[tuple[str, ...]]:
    """{stack (root first): samples} from py-spy's raw (collapsed-stack) output."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        found = _LINE.match(line.rstrip())
        if not found:
            raise ProfileError(f"line {number} of py-spy's output is not 'stack count': {line[:200]!r}")
        stack = tuple(frame_name(f) for f in found.group(1).split(";") if f)
        stacks[stack] += int(found.group(2))
    return stacks


# Python frames that only wait, when nothing but unnamed native code runs below them: trio's
# idle worker threads (a lock acquire) and its guest-mode I/O thread (epoll_wait). Unsymbolised,
# those libc waits read as `[libc.so.6]`, and were 41% of a ztunnel's "working" samples.
WAITING_PYTHON = ("WorkerThread._work (trio/_core/_thread_cache.py:", "EpollIOManager.get_events (trio/_core/_io_epoll.py:")


def is_wait(stack: tuple[str, ...]) -> bool:
    """Whether a stack's innermost named frame is a wait (`epoll_wait (libc.so.6)`, possibly
    with unnamed libc code below it) or a Python frame that only waits (WAITING_PYTHON)."""
    for frame in reversed(stack):
        if frame.startswith("["):
            continue  # unnamed native code: what runs it decides
        return frame.split(" (", 1)[0] in WAITS or frame.startswith(WAITING_PYTHON)
    return False


def split_idle(stacks: Counter[tuple[str, ...]]) -> tuple[Counter[tuple[str, ...]], int]:
    """(the working stacks, how many samples were waits)."""
    busy = Counter({stack: n for stack, n in stacks.items() if not is_wait(stack)})
    return busy, sum(stacks.values()) - sum(busy.values())


def entries(stacks: Counter[tuple[str, ...]]) -> list[Entry]:
    """Own and total samples of every frame seen."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for stack, count in stacks.items():
        if not stack:
            continue
        own[stack[-1]] += count
        for frame in set(stack):
            total[frame] += count
    return [Entry(frame, own[frame], total[frame]) for frame in total]


def top(stacks: Counter[tuple[str, ...]], by: str, n: int = TOP) -> list[Entry]:
    """The n entries with the most `own` or `total` samples (ties by name, so output is stable)."""
    if by not in ("own", "total"):
        raise ValueError(f"top entries are by 'own' or 'total', not {by!r}")
    return sorted(entries(stacks), key=lambda e: (-getattr(e, by), e.frame))[:n]


def summary(stacks: Counter[tuple[str, ...]], rate: int = RATE, n: int = TOP) -> dict:
    """What the results keep: working and waiting sample counts, and the top entries of the
    working samples by own and by total samples."""
    busy, idle = split_idle(stacks)
    samples = sum(busy.values())

    def rows(by: str) -> list[dict]:
        return [{"frame": e.frame, "own": e.own, "total": e.total} for e in top(busy, by, n)]

    return {"samples": samples, "idle_samples": idle, "rate": rate, "seconds": samples / rate,
            "own": rows("own"), "total": rows("total")}


def busiest(root: int) -> int:
    """The process in `root`'s tree that has used the most CPU (a ztunnel's data-path process:
    the main one with one worker, else the busiest worker)."""
    parents, ticks = procstat.processes()
    tree = descendants(root, parents) if root in parents else [root]
    return max(tree, key=lambda pid: ticks.get(pid, 0.0))


def record_argv(py_spy: str, pid: int, seconds: float, output: Path, rate: int = RATE) -> list[str]:
    return [py_spy, "record", "--native", "--function", "--format", "raw", "--rate", str(rate),
            "--duration", str(max(1, int(seconds))), "--pid", str(pid), "--output", str(output)]


class Recording:
    """`with Recording(...)`: py-spy records `pid` while the block runs (for `seconds`)."""

    def __init__(self, py_spy: str, pid: int, seconds: float, output: Path) -> None:
        self.argv = record_argv(py_spy, pid, seconds, output)
        self.output = output
        self.seconds = seconds
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> Recording:
        self._process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True)
        return self

    def __exit__(self, *exc) -> None:
        process = self._process
        try:
            out, _ = process.communicate(timeout=self.seconds + 60)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
        self.log = out
        self.returncode = process.returncode

    def stacks(self) -> Counter[tuple[str, ...]]:
        if self.returncode != 0 or not self.output.exists():
            raise ProfileError(f"py-spy exited with {self.returncode}: {self.log.strip()[-800:]}")
        return parse_raw(self.output.read_text())
