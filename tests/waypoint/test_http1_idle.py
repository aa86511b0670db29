"""Idle upstream HTTP/1.1 connections are closed by the pool's sweep after `idle_timeout`, not by a
timer per request; one reused in time stays open."""

from __future__ import annotations

import time

from waypoint.http1.upstream import Http1Pool

from .test_http1_proxy import OK, Rig


def _run(rig: Rig, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rig.loop.run_once(min(0.01, rig.loop.timeout()))


def test_an_idle_connection_is_closed_after_the_timeout_and_a_used_one_is_not():
    rig = Rig()
    try:
        rig.pool = rig.down.inputs.pool = Http1Pool(rig.loop, rig.pipeline, idle_timeout=0.4)
        rig.client.deliver(b"GET / HTTP/1.1\r\nhost: echo\r\n\r\n")
        first = rig.upstreams[0]
        first.deliver(OK)
        assert rig.client.take().endswith(b"ok") and rig.pool.idle_count() == 1
        # Used again before the timeout: still open, and its idle time starts over.
        _run(rig, 0.25)
        rig.client.deliver(b"GET / HTTP/1.1\r\nhost: echo\r\n\r\n")
        first.deliver(OK)
        assert rig.client.take().endswith(b"ok")
        assert len(rig.upstreams) == 1 and first.aborted is None
        _run(rig, 0.25)
        assert first.aborted is None and rig.pool.idle_count() == 1
        _run(rig, 0.4)
        assert first.aborted == "idle" and rig.pool.idle_count() == 0
        # The sweep stops with nothing idle, and starts again with the next idle connection.
        assert rig.pool._sweeper is None
        rig.client.deliver(b"GET / HTTP/1.1\r\nhost: echo\r\n\r\n")
        assert len(rig.upstreams) == 2
        rig.upstreams[1].deliver(OK)
        assert rig.pool._sweeper is not None
        rig.pool.close()
        assert rig.pool._sweeper is None and rig.upstreams[1].aborted == "waypoint stopping"
    finally:
        rig.close()
