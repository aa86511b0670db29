"""A bare loop with an HBONE client pool and server on loopback, and a threaded echo app."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from tests.conftest import spiffe
from wisp.engine.hbone import ConnectRequest, StreamEnd
from wisp.engine.loop import Loop
from wisp.engine.pool import Pool, PoolKey
from wisp.engine.server import HboneServer
from wisp.engine.splice import Splice, TcpEnd
from wisp.hbone import connect_headers
from wisp.hbone.tls import ContextCache

CLIENT_ID = spiffe("shop", "client")
SERVER_ID = spiffe("shop", "server")


def run_until(loop: Loop, predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    loop.run_once(0.005)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        loop.run_once(0.005)


class EchoApp:
    """A blocking echo server on a thread; half-closes when the client does."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.address = self.sock.getsockname()
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(1 << 20)
                except OSError:
                    return
                if not data:
                    conn.shutdown(socket.SHUT_WR)
                    return
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


@dataclass
class Mesh:
    """client socket → (splice) → pool stream ⇒ HBONE ⇒ server → (splice) → echo app."""

    loop: Loop
    pool: Pool
    server: HboneServer
    app: EchoApp
    address: tuple[str, int] = ("127.0.0.1", 0)
    requests: list[ConnectRequest] = field(default_factory=list)
    answer: Callable[[ConnectRequest], None] | None = None
    splices: list[Splice] = field(default_factory=list)

    @property
    def key(self) -> PoolKey:
        return PoolKey(CLIENT_ID, frozenset([SERVER_ID]), self.address)

    def open(self, authority: str | None = None, key: PoolKey | None = None) -> tuple[socket.socket, list]:
        """A client connection spliced onto a new stream; returns the app-side socket and results."""
        inner, outer = socket.socketpair()
        inner.setblocking(False)
        results: list = []

        def on_stream(stream: StreamEnd | None, error: str | None) -> None:
            results.append(error)
            if stream is None:
                inner.close()
                return
            splice = Splice(TcpEnd(self.loop, inner, upstream=True), stream)
            self.splices.append(splice)
            splice.start()

        authority = authority or f"{self.app.address[0]}:{self.app.address[1]}"
        self.pool.connect(key or self.key, connect_headers(authority), on_stream)
        return outer, results


@pytest.fixture
def mesh(ca):
    loop = Loop()
    contexts = ContextCache()
    client_bundle, server_bundle = ca.issue(CLIENT_ID), ca.issue(SERVER_ID)
    app = EchoApp()

    def socket_factory(address, source_ip):
        sock = socket.socket()
        sock.setblocking(False)
        return sock

    pool = Pool(loop, lambda identity: contexts.get(client_bundle, server_side=False), socket_factory)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.setblocking(False)
    holder: dict = {}

    def on_request(request: ConnectRequest) -> None:
        m = holder["mesh"]
        m.requests.append(request)
        if m.answer is not None:
            m.answer(request)
            return
        upstream = socket.create_connection(app.address)
        upstream.setblocking(False)
        stream = request.accept()
        splice = Splice(stream, TcpEnd(loop, upstream, upstream=False))
        m.splices.append(splice)
        splice.start()

    server = HboneServer(loop, listener, lambda: contexts.get(server_bundle, server_side=True),
                         on_request=on_request, trust_domain="cluster.local")
    m = holder["mesh"] = Mesh(loop, pool, server, app, listener.getsockname())
    yield m
    pool.close()
    server.close()
    loop.close()
    app.close()
