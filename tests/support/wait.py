"""Waiting for a condition instead of sleeping for a guessed time.

A test that sleeps a fixed time either waits too long on a fast machine or too little on a
loaded one (the CI machine has 2 cores shared with benchmarks). These poll a predicate until it
holds and fail with what was awaited once the deadline passes:

    await wait_until(lambda: server.acks, what="the agent's first ack")      # trio
    wait_for(lambda: pidfile.exists(), timeout=10, what="the pid file")        # blocking

A fixed sleep stays where time passing is the behaviour under test (a client pacing its pings,
an ack deadline that must not fire, the autojump clock advancing a certificate's half-life).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

T = TypeVar("T")

# Short enough that a test does not wait much past the moment its condition holds; long enough
# that a poll of /proc or a metric is not a busy loop.
INTERVAL = 0.02


async def wait_until(predicate: Callable[[], T], timeout: float = 5.0, *, what: str = "the condition",
                     interval: float = INTERVAL) -> T:
    """The predicate's first truthy value, polled every `interval` s; AssertionError after `timeout` s."""
    with trio.move_on_after(timeout):
        while True:
            value = predicate()
            if value:
                return value
            await trio.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout:g} s")


async def wait_until_async(predicate: Callable[[], Awaitable[T]], timeout: float = 5.0, *,
                           what: str = "the condition", interval: float = INTERVAL) -> T:
    """As `wait_until`, for a predicate that must await (an HTTP probe, a status request)."""
    with trio.move_on_after(timeout):
        while True:
            value = await predicate()
            if value:
                return value
            await trio.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout:g} s")


def wait_for(predicate: Callable[[], T], timeout: float = 5.0, *, what: str = "the condition",
             interval: float = INTERVAL) -> T:
    """Blocking `wait_until`, for tests and threads outside trio."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g} s")
        time.sleep(interval)
