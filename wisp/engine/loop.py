"""The engine's loop: one epoll set per process, every ready socket served in one pass.

A pass polls once, calls `on_readable`/`on_writable` of each ready handler, runs callbacks and due
timers, and then flushes every connection that queued output during the pass: one TLS write per
connection per pass carries the frames of all its streams. Handlers are plain objects with
synchronous methods; nothing on this path is a coroutine, so a pass costs no task switches.

The loop can be driven two ways (docs/architecture.md, "The data-path engine"):
- `drive_from_trio(loop)`: a trio task waits until the epoll descriptor is readable, then runs
  a pass. trio keeps the control side (config, certificates, ZDS, admin) in the same thread.
- `run_with_trio_guest(loop, main)`: the loop owns the thread and blocks in `epoll.poll`; trio
  runs the control side as a guest (`trio.lowlevel.start_guest_run`), its callbacks arriving
  through the loop's wake-up pipe.

A handler that raises loses its own connection (`abort`), never the loop.
"""

from __future__ import annotations

import heapq
import itertools
import os
import select
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import structlog

log = structlog.get_logger("wisp.engine")

READ = select.EPOLLIN
WRITE = select.EPOLLOUT
_READ_EVENTS = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR | select.EPOLLRDHUP
_MAX_EVENTS = 512
# How long the loop sleeps at most when nothing is due: bounds the latency of timers added
# from outside a pass (they are also checked at every pass).
_MAX_SLEEP = 1.0
# Cancelled timers the heap may hold before it is compacted (and only if they are most of it).
_MIN_COMPACT = 100


class Handler(Protocol):
    def on_readable(self) -> None: ...
    def on_writable(self) -> None: ...
    def abort(self, reason: str) -> None: ...


class Flushable(Protocol):
    def flush(self) -> None: ...


class Timer:
    """A callback due at `when` (time.monotonic()); `cancel` makes it a no-op.

    A cancelled timer lets go of its callback at once: it stays in the loop's heap until its
    time comes (or a compaction), and a connect timeout's callback holds the whole connection
    (measured: ~11,000 finished connections, 150 MB, alive in a ztunnel under churn)."""

    __slots__ = ("when", "callback", "cancelled", "_loop")

    def __init__(self, when: float, callback: Callable[[], Any], loop: Loop | None = None) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False
        self._loop = loop

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        self.callback = None
        loop, self._loop = self._loop, None
        if loop is not None:
            loop._timer_cancelled()


class Loop:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
        self._interest: dict[int, int] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._cancelled = 0  # cancelled timers still in the heap
        self._sequence = itertools.count()
        self._soon: deque[Callable[[], Any]] = deque()
        self._dirty: list[Flushable] = []
        self._in_pass = False

    def fileno(self) -> int:
        return self._epoll.fileno()

    # -- registration ---------------------------------------------------------------------
    def register(self, fd: int, handler: Handler, events: int) -> None:
        self._handlers[fd] = handler
        self._interest[fd] = events
        self._epoll.register(fd, events)

    def want(self, fd: int, events: int) -> None:
        """Change what `fd` is watched for (0: nothing, while staying registered)."""
        if self._interest.get(fd) != events:
            self._interest[fd] = events
            self._epoll.modify(fd, events)

    def unregister(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            del self._interest[fd]
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass  # already closed: the kernel dropped it from the set

    # -- scheduling -----------------------------------------------------------------------
    def call_later(self, delay: float, callback: Callable[[], Any]) -> Timer:
        timer = Timer(time.monotonic() + delay, callback, self)
        heapq.heappush(self._timers, (timer.when, next(self._sequence), timer))
        return timer

    def _timer_cancelled(self) -> None:
        """Drop cancelled timers from the heap once they are most of it (as asyncio does), so
        its size follows the live timers, not the rate of cancellations times the timeout."""
        self._cancelled += 1
        if self._cancelled > _MIN_COMPACT and self._cancelled * 2 > len(self._timers):
            self._timers[:] = [entry for entry in self._timers if not entry[2].cancelled]  # in place:
            heapq.heapify(self._timers)  # _run_timers may be holding the list
            self._cancelled = 0

    def call_soon(self, callback: Callable[[], Any]) -> None:
        """Run `callback` in the loop's thread before the next pass ends (same thread only)."""
        self._soon.append(callback)

    def mark_dirty(self, conn: Flushable) -> None:
        """`conn` has output: flush it at the end of this pass (or now, outside a pass)."""
        if self._in_pass:
            self._dirty.append(conn)
        else:
            conn.flush()

    def timeout(self) -> float:
        """How long a driver may sleep before the next pass is due."""
        if self._soon or self._dirty:
            return 0.0
        if not self._timers:
            return _MAX_SLEEP
        return max(0.0, min(_MAX_SLEEP, self._timers[0][0] - time.monotonic()))

    # -- one pass -------------------------------------------------------------------------
    def run_once(self, timeout: float = 0.0) -> None:
        handlers = self._handlers
        read_events, write = _READ_EVENTS, WRITE
        self._in_pass = True
        try:
            for fd, events in self._epoll.poll(timeout, _MAX_EVENTS):
                handler = handlers.get(fd)
                if handler is None:
                    continue
                try:
                    if events & read_events:
                        handler.on_readable()
                    if events & write and handlers.get(fd) is handler:
                        handler.on_writable()
                except Exception as exc:  # a bug costs one connection, never the loop
                    log.exception("engine handler failed", handler=type(handler).__name__)
                    _abort_quietly(handler, f"internal error: {type(exc).__name__}")
            if self._soon:
                self._run_soon()
            if self._timers and self._timers[0][0] <= time.monotonic():
                self._run_timers()
        finally:
            self._in_pass = False
            if self._dirty:
                self._flush()

    def _run_soon(self) -> None:
        for _ in range(len(self._soon)):
            callback = self._soon.popleft()
            try:
                callback()
            except Exception:
                log.exception("engine callback failed", callback=getattr(callback, "__qualname__", "?"))

    def _run_timers(self) -> None:
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, timer = heapq.heappop(timers)
            if timer.cancelled:
                self._cancelled -= 1
                continue
            timer._loop = None
            try:
                timer.callback()
            except Exception:
                log.exception("engine timer failed", callback=getattr(timer.callback, "__qualname__", "?"))

    def _flush(self) -> None:
        dirty = self._dirty
        while dirty:
            self._dirty = []
            for conn in dirty:
                try:
                    conn.flush()
                except Exception as exc:
                    log.exception("engine flush failed", handler=type(conn).__name__)
                    _abort_quietly(conn, f"internal error: {type(exc).__name__}")
            dirty = self._dirty

    def close(self) -> None:
        for handler in list(self._handlers.values()):
            _abort_quietly(handler, "engine stopped")
        self._handlers.clear()
        self._epoll.close()


def _abort_quietly(handler: object, reason: str) -> None:
    abort = getattr(handler, "abort", None)
    if abort is None:
        return
    try:
        abort(reason)
    except Exception:
        log.exception("engine abort failed", handler=type(handler).__name__)


# -- drivers ------------------------------------------------------------------------------

async def drive_from_trio(loop: Loop) -> None:
    """Shape "trio-epoll": serve the loop from a trio task until cancelled."""
    import trio

    fd = loop.fileno()

    async def tick_timers() -> None:
        # Timers, and callbacks queued by trio tasks outside a pass, are served at least this
        # often; a wake-up costs ~30 µs, so 20 a second is noise.
        while True:
            await trio.sleep(min(loop.timeout(), 0.05))
            loop.run_once(0.0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick_timers)
        try:
            while True:
                await trio.lowlevel.wait_readable(fd)
                loop.run_once(0.0)
        finally:
            nursery.cancel_scope.cancel()


class _Waker:
    """A pipe that wakes the loop from any thread, running queued callbacks in the loop."""

    def __init__(self, loop: Loop) -> None:
        self._loop = loop
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._queue: deque[Callable[[], Any]] = deque()
        loop.register(self._read, self, READ)

    def call_threadsafe(self, callback: Callable[[], Any]) -> None:
        self._queue.append(callback)
        try:
            os.write(self._write, b"\0")
        except BlockingIOError:
            pass  # the pipe is full, so a wake-up is already pending

    def on_readable(self) -> None:
        try:
            os.read(self._read, 4096)
        except BlockingIOError:
            pass
        for _ in range(len(self._queue)):
            self._queue.popleft()()

    def on_writable(self) -> None:
        pass

    def abort(self, reason: str) -> None:
        pass

    def close(self) -> None:
        self._loop.unregister(self._read)
        os.close(self._read)
        os.close(self._write)


def run_with_trio_guest(loop: Loop, main: Callable[..., Any], *args: Any) -> Any:
    """Shape "epoll": run `main(*args)` as trio's guest while this thread serves the loop.

    Returns what `main` returns; re-raises what it raised.
    """
    import outcome
    import trio

    waker = _Waker(loop)
    done: list[outcome.Outcome] = []
    trio.lowlevel.start_guest_run(
        main, *args,
        run_sync_soon_threadsafe=waker.call_threadsafe,
        done_callback=done.append,
        host_uses_signal_set_wakeup_fd=False,
    )
    try:
        while not done:
            loop.run_once(loop.timeout())
    finally:
        waker.close()
    return done[0].unwrap()
