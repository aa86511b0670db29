"""The server process: the benchmark protocol over TCP and TLS, and ztunnel's inbound path for HBONE.

Each contender has its own loopback listener; only one is busy at a time, so the contender under
test has the process (and its core) to itself. TCP and TLS are served by trio tasks. HBONE is
served by the data-path engine as ztunnel serves port 15008: the engine's HboneServer answers the
CONNECT once it has connected to the app, and splices the stream to that TCP connection; the app
is this process's TCP server (the TCP anchor's own), so an HBONE measurement crosses the whole
inbound path, app included.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from contextlib import suppress
from multiprocessing.connection import Connection

import trio

from wisp import sockets
from wisp.engine.hbone import ConnectRequest
from wisp.engine.runtime import Engine
from wisp.engine.server import HboneServer
from wisp.engine.splice import Splice, TcpEnd
from wisp.engine.tls import Connect
from wisp.hbone import TlsError, make_context
from wisp.hbone.tls import TlsStream
from wisp.identity import CertBundle

from . import child, protocol
from .identities import TRUST_DOMAIN, Pem
from .tcp import TcpStream

LOOPBACK = "127.0.0.1"
HANDSHAKE_TIMEOUT = 10.0


def main(pipe: Connection, pem: Pem, parent_pid: int, shape: str) -> None:
    """Process entry point: reports {"pid", "ports"} on `pipe`, then serves until terminated."""
    child.prepare(parent_pid)
    engine = Engine(shape)
    engine.run(_serve, engine, pipe, pem.bundle())


async def _serve(engine: Engine, pipe: Connection, bundle: CertBundle) -> None:
    tls_context = make_context(bundle, server_side=True)
    listeners = {name: sockets.listener((LOOPBACK, 0), reuse_port=False) for name in ("tcp", "tls", "hbone")}
    app = listeners["tcp"].getsockname()[:2]
    loop = engine.loop

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

    def serve_hbone(request: ConnectRequest) -> None:
        # In the loop, as ztunnel's inbound: connect to the app, then answer and splice.
        def connected(raw: socket.socket) -> None:
            Splice(request.accept(), TcpEnd(loop, raw, upstream=False)).start()

        Connect(loop, sockets.new_tcp_socket(LOOPBACK), app, timeout=HANDSHAKE_TIMEOUT, on_done=connected,
                on_error=lambda reason: request.reject(503, reason))

    async with trio.open_nursery() as nursery:
        await nursery.start(engine.serve)
        await nursery.start(_accept_loop, listeners["tcp"], serve_tcp)
        await nursery.start(_accept_loop, listeners["tls"], serve_tls)
        HboneServer(loop, listeners["hbone"], lambda: tls_context, on_request=serve_hbone,
                    trust_domain=TRUST_DOMAIN, name="bench-hbone")
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
