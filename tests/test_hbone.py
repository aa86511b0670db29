"""HBONE on loopback: tunnels, pooling, half-close, GOAWAY, and bad peers that must not hurt others."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
import ssl
import struct
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h2.config
import h2.connection
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wisp import sockets
from wisp.hbone import (
    H2Settings,
    ConnectionClosed,
    ConnectRefused,
    HboneError,
    HbonePool,
    HboneServer,
    PeerIdentityError,
    PoolKey,
    connect_headers,
    dial,
)
from wisp.hbone.tls import TlsStream
from wisp.identity import CertificateAuthority, SpiffeId, generate_key, make_csr

from .conftest import spiffe

SERVER_ID = spiffe("shop", "checkout")
CLIENT_ID = spiffe("shop", "frontend")
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# The handler picks a behaviour by the CONNECT target's port.
ECHO, BULK, SERVER_FIRST, RECORD = 1, 2, 3, 4


@pytest.fixture(scope="module")
def server_bundle(ca):
    return ca.issue(SERVER_ID)


@pytest.fixture(scope="module")
def client_bundle(ca):
    return ca.issue(CLIENT_ID)


@dataclass
class Harness:
    server: HboneServer
    port: int
    pool: HbonePool
    client_bundle: object
    events: dict = field(default_factory=dict)

    @property
    def key(self) -> PoolKey:
        return PoolKey(CLIENT_ID, frozenset([SERVER_ID]), ("127.0.0.1", self.port))

    async def connect(self, port: int = ECHO, pool: HbonePool | None = None):
        return await (pool or self.pool).connect(self.key, connect_headers(f"10.0.0.1:{port}"))

    def new_pool(self, **kwargs) -> HbonePool:
        return HbonePool(_const(self.client_bundle), **kwargs)


def _const(value):
    async def provider(*_):
        return value

    return provider


async def receive_exactly(stream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


async def receive_all(stream) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some():
        data += chunk
    return bytes(data)


async def wait_until(predicate, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


def _handlers(events: dict):
    async def echo(request):
        stream = request.accept()
        while chunk := await stream.receive_some():
            await stream.send_all(chunk)
        await stream.send_eof()

    async def bulk(request):
        stream = request.accept()
        total = int(request.headers["x-bulk-bytes"])
        sent, received = hashlib.sha256(), hashlib.sha256()

        async def send():
            for block in _blocks(total, b"server"):
                await stream.send_all(block)
                sent.update(block)
            await stream.send_eof()

        async def receive():
            while chunk := await stream.receive_some():
                received.update(chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            nursery.start_soon(receive)
        events["bulk"] = (sent.hexdigest(), received.hexdigest())

    async def server_first(request):
        stream = request.accept()
        await stream.send_all(b"server speaks first")
        await stream.send_eof()
        events["server_first_got"] = await receive_all(stream)

    async def record(request):
        events["record_headers"] = dict(request.headers)
        events["record_peer"] = request.peer_identity
        events["record_forwarded_host"] = request.forwarded_host
        events["record_baggage"] = request.baggage
        stream = request.accept()
        try:
            while await stream.receive_some():
                pass
            events["record_end"] = "eof"
        except trio.BrokenResourceError as exc:
            events["record_end"] = f"broken: {exc}"

    table = {ECHO: echo, BULK: bulk, SERVER_FIRST: server_first, RECORD: record}

    async def dispatch(request):
        handler = table.get(request.authority.port)
        if handler is None:
            request.reject(401 if request.authority.port == 401 else 503, "no such test port")
            return
        await handler(request)

    return dispatch


def _blocks(total: int, seed: bytes, size: int = 1024 * 1024):
    base = hashlib.sha256(seed).digest() * (size // 32)
    for index in range(total // size):
        yield struct.pack(">Q", index) + base[8:]


@asynccontextmanager
async def running(server_bundle, client_bundle, **pool_kwargs):
    events: dict = {}
    listener = sockets.listener(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    async with HboneServer(_handlers(events)) as server:
        await server.listen(listener, _const(server_bundle))
        async with HbonePool(_const(client_bundle), **pool_kwargs) as pool:
            yield Harness(server, port, pool, client_bundle, events)


@pytest.fixture
async def hbone(server_bundle, client_bundle):
    async with running(server_bundle, client_bundle) as harness:
        yield harness


@asynccontextmanager
async def healthy_stream(harness: Harness):
    """An echo stream on its own connection that keeps working while something bad happens."""
    async with harness.new_pool() as pool:
        stream = await harness.connect(ECHO, pool)
        stop = trio.Event()
        rounds = 0

        async def exchange(index: int) -> None:
            payload = struct.pack(">Q", index) * 512
            await stream.send_all(payload)
            assert await receive_exactly(stream, len(payload)) == payload

        async def loop():
            nonlocal rounds
            while not stop.is_set():
                await exchange(rounds)
                rounds += 1
                await trio.sleep(0.002)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(loop)
            yield
            stop.set()
        await exchange(rounds)
        assert rounds > 0
        await stream.send_eof()
        assert await receive_all(stream) == b""
        stream.close()


async def raw_tls(port: int, *, bundle=None, alpn=("h2",), roots_pem: bytes) -> TlsStream:
    """A hand-made TLS client, for peers that misbehave in ways our client never would."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=roots_pem.decode())
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if bundle is not None:
        with bundle.pem_file() as path:
            ctx.load_cert_chain(path)
    sock = await sockets.open_tcp(("127.0.0.1", port))
    return await TlsStream.handshake(sock, ctx, server_side=False)


def rejected(harness: Harness, fragment: str) -> bool:
    return any(fragment in reason for _, reason in harness.server.rejections)


# -- tunnels -------------------------------------------------------------------------------------


async def test_one_gib_each_way_through_one_stream_arrives_intact(hbone):
    total = 1024 * 1024 * 1024
    headers = connect_headers(f"10.0.0.1:{BULK}") + [(b"x-bulk-bytes", str(total).encode())]
    stream = await hbone.pool.connect(hbone.key, headers)
    sent, received = hashlib.sha256(), hashlib.sha256()
    count = 0

    async def send():
        for block in _blocks(total, b"client"):
            await stream.send_all(block)
            sent.update(block)
        await stream.send_eof()

    async def receive():
        nonlocal count
        while chunk := await stream.receive_some():
            received.update(chunk)
            count += len(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        nursery.start_soon(receive)
    await wait_until(lambda: "bulk" in hbone.events)
    server_sent, server_received = hbone.events["bulk"]
    assert count == total
    assert server_received == sent.hexdigest()
    assert received.hexdigest() == server_sent
    stream.close()


async def test_two_hundred_concurrent_streams_share_one_connection(server_bundle, client_bundle):
    async with running(server_bundle, client_bundle, max_streams=200) as harness:
        streams = [await harness.connect() for _ in range(200)]
        assert len(harness.pool.connections()) == 1
        assert len(harness.server.connections) == 1

        async def exchange(index, stream):
            payload = f"stream {index} ".encode() * 100
            await stream.send_all(payload)
            await stream.send_eof()
            assert await receive_all(stream) == payload
            stream.close()

        async with trio.open_nursery() as nursery:
            for index, stream in enumerate(streams):
                nursery.start_soon(exchange, index, stream)
        assert harness.pool.dials == 1


async def test_client_half_close_still_receives_the_reply(hbone):
    stream = await hbone.connect(ECHO)
    await stream.send_all(b"ping")
    await stream.send_eof()
    assert await receive_all(stream) == b"ping"
    stream.close()


async def test_server_half_close_still_receives_from_the_client(hbone):
    stream = await hbone.connect(SERVER_FIRST)
    assert await receive_all(stream) == b"server speaks first"
    await stream.send_all(b"client answers after the server's EOF")
    await stream.send_eof()
    await wait_until(lambda: "server_first_got" in hbone.events)
    assert hbone.events["server_first_got"] == b"client answers after the server's EOF"
    stream.close()


async def test_connect_carries_identity_and_headers_to_the_handler(hbone):
    headers = connect_headers(
        "10.0.0.1:4", baggage_values={"k8s.namespace.name": "shop", "service.name": ""},
        client=("10.244.0.5", 40000), service_host="checkout.shop.svc.cluster.local",
    )
    stream = await hbone.pool.connect(hbone.key, headers)
    await stream.send_eof()
    await wait_until(lambda: "record_end" in hbone.events)
    assert hbone.events["record_peer"] == CLIENT_ID
    assert hbone.events["record_forwarded_host"] == "checkout.shop.svc.cluster.local"
    assert hbone.events["record_baggage"] == {"k8s.namespace.name": "shop"}
    assert hbone.events["record_headers"]["forwarded"].startswith('for="10.244.0.5:40000"')
    assert len(hbone.events["record_headers"]["traceparent"]) == 55
    stream.close()


@pytest.mark.parametrize("port,status", [(401, 401), (503, 503)])
async def test_handler_refusal_reaches_the_client_with_its_status(hbone, port, status):
    with pytest.raises(ConnectRefused) as info:
        await hbone.connect(port)
    assert info.value.status == status
    assert "no such test port" in str(info.value)


# -- pooling -------------------------------------------------------------------------------------


async def test_hundred_and_first_stream_opens_a_second_connection(hbone):
    streams = [await hbone.connect() for _ in range(100)]
    assert len(hbone.pool.connections()) == 1
    extra = await hbone.connect()
    conns = hbone.pool.connections()
    assert len(conns) == 2
    assert extra.conn is not streams[0].conn
    for stream in [*streams, extra]:
        stream.close()


async def test_streams_after_one_closes_reuse_the_connection(hbone):
    first = await hbone.connect()
    first.close()
    second = await hbone.connect()
    assert second.conn is first.conn
    assert hbone.pool.dials == 1
    second.close()


async def test_goaway_connection_is_not_reused_and_its_open_stream_finishes(hbone):
    old = await hbone.connect()
    await wait_until(lambda: len(hbone.server.connections) == 1)
    (server_side,) = hbone.server.connections
    server_side.shutdown("test drain")
    await wait_until(lambda: old.conn.goaway_received)
    new = await hbone.connect()
    assert new.conn is not old.conn
    assert hbone.pool.dials == 2
    # The stream opened before GOAWAY still carries data both ways.
    await old.send_all(b"still here")
    assert await receive_exactly(old, 10) == b"still here"
    await old.send_eof()
    assert await receive_all(old) == b""
    old.close()
    new.close()
    hbone.pool.evict()
    assert old.conn not in hbone.pool.connections()


async def test_idle_connection_is_evicted(server_bundle, client_bundle):
    async with running(server_bundle, client_bundle, idle_timeout=0.2) as harness:
        stream = await harness.connect()
        conn = stream.conn
        stream.close()
        await wait_until(lambda: not harness.pool.connections(), timeout=3)
        assert not conn.is_open
        again = await harness.connect()
        assert again.conn is not conn
        assert harness.pool.dials == 2
        again.close()


async def test_busy_connection_is_not_evicted(server_bundle, client_bundle):
    async with running(server_bundle, client_bundle, idle_timeout=0.1) as harness:
        stream = await harness.connect()
        await trio.sleep(0.5)
        assert stream.conn.is_open
        await stream.send_all(b"x")
        assert await receive_exactly(stream, 1) == b"x"
        stream.close()


async def test_server_drain_lets_open_streams_finish_then_closes(hbone):
    stream = await hbone.connect()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hbone.server.drain, 5)
        await wait_until(lambda: stream.conn.goaway_received)
        await stream.send_all(b"during drain")
        assert await receive_exactly(stream, 12) == b"during drain"
        await stream.send_eof()
        assert await receive_all(stream) == b""
        stream.close()
    assert not hbone.server.connections


async def test_missing_ping_answers_close_the_connection(client_bundle, server_bundle, ca):
    """A peer that completes the handshake and then stops reading is dropped by keepalive."""
    listener = sockets.listener(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    from wisp.hbone.tls import make_context

    async def mute_server():
        raw, _ = await sockets.accept(listener)
        tls = await TlsStream.handshake(raw, make_context(server_bundle, server_side=True), server_side=True)
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        h2c.initiate_connection()
        await tls.send_all(h2c.data_to_send())
        await trio.sleep_forever()

    fast = H2Settings(ping_interval=0.1, ping_timeout=0.3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mute_server)
        conn = await dial(nursery, ("127.0.0.1", port), bundle=client_bundle,
                          expected_identities={SERVER_ID}, settings=fast)
        await wait_until(lambda: not conn.is_open, timeout=3)
        assert "no PING answer" in conn.failure
        nursery.cancel_scope.cancel()
    listener.close()


# -- bad peers: each answered clearly, none disturbs a healthy stream ------------------------------


async def test_client_certificate_from_another_ca_is_rejected(hbone, other_ca, ca):
    from wisp.identity import CertBundle

    # It trusts our server, but its own certificate comes from a CA the mesh does not trust.
    issued = other_ca.issue(CLIENT_ID)
    stranger = CertBundle(issued.key, issued.leaf, issued.intermediates, ca.roots)
    async with healthy_stream(hbone):
        pool = HbonePool(_const(stranger))
        async with pool:
            with pytest.raises(HboneError, match="does not trust our certificate"):
                await hbone.connect(ECHO, pool)
        await wait_until(lambda: rejected(hbone, "certificate verify failed"))


async def test_expired_client_certificate_is_rejected(hbone, ca):
    key = generate_key()
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=3)
    issued = ca.sign_csr(make_csr(key, CLIENT_ID), CLIENT_ID, dt.timedelta(hours=1), now=past)
    from wisp.identity import CertBundle

    expired = CertBundle.from_issued(key, issued)
    async with healthy_stream(hbone):
        async with HbonePool(_const(expired)) as pool:
            with pytest.raises(HboneError, match="expired"):
                await hbone.connect(ECHO, pool)
        await wait_until(lambda: rejected(hbone, "certificate has expired"))


async def test_client_from_another_trust_domain_is_refused_with_a_reason(hbone, ca):
    foreign_ca = CertificateAuthority(ca.key, ca.cert, ca.intermediates, ca.roots, trust_domain="evil.local")
    foreign = foreign_ca.issue(SpiffeId("evil.local", "shop", "frontend"))
    async with healthy_stream(hbone):
        async with HbonePool(_const(foreign)) as pool:
            with pytest.raises(ConnectionClosed, match="not in trust domain 'cluster.local'"):
                await pool.connect(PoolKey(foreign.identity, frozenset([SERVER_ID]), ("127.0.0.1", hbone.port)),
                                   connect_headers("10.0.0.1:1"))
    assert rejected(hbone, "spiffe://evil.local/ns/shop/sa/frontend is not in trust domain")


async def test_client_without_a_certificate_is_rejected(hbone, ca):
    async with healthy_stream(hbone):
        tls = await raw_tls(hbone.port, roots_pem=ca.roots_pem())
        await tls.send_all(H2_PREFACE)
        with pytest.raises(trio.BrokenResourceError, match="requires a client certificate"):
            await tls.receive_some()
        tls.close()
        await wait_until(lambda: rejected(hbone, "certificate"))


async def test_server_with_an_unexpected_identity_is_refused_by_the_client(hbone):
    elsewhere = spiffe("payments", "ledger")
    async with healthy_stream(hbone):
        key = PoolKey(CLIENT_ID, frozenset([elsewhere]), ("127.0.0.1", hbone.port))
        with pytest.raises(PeerIdentityError, match="presented spiffe://cluster.local/ns/shop/sa/checkout; "
                                                    "expected one of spiffe://cluster.local/ns/payments/sa/ledger"):
            await hbone.pool.connect(key, connect_headers("10.0.0.1:1"))


async def test_non_connect_method_gets_400(hbone):
    headers = [(b":method", b"GET"), (b":authority", b"10.0.0.1:1"), (b":scheme", b"https"), (b":path", b"/")]
    async with healthy_stream(hbone):
        with pytest.raises(ConnectRefused, match="method GET is not allowed") as info:
            await hbone.pool.connect(hbone.key, headers)
        assert info.value.status == 400


@pytest.mark.parametrize("authority", ["checkout", "10.0.0.1", "10.0.0.1:http", "10.0.0.1:70000",
                                       "[10.0.0.1]:80", "[fe80::1:80", "checkout.shop:80"])
async def test_unparsable_authority_gets_400(hbone, authority):
    async with healthy_stream(hbone):
        with pytest.raises(ConnectRefused) as info:
            await hbone.pool.connect(hbone.key, [(b":method", b"CONNECT"), (b":authority", authority.encode())])
        assert info.value.status == 400
        assert authority in info.value.reason


async def test_ipv6_authority_is_accepted(hbone):
    stream = await hbone.pool.connect(hbone.key, connect_headers("[fd00::1]:1"))
    await stream.send_all(b"v6")
    assert await receive_exactly(stream, 2) == b"v6"
    stream.close()


@pytest.mark.parametrize("payload,reason", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "plain HTTP instead of TLS"),
    (b"\x00" * 64, "TLS handshake failed"),
])
async def test_plain_bytes_instead_of_tls_are_rejected(hbone, payload, reason):
    async with healthy_stream(hbone):
        sock = await sockets.open_tcp(("127.0.0.1", hbone.port))
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        await stream.send_all(payload)
        with trio.fail_after(5):
            try:
                while await stream.receive_some(4096):
                    pass
            except trio.BrokenResourceError:
                pass  # a reset is as good an answer as a close
        await stream.aclose()
        await wait_until(lambda: rejected(hbone, reason))


async def test_tls_without_alpn_h2_is_rejected(hbone, ca, client_bundle):
    async with healthy_stream(hbone):
        tls = await raw_tls(hbone.port, bundle=client_bundle, alpn=("http/1.1",), roots_pem=ca.roots_pem())
        assert tls.alpn_protocol() is None
        with trio.fail_after(5):
            assert await tls.receive_some() == b""
        tls.close()
        await wait_until(lambda: rejected(hbone, "did not negotiate ALPN h2"))


async def test_http11_inside_tls_gets_an_http2_protocol_error(hbone, ca, client_bundle):
    async with healthy_stream(hbone):
        tls = await raw_tls(hbone.port, bundle=client_bundle, roots_pem=ca.roots_pem())
        await tls.send_all(b"GET / HTTP/1.1\r\nHost: checkout\r\n\r\n")
        received = b""
        with trio.fail_after(5):
            while chunk := await tls.receive_some():
                received += chunk
        tls.close()
        # Server preface, then GOAWAY (type 7) with PROTOCOL_ERROR (1) and a reason.
        assert b"\x00\x00\x00\x07\x00\x00\x00\x00\x00" in received or b"\x07\x00\x00\x00\x00\x00" in received
        assert b"invalid HTTP/2 connection preface" in received
        await wait_until(lambda: rejected(hbone, "HTTP/2 protocol error"))


async def test_peer_that_disappears_mid_stream_breaks_only_its_own_stream(hbone):
    async with healthy_stream(hbone):
        async with hbone.new_pool() as victim_pool:
            stream = await hbone.connect(RECORD, victim_pool)
            await stream.send_all(b"half a message")
            await wait_until(lambda: "record_headers" in hbone.events)
            raw = stream.conn.tls.socket
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            stream.conn.close("test: vanish")
        await wait_until(lambda: "record_end" in hbone.events)
        assert hbone.events["record_end"].startswith("broken")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(min_size=1, max_size=4096), with_preface=st.booleans())
def test_random_bytes_after_the_handshake_never_disturb_the_server(
    junk, with_preface, server_bundle, client_bundle, ca
):
    async def scenario():
        async with running(server_bundle, client_bundle) as harness:
            async with healthy_stream(harness):
                tls = await raw_tls(harness.port, bundle=client_bundle, roots_pem=ca.roots_pem())
                await tls.send_all((H2_PREFACE if with_preface else b"") + junk)
                with trio.move_on_after(0.3):
                    try:
                        while await tls.receive_some():
                            pass
                    except trio.BrokenResourceError:
                        pass
                tls.close()
            # And a new client is served normally afterwards.
            stream = await harness.connect()
            await stream.send_all(b"after")
            await stream.send_eof()
            assert await receive_all(stream) == b"after"
            stream.close()

    trio.run(scenario)


async def test_close_to_drops_pooled_connections_to_that_address_only(hbone):
    stream = await hbone.connect()
    stream.close()
    conn = hbone.pool.connections()[0]
    assert hbone.pool.close_to("10.9.9.9") == 0
    assert conn.is_open
    assert hbone.pool.close_to("127.0.0.1") == 1
    assert not conn.is_open and not hbone.pool.connections()
    again = await hbone.connect()
    assert again.conn is not conn
    again.close()
