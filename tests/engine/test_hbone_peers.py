"""HBONE peers that misbehave, against the engine's pool and server: each is answered or refused
with a reason a person can act on, and none disturbs a healthy tunnel in the same loop.

Hand-made peers (no certificate, no ALPN h2, HTTP/1.1 inside TLS, random bytes, a server that
never answers PING) run on a thread with blocking sockets while the test's thread runs the loop.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import socket
import ssl
import struct
import time
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wisp.engine.hbone as engine_hbone
from wisp.engine.pool import PoolKey
from wisp.h2.connection import Connection
from wisp.hbone import make_context
from wisp.identity import CertificateAuthority, SpiffeId, bundle_of, generate_key, make_csr

from .conftest import CLIENT_ID, SERVER_ID, build_mesh, in_thread, run_until, talk

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@contextmanager
def healthy_tunnel(mesh):
    """A tunnel on its own connection that must still work after whatever happens inside."""
    pool = mesh.new_pool()
    sock, results = mesh.open(pool=pool)
    run_until(mesh.loop, lambda: results)
    assert results == [None]
    assert talk(mesh.loop, sock, b"before", expect=6) == b"before"
    yield
    assert talk(mesh.loop, sock, b"after", expect=5) == b"after"
    assert talk(mesh.loop, sock, eof=True) == b""


def rejected(mesh, fragment: str) -> bool:
    return any(fragment in reason for _, reason in mesh.server.rejections)


def raw_tls(mesh, *, bundle=None, alpn=("h2",)) -> ssl.SSLSocket:
    """A blocking TLS 1.3 client to the mesh's server, for peers our pool would never be."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=mesh.server_bundle.roots_pem.decode())
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if bundle is not None:
        with bundle.pem_file() as path:
            ctx.load_cert_chain(path)
    sock = socket.create_connection(mesh.address, timeout=5)
    return ctx.wrap_socket(sock)


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass  # a reset or an alert is as good an answer as a close
    return data


def open_with(mesh, pool) -> list:
    sock, results = mesh.open(pool=pool)
    run_until(mesh.loop, lambda: results)
    return results


# -- identities ----------------------------------------------------------------------------------

def test_a_client_certificate_from_another_ca_is_rejected(mesh, other_ca, ca):
    issued = other_ca.issue(CLIENT_ID)
    # It trusts our server, but its own certificate comes from a CA the mesh does not trust.
    stranger = dataclasses.replace(issued, roots_pem=ca.roots_pem())
    with healthy_tunnel(mesh):
        results = open_with(mesh, mesh.new_pool(stranger))
        assert "does not trust our certificate" in results[0]
        run_until(mesh.loop, lambda: rejected(mesh, "certificate verify failed"))


def test_an_expired_client_certificate_is_rejected(mesh, ca):
    key = generate_key()
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=3)
    issued = ca.sign_csr(make_csr(key, CLIENT_ID), CLIENT_ID, dt.timedelta(hours=1), now=past)
    expired = bundle_of(key, issued.leaf, issued.intermediates, issued.roots)
    with healthy_tunnel(mesh):
        results = open_with(mesh, mesh.new_pool(expired))
        assert "expired" in results[0]
        run_until(mesh.loop, lambda: rejected(mesh, "certificate has expired"))


def test_a_client_from_another_trust_domain_is_refused_with_a_goaway_that_says_why(mesh, ca):
    foreign_ca = CertificateAuthority(ca.key, ca.cert, ca.intermediates, ca.roots, trust_domain="evil.local")
    foreign = foreign_ca.issue(SpiffeId("evil.local", "shop", "frontend"))
    pool = mesh.new_pool(foreign)
    key = PoolKey(foreign.identity, frozenset([SERVER_ID]), mesh.address)
    with healthy_tunnel(mesh):
        sock, results = mesh.open(key=key, pool=pool)
        run_until(mesh.loop, lambda: results)
    # INADEQUATE_SECURITY (12), with the server's reason as the GOAWAY's debug data.
    assert results[0] == ("HBONE connection failed: peer sent GOAWAY with HTTP/2 error code 12: client identity "
                          "spiffe://evil.local/ns/shop/sa/frontend is not in trust domain 'cluster.local'") \
        or results[0] == ("refused by GOAWAY (HTTP/2 error code 12): client identity "
                          "spiffe://evil.local/ns/shop/sa/frontend is not in trust domain 'cluster.local'")
    assert rejected(mesh, "spiffe://evil.local/ns/shop/sa/frontend is not in trust domain")


def test_a_client_without_a_certificate_is_rejected(mesh):
    def client() -> bytes:
        tls = raw_tls(mesh)
        with tls:
            try:
                tls.sendall(H2_PREFACE)
            except (ssl.SSLError, OSError):
                return b""  # the server had already sent its alert and closed
            # The alert (CERTIFICATE_REQUIRED) or a reset, depending on which the kernel delivers
            # first; never an HTTP/2 byte.
            return read_until_closed(tls)

    with healthy_tunnel(mesh):
        assert in_thread(mesh.loop, client) == b""
        run_until(mesh.loop, lambda: rejected(mesh, "the peer sent no client certificate"))


def test_a_server_with_an_unexpected_identity_is_refused_by_the_client(mesh):
    elsewhere = SpiffeId("cluster.local", "payments", "ledger")
    with healthy_tunnel(mesh):
        sock, results = mesh.open(key=PoolKey(CLIENT_ID, frozenset([elsewhere]), mesh.address))
        run_until(mesh.loop, lambda: results)
    assert results == [f"HBONE peer 127.0.0.1:{mesh.address[1]} presented spiffe://cluster.local/ns/shop/sa/server; "
                       "expected one of spiffe://cluster.local/ns/payments/sa/ledger"]
    assert not any(conn.peer_identity == SERVER_ID and not conn.streams for conn in mesh.pool.connections())


# -- requests ------------------------------------------------------------------------------------

def test_a_method_other_than_connect_gets_400(mesh):
    headers = [(b":method", b"GET"), (b":authority", b"10.0.0.1:1"), (b":scheme", b"https"), (b":path", b"/")]
    with healthy_tunnel(mesh):
        sock, results = mesh.open(headers=headers)
        run_until(mesh.loop, lambda: results)
    assert results == ["CONNECT refused with status 400: method GET is not allowed; HBONE accepts only CONNECT"]
    assert len(mesh.requests) == 1  # the healthy tunnel's: the server's handler never saw the GET


@pytest.mark.parametrize("authority", ["checkout", "10.0.0.1", "10.0.0.1:http", "10.0.0.1:70000",
                                       "[10.0.0.1]:80", "[fe80::1:80", "checkout.shop:80", "10.0.0.1:²"])
def test_an_unparsable_authority_gets_400(mesh, authority):
    with healthy_tunnel(mesh):
        sock, results = mesh.open(headers=[(b":method", b"CONNECT"), (b":authority", authority.encode())])
        run_until(mesh.loop, lambda: results)
    assert results[0].startswith("CONNECT refused with status 400: ")
    # Header values arrive as Latin-1 (RFC 9110 §5.5): '²' is two bytes, so two characters there.
    assert repr(authority.encode().decode("latin-1")) in results[0]


# -- bytes that are not HBONE ----------------------------------------------------------------------

@pytest.mark.parametrize("payload,reason", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "plain HTTP instead of TLS"),
    (b"\x00" * 64, "TLS handshake failed"),
])
def test_plain_bytes_instead_of_tls_are_rejected(mesh, payload, reason):
    def client() -> bytes:
        with socket.create_connection(mesh.address, timeout=5) as sock:
            sock.sendall(payload)
            return read_until_closed(sock)

    with healthy_tunnel(mesh):
        in_thread(mesh.loop, client)
        run_until(mesh.loop, lambda: rejected(mesh, reason))


def test_tls_without_alpn_h2_is_rejected(mesh):
    def client() -> tuple[str | None, bytes]:
        tls = raw_tls(mesh, bundle=mesh.client_bundle, alpn=("http/1.1",))
        with tls:
            return tls.selected_alpn_protocol(), read_until_closed(tls)

    with healthy_tunnel(mesh):
        assert in_thread(mesh.loop, client) == (None, b"")
        run_until(mesh.loop, lambda: rejected(mesh, "did not negotiate ALPN h2"))


def test_http11_inside_tls_gets_an_http2_goaway_with_protocol_error(mesh):
    def client() -> bytes:
        tls = raw_tls(mesh, bundle=mesh.client_bundle)
        with tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: checkout\r\n\r\n")
            return read_until_closed(tls)

    with healthy_tunnel(mesh):
        received = in_thread(mesh.loop, client)
        # The server's preface, then GOAWAY (type 7) with PROTOCOL_ERROR (1) and a reason.
        goaway = received.find(b"\x07\x00\x00\x00\x00\x00")
        assert goaway > 0 and received[goaway + 10:goaway + 14] == b"\x00\x00\x00\x01"
        assert b"invalid HTTP/2 connection preface" in received
        run_until(mesh.loop, lambda: not mesh.server.connections - {
            c for c in mesh.server.connections if c.peer_identity == CLIENT_ID and c.streams})


def test_a_peer_that_vanishes_mid_stream_breaks_only_its_own_tunnel(mesh):
    with healthy_tunnel(mesh):
        victim = mesh.new_pool()
        sock, results = mesh.open(pool=victim)
        run_until(mesh.loop, lambda: results)
        sock.sendall(b"half a message")
        request = mesh.requests[-1]
        server_side = next(s for s in mesh.splices if s.client is request.stream)
        run_until(mesh.loop, lambda: server_side.upstream == 14)
        (conn,) = victim.connections()
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.abort("test: vanish")
        run_until(mesh.loop, lambda: server_side.done)
        assert server_side.error is not None and "HBONE connection failed" in server_side.error


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(min_size=1, max_size=4096), with_preface=st.booleans())
def test_random_bytes_after_the_handshake_never_disturb_the_server(junk, with_preface, ca):
    with build_mesh(ca) as mesh:
        def client() -> None:
            tls = raw_tls(mesh, bundle=mesh.client_bundle)
            tls.settimeout(0.3)
            with tls:
                tls.sendall((H2_PREFACE if with_preface else b"") + junk)
                try:
                    read_until_closed(tls)
                except (TimeoutError, OSError):
                    pass

        with healthy_tunnel(mesh):
            in_thread(mesh.loop, client)
        # And a new client is served normally afterwards.
        sock, results = mesh.open()
        run_until(mesh.loop, lambda: results)
        assert results == [None]
        assert talk(mesh.loop, sock, b"after", eof=True) == b"after"


# -- keepalive -----------------------------------------------------------------------------------

def test_a_server_that_stops_answering_ping_is_dropped_by_keepalive(mesh, monkeypatch):
    """A peer that completes the handshake and sends its SETTINGS, then never reads again."""
    monkeypatch.setattr(engine_hbone, "PING_INTERVAL", 0.1)
    monkeypatch.setattr(engine_hbone, "PING_TIMEOUT", 0.3)
    listener = socket.create_server(("127.0.0.1", 0))
    ctx = make_context(mesh.server_bundle, server_side=True)
    stop = []

    def mute_server() -> None:
        raw, _ = listener.accept()
        with ctx.wrap_socket(raw, server_side=True) as tls:
            codec = Connection(client=False)
            codec.initiate()
            tls.sendall(bytes(codec.out))
            while not stop:
                time.sleep(0.05)

    import threading

    threading.Thread(target=mute_server, daemon=True).start()
    try:
        key = PoolKey(CLIENT_ID, frozenset([SERVER_ID]), listener.getsockname())
        sock, results = mesh.open(key=key)
        run_until(mesh.loop, lambda: mesh.pool.connections(key))
        (conn,) = mesh.pool.connections(key)
        run_until(mesh.loop, lambda: conn.closed, timeout=3)
        assert conn.failure == "no PING answer within 0.3 s"
        run_until(mesh.loop, lambda: results)
        assert "no PING answer" in results[0]
    finally:
        stop.append(True)
        listener.close()
