"""The engine of one process: its loop, the shape that drives it, and the hand-off to trio.

Data-path handlers run in the loop and never await. What must wait on the control side (a
certificate not fetched yet, config that is on its way) is handed to trio with `spawn`, whose
task calls back into the loop's objects when it is done — safely, because in both shapes trio
and the loop share one thread and never run at the same time.

Shapes (ztunnel: `--engine` or `WISP_ZTUNNEL_ENGINE`; the demo and bench.hbone: `WISP_ENGINE`):
- `epoll` (default): the loop owns the thread; trio is its guest.
- `trio-epoll`: trio owns the thread; one trio task serves the loop when its epoll fd is ready.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .loop import Loop, drive_from_trio, run_with_trio_guest

SHAPES = ("epoll", "trio-epoll")
DEFAULT_SHAPE = "epoll"


def shape_from_environment(default: str = DEFAULT_SHAPE) -> str:
    shape = os.environ.get("WISP_ENGINE", "").strip() or default
    if shape not in SHAPES:
        raise ValueError(f"WISP_ENGINE={shape!r} is not an engine shape; choose one of {', '.join(SHAPES)}")
    return shape


class Engine:
    def __init__(self, shape: str = DEFAULT_SHAPE) -> None:
        if shape not in SHAPES:
            raise ValueError(f"unknown engine shape {shape!r}; choose one of {', '.join(SHAPES)}")
        self.shape = shape
        self.loop = Loop()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._hosted = False  # True while the loop owns the thread (trio its guest)

    def run(self, main: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run the process: trio's `main(*args)` for the control side, the loop for the data path."""
        settle_garbage_collector()
        if self.shape == "epoll":
            self._hosted = True
            try:
                return run_with_trio_guest(self.loop, main, *args)
            finally:
                self._hosted = False
        return trio.run(main, *args)

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The trio side of the engine: a nursery for hand-offs, and the loop's driver when
        nothing else drives it (shape trio-epoll, or a process started with plain trio.run)."""
        self._token = trio.lowlevel.current_trio_token()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if not self._hosted:
                    nursery.start_soon(drive_from_trio, self.loop)
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run `fn(*args)` as a trio task (from the loop or from trio)."""
        nursery, token = self._nursery, self._token
        if nursery is None or token is None:
            raise RuntimeError("the engine's trio side is not running")
        token.run_sync_soon(nursery.start_soon, fn, *args)

    def notify(self, fn: Callable[[], Any]) -> None:
        """Run the synchronous `fn()` in trio's context soon (e.g. to set a trio.Event)."""
        if self._token is not None:
            self._token.run_sync_soon(fn)


# Young-generation threshold: container allocations (net of frees) between young collections.
GC_YOUNG_THRESHOLD = 10_000


def settle_garbage_collector() -> None:
    """Collect once, freeze what the process holds at start (modules, classes, functions), and
    collect the young generation less often.

    Measured on a ztunnel under connection churn (bench.mesh connect, 2026-12-04, collector
    time from gc.callbacks): 5.5% of its CPU went to the collector, most of it one full
    collection walking everything importing left behind; with that frozen, young collections
    still took 2.8%: each connection allocates dozens of containers that live as long as it
    does, so with 16 in flight the default threshold (700) is crossed every few connections
    and each pass walks the same survivors. Reference counting frees a finished connection
    (the engine leaves no cycles behind: Splice drops its callback), so collecting rarely costs
    only the cycles nothing else frees. Frozen objects are still freed by reference counting.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


async def return_freed_memory(interval: float = 30.0) -> None:
    """Every `interval`, give the heap's free pages back to the system (glibc's malloc_trim).

    Bulk transfers fill HTTP/2 windows and socket buffers with large blocks; once freed, glibc
    keeps them: a ztunnel measured 123 MB RSS after the benchmark's bulk phase against 54 MB
    before it. malloc_trim(0) releases free pages anywhere in the heap (madvise), not only at
    its top. It walks the heap for a few milliseconds, so it runs on a worker thread.
    """
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return  # not glibc
    while True:
        await trio.sleep(interval)
        await trio.to_thread.run_sync(trim, 0)
