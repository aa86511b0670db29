"""`wisp demo --tunnel-only`: one HBONE tunnel between two workload identities, shown step by step.

A CA, a server holding one SPIFFE identity, a client holding another, mutual TLS, an HTTP/2
CONNECT, bytes both ways with SHA-256 checked at the far end — on ztunnel's data path: the
engine's pool dials and opens the stream, its HBONE server answers the CONNECT, and each side
splices the tunnel to an app socket, as ztunnel splices it to a pod's connection. The two apps
are trio tasks at the other ends of socket pairs. One process runs it all: the engine's loop
(shape from WISP_ENGINE, as in ztunnel) with trio for the apps.
"""

from __future__ import annotations

import hashlib
import socket
import sys
import time

import trio

from wisp import sockets
from wisp.engine.hbone import ConnectRequest, StreamEnd
from wisp.engine.pool import Pool
from wisp.engine.runtime import Engine, shape_from_environment
from wisp.engine.server import HboneServer
from wisp.engine.splice import Splice, TcpEnd
from wisp.hbone import ContextCache, PoolKey, connect_headers
from wisp.identity import CertificateAuthority, SpiffeId

_CHUNK = 256 * 1024


def run_demo(total: int) -> int:
    try:
        engine = Engine(shape_from_environment())
    except ValueError as exc:
        print(f"wisp demo: {exc}", file=sys.stderr)
        return 2
    return engine.run(_demo, engine, total)


async def _demo(engine: Engine, total: int) -> int:
    ca = CertificateAuthority.generate("cluster.local")
    server_id = SpiffeId("cluster.local", "shop", "checkout")
    client_id = SpiffeId("cluster.local", "shop", "frontend")
    server_bundle, client_bundle = ca.issue(server_id), ca.issue(client_id)
    contexts = ContextCache()
    print(f"CA      root {ca.cert.subject.rfc4514_string()}")
    print(f"server  {server_id}  certificate valid until {server_bundle.not_after:%Y-%m-%d %H:%M} UTC,"
          f" rotates at {server_bundle.rotation_time:%H:%M}")
    print(f"client  {client_id}")
    loop = engine.loop
    seen: dict = {}

    def on_request(request: ConnectRequest) -> None:
        # In the loop: answer, splice the tunnel to the server app's socket, start the app.
        seen["peer"] = request.peer_identity
        seen["authority"] = str(request.authority)
        ours, app = socket.socketpair()
        ours.setblocking(False)
        Splice(request.accept(), TcpEnd(loop, ours, upstream=False)).start()
        engine.spawn(_server_app, app, request.peer_identity)

    listener = sockets.listener(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.serve)
        server = HboneServer(loop, listener, lambda: contexts.get(server_bundle, server_side=True),
                             on_request=on_request, trust_domain="cluster.local")
        print(f"server  HBONE listening on 127.0.0.1:{port} (TLS 1.3, ALPN h2, client certificate required)")
        pool = Pool(loop, lambda identity: contexts.get(client_bundle, server_side=False),
                    lambda address, source: sockets.new_tcp_socket(address[0]))
        key = PoolKey(client_id, frozenset([server_id]), ("127.0.0.1", port))
        try:
            app = await _open_tunnel(engine, pool, key)
        except OSError as exc:
            print(f"client  {exc}")
            return 1
        conn = pool.connections(key)[0]
        print(f"client  connected; server proved identity {conn.peer_identity}"
              f" (engine shape {engine.shape})")
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(app))
        block = bytes(range(256)) * (_CHUNK // 256)
        digest = hashlib.sha256()
        start = time.perf_counter()
        sent = 0
        reply = b""

        async def receive() -> None:
            nonlocal reply
            while chunk := await stream.receive_some(65536):
                reply += chunk

        async with trio.open_nursery() as exchange:
            exchange.start_soon(receive)
            while sent < total:
                piece = block[: min(_CHUNK, total - sent)]
                await stream.send_all(piece)
                digest.update(piece)
                sent += len(piece)
            await stream.send_eof()
        elapsed = time.perf_counter() - start
        await stream.aclose()
        pool.close("demo done")
        server.close("demo done")
        nursery.cancel_scope.cancel()
    print(f"server  CONNECT {seen['authority']} from {seen['peer']}: accepted (200)")
    print(f"server  says: {reply.decode()}")
    ok = digest.hexdigest() in reply.decode()
    print(f"client  sent {sent} bytes in {elapsed:.2f} s ({sent * 8 / elapsed / 1e9:.2f} Gb/s), "
          f"sha256 {'matches' if ok else 'DIFFERS'}")
    return 0 if ok else 1


async def _open_tunnel(engine: Engine, pool: Pool, key: PoolKey) -> socket.socket:
    """A CONNECT stream spliced to one end of a socket pair; returns the client app's end."""
    ours, app = socket.socketpair()
    ours.setblocking(False)
    done = trio.Event()
    outcome: list[str | None] = []

    def on_stream(stream: StreamEnd | None, error: str | None) -> None:
        outcome.append(error)
        if stream is None:
            ours.close()
        else:
            Splice(TcpEnd(engine.loop, ours, upstream=True), stream).start()
        engine.notify(done.set)

    pool.connect(key, connect_headers("10.244.1.7:8080"), on_stream)
    await done.wait()
    if outcome[0] is not None:
        app.close()
        raise OSError(outcome[0])
    return app


async def _server_app(sock: socket.socket, peer: SpiffeId) -> None:
    """Counts and hashes what arrives until EOF, then says what it got and ends its side."""
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    digest = hashlib.sha256()
    received = 0
    while chunk := await stream.receive_some(_CHUNK):
        digest.update(chunk)
        received += len(chunk)
    await stream.send_all(f"{received} bytes from {peer}, sha256 {digest.hexdigest()}".encode())
    await stream.send_eof()
    await stream.aclose()
