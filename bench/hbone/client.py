"""The client process: opens one connection (or HBONE stream) per measurement and measures it.

Commands come from the parent over a pipe, one at a time; connection set-up (TCP connect, TLS
handshake, HBONE dial and CONNECT) happens before the clock starts.
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
from wisp.hbone import HbonePool, PoolKey, connect_headers, make_context
from wisp.hbone.tls import TlsStream
from wisp.identity import CertBundle, SpiffeId

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


def main(pipe: Connection, pem: Pem, ports: dict[str, int], parent_pid: int) -> None:
    """Process entry point: answer each Command on `pipe` with a result dict until EOF/None."""
    child.prepare(parent_pid)
    client = _Client(pem.bundle(), ports)
    while True:
        try:
            command = pipe.recv()
        except EOFError:
            return
        if command is None:
            return
        try:
            result = trio.run(client.measure, command)
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        pipe.send(result)


class _Client:
    def __init__(self, bundle: CertBundle, ports: dict[str, int]) -> None:
        self.bundle = bundle
        self.ports = ports
        self.tls_context = make_context(bundle, server_side=False)

    async def measure(self, command: Command) -> dict:
        async with self.open(command.contender) as (stream, details):
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
    async def open(self, contender: str) -> AsyncIterator[tuple[trio.abc.Stream, dict]]:
        address = (LOOPBACK, self.ports[contender])
        if contender == "hbone":
            async with HbonePool(self._certs) as pool:
                key = PoolKey(CLIENT_ID, frozenset([SERVER_ID]), address)
                stream = await pool.connect(key, connect_headers(_AUTHORITY))
                try:
                    tls = pool.connections(key)[0].tls
                    yield stream, _tls_details(tls.socket)
                finally:
                    stream.close()
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

    async def _certs(self, identity: SpiffeId) -> CertBundle:
        return self.bundle


def _tls_details(sock: ssl.SSLSocket) -> dict:
    name, version, _ = sock.cipher()
    return {"cipher": name, "tls_version": version}


def _percentile(ordered: list[int], q: float) -> float:
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))]) if ordered else float("nan")
