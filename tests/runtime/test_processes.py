"""Supervised processes: the crash-loop back-off and a probe's restart with its own timeout."""

from __future__ import annotations

import secrets
import subprocess
import time

import pytest
import trio

from runtime.processes import Supervised, restart_delay_after


def test_the_back_off_keeps_its_delay_after_a_short_run() -> None:
    assert restart_delay_after(40.0, base=1.0, maximum=60.0, ran=3.0) == 40.0


def test_the_back_off_starts_over_after_a_run_longer_than_twice_its_maximum() -> None:
    assert restart_delay_after(60.0, base=1.0, maximum=60.0, ran=121.0) == 1.0


def test_a_fixed_delay_process_never_resets() -> None:
    assert restart_delay_after(1.0, base=1.0, maximum=None, ran=1e6) == 1.0


@pytest.fixture
def netns():
    name = f"wisp-p{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


async def test_a_restart_with_a_timeout_kills_at_that_timeout_and_keeps_stop_timeout(netns, tmp_path) -> None:
    # A container that ignores SIGTERM: a probe's restart kills it after its own timeout, and the
    # stop timeout (a deletion's grace period) is left as it was for whoever stops it next.
    supervised = Supervised("t/p/c", netns, ["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"],
                            tmp_path / "c.log", stop_timeout=30.0, restart_policy="Never")
    async with trio.open_nursery() as nursery:
        await nursery.start(supervised.run)
        await trio.sleep(0.3)  # the trap is set
        began = time.monotonic()
        with trio.fail_after(5):
            await supervised.restart(0.2)
        assert time.monotonic() - began < 3
        assert supervised.stop_timeout == 30.0
        with trio.fail_after(5):
            while supervised.terminated is None:
                await trio.sleep(0.05)
        assert supervised.terminated.signal == 9
