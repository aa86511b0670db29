"""A bare loop with an HBONE client pool and server on loopback, and a threaded echo app (or the
test's own app on a thread, `Mesh.serve_with`)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
                try:
                    if not data:
                        conn.shutdown(socket.SHUT_WR)
                        return
                    conn.sendall(data)
                except OSError:
                    return  # the tunnel was reset under us: what some tests do on purpose

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
    contexts: ContextCache | None = None
    client_bundle: object = None
    server_bundle: object = None
    pools: list[Pool] = field(default_factory=list)

    @property
    def key(self) -> PoolKey:
        return PoolKey(CLIENT_ID, frozenset([SERVER_ID]), self.address)

    def open(self, authority: str | None = None, key: PoolKey | None = None, *,
             headers: list[tuple[bytes, bytes]] | None = None, pool: Pool | None = None,
             ) -> tuple[socket.socket, list]:
        """A client connection spliced onto a new stream; returns the app-side socket and results
        ([None] once the CONNECT was answered 200, [reason] if it failed)."""
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
        (pool or self.pool).connect(key or self.key, headers or connect_headers(authority), on_stream)
        return outer, results


    def serve_with(self, app: Callable[[socket.socket, ConnectRequest], None]) -> None:
        """Answer every CONNECT with 200 and hand the tunnel's far end to `app(sock, request)`,
        run on a thread with a blocking socket (the app is the test's own code)."""

        def answer(request: ConnectRequest) -> None:
            ours, theirs = socket.socketpair()
            ours.setblocking(False)
            splice = Splice(request.accept(), TcpEnd(self.loop, ours, upstream=False))
            self.splices.append(splice)
            splice.start()
            threading.Thread(target=app, args=(theirs, request), daemon=True).start()

        self.answer = answer

    def new_pool(self, bundle=None, **kwargs) -> Pool:
        """Another pool in the same loop (another client), closed with the mesh."""
        bundle = bundle or self.client_bundle
        pool = Pool(self.loop, lambda identity: self.contexts.get(bundle, server_side=False), _socket_factory,
                    **kwargs)
        self.pools.append(pool)
        return pool


def _socket_factory(address, source_ip):
    sock = socket.socket()
    sock.setblocking(False)
    return sock


@contextmanager
def build_mesh(ca, **pool_kwargs) -> Iterator[Mesh]:
    """A loop with a pool (`pool_kwargs`) and an HBONE server whose CONNECTs reach an echo app."""
    loop = Loop()
    contexts = ContextCache()
    client_bundle, server_bundle = ca.issue(CLIENT_ID), ca.issue(SERVER_ID)
    app = EchoApp()
    pool = Pool(loop, lambda identity: contexts.get(client_bundle, server_side=False), _socket_factory,
                **pool_kwargs)
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
    m = holder["mesh"] = Mesh(loop, pool, server, app, listener.getsockname(), contexts=contexts,
                              client_bundle=client_bundle, server_bundle=server_bundle)
    try:
        yield m
    finally:
        for extra in m.pools:
            extra.close()
        pool.close()
        server.close()
        loop.close()
        app.close()


@pytest.fixture
def mesh(ca):
    with build_mesh(ca) as m:
        yield m


def talk(loop: Loop, sock: socket.socket, payload: bytes = b"", *, eof: bool = False,
         expect: int | None = None, timeout: float = 20.0) -> bytes:
    """Send `payload` (then shut down our side if `eof`) while reading, running the loop, until
    `expect` bytes came back or, with `expect` None, until the other side's EOF."""
    sock.setblocking(False)
    view = memoryview(payload)
    got = bytearray()
    deadline = time.monotonic() + timeout
    shut = peer_done = False
    while True:
        if expect is not None and len(got) >= expect:
            return bytes(got)
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(got)} bytes came back (sent {len(payload) - len(view)})")
        if view:
            try:
                view = view[sock.send(view[:1 << 20]):]
            except BlockingIOError:
                pass
        elif eof and not shut:
            sock.shutdown(socket.SHUT_WR)
            shut = True
        loop.run_once(0.001)
        if peer_done:
            if not view and (shut or not eof):
                return bytes(got)
            continue  # the other side ended its half; ours goes on
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            continue
        if not chunk:
            if expect is not None:
                raise AssertionError(f"EOF after {len(got)} of {expect} bytes")
            peer_done = True
        got += chunk


def in_thread(loop: Loop, fn: Callable[[], object], timeout: float = 10.0) -> object:
    """Run `fn` (blocking client or server code) on a thread while this one runs the loop;
    returns what it returned, raises what it raised."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # handed to the test's thread
            outcome.append((False, exc))

    threading.Thread(target=run, daemon=True).start()
    run_until(loop, lambda: outcome, timeout)
    ok, value = outcome[0]
    if not ok:
        raise value
    return value
