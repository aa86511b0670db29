"""The few protobuf wire-format pieces wisp needs, for messages small enough to encode by hand.

ZDS (Istio's zds.proto) and the echo app's gRPC messages are a handful of string, varint and
nested fields; a code generator and its runtime would be larger than the messages. Decoding is
strict about structure (truncation, overruns, field 0, group wire types) and keeps unknown
fields, as protobuf does.
"""

from __future__ import annotations

VARINT, I64, LEN, I32 = 0, 1, 2, 5


class ProtobufError(ValueError):
    """Bytes that are not a well-formed protobuf message."""


def encode_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varints here are unsigned")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        if shift > 63:
            raise ProtobufError("varint longer than 64 bits")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def length_delimited(number: int, payload: bytes) -> bytes:
    return encode_varint(number << 3 | LEN) + encode_varint(len(payload)) + payload


def string(number: int, text: str) -> bytes:
    """A string field; proto3 leaves empty strings out."""
    return length_delimited(number, text.encode()) if text else b""


def varint(number: int, value: int) -> bytes:
    return encode_varint(number << 3 | VARINT) + encode_varint(value)


def parse(data: bytes) -> dict[int, bytes | int]:
    """Top-level fields: varints as ints, length-delimited as bytes; the last occurrence wins."""
    fields: dict[int, bytes | int] = {}
    pos = 0
    while pos < len(data):
        key, pos = decode_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ProtobufError("field number 0")
        if wire_type == VARINT:
            fields[number], pos = decode_varint(data, pos)
        elif wire_type == LEN:
            size, pos = decode_varint(data, pos)
            if pos + size > len(data):
                raise ProtobufError(f"field {number} runs past the end of the message")
            fields[number] = bytes(data[pos:pos + size])
            pos += size
        elif wire_type in (I64, I32):
            pos += 8 if wire_type == I64 else 4
            if pos > len(data):
                raise ProtobufError(f"field {number} runs past the end of the message")
        else:
            raise ProtobufError(f"unsupported wire type {wire_type} in field {number}")
    return fields


def text(fields: dict[int, bytes | int], number: int, what: str) -> str:
    """A string field of a parsed message ("" when absent)."""
    value = fields.get(number, b"")
    if not isinstance(value, bytes):
        raise ProtobufError(f"{what} must be a string")
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise ProtobufError(f"{what} is not UTF-8") from None
