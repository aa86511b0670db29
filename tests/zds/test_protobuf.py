"""The protobuf wire-format pieces shared by ZDS and the echo app's gRPC."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wisp import protobuf
from wisp.protobuf import ProtobufError


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_varints_round_trip(value):
    encoded = protobuf.encode_varint(value)
    assert protobuf.decode_varint(encoded, 0) == (value, len(encoded))


@pytest.mark.parametrize("value,wire", [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"),
                                        (300, b"\xac\x02")])
def test_varints_match_the_protobuf_encoding(value, wire):
    assert protobuf.encode_varint(value) == wire


def test_parse_keeps_varints_strings_and_the_last_occurrence():
    data = protobuf.varint(1, 5) + protobuf.string(2, "a") + protobuf.string(2, "b") + b"\x1d\x00\x00\x00\x00"
    assert protobuf.parse(data) == {1: 5, 2: b"b"}


def test_empty_strings_are_left_out_as_in_proto3():
    assert protobuf.string(1, "") == b""


@pytest.mark.parametrize("data,fragment", [
    (b"\x80", "truncated varint"),
    (b"\x08" + b"\xff" * 11, "longer than 64 bits"),
    (b"\x12\x05ab", "runs past the end"),
    (b"\x00\x01", "field number 0"),
    (b"\x0b", "unsupported wire type 3"),
    (b"\x09\x00\x00", "runs past the end"),
])
def test_malformed_messages_are_refused_with_a_reason(data, fragment):
    with pytest.raises(ProtobufError, match=fragment):
        protobuf.parse(data)


@given(st.binary(max_size=128))
def test_random_bytes_parse_or_raise_protobuf_error(data):
    try:
        protobuf.parse(data)
    except ProtobufError:
        pass
