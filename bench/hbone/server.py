"""The server process: one trio loop serving the benchmark protocol over TCP, TLS and HBONE.

Each contender has its own loopback listener; only one is busy at a time, so the contender under
test has the process (and its core) to itself.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from contextlib import suppress
from multiprocessing.connection import Connection

import trio

from wisp import sockets
from wisp.hbone import ConnectRequest, HboneServer, TlsError, make_context
from wisp.hbone.tls import TlsStream
from wisp.identity import CertBundle

from . import child, protocol
from .identities import TRUST_DOMAIN, Pem
from .tcp import TcpStream

LOOPBACK = "127.0.0.1"
HANDSHAKE_TIMEOUT = 10.0


def main(pipe: Connection, pem: Pem, parent_pid: int) -> None:
    """Process entry point: reports {"pid", "ports"} on `pipe`, then serves until terminated."""
    child.prepare(parent_pid)
    trio.run(_serve, pipe, pem.bundle())


async def _serve(pipe: Connection, bundle: CertBundle) -> None:
    tls_context = make_context(bundle, server_side=True)
    listeners = {name: sockets.listener((LOOPBACK, 0), reuse_port=False) for name in ("tcp", "tls", "hbone")}

    async def serve_tcp(raw: socket.socket) -> None:
        stream = TcpStream(raw)
        try:
            await protocol.serve(stream)
        finally:
            stream.close()

    async def serve_tls(raw: socket.socket) -> None:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            stream = await TlsStream.handshake(raw, tls_context, server_side=True)
        try:
            await protocol.serve(stream)
        finally:
            stream.close()

    async def serve_hbone(request: ConnectRequest) -> None:
        stream = request.accept()
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError, protocol.ProtocolError):
            await protocol.serve(stream)

    async def certs() -> CertBundle:
        return bundle

    async with trio.open_nursery() as nursery:
        await nursery.start(_accept_loop, listeners["tcp"], serve_tcp)
        await nursery.start(_accept_loop, listeners["tls"], serve_tls)
        async with HboneServer(serve_hbone, trust_domain=TRUST_DOMAIN) as hbone:
            await hbone.listen(listeners["hbone"], certs)
            ports = {name: sock.getsockname()[1] for name, sock in listeners.items()}
            pipe.send({"pid": os.getpid(), "ports": ports})
            await trio.sleep_forever()


async def _accept_loop(
    sock: socket.socket, serve: Callable[[socket.socket], Awaitable[None]], *, task_status
) -> None:
    async with trio.open_nursery() as nursery:
        task_status.started()
        try:
            while True:
                raw, _ = await sockets.accept(sock)
                sockets.tune(raw)
                nursery.start_soon(_serve_one, serve, raw)
        finally:
            sockets.close(sock)


async def _serve_one(serve: Callable[[socket.socket], Awaitable[None]], raw: socket.socket) -> None:
    # A client that went away mid-benchmark is the client's problem to report, not the server's.
    with suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, TlsError,
                  protocol.ProtocolError):
        await serve(raw)
