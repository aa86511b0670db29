"""The benchmark's own protocol, spoken inside every contender's stream (TCP, TLS or HBONE).

The client opens with a 9-byte header, a mode letter and a 64-bit byte count:
  S (sink)  the client sends N bytes; the server answers one ACK byte once it has them all.
  B (both)  as S, while the server sends N bytes at the same time; its ACK follows its data.
  E (echo)  the server returns whatever it receives until the client goes away.
Both sides work on any trio stream, so each contender runs exactly the same benchmark code.
"""

from __future__ import annotations

import os
import struct
import time
from array import array
from contextlib import suppress

import trio

HEADER = struct.Struct("!cQ")
SINK, BOTH, ECHO = b"S", b"B", b"E"
ACK = b"\x06"
WRITE_SIZE = 256 * 1024
ECHO_SIZE = 1024

_BLOCK = os.urandom(WRITE_SIZE)


class ProtocolError(Exception):
    """The other side broke the benchmark protocol (short stream, unknown mode)."""


# -- server side ---------------------------------------------------------------------------------
async def serve(stream: trio.abc.Stream) -> None:
    """Answer one client on `stream`, then wait until it goes away."""
    mode, size = HEADER.unpack(await receive_exactly(stream, HEADER.size))
    if mode == SINK:
        await _drain(stream, size)
        await stream.send_all(ACK)
    elif mode == BOTH:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, stream, size)
            await _source(stream, size)
        await stream.send_all(ACK)
    elif mode == ECHO:
        while data := await stream.receive_some(64 * 1024):
            await stream.send_all(data)
        return
    else:
        raise ProtocolError(f"unknown mode {mode!r}")
    # The client closes when it has read the ACK; closing first could cut the ACK off (TLS, h2).
    with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while await stream.receive_some():
            pass


# -- client side ---------------------------------------------------------------------------------
async def send_bulk(stream: trio.abc.Stream, size: int) -> float:
    """Send `size` bytes; seconds from the first byte to the server's ACK."""
    await stream.send_all(HEADER.pack(SINK, size))
    start = time.perf_counter()
    await _source(stream, size)
    await receive_exactly(stream, 1)
    return time.perf_counter() - start


async def exchange_bulk(stream: trio.abc.Stream, size: int) -> float:
    """Send and receive `size` bytes concurrently; seconds until both directions are done."""
    await stream.send_all(HEADER.pack(BOTH, size))
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_source, stream, size)
        await _drain(stream, size + len(ACK))
    return time.perf_counter() - start


async def echo(stream: trio.abc.Stream, duration: float, warmup: float) -> tuple[float, array]:
    """Ping-pong 1 KiB for `duration` s after `warmup` s; (seconds, round trips in ns)."""
    await stream.send_all(HEADER.pack(ECHO, 0))
    message = _BLOCK[:ECHO_SIZE]
    clock = time.perf_counter_ns
    until = clock() + int(warmup * 1e9)
    while clock() < until:
        await stream.send_all(message)
        await receive_exactly(stream, ECHO_SIZE)
    samples = array("q")
    start = clock()
    until = start + int(duration * 1e9)
    now = start
    while now < until:
        sent = clock()
        await stream.send_all(message)
        await receive_exactly(stream, ECHO_SIZE)
        now = clock()
        samples.append(now - sent)
    return (now - start) / 1e9, samples


# -- both ----------------------------------------------------------------------------------------
async def receive_exactly(stream: trio.abc.Stream, size: int) -> bytes:
    first = await stream.receive_some(size)
    if len(first) == size:
        return first
    buf = bytearray(first)
    while len(buf) < size:
        if not first:
            raise ProtocolError(f"stream ended after {len(buf)} of {size} bytes")
        first = await stream.receive_some(size - len(buf))
        buf += first
    return bytes(buf)


async def _source(stream: trio.abc.Stream, size: int) -> None:
    full, rest = divmod(size, WRITE_SIZE)
    for _ in range(full):
        await stream.send_all(_BLOCK)
    if rest:
        await stream.send_all(_BLOCK[:rest])


async def _drain(stream: trio.abc.Stream, size: int) -> None:
    got = 0
    while got < size:
        chunk = await stream.receive_some()
        if not chunk:
            raise ProtocolError(f"stream ended after {got} of {size} bytes")
        got += len(chunk)
