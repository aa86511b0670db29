"""HBONE in the engine: a pooled client and a server in one bare loop, bytes through real TLS."""

from __future__ import annotations

import select
import socket
import time

from wisp.engine.pool import PoolKey
from wisp.h2 import frames

from .conftest import CLIENT_ID, SERVER_ID, run_until


def readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def exchange(mesh, sock: socket.socket, payload: bytes) -> bytes:
    sock.setblocking(False)
    view = memoryview(payload)
    got = bytearray()
    deadline = time.monotonic() + 10
    while len(got) < len(payload):
        assert time.monotonic() < deadline, f"only {len(got)} of {len(payload)} bytes came back"
        if view:
            try:
                view = view[sock.send(view[:1 << 20]):]
            except BlockingIOError:
                pass
        mesh.loop.run_once(0)
        try:
            got += sock.recv(1 << 20)
        except BlockingIOError:
            pass
    return bytes(got)


def test_bytes_cross_a_tunnel_and_come_back(mesh):
    sock, results = mesh.open()
    run_until(mesh.loop, lambda: results)
    assert results == [None]
    assert exchange(mesh, sock, b"ping") == b"ping"
    request = mesh.requests[0]
    assert request.peer_identity == CLIENT_ID
    assert str(request.authority) == f"{mesh.app.address[0]}:{mesh.app.address[1]}"


def test_bulk_larger_than_every_window_arrives_whole(mesh):
    sock, results = mesh.open()
    run_until(mesh.loop, lambda: results)
    payload = bytes(range(256)) * (40 * 4096)  # 40 MiB: beyond the 16 MiB connection window
    assert exchange(mesh, sock, payload) == payload


def test_half_close_crosses_the_tunnel_and_the_tunnel_ends_cleanly(mesh):
    sock, results = mesh.open()
    run_until(mesh.loop, lambda: results)
    assert exchange(mesh, sock, b"last words") == b"last words"
    sock.shutdown(socket.SHUT_WR)
    run_until(mesh.loop, lambda: readable(sock))
    assert sock.recv(10) == b""  # the app saw EOF and ended its side too
    run_until(mesh.loop, lambda: all(s.done for s in mesh.splices))
    assert all(s.error is None for s in mesh.splices)
    conn = mesh.pool.connections()[0]
    run_until(mesh.loop, lambda: not conn.streams)


def test_many_streams_share_one_connection(mesh):
    opened = [mesh.open() for _ in range(20)]
    run_until(mesh.loop, lambda: all(r for _, r in opened))
    assert mesh.pool.dials == 1
    assert len(mesh.pool.connections()) == 1
    for i, (sock, _) in enumerate(opened):
        assert exchange(mesh, sock, b"n%d" % i) == b"n%d" % i


def test_one_dial_per_key_while_the_dial_is_under_way(mesh):
    # Every request is made before the loop runs once: the dials would overlap in time.
    opened = [mesh.open() for _ in range(5)]
    assert mesh.pool.dials == 0
    run_until(mesh.loop, lambda: all(r for _, r in opened))
    assert mesh.pool.dials == 1


def test_a_rejected_connect_reports_the_status_and_reason(mesh):
    mesh.answer = lambda request: request.reject(401, "denied by authorization policy")
    sock, results = mesh.open()
    run_until(mesh.loop, lambda: results)
    assert results == ["CONNECT refused with status 401: denied by authorization policy"]


def test_a_server_of_the_wrong_identity_is_refused(mesh):
    key = PoolKey(CLIENT_ID, frozenset([CLIENT_ID]), mesh.key.dst)
    sock, results = mesh.open(key=key)
    run_until(mesh.loop, lambda: results)
    assert "presented spiffe://cluster.local/ns/shop/sa/server" in results[0]


def test_goaway_from_the_server_lets_streams_in_flight_finish(mesh):
    sock, results = mesh.open()
    run_until(mesh.loop, lambda: results)
    mesh.server.drain()
    run_until(mesh.loop, lambda: mesh.pool.connections()[0].goaway_received)
    assert exchange(mesh, sock, b"still here") == b"still here"
    # A new request takes a new connection.
    sock2, results2 = mesh.open()
    run_until(mesh.loop, lambda: results2)
    assert results2[0] is not None  # the draining server no longer accepts connections


def test_goaway_with_an_error_ends_the_streams(mesh):
    sock, results = mesh.open()
    run_until(mesh.loop, lambda: results)
    for conn in list(mesh.server.connections):
        conn.codec.goaway(frames.INTERNAL_ERROR, b"boom")
        conn.dirty()
    run_until(mesh.loop, lambda: all(s.done for s in mesh.splices))
    assert any("error code 2" in (s.error or "") for s in mesh.splices)


def test_the_peer_resetting_a_stream_ends_the_client_side(mesh):
    sock, results = mesh.open()
    run_until(mesh.loop, lambda: results)
    mesh.requests[0].stream.splice.fail("the app went away")
    run_until(mesh.loop, lambda: all(s.done for s in mesh.splices))
    client_side = [s for s in mesh.splices if s.client is not mesh.requests[0].stream]
    assert client_side[0].error == "stream reset by peer (HTTP/2 error code 8)"
    run_until(mesh.loop, lambda: readable(sock))
    assert sock.recv(1) == b""
