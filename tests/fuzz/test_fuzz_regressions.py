"""Inputs the fuzzers found (fuzz/targets.py), each kept as the test of its fix.

Each test feeds the input to the real code the target drives and states what must happen
instead of what did."""

from __future__ import annotations

import ssl

from fuzz.targets import _Loop
from wisp.engine.hbone import ServerConnection
from wisp.h2 import frames
from wisp.h2.testing import RawPeer, parse_frames


class RecordingTransport:
    """The engine's TLS transport (wisp.engine.tls.TlsTransport) reduced to what the connection
    wrote: `sent` is the plaintext it handed to TLS, in order."""

    def __init__(self) -> None:
        self.sent = bytearray()
        self.closed = False
        self.sock = None
        self.fd = -1
        self.tls = self
        self.incoming = self.outgoing = ssl.MemoryBIO()
        self.backlog = 0
        self.blocked = False
        self.queue: list = []

    def read(self, n: int, buffer) -> int:
        raise AssertionError("these tests feed the codec directly")

    def encrypt(self, data) -> None:
        self.sent += data

    def send(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


def test_hbone_server_answers_a_protocol_error_after_a_connect_in_the_same_read_with_goaway():
    """hbone_server: a CONNECT and a frame that is a connection error (DATA on stream 0) in one
    read. Answering the CONNECT raised ConnectionClosed out of the read path (the codec had
    already ended the connection), so the loop logged an internal error and dropped the
    connection without the GOAWAY that names the protocol error."""
    peer = RawPeer()
    data = (peer.client_preface() + peer.headers(1, [(":method", "CONNECT"), (":authority", "not-an-ip")])
            + RawPeer.data(0, b"x"))
    sock = RecordingTransport()
    requests = []
    conn = ServerConnection(_Loop(), sock, on_request=requests.append, local=("10.0.0.2", 15008),
                            peer=("10.0.0.1", 40000), peer_identity=None)
    conn._receive(memoryview(data))
    assert conn.closed and sock.closed
    assert conn.failure.startswith("HTTP/2 protocol error")
    goaways = [f for f in parse_frames(bytes(sock.sent)) if f.type == frames.GOAWAY]
    assert len(goaways) == 1 and goaways[0].error_code == frames.PROTOCOL_ERROR
    assert requests == []


def test_hbone_server_ignores_trailers_on_a_stream_it_refused_and_forgot():
    """hbone_server: a CONNECT the server refused (stream answered and forgotten), then the
    client's trailers on that stream in a later read. They were taken for a new request, the
    400 answer was written on the closed stream, and StreamClosedError cost the connection."""
    peer = RawPeer()
    sock = RecordingTransport()
    conn = ServerConnection(_Loop(), sock, on_request=lambda request: request.reject(401, "not allowed"),
                            local=("10.0.0.2", 15008), peer=("10.0.0.1", 40000), peer_identity=None)
    conn._receive(memoryview(peer.client_preface() + peer.request(1)))
    conn.flush()
    assert conn.streams == {}   # refused and forgotten
    conn._receive(memoryview(peer.headers(1, [("x-trailer", "1")], end_stream=True) + peer.request(3)))
    conn.flush()
    assert not conn.closed
    answers = [f for f in parse_frames(bytes(sock.sent)) if f.type == frames.HEADERS]
    assert [f.stream_id for f in answers] == [1, 3]    # one answer per CONNECT, none to the trailers
    assert not [f for f in parse_frames(bytes(sock.sent)) if f.type in (frames.GOAWAY, frames.RST_STREAM)]


# ca_csr: the example CSR with one digit of its public key point changed (libFuzzer's
# ChangeASCIIInt): the point is not on the curve.
CSR_WITH_INVALID_KEY = (
    b'{"csr": "-----BEGIN CERTIFICATE REQUEST-----\\nMIIBAjCBqQIBADAAMFkwEwYHKoZIzj0CAQYIKoZIzj0D'
    b'AQcDQgAEeGdyHJB/KRtn\\nR9dj9MDbQQuPLOAeb4kQ7qPjiZlpD6240VuWTG6xxKjEtf5ebWj6zFl7Z407bboq\\nPI'
    b'obAxCuTKBHMEUGCSqGSIb3DQEJDjE4MDYwNAYDVR0RAQH/BCowKIYmc3BpZmZl\\nOi8vY2x1c3Rlci5sb2NhbC9ucy'
    b'9zaG9wL3NhL2NhcnQwCgYIKoZIzj0EAwIDSAAw\\nRQIhAOpCe0C4sOFS+5Q3N9CPkgLWzTsm89mLtrYTsVEMPC8aAi'
    b'AU4W49srt5yYMm\\nzx0i+hq/m9HAgkGSIMT8EKRxhCJB+A==\\n-----END CERTIFICATE REQUEST-----\\n", "i'
    b'dentity": "spiffe://cluster.local/ns/shop/sa/cart"}'
)


def test_ca_refuses_a_csr_whose_public_key_is_not_a_valid_point_with_400():
    """ca_csr: the CSR loader parses lazily, so `is_signature_valid` raised ValueError("Invalid
    key") out of the CA endpoint: a 500 instead of the 400 that names the problem."""
    from wisp.identity import CertificateAuthority
    from wisp_operator.auth import Caller
    from wisp_operator.ca_service import CaService
    from wisp_operator.cluster import ClusterState
    from wisp_operator.distributor import ROLE_ZTUNNEL

    service = CaService(CertificateAuthority.generate("cluster.local"), authorizer=lambda *args: None)
    response = service.sign(Caller(ROLE_ZTUNNEL, node="node1"), CSR_WITH_INVALID_KEY, ClusterState.of([]))
    assert response.status == 400
    assert "CSR public key or signature cannot be read" in response.body["error"]


CSR_WITH_VERSION_1 = b'{"csr": "-----BEGIN CERTIFICATE REQUEST-----\\nMIIBAjCBqQIBATAAMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEeGdyHJB/KRtn\\nR9dj9MDbQQuPLOAeb4kQ7qPjiZlpD6240VuWTG6xxKjEtf5ebWj3zFl7Z407bboq\\nPIobAxCuTKBHMEUGCSqGSIb3DQEJDjE4MDYwNAYDVR0RAQH/BCowKIYmc3BpZmZl\\nOi8vY2x1c3Rlci5sb2NhbC9ucy9zaG9wL3NhL2NhcnQwCgYIKoZIzj0EAwIDSAAy\\nRQIhAOpCe0C4sOFS+5Q3N9CPkgLWzTsm89mLtrYTsVEMPC8aAiAU4W49srt5yYMm\\nzx0i+hq/m9HAgkGSIMT8EKRxhCJB+A==\\n-----END CERTIFICATE REQUEST-----\\n", "identity": "spiffe://cluster.local/ns/shop/sa/cart"}'


def test_ca_refuses_a_csr_with_an_invalid_version_with_400():
    """ca_csr (found by the CI smoke run): a CSR whose version field is 1 makes cryptography raise
    InvalidVersion, which is not a ValueError, out of the CA endpoint: a 500."""
    from wisp.identity import CertificateAuthority
    from wisp_operator.auth import Caller
    from wisp_operator.ca_service import CaService
    from wisp_operator.cluster import ClusterState
    from wisp_operator.distributor import ROLE_ZTUNNEL

    service = CaService(CertificateAuthority.generate("cluster.local"), authorizer=lambda *args: None)
    response = service.sign(Caller(ROLE_ZTUNNEL, node="node1"), CSR_WITH_VERSION_1, ClusterState.of([]))
    assert response.status == 400
    assert "CSR has an invalid version" in response.body["error"]


def test_config_stream_refuses_a_removal_of_an_unknown_kind_as_a_protocol_error():
    """config_stream: a delta removing `{"kind": "woriload"}` decoded, then `apply` raised
    KeyError, which the subscriber (wisp/controlplane/client.py) does not catch: the stream
    task died instead of reporting the bad message and keeping its last good view."""
    import pytest

    from wisp.controlplane.protocol import ConfigView, StreamProtocolError, decode

    view = ConfigView()
    view.apply(decode(b'{"type":"snapshot","version":"e1-1","resources":[]}'))
    with pytest.raises(StreamProtocolError, match="unknown kind 'woriload'"):
        view.apply(decode(b'{"type":"delta","version":"e1-2","since":"e1-1","upserts":[],'
                          b'"removals":[{"kind":"woriload","key":"shop/cart"}]}'))
    assert view.version == "e1-1"


def test_hbone_server_does_not_answer_a_connect_the_codec_reset_in_the_same_read():
    """hbone_server: a CONNECT and, in the same read, a second HEADERS on its stream without
    END_STREAM (a stream error: the codec resets the stream). Answering the CONNECT then wrote on
    the reset stream, and StreamClosedError cost the whole connection."""
    peer = RawPeer()
    sock = RecordingTransport()
    requests = []
    conn = ServerConnection(_Loop(), sock, on_request=requests.append, local=("10.0.0.2", 15008),
                            peer=("10.0.0.1", 40000), peer_identity=None)
    data = (peer.client_preface() + peer.headers(5, [(":method", "CONNECT"), (":authority", "[fd00::7]:0")])
            + peer.headers(5, [("x-second", "block")]))
    conn._receive(memoryview(data))
    conn.flush()
    assert not conn.closed and conn.streams == {}
    sent = parse_frames(bytes(sock.sent))
    assert [(f.type, f.stream_id) for f in sent if f.stream_id] == [(frames.RST_STREAM, 5)]
    assert requests == []
