"""The engine's TCP splice and acceptor, over loopback sockets driven by a bare loop."""

from __future__ import annotations

import errno
import gc
import resource
import socket
import threading
import time

import pytest

from wisp.engine.accept import Acceptor
from wisp.engine.loop import Loop
from wisp.engine.splice import HIGH_WATER, Splice, TcpEnd


def run_until(loop: Loop, predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    loop.run_once(0.01)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        loop.run_once(0.01)


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    return a, b


def test_bytes_cross_both_ways_and_half_close_propagates():
    loop = Loop()
    client_inner, client_outer = pair()
    server_inner, server_outer = pair()
    done = []
    splice = Splice(TcpEnd(loop, client_inner, upstream=True), TcpEnd(loop, server_inner, upstream=False),
                    on_done=done.append)
    splice.start()
    client_outer.sendall(b"hello")
    client_outer.shutdown(socket.SHUT_WR)
    server_outer.settimeout(5)
    got = b""
    while len(got) < 5:
        run_until(loop, lambda: True)
        got += server_outer.recv(100)
    assert got == b"hello"
    run_until(loop, lambda: server_outer.recv(1, socket.MSG_PEEK) == b"" if _readable(server_outer) else False)
    # The other direction is still open after the client's half-close.
    server_outer.sendall(b"world")
    client_outer.settimeout(5)
    run_until(loop, lambda: _readable(client_outer))
    assert client_outer.recv(100) == b"world"
    assert not done
    server_outer.shutdown(socket.SHUT_WR)
    run_until(loop, lambda: bool(done))
    assert (splice.upstream, splice.downstream, splice.error) == (5, 5, None)


def _readable(sock: socket.socket) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


def test_a_slow_reader_pauses_the_writer_and_memory_stays_bounded():
    loop = Loop()
    client_inner, client_outer = pair()
    server_inner, server_outer = pair()
    splice = Splice(TcpEnd(loop, client_inner, upstream=True), TcpEnd(loop, server_inner, upstream=False))
    splice.start()
    client_outer.setblocking(False)
    chunk = b"x" * 65536
    sent = 0
    for _ in range(2000):  # push far more than any buffer, without reading at the server
        try:
            sent += client_outer.send(chunk)
        except BlockingIOError:
            pass
        loop.run_once(0)
    server_end = splice.server
    buffered = len(server_end._buffer or b"")
    # 128 MiB offered; the kernel's buffers and one high-water mark took the rest.
    assert sent < 8 * HIGH_WATER
    assert HIGH_WATER < buffered <= HIGH_WATER + 256 * 1024
    assert splice.client._paused
    # Draining the reader resumes the flow and every byte arrives.
    server_outer.setblocking(False)
    received = 0
    deadline = time.monotonic() + 10
    while received < sent and time.monotonic() < deadline:
        loop.run_once(0)
        try:
            received += len(server_outer.recv(1 << 20))
        except BlockingIOError:
            pass
    assert received == sent


def test_an_error_on_one_side_resets_the_other():
    loop = Loop()
    client_inner, client_outer = pair()
    server_inner, server_outer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    server_inner.setblocking(False)
    done = []
    splice = Splice(TcpEnd(loop, client_inner, upstream=True), TcpEnd(loop, server_inner, upstream=False),
                    on_done=done.append)
    splice.start()
    server_outer.close()  # the server vanishes: writing to it fails
    client_outer.sendall(b"x" * 1000)
    run_until(loop, lambda: bool(done))
    assert splice.error
    assert client_inner.fileno() == -1 and server_inner.fileno() == -1


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def test_the_acceptor_bounds_connections_per_source():
    loop = Loop()
    lst = _listener()
    accepted = []
    acceptor = Acceptor(loop, lst, lambda c, p, release: accepted.append((c, release)), name="t", per_source=3)
    clients = [socket.create_connection(lst.getsockname()) for _ in range(5)]
    run_until(loop, lambda: acceptor.accepted + acceptor.refused == 5)
    assert (acceptor.accepted, acceptor.refused) == (3, 2)
    # A released slot can be used again.
    conn, release = accepted.pop()
    conn.close()
    release()
    release()  # a second call changes nothing
    clients.append(socket.create_connection(lst.getsockname()))
    run_until(loop, lambda: acceptor.accepted == 4)
    assert acceptor.by_source == {"127.0.0.1": 3}
    for c in clients:
        c.close()
    for c, _ in accepted:
        c.close()
    acceptor.close()


def test_the_acceptor_backs_off_when_descriptors_run_out_and_recovers():
    loop = Loop()
    lst = _listener()
    accepted = []
    acceptor = Acceptor(loop, lst, lambda c, p, release: accepted.append(c), name="t")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hog = []
    client = socket.create_connection(lst.getsockname())
    try:
        # Use up every descriptor this process may open.
        while True:
            try:
                hog.append(open("/dev/null"))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
                break
        loop.run_once(0.1)
        assert acceptor.resource_errors >= 1 and not accepted
    finally:
        for f in hog:
            f.close()
    run_until(loop, lambda: bool(accepted))
    client.close()
    for c in accepted:
        c.close()
    acceptor.close()
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)


def test_a_connect_that_fails_at_once_reports_why():
    from wisp.engine.tls import Connect

    loop = Loop()
    sock = socket.socket()
    sock.setblocking(False)
    errors = []
    # An IPv6 address on an IPv4 socket: connect() itself refuses, before any packet leaves.
    Connect(loop, sock, ("::1", 80), timeout=5, on_done=lambda s: errors.append("connected"),
            on_error=errors.append)
    run_until(loop, lambda: errors)
    assert errors[0].startswith("connect to ::1:80 failed: ")
    assert sock.fileno() == -1


def test_a_finished_splice_leaves_no_cycle_for_the_collector():
    """ztunnel's on_done holds what holds the splice (its record, its tracker entry): once the
    splice has called it, reference counting alone must free the connection."""
    loop = Loop()
    client_inner, client_outer = pair()
    server_inner, server_outer = pair()
    holder = {}

    def done(splice: Splice) -> None:
        holder.pop("entry")

    splice = Splice(TcpEnd(loop, client_inner, upstream=True), TcpEnd(loop, server_inner, upstream=False),
                    on_done=lambda s: done(s) or entry)  # the closure refers back to the splice's holder
    entry = holder["entry"] = [splice]
    splice.start()
    client_outer.close()
    server_outer.close()
    run_until(loop, lambda: splice.done)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        del splice, entry
        gc.collect()
        leaked = [o for o in gc.garbage if isinstance(o, (Splice, TcpEnd))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert leaked == []


def test_the_engine_freezes_startup_objects_and_collects_the_young_rarely():
    from wisp.engine.runtime import GC_YOUNG_THRESHOLD, Engine

    before = gc.get_threshold()

    async def main():
        return gc.get_freeze_count(), gc.get_threshold()[0]

    try:
        frozen, young = Engine("trio-epoll").run(main)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert frozen > 1000 and young == GC_YOUNG_THRESHOLD


def test_cancelled_timers_let_go_of_their_callbacks_and_leave_the_heap():
    """A connect timeout holds its connection through its callback: cancelled by the thousand
    (connections that connected), they must not keep connections alive until they expire."""
    import weakref

    loop = Loop()

    class Held:
        pass

    held = [Held() for _ in range(1000)]
    refs = [weakref.ref(h) for h in held]
    timers = [loop.call_later(60, (lambda h: lambda: h)(h)) for h in held]
    del held
    for timer in timers:
        timer.cancel()
    assert all(ref() is None for ref in refs)
    assert len(loop._timers) <= 2 * 100  # compacted once cancellations were most of the heap
    fired = []
    loop.call_later(0, lambda: fired.append(1))
    run_until(loop, lambda: fired)
