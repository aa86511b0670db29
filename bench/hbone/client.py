"""The client process: opens one connection (or HBONE stream) per measurement and measures it.

Commands come from the parent over a pipe, one at a time; connection set-up (TCP connect, TLS
handshake, HBONE dial and CONNECT) happens before the clock starts. Every contender's bytes come
from the same trio code over a TCP, TLS or TCP stream; for HBONE that TCP connection goes to an
outbound listener of the data-path engine in this process, which opens a CONNECT stream through
its pool and splices the two, as ztunnel's outbound does for a pod's connection.
"""

from __future__ import annotations

import ssl
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection

import trio

from wisp import sockets
from wisp.engine.accept import Acceptor
from wisp.engine.hbone import StreamEnd
from wisp.engine.pool import Pool
from wisp.engine.runtime import Engine
from wisp.engine.splice import Splice, TcpEnd
from wisp.hbone import PoolKey, connect_headers, make_context
from wisp.hbone.tls import TlsStream
from wisp.identity import CertBundle

from . import child, protocol
from .identities import CLIENT_ID, SERVER_ID, Pem
from .tcp import TcpStream

LOOPBACK = "127.0.0.1"
CONTENDERS = ("tcp", "tls", "hbone")
MEASURES = ("bulk", "bidir", "echo")
# The tunnelled destination named in CONNECT; the benchmark server answers any.
_AUTHORITY = "10.0.0.1:8080"


@dataclass(slots=True, frozen=True)
class Command:
    contender: str
    measure: str
    size: int = 0
    duration: float = 0.0
    warmup: float = 0.0


def main(pipe: Connection, pem: Pem, ports: dict[str, int], parent_pid: int, shape: str) -> None:
    """Process entry point: answer each Command on `pipe` with a result dict until EOF/None."""
    child.prepare(parent_pid)
    client = _Client(pem.bundle(), ports, shape)
    while True:
        try:
            command = pipe.recv()
        except EOFError:
            return
        if command is None:
            return
        try:
            result = client.run(command)
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        pipe.send(result)


class _Client:
    def __init__(self, bundle: CertBundle, ports: dict[str, int], shape: str) -> None:
        self.bundle = bundle
        self.ports = ports
        self.shape = shape
        self.tls_context = make_context(bundle, server_side=False)

    def run(self, command: Command) -> dict:
        """One measurement in a fresh engine (its loop idle unless the contender is HBONE)."""
        engine = Engine(self.shape)
        try:
            return engine.run(self.measure, engine, command)
        finally:
            engine.loop.close()

    async def measure(self, engine: Engine, command: Command) -> dict:
        async with self.open(engine, command.contender) as (stream, details):
            if command.measure == "bulk":
                seconds = await protocol.send_bulk(stream, command.size)
                return {**details, "seconds": seconds, "bytes": command.size}
            if command.measure == "bidir":
                seconds = await protocol.exchange_bulk(stream, command.size)
                return {**details, "seconds": seconds, "bytes": 2 * command.size}
            if command.measure == "echo":
                seconds, samples = await protocol.echo(stream, command.duration, command.warmup)
                ordered = sorted(samples)
                return {
                    **details, "seconds": seconds, "requests": len(ordered),
                    "p50_us": _percentile(ordered, 0.50) / 1e3,
                    "p90_us": _percentile(ordered, 0.90) / 1e3,
                    "p99_us": _percentile(ordered, 0.99) / 1e3,
                }
            raise ValueError(f"unknown measure {command.measure!r}")

    @asynccontextmanager
    async def open(self, engine: Engine, contender: str) -> AsyncIterator[tuple[trio.abc.Stream, dict]]:
        address = (LOOPBACK, self.ports[contender])
        if contender == "hbone":
            async with trio.open_nursery() as nursery:
                await nursery.start(engine.serve)
                try:
                    async with self._outbound(engine, address) as opened:
                        yield opened
                finally:
                    nursery.cancel_scope.cancel()
            return
        sock = sockets.new_tcp_socket(LOOPBACK)
        try:
            await sockets.connect(sock, address)
        except BaseException:
            sock.close()
            raise
        if contender == "tcp":
            stream = TcpStream(sock)
            details = {}
        elif contender == "tls":
            stream = await TlsStream.handshake(sock, self.tls_context, server_side=False)
            details = _tls_details(stream.socket)
        else:
            sock.close()
            raise ValueError(f"unknown contender {contender!r}")
        try:
            yield stream, details
        finally:
            stream.close()

    @asynccontextmanager
    async def _outbound(self, engine: Engine, address: tuple[str, int]) -> AsyncIterator[tuple[TcpStream, dict]]:
        """A TCP connection through the engine's outbound path, once its CONNECT was answered."""
        loop = engine.loop
        key = PoolKey(CLIENT_ID, frozenset([SERVER_ID]), address)
        pool = Pool(loop, lambda identity: self.tls_context,
                    lambda dst, source: sockets.new_tcp_socket(dst[0], source=source))
        ready = trio.Event()
        outcome: list[str | None] = []

        def accepted(conn, peer, release) -> None:
            sockets.tune(conn)

            def on_stream(stream: StreamEnd | None, error: str | None) -> None:
                outcome.append(error)
                if stream is None:
                    sockets.reset(conn)
                    release()
                else:
                    Splice(TcpEnd(loop, conn, upstream=True), stream, on_done=lambda _: release()).start()
                engine.notify(ready.set)

            pool.connect(key, connect_headers(_AUTHORITY), on_stream)

        outbound = Acceptor(loop, sockets.listener((LOOPBACK, 0), reuse_port=False), accepted, name="outbound")
        stream = None
        try:
            stream = TcpStream(await sockets.open_tcp(outbound.sock.getsockname()[:2]))
            await ready.wait()
            if outcome[0] is not None:
                raise ConnectionError(f"HBONE CONNECT failed: {outcome[0]}")
            yield stream, _tls_details(pool.connections(key)[0].transport.tls)
        finally:
            if stream is not None:
                stream.close()
            outbound.close()
            pool.close("measurement done")


def _tls_details(tls: ssl.SSLObject) -> dict:
    name, version, _ = tls.cipher()
    return {"cipher": name, "tls_version": version}


def _percentile(ordered: list[int], q: float) -> float:
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))]) if ordered else float("nan")
