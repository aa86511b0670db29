"""Long-lived TCP connections and a stream of new ones, checked byte for byte: run inside a pod.

`python -m tests.support.long_lived HOST PORT --bulk N --idle M` (in the client pod's network
namespace, against a TCP echo server) opens N bulk connections, each streaming a deterministic
byte sequence at a paced rate, and M idle ones, each sending a short numbered ping every
`--ping-interval` seconds; every byte echoed back is compared with what was sent. Meanwhile a loop
opens, uses and closes one new connection after another. It prints `ready` once all N+M are
established; on `stop` (stdin) it stops the loop, half-closes every long-lived connection once its
echoes are in, waits for the server's end, and prints one JSON line of results: per-connection
bytes and errors (a reset is named as such), and the new connections made and failed. Used by
tests/e2e/test_ztunnel_rollout.py to show that a ztunnel restart drops nothing.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import socket
import sys
import time

import trio

CHUNK = 16 * 1024


def pattern(index: int, offset: int, size: int) -> bytes:
    """Bytes `offset`..`offset+size` of connection `index`'s stream: a repeating digest, so a
    shifted, lost or duplicated byte shows."""
    block = hashlib.sha256(f"conn-{index}".encode()).digest() * 2048  # 64 KiB
    start = offset % len(block)
    out = bytearray()
    while len(out) < size:
        take = min(size - len(out), len(block) - start)
        out += block[start:start + take]
        start = 0
    return bytes(out)


def describe(exc: BaseException) -> str:
    """'reset' for a TCP reset, else the error's text."""
    cause = exc.__cause__ or exc.__context__
    for candidate in (exc, cause):
        if isinstance(candidate, ConnectionResetError) or getattr(candidate, "errno", None) == errno.ECONNRESET:
            return "reset"
    return f"{type(exc).__name__}: {exc}"


class Long:
    def __init__(self, index: int, kind: str) -> None:
        self.index = index
        self.kind = kind
        self.sent = 0
        self.received = 0
        self.error = ""
        self.stream: trio.SocketStream | None = None

    def result(self) -> dict:
        return {"index": self.index, "kind": self.kind, "sent": self.sent, "received": self.received,
                "error": self.error}


async def open_stream(host: str, port: int) -> trio.SocketStream:
    stream = await trio.open_tcp_stream(host, port)
    stream.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return stream


async def receive_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            raise EOFError(f"connection closed by the other side after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


async def run_long(conn: Long, args, stop: trio.Event) -> None:
    stream = conn.stream
    assert stream is not None
    try:
        if conn.kind == "bulk":
            await _bulk(conn, stream, args, stop)
        else:
            await _idle(conn, stream, args, stop)
        await stream.send_eof()
        if await stream.receive_some(1):
            raise RuntimeError("bytes after the last echo")
    except Exception as exc:  # recorded: the test reports every connection's fate
        while isinstance(exc, BaseExceptionGroup):
            exc = exc.exceptions[0]
        conn.error = describe(exc)
    finally:
        await stream.aclose()


async def _bulk(conn: Long, stream: trio.SocketStream, args, stop: trio.Event) -> None:
    interval = CHUNK / args.bulk_rate
    async with trio.open_nursery() as nursery:
        async def reader() -> None:
            while True:
                want = conn.sent - conn.received
                if want == 0:
                    if stop.is_set():
                        return
                    await trio.sleep(0.01)
                    continue
                with trio.fail_after(args.echo_timeout):
                    data = await stream.receive_some(min(want, 65536))
                if not data:
                    raise EOFError(f"closed by the other side after {conn.received} bytes")
                if data != pattern(conn.index, conn.received, len(data)):
                    raise RuntimeError(f"byte mismatch at offset {conn.received}")
                conn.received += len(data)

        nursery.start_soon(reader)
        while not stop.is_set():
            await stream.send_all(pattern(conn.index, conn.sent, CHUNK))
            conn.sent += CHUNK
            await trio.sleep(interval)


async def _idle(conn: Long, stream: trio.SocketStream, args, stop: trio.Event) -> None:
    number = 0
    while not stop.is_set():
        ping = b"ping %08d %06d\n" % (conn.index, number)
        await stream.send_all(ping)
        conn.sent += len(ping)
        with trio.fail_after(args.echo_timeout):
            echoed = await receive_exactly(stream, len(ping))
        if echoed != ping:
            raise RuntimeError(f"ping {number} came back as {echoed!r}")
        conn.received += len(echoed)
        number += 1
        with trio.move_on_after(args.ping_interval):
            await stop.wait()


async def new_connections(args, stop: trio.Event, results: dict) -> None:
    """One new connection after another until `stop`: connect, one message, its echo, close."""
    number = 0
    while not stop.is_set():
        number += 1
        message = b"new %08d\n" % number
        started = time.monotonic()
        try:
            with trio.fail_after(args.echo_timeout):
                stream = await open_stream(args.host, args.port)
                async with stream:
                    await stream.send_all(message)
                    if await receive_exactly(stream, len(message)) != message:
                        raise RuntimeError("echo differs")
            results["ok"] += 1
            results["slowest"] = max(results["slowest"], time.monotonic() - started)
        except (OSError, EOFError, RuntimeError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            results["failed"] += 1
            if len(results["errors"]) < 20:
                results["errors"].append({"at": time.time(), "error": describe(exc)})
        await trio.sleep(args.new_interval)


async def main(args) -> None:
    conns = [Long(i, "bulk" if i < args.bulk else "idle") for i in range(args.bulk + args.idle)]
    for conn in conns:
        conn.stream = await open_stream(args.host, args.port)
    stop_long, stop_new = trio.Event(), trio.Event()
    new: dict = {"ok": 0, "failed": 0, "errors": [], "slowest": 0.0}
    async with trio.open_nursery() as nursery:
        for conn in conns:
            nursery.start_soon(run_long, conn, args, stop_long)
        nursery.start_soon(new_connections, args, stop_new, new)
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)  # "stop", or EOF
        stop_new.set()
        stop_long.set()
    print(json.dumps({"connections": [c.result() for c in conns], "new": new}), flush=True)


def parse(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--bulk", type=int, default=10)
    parser.add_argument("--idle", type=int, default=90)
    parser.add_argument("--bulk-rate", type=float, default=256 * 1024, help="bytes/s per bulk connection")
    parser.add_argument("--ping-interval", type=float, default=0.5)
    parser.add_argument("--new-interval", type=float, default=0.02)
    parser.add_argument("--echo-timeout", type=float, default=10.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse())
