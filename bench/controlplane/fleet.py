"""The subscribers' process: ztunnels' config streams, as many as asked, on trio.

Each subscriber is a real `ConfigSubscriber` (its own TLS connection and HTTP/2 stream, decode,
apply, acks on the stream), as each node's ztunnel would be. Every applied version is stamped
with CLOCK_MONOTONIC, which the control plane's process shares.

One concession to running 100 ztunnels in one process: a full snapshot (7 MB of JSON for
10,000 workloads) is decoded once per distinct message and the resulting immutable model
shared, where real ztunnels would each decode their own; deltas are decoded by every
subscriber. Without it the initial sync alone would take minutes and gigabytes here.
"""

from __future__ import annotations

import gc
import hashlib
import resource
import time
from multiprocessing.connection import Connection

import trio

from wisp import log as wisp_log
from wisp.controlplane import client as client_module
from wisp.controlplane.client import ConfigSubscriber, Endpoint
from wisp.controlplane.protocol import Message, decode

from .gctime import GcClock


def main(conn: Connection, address: str, roots: bytes, tokens: dict[str, str], per_node: int) -> None:
    wisp_log.configure("warning", json=True)
    try:
        trio.run(_run, conn, address, roots, tokens, per_node)
    except* (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass  # the runner went away (or stopped us): nothing left to report to
    finally:
        conn.close()


def _hook_decode(received: dict[str, dict[str, int]], subscriber_of: dict[trio.lowlevel.Task, str]) -> None:
    """Stamp each message's arrival (before decoding) and share decoded snapshots."""
    decoded: dict[bytes, Message] = {}

    def hooked_decode(line: bytes | str) -> Message:
        arrived = time.monotonic_ns()
        if line.startswith('{"resources"' if isinstance(line, str) else b'{"resources"'):
            digest = hashlib.sha256(line.encode() if isinstance(line, str) else line).digest()
            message = decoded.get(digest)
            if message is None:
                message = decoded[digest] = decode(line)
        else:
            message = decode(line)  # deltas and pings: every subscriber decodes its own
        sid = subscriber_of.get(trio.lowlevel.current_task())
        if sid is not None and message.version is not None:
            received[sid][message.version] = arrived
        return message

    client_module.decode = hooked_decode


async def _run(conn: Connection, address: str, roots: bytes, tokens: dict[str, str], per_node: int) -> None:
    applied: dict[str, dict[str, int]] = {}
    received: dict[str, dict[str, int]] = {}
    subscriber_of: dict[trio.lowlevel.Task, str] = {}
    _hook_decode(received, subscriber_of)

    async def follow(subscriber: ConfigSubscriber) -> None:
        subscriber_of[trio.lowlevel.current_task()] = subscriber.id
        await subscriber.run()
    subscribers: list[ConfigSubscriber] = []
    for node, token in sorted(tokens.items()):
        endpoint = Endpoint(address, roots, token)
        for i in range(per_node):
            sid = f"ztunnel-{node}-{i}"
            stamps = applied[sid] = {}
            received[sid] = {}
            box: list[ConfigSubscriber] = []

            def on_update(_snapshot, stamps=stamps, box=box) -> None:
                stamps[box[0].view.version] = time.monotonic_ns()

            subscriber = ConfigSubscriber(endpoint, sid, on_update, read_timeout=60.0)
            box.append(subscriber)
            subscribers.append(subscriber)
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        # One node's ztunnels at a time: 100 simultaneous 7 MB snapshots would sit in the
        # server's buffers together and outlast its 30 s ack deadline (see docs/performance.md).
        for first in range(0, len(subscribers), per_node):
            wave = subscribers[first:first + per_node]
            for subscriber in wave:
                nursery.start_soon(follow, subscriber)
            with trio.fail_after(120):
                for subscriber in wave:
                    await subscriber.synced.wait()
        # 100 subscribers' models in one process are 100 ztunnels' worth of long-lived objects;
        # the collector rescanning them cost ~80 ms per change here, which no real ztunnel
        # pays. Their garbage is acyclic (reference counting frees it), so switch it off.
        gc.collect()
        gc.freeze()
        gc.disable()
        conn.send({"synced_s": time.monotonic() - started, "cpu_s": _cpu()})
        cpu_before = _cpu()
        with GcClock() as gc_clock:
            command = await trio.to_thread.run_sync(conn.recv, abandon_on_cancel=True)
        assert command["cmd"] == "stop"
        cpu_s = _cpu() - cpu_before
        nursery.cancel_scope.cancel()
    conn.send({"applied": applied, "received": received, "cpu_s": cpu_s, "gc": gc_clock.report(),
               "reconnects": sum(s.reconnects for s in subscribers)})


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
