"""`python -m bench.engine_roundtrip [N] [--profile]`: CPU per round trip through the engine, in one process.

A client socket → an outbound-like acceptor → a pooled HBONE stream ⇒ mutual TLS ⇒ the HBONE
server → the echo app, and back; every piece runs in one engine loop on loopback, so the figure
is the Python and system-call cost of a request through a ztunnel pair (plus the echo app and
the client), with no scheduler noise from other processes. A microbenchmark for tuning the engine;
the mesh benchmark (`bench/run`) is the one that counts.
"""

from __future__ import annotations

import cProfile
import pstats
import socket
import sys
import time

from wisp.engine.accept import Acceptor
from wisp.engine.loop import READ, Loop
from wisp.engine.pool import Pool, PoolKey
from wisp.engine.server import HboneServer
from wisp.engine.splice import Splice, TcpEnd
from wisp.hbone import connect_headers
from wisp.hbone.tls import ContextCache
from wisp.identity import CertificateAuthority, SpiffeId

PAYLOAD = b"x" * 1024


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _nodelay(sock: socket.socket) -> socket.socket:
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class _Echo:
    """The app: echoes what it reads, in the same loop."""

    def __init__(self, loop: Loop, sock: socket.socket) -> None:
        self.loop, self.sock = loop, sock
        loop.register(sock.fileno(), self, READ)

    def on_readable(self) -> None:
        data = self.sock.recv(65536)
        if data:
            self.sock.send(data)
        else:
            self.loop.unregister(self.sock.fileno())
            self.sock.close()

    def on_writable(self) -> None:
        pass

    def abort(self, reason: str) -> None:
        self.sock.close()


def build() -> tuple[Loop, socket.socket]:
    """The loop with everything registered, and the client's connected socket."""
    ca = CertificateAuthority.generate("cluster.local")
    client_id = SpiffeId("cluster.local", "bench", "client")
    server_id = SpiffeId("cluster.local", "bench", "server")
    client_bundle, server_bundle = ca.issue(client_id), ca.issue(server_id)
    contexts = ContextCache()
    loop = Loop()
    app = _listener()
    Acceptor(loop, app, lambda conn, peer, release: _Echo(loop, _nodelay(conn)), name="app")
    pool = Pool(loop, lambda identity: contexts.get(client_bundle, server_side=False),
                lambda address, source: _nodelay(socket.socket()))
    hbone = _listener()

    def on_request(request) -> None:
        upstream = _nodelay(socket.create_connection(app.getsockname()))
        Splice(request.accept(), TcpEnd(loop, upstream, upstream=False)).start()

    HboneServer(loop, hbone, lambda: contexts.get(server_bundle, server_side=True), on_request=on_request,
                trust_domain="cluster.local")
    outbound = _listener()
    key = PoolKey(client_id, frozenset([server_id]), hbone.getsockname())
    headers = connect_headers("%s:%d" % app.getsockname())

    def on_accept(conn: socket.socket, peer, release) -> None:
        pool.connect(key, headers, lambda stream, error: Splice(TcpEnd(loop, _nodelay(conn), upstream=True),
                                                                stream).start())

    Acceptor(loop, outbound, on_accept, name="outbound")
    client = _nodelay(socket.create_connection(outbound.getsockname()))
    return loop, client


def round_trips(loop: Loop, client: socket.socket, count: int) -> None:
    for _ in range(count):
        client.send(PAYLOAD)
        got = 0
        while got < len(PAYLOAD):
            loop.run_once(0.1)
            try:
                got += len(client.recv(65536))
            except BlockingIOError:
                pass


def main(argv: list[str]) -> int:
    count = int(argv[0]) if argv and argv[0].isdigit() else 5000
    loop, client = build()
    round_trips(loop, client, 200)  # handshake, pool, first stream
    cpu, wall = time.process_time(), time.perf_counter()
    if "--profile" in argv:
        profile = cProfile.Profile()
        profile.runcall(round_trips, loop, client, count)
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)
    else:
        round_trips(loop, client, count)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{count} round trips of 1 KiB: {cpu / count * 1e6:.1f} µs CPU and {wall / count * 1e6:.1f} µs wall "
          "per round trip (client, both proxies and the echo app in one process)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
