"""ZDS messages: byte-compatible with Istio's zds.proto, strict about what they accept."""

from __future__ import annotations

import os
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wisp.zds import protocol, transport
from wisp.zds.protocol import Ack, Add, Del, Hello, Keep, SnapshotSent, WorkloadInfo, ZdsError


@pytest.mark.parametrize("message,wire", [
    # Bytes as protoc would produce them for istio.workload.zds messages.
    (Hello(), b"\x08\x01"),
    (Add("u1", WorkloadInfo("web", "shop", "sa")),
     b"\x0a\x15\x0a\x02u1\x12\x0f\x0a\x03web\x12\x04shop\x1a\x02sa"),
    (Keep("u1"), b"\x2a\x04\x0a\x02u1"),
    (Del("u1"), b"\x12\x04\x12\x02u1"),
    (SnapshotSent(), b"\x1a\x00"),
    (Ack(), b"\x0a\x00"),
    (Ack("no such netns"), b"\x0a\x0f\x0a\x0dno such netns"),
])
def test_messages_encode_as_istio_protobuf(message, wire):
    assert protocol.encode(message) == wire


@pytest.mark.parametrize("message", [
    Add("Kubernetes//Pod/shop/web-1", WorkloadInfo("web-1", "shop", "web")), Add("u"), Keep("u"), Del("u"),
    SnapshotSent(),
])
def test_requests_round_trip(message):
    assert protocol.decode_request(protocol.encode(message)) == message


def test_acks_round_trip():
    assert protocol.decode_response(protocol.encode(Ack("boom"))) == Ack("boom")
    assert protocol.decode_response(protocol.encode(Ack())).ok


def test_hello_with_another_version_is_refused():
    with pytest.raises(ZdsError, match="unsupported ZDS version 2"):
        protocol.decode_hello(b"\x08\x02")


@pytest.mark.parametrize("wire,fragment", [
    (b"", "exactly one payload"),
    (protocol.encode(Del("a")) + protocol.encode(SnapshotSent()), "exactly one payload"),
    (b"\x0a\x05\x0a\x02u", "runs past the end"),
    (b"\x0a\x00", "add without a uid"),
    (b"\x22\x00", "NoSnapshotPresent"),
    (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", "varint"),
    (b"\x0b", "unsupported wire type"),
    (b"\x0a\x04\x0a\x02\xff\xfe", "not UTF-8"),
])
def test_malformed_requests_are_refused_with_a_reason(wire, fragment):
    with pytest.raises(ZdsError, match=fragment):
        protocol.decode_request(wire)


@given(st.binary(max_size=256))
def test_random_bytes_either_decode_or_raise_zds_error(data):
    for decode in (protocol.decode_request, protocol.decode_response, protocol.decode_hello):
        try:
            decode(data)
        except ZdsError:
            pass


def test_add_needs_exactly_one_fd_and_nothing_else_may_carry_one():
    protocol.check_fds(Add("u"), [5])
    with pytest.raises(ZdsError, match="exactly one"):
        protocol.check_fds(Add("u"), [])
    with pytest.raises(ZdsError, match="exactly one"):
        protocol.check_fds(Add("u"), [5, 6])
    with pytest.raises(ZdsError, match="must not carry"):
        protocol.check_fds(Del("u"), [5])


def test_datagrams_carry_a_netns_fd_across_a_seqpacket_socket():
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    netns = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        transport.send_datagram(left, protocol.encode(Add("u")), netns)
        data, fds = transport.recv_datagram(right)
        assert protocol.decode_request(data) == Add("u")
        assert len(fds) == 1
        assert os.fstat(fds[0]).st_ino == os.fstat(netns).st_ino
        os.close(fds[0])
        left.close()
        assert transport.recv_datagram(right) == (b"", [])
    finally:
        os.close(netns)
        right.close()
