"""HBONE in the engine: a pooled client and a server in one bare loop, bytes through real TLS.

Tunnels (bulk both ways, half-close either way, what a CONNECT carries), pooling (one dial per
key, the stream limit, reuse, GOAWAY, idle eviction, close_to) and draining. Peers that
misbehave are in test_hbone_peers.py.
"""

from __future__ import annotations

import hashlib
import select
import socket
import struct
import time

import pytest

from wisp.engine.hbone import HboneConnection
from wisp.engine.pool import PoolKey
from wisp.h2 import frames
from wisp.hbone import connect_headers

from .conftest import CLIENT_ID, SERVER_ID, build_mesh, run_until, talk


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


def test_bulk_goes_out_as_frames_built_in_the_read_buffer_and_stays_in_order(mesh, monkeypatch):
    # TCP reads of 16 KiB or more are encrypted as one DATA frame written in the read buffer's
    # headroom (HboneConnection.send_framed). With the HBONE socket's send buffer tiny, the
    # kernel often takes only part of a pass's records: until it took the rest, frames are
    # refused and queued in the codec instead, behind them.
    outcomes: list[str] = []
    original = HboneConnection.send_framed

    def spy(self, stream_id, size):
        taken = original(self, stream_id, size)
        outcomes.append("taken" if taken else "refused")
        return taken

    monkeypatch.setattr(HboneConnection, "send_framed", spy)
    sock, results = mesh.open()
    run_until(mesh.loop, lambda: results)
    for conn in mesh.pool.connections():
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = b"".join(blocks(24 << 20, b"direct"))
    assert exchange(mesh, sock, payload) == payload
    assert outcomes.count("taken") > 0, outcomes[:20]
    assert outcomes.count("refused") > 0, "the send buffer never filled"


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


# -- tunnels -------------------------------------------------------------------------------------

def blocks(total: int, seed: bytes, size: int = 1 << 20):
    base = hashlib.sha256(seed).digest() * (size // 32)
    for index in range(total // size):
        yield struct.pack(">Q", index) + base[8:]


def test_bulk_both_ways_at_once_arrives_intact(mesh):
    total = 64 << 20  # each way: four times the connection window
    server_got: dict = {}

    def app(sock: socket.socket, request) -> None:
        import threading

        received = hashlib.sha256()

        def drain() -> None:
            while chunk := sock.recv(1 << 20):
                received.update(chunk)

        reader = threading.Thread(target=drain)
        reader.start()
        sent = hashlib.sha256()
        for block in blocks(total, b"server"):
            sock.sendall(block)
            sent.update(block)
        sock.shutdown(socket.SHUT_WR)
        reader.join()
        server_got.update(sent=sent.hexdigest(), received=received.hexdigest())

    mesh.serve_with(app)
    sock, results = mesh.open()
    run_until(mesh.loop, lambda: results)
    payload = b"".join(blocks(total, b"client"))
    reply = talk(mesh.loop, sock, payload, eof=True, timeout=60)
    run_until(mesh.loop, lambda: server_got)
    assert len(reply) == total
    assert hashlib.sha256(reply).hexdigest() == server_got["sent"]
    assert hashlib.sha256(payload).hexdigest() == server_got["received"]


def test_client_half_close_still_receives_the_reply(mesh):
    sock, results = mesh.open()
    run_until(mesh.loop, lambda: results)
    # Our EOF goes out right behind the bytes; the echo comes back, then the app's EOF.
    assert talk(mesh.loop, sock, b"ping", eof=True) == b"ping"


def test_server_half_close_still_receives_from_the_client(mesh):
    got: list[bytes] = []

    def server_first(sock: socket.socket, request) -> None:
        sock.sendall(b"server speaks first")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        got.append(data)
        sock.close()

    mesh.serve_with(server_first)
    sock, results = mesh.open()
    run_until(mesh.loop, lambda: results)
    assert talk(mesh.loop, sock) == b"server speaks first"
    talk(mesh.loop, sock, b"client answers after the server's EOF", eof=True)
    run_until(mesh.loop, lambda: got)
    assert got == [b"client answers after the server's EOF"]


def test_connect_carries_identity_and_headers_to_the_server(mesh):
    headers = connect_headers(
        f"{mesh.app.address[0]}:{mesh.app.address[1]}",
        baggage_values={"k8s.namespace.name": "shop", "service.name": ""},
        client=("10.244.0.5", 40000), service_host="checkout.shop.svc.cluster.local",
    )
    sock, results = mesh.open(headers=headers)
    run_until(mesh.loop, lambda: results)
    request = mesh.requests[0]
    assert request.peer_identity == CLIENT_ID
    assert request.forwarded_host == "checkout.shop.svc.cluster.local"
    assert request.baggage == {"k8s.namespace.name": "shop"}
    assert request.headers["forwarded"].startswith('for="10.244.0.5:40000"')
    assert len(request.headers["traceparent"]) == 55
    assert request.peer_address[0] == "127.0.0.1" and request.local_address == mesh.address


@pytest.mark.parametrize("status", [401, 503])
def test_a_refusal_reaches_the_client_with_its_status(mesh, status):
    mesh.answer = lambda request: request.reject(status, "no such test port")
    sock, results = mesh.open()
    run_until(mesh.loop, lambda: results)
    assert results == [f"CONNECT refused with status {status}: no such test port"]
    # The refused stream is gone on both sides; the connection serves the next one.
    mesh.answer = None
    sock2, results2 = mesh.open()
    run_until(mesh.loop, lambda: results2)
    assert results2 == [None] and mesh.pool.dials == 1
    assert talk(mesh.loop, sock2, b"next", expect=4) == b"next"


def test_an_ipv6_authority_is_accepted(mesh):
    sock, results = mesh.open("[fd00::1]:1")
    run_until(mesh.loop, lambda: results)
    assert results == [None]
    assert str(mesh.requests[0].authority) == "[fd00::1]:1"
    assert talk(mesh.loop, sock, b"v6", expect=2) == b"v6"


# -- pooling -------------------------------------------------------------------------------------

def test_two_hundred_concurrent_streams_share_one_connection(ca):
    with build_mesh(ca, max_streams=200) as mesh:
        opened = [mesh.open() for _ in range(200)]
        run_until(mesh.loop, lambda: all(r for _, r in opened), timeout=20)
        assert all(r == [None] for _, r in opened)
        assert mesh.pool.dials == 1 and len(mesh.server.connections) == 1
        assert len(mesh.pool.connections()[0].streams) == 200
        for i, (sock, _) in enumerate(opened):
            sock.setblocking(False)
            sock.send(b"stream %d " % i)
        for i, (sock, _) in enumerate(opened):
            want = b"stream %d " % i
            assert talk(mesh.loop, sock, expect=len(want)) == want


def test_the_hundred_and_first_stream_opens_a_second_connection(mesh):
    opened = [mesh.open() for _ in range(100)]
    run_until(mesh.loop, lambda: all(r for _, r in opened), timeout=20)
    assert len(mesh.pool.connections()) == 1
    sock, results = mesh.open()
    run_until(mesh.loop, lambda: results)
    assert results == [None]
    assert mesh.pool.dials == 2 and len(mesh.pool.connections()) == 2
    assert talk(mesh.loop, sock, b"extra", expect=5) == b"extra"


def test_a_stream_after_one_closed_reuses_the_connection(mesh):
    sock, results = mesh.open()
    run_until(mesh.loop, lambda: results)
    talk(mesh.loop, sock, b"first", eof=True)
    conn = mesh.pool.connections()[0]
    run_until(mesh.loop, lambda: not conn.streams)
    sock2, results2 = mesh.open()
    run_until(mesh.loop, lambda: results2)
    assert mesh.pool.connections() == [conn] and mesh.pool.dials == 1


def test_a_goaway_connection_is_not_reused_and_its_open_stream_finishes(mesh):
    old_sock, results = mesh.open()
    run_until(mesh.loop, lambda: results)
    (old,) = mesh.pool.connections()
    (server_side,) = mesh.server.connections
    server_side.goaway(debug="test drain")
    run_until(mesh.loop, lambda: old.goaway_received)
    new_sock, results2 = mesh.open()
    run_until(mesh.loop, lambda: results2)
    assert results2 == [None] and mesh.pool.dials == 2
    assert old not in mesh.pool.connections() or len(mesh.pool.connections()) == 2
    assert mesh.requests[-1].conn is not server_side
    # The stream opened before GOAWAY still carries data both ways, then ends cleanly.
    assert talk(mesh.loop, old_sock, b"still here", eof=True) == b"still here"
    run_until(mesh.loop, lambda: not old.streams)
    mesh.pool.evict()
    run_until(mesh.loop, lambda: old.closed)
    assert old not in mesh.pool.connections()


def test_an_idle_connection_is_evicted_and_the_next_stream_dials_again(ca):
    with build_mesh(ca, idle_timeout=0.2) as mesh:
        sock, results = mesh.open()
        run_until(mesh.loop, lambda: results)
        talk(mesh.loop, sock, b"x", eof=True)
        (conn,) = mesh.pool.connections()
        run_until(mesh.loop, lambda: not mesh.pool.connections(), timeout=3)
        assert conn.closed and conn.failure == "idle"
        sock2, results2 = mesh.open()
        run_until(mesh.loop, lambda: results2)
        assert results2 == [None] and mesh.pool.dials == 2


def test_a_busy_connection_is_not_evicted(ca):
    with build_mesh(ca, idle_timeout=0.1) as mesh:
        sock, results = mesh.open()
        run_until(mesh.loop, lambda: results)
        (conn,) = mesh.pool.connections()
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            mesh.loop.run_once(0.01)
        assert not conn.closed
        assert talk(mesh.loop, sock, b"x", expect=1) == b"x"


def test_draining_server_lets_open_streams_finish_then_the_connection_closes(mesh):
    sock, results = mesh.open()
    run_until(mesh.loop, lambda: results)
    (conn,) = mesh.pool.connections()
    mesh.server.drain()
    run_until(mesh.loop, lambda: conn.goaway_received)
    assert talk(mesh.loop, sock, b"during drain", expect=12) == b"during drain"
    assert talk(mesh.loop, sock, eof=True) == b""
    run_until(mesh.loop, lambda: not conn.streams)
    mesh.pool.evict()  # what the pool's evictor does on its next tick
    run_until(mesh.loop, lambda: not mesh.server.connections)


def test_a_stream_opened_while_the_draining_servers_goaway_travels_is_served(mesh):
    """A ztunnel restart drains the old server: a client that opened a stream before it read the
    GOAWAY must not see that stream refused (RFC 9113 §6.8's graceful last stream id)."""
    sock, results = mesh.open()
    run_until(mesh.loop, lambda: results)
    (conn,) = mesh.pool.connections()
    mesh.server.drain()  # the GOAWAY is queued, not yet read by the client
    assert not conn.goaway_received
    late, late_results = mesh.open()
    run_until(mesh.loop, lambda: late_results)
    assert late_results == [None]
    assert talk(mesh.loop, late, b"late stream", expect=11) == b"late stream"
    assert conn.goaway_received and not conn.accepting_streams  # the next stream takes a new connection


def test_close_to_drops_pooled_connections_to_that_address_only(mesh):
    sock, results = mesh.open()
    run_until(mesh.loop, lambda: results)
    (conn,) = mesh.pool.connections()
    assert mesh.pool.close_to("10.9.9.9") == 0
    assert not conn.closed
    assert mesh.pool.close_to("127.0.0.1") == 1
    assert conn.closed and not mesh.pool.connections()
    sock2, results2 = mesh.open()
    run_until(mesh.loop, lambda: results2)
    assert mesh.pool.connections()[0] is not conn and mesh.pool.dials == 2


def test_goaway_from_the_client_lets_its_stream_finish(mesh):
    sock, results = mesh.open()
    run_until(mesh.loop, lambda: results)
    client_conn = mesh.pool.connections()[0]
    client_conn.goaway()
    run_until(mesh.loop, lambda: any(c.goaway_received for c in mesh.server.connections))
    assert exchange(mesh, sock, b"after goaway") == b"after goaway"
    # The client said it opens no more streams there: a new request dials a new connection.
    sock2, results2 = mesh.open()
    run_until(mesh.loop, lambda: results2)
    assert results2 == [None] and mesh.pool.dials == 2
