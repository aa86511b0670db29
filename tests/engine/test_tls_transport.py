"""The engine's TLS transport (wisp.engine.tls): TLS through memory BIOs over a socketpair.

What it promises: the handshake waits for the peer without blocking (WANT_READ through the
BIOs); records the kernel does not take at once are kept and sent later in order, never lost;
a peer that closes mid-record ends the connection after every complete record was delivered;
and what the peer sent together with its last handshake flight is read although the socket
will not be readable again. Each test drives one end with TlsTransport and the other with a
plain SSLObject the test pumps by hand, so nothing depends on timing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import select
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from wisp.engine.loop import READ, WRITE, Loop
from wisp.engine.tls import PIECE, Handshake, TlsTransport
from wisp.h2.testing import RawPeer
from wisp.hbone import make_context

from .conftest import CLIENT_ID, SERVER_ID, build_mesh, run_until


@pytest.fixture(scope="module")
def contexts(ca):
    client, server = ca.issue(CLIENT_ID), ca.issue(SERVER_ID)
    return make_context(client, server_side=False), make_context(server, server_side=True)


class ManualPeer:
    """A TLS end over a blocking socket, pumped by the test: nothing happens unless asked."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, *, server_side: bool) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server_side)

    def step(self) -> bool:
        """One handshake step: True once done. What it produced is left in `outgoing`."""
        try:
            self.tls.do_handshake()
            return True
        except ssl.SSLWantReadError:
            return False

    def flush(self, pieces: int = 1) -> None:
        data = self.outgoing.read()
        size = max(1, -(-len(data) // pieces))
        for start in range(0, len(data), size):
            self.sock.sendall(data[start:start + size])

    def pull(self, timeout: float = 5.0) -> None:
        self.sock.settimeout(timeout)
        data = self.sock.recv(1 << 20)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()

    def records(self, data: bytes) -> bytes:
        """`data` encrypted, as it would go on the wire."""
        self.tls.write(data)
        return self.outgoing.read()

    def read_all(self) -> bytes:
        out = bytearray()
        while True:
            try:
                chunk = self.tls.read(1 << 16)
            except ssl.SSLWantReadError:
                return bytes(out)
            if not chunk:
                return bytes(out)
            out += chunk


def handshaken(loop: Loop, sock: socket.socket, ctx: ssl.SSLContext, *, server_side: bool,
               peer: ManualPeer) -> Handshake:
    """Complete a Handshake on `sock` against the manual `peer`, pumping both; returns it done."""
    done: list = []
    handshake = Handshake(loop, sock, ctx, server_side=server_side, timeout=5,
                          on_done=done.append, on_error=done.append)
    for _ in range(200):
        loop.run_once(0.01)
        if done:
            break
        if select.select([peer.sock], [], [], 0.01)[0]:
            peer.pull()
        peer.step()
        peer.flush()
    else:
        raise AssertionError("handshake did not finish")
    assert done == [handshake]
    # The engine's side may have finished first (a client does): the peer reads its last flight.
    while not peer.step():
        peer.pull()
    return handshake


def socketpair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return ours, theirs


@contextlib.contextmanager
def client_transport(contexts, *, buffer_size: int | None = None) -> Iterator[tuple[TlsTransport, ManualPeer]]:
    """Our client's transport (`transport.sock`), handshaken with a manual server peer
    (`peer.sock`); with `buffer_size`, our send and their receive buffers are that small.
    Everything is closed however the test ends."""
    client_ctx, server_ctx = contexts
    loop = Loop()
    ours, theirs = socketpair()
    try:
        if buffer_size is not None:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_size)
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_size)
        peer = ManualPeer(theirs, server_ctx, server_side=True)
        transport = handshaken(loop, ours, client_ctx, server_side=False, peer=peer).transport
        try:
            yield transport, peer
        finally:
            transport.close()
    finally:
        ours.close()
        theirs.close()
        loop.close()


def test_a_handshake_waits_for_the_peer_byte_by_byte_without_blocking(contexts):
    client_ctx, server_ctx = contexts
    loop = Loop()
    ours, theirs = socketpair()
    client = ManualPeer(theirs, client_ctx, server_side=False)
    done: list = []
    errors: list = []
    handshake = Handshake(loop, ours, server_ctx, server_side=True, timeout=5,
                          on_done=done.append, on_error=errors.append)
    client.step()
    hello = client.outgoing.read()
    # The ClientHello one byte at a time: every step ends in WANT_READ, the loop watches for
    # readable, and nothing is decided on a partial message.
    for i in range(len(hello)):
        theirs.sendall(hello[i:i + 1])
        loop.run_once(0.01)
        if i < len(hello) - 1:
            assert not done and not errors
            assert loop._interest[ours.fileno()] == READ
    # The server answered the whole ClientHello with its flight; finish and check what it agreed.
    while not client.step():
        client.pull()
    client.flush(pieces=7)
    run_until(loop, lambda: done or errors)
    assert done == [handshake] and not errors
    tls = handshake.transport.tls
    assert tls.version() == "TLSv1.3"
    assert tls.selected_alpn_protocol() == "h2"
    assert client.tls.selected_alpn_protocol() == "h2"
    assert ours.fileno() not in loop._handlers  # handed over, registered by nobody yet
    loop.close()


def test_a_failed_handshake_sends_the_alert_so_the_peer_learns_why(contexts, ca, other_ca):
    _, server_ctx = contexts
    # The client trusts our server, but its own certificate comes from a CA the server does not.
    issued = dataclasses.replace(other_ca.issue(CLIENT_ID), roots_pem=ca.roots_pem())
    loop = Loop()
    ours, theirs = socketpair()
    client = ManualPeer(theirs, make_context(issued, server_side=False), server_side=False)
    errors: list = []
    Handshake(loop, ours, server_ctx, server_side=True, timeout=5, on_done=errors.append, on_error=errors.append)
    client.step()
    client.flush()
    while not client.step():  # TLS 1.3: the client is done before the server checked it
        loop.run_once(0.01)
        client.pull()
    client.flush()
    run_until(loop, lambda: errors)
    assert errors[0].startswith("TLS handshake failed: certificate verify failed")
    client.pull()
    with pytest.raises(ssl.SSLError, match="UNKNOWN_CA"):
        client.read_all()
    loop.close()


def test_a_handshake_reports_a_peer_that_closes_before_it_ends(contexts):
    _, server_ctx = contexts
    loop = Loop()
    ours, theirs = socketpair()
    errors: list = []
    Handshake(loop, ours, server_ctx, server_side=True, timeout=5, on_done=errors.append, on_error=errors.append)
    theirs.sendall(b"\x16\x03\x01\x00\xff\x01")  # the start of a ClientHello, then nothing
    theirs.close()
    run_until(loop, lambda: errors)
    # OpenSSL's own words, as when it read the socket itself (UNEXPECTED_EOF_WHILE_READING).
    assert errors[0].startswith("TLS handshake failed: ") and "EOF" in errors[0]
    assert ours.fileno() == -1  # closed
    loop.close()


def test_records_the_kernel_does_not_take_are_kept_and_sent_later_in_order(contexts):
    with client_transport(contexts, buffer_size=4096) as (transport, peer):
        first = bytes(range(256)) * 4096         # 1 MiB: far beyond both socket buffers
        second = b"after the first" * 1000
        transport.encrypt(first)
        assert transport.send() is False         # EAGAIN part-way: the rest is kept
        assert transport.blocked
        # OpenSSL may produce more while the kernel is full (a KeyUpdate answer does): it queues
        # behind what waits, and the next send carries both, in order.
        transport.tls.write(second)
        received = bytearray()
        peer.sock.setblocking(False)
        while transport.blocked or len(received) < len(first) + len(second):
            select.select([peer.sock], [transport.sock] if transport.blocked else [], [], 5)
            if transport.blocked:
                transport.send()
            try:
                peer.incoming.write(peer.sock.recv(1 << 16))
            except BlockingIOError:
                pass
            received += peer.read_all()
        assert hashlib.sha256(received).digest() == hashlib.sha256(first + second).digest()


def test_a_peer_closing_mid_record_ends_after_every_complete_record(contexts):
    with client_transport(contexts) as (transport, peer):
        whole = peer.records(b"complete record")
        cut = peer.records(b"x" * 1000)
        peer.sock.sendall(whole + cut[:500])
        peer.sock.close()
        select.select([transport.sock], [], [], 5)
        buffer = bytearray(1 << 16)
        received = transport.receive()
        assert received == len(whole) + 500
        assert buffer[:transport.tls.read(len(buffer), buffer)] == b"complete record"
        with pytest.raises(ssl.SSLWantReadError):
            transport.tls.read(len(buffer), buffer)  # half a record: wait for the rest
        assert transport.receive() == 0              # EOF, told to OpenSSL
        with pytest.raises(ssl.SSLEOFError):         # no close_notify: a ragged end
            transport.tls.read(len(buffer), buffer)


def test_a_close_notify_reads_as_the_end(contexts):
    with client_transport(contexts) as (transport, peer):
        peer.sock.sendall(peer.records(b"bye"))
        try:
            peer.tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # it sent its close_notify and would wait for ours
        peer.flush()
        select.select([transport.sock], [], [], 5)
        transport.receive()
        buffer = bytearray(1024)
        assert buffer[:transport.tls.read(len(buffer), buffer)] == b"bye"
        assert transport.tls.read(len(buffer), buffer) == 0  # CPython's SSLObject: 0, not SSLZeroReturnError


def test_a_write_larger_than_the_socket_takes_waits_for_writable_and_arrives_whole(contexts):
    with client_transport(contexts) as (transport, peer):
        payload = hashlib.sha256(b"seed").digest() * (8 << 15)  # 8 MiB
        transport.encrypt(payload)
        sends = 0
        received = bytearray()
        peer.sock.setblocking(False)
        done = transport.send()
        assert not done, "8 MiB went into a socketpair at once: the test proves nothing"
        while not done or len(received) < len(payload):
            readable, writable, _ = select.select([peer.sock], [] if done else [transport.sock], [], 5)
            assert readable or writable, "stalled"
            if writable:
                done = transport.send()
                sends += 1
            if readable:
                peer.incoming.write(peer.sock.recv(1 << 20))
                received += peer.read_all()
        assert received == payload
        assert sends > 1


def test_what_arrives_with_the_last_handshake_flight_is_served(ca):
    """A client whose Finished, HTTP/2 preface and CONNECT reach the server in one segment: the
    transport reads them all into its BIO during the handshake, so the socket is not readable
    again, and the connection must read what is already there."""
    with build_mesh(ca) as mesh:
        ctx = mesh.contexts.get(mesh.client_bundle, server_side=False)
        sock = socket.create_connection(mesh.address)
        client = ManualPeer(sock, ctx, server_side=False)
        client.step()
        client.flush()
        while True:
            run_until(mesh.loop, lambda: select.select([sock], [], [], 0)[0])
            client.pull()
            if client.step():
                break
            client.flush()
        raw = RawPeer()
        authority = f"{mesh.app.address[0]}:{mesh.app.address[1]}"
        client.tls.write(raw.client_preface() + raw.headers(1, [(":method", "CONNECT"), (":authority", authority)]))
        client.flush()  # Finished, preface, SETTINGS and HEADERS in one send
        run_until(mesh.loop, lambda: mesh.requests)
        assert str(mesh.requests[0].authority) == authority
        sock.close()


def test_a_handshake_that_cannot_send_its_flight_waits_for_writable(contexts, monkeypatch):
    client_ctx, _ = contexts
    loop = Loop()
    ours, theirs = socketpair()
    refused = []
    original = TlsTransport.send

    def full_once(self):
        if not refused:
            refused.append(True)
            self.queue.append(self.outgoing.read())  # as if the kernel took nothing
            self.blocked = True
            return False
        return original(self)

    monkeypatch.setattr(TlsTransport, "send", full_once)
    outcome: list = []
    Handshake(loop, ours, client_ctx, server_side=False, timeout=5, on_done=outcome.append, on_error=outcome.append)
    assert loop._interest[ours.fileno()] == WRITE
    loop.run_once(0.01)  # writable: the ClientHello goes, and the handshake waits to read
    assert loop._interest[ours.fileno()] == READ
    theirs.settimeout(5)
    assert theirs.recv(5)[:1] == b"\x16"  # a handshake record
    assert not outcome
    loop.close()
    theirs.close()


def test_a_large_receive_enters_the_bio_a_piece_at_a_time_and_every_record_comes_out(contexts):
    with client_transport(contexts) as (transport, peer):
        payload = bytes(range(251)) * 4000  # ~980 KiB: 60 records of 16 KiB and a short one
        sender = threading.Thread(target=peer.sock.sendall, args=(peer.records(payload),), daemon=True)
        sender.start()
        out = bytearray()
        buffer = bytearray(1 << 16)
        largest = 0
        while len(out) < len(payload):
            assert select.select([transport.sock], [], [], 5)[0], f"stalled after {len(out)} bytes"
            received = transport.receive()
            largest = max(largest, received or 0)
            while True:
                # OpenSSL's memory BIO keeps the largest buffer it ever held: it is never given
                # more than a piece at a time.
                assert transport.incoming.pending <= PIECE
                try:
                    out += buffer[:transport.tls.read(len(buffer), buffer)]
                except ssl.SSLWantReadError:
                    if not transport.backlog:
                        break
                    transport.feed()
        assert out == payload and transport.backlog == 0
        assert largest > PIECE, "no receive was larger than a piece: the test proves nothing"
        sender.join()


def test_encryption_goes_through_the_bio_a_piece_at_a_time(contexts):
    with client_transport(contexts) as (transport, peer):
        transport.encrypt(b"y" * (3 * PIECE + 5))
        pieces = list(transport.queue)
        assert len(pieces) == 4 and all(len(p) < PIECE + 1024 for p in pieces)
        assert transport.send()
        peer.sock.setblocking(False)
        received = bytearray()
        while len(received) < 3 * PIECE + 5:
            select.select([peer.sock], [], [], 5)
            peer.incoming.write(peer.sock.recv(1 << 20))
            received += peer.read_all()
        assert received == b"y" * (3 * PIECE + 5)
