"""The echo app's gRPC service, as plain functions: message framing, protobuf, and the one method.

The service is

    service Echo { rpc Echo(EchoRequest) returns (EchoResponse); }   // package wisp.echo
    message EchoRequest  { string message = 1; }
    message EchoResponse { string message = 1; string peer = 2; string hostname = 3; }

Its messages hold only strings, so a few lines of protobuf wire format replace generated code:
varints, length-delimited fields, and skipping the field types a newer client might add.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from wisp import protobuf

METHOD = "/wisp.echo.Echo/Echo"
CONTENT_TYPE = "application/grpc"
# gRPC's default limit on a received message.
MAX_MESSAGE = 4 * 1024 * 1024
_PREFIX = struct.Struct("!BI")


class Status(IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class WireError(ValueError):
    """Bytes that are not a valid gRPC message stream or protobuf message."""


@dataclass(slots=True, frozen=True)
class Reply:
    status: Status
    message: str = ""  # grpc-message, for errors
    body: bytes = b""  # framed response messages, for OK


def call(method: str, body: bytes, *, body_bytes: int, peer: str, hostname: str) -> Reply:
    """Answer one unary call. `body` is the request's DATA, `body_bytes` how much arrived."""
    if method != METHOD:
        return Reply(Status.UNIMPLEMENTED, f"unknown method {method}; this server has {METHOD}")
    if body_bytes > len(body) or body_bytes > _PREFIX.size + MAX_MESSAGE:
        return Reply(Status.RESOURCE_EXHAUSTED, f"request larger than {MAX_MESSAGE} bytes")
    try:
        messages = unframe(body)
        if len(messages) != 1:
            return Reply(Status.UNIMPLEMENTED if not messages else Status.INTERNAL,
                         f"a unary call takes one request message, got {len(messages)}")
        fields = decode_strings(messages[0], {1})
    except WireError as exc:
        return Reply(Status.INTERNAL, f"could not read EchoRequest: {exc}")
    response = encode_strings({1: fields.get(1, ""), 2: peer, 3: hostname})
    return Reply(Status.OK, body=frame(response))


def frame(message: bytes) -> bytes:
    """One length-prefixed, uncompressed gRPC message."""
    return _PREFIX.pack(0, len(message)) + message


def unframe(data: bytes) -> list[bytes]:
    messages = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < _PREFIX.size:
            raise WireError("truncated message prefix")
        compressed, length = _PREFIX.unpack_from(data, pos)
        pos += _PREFIX.size
        if compressed:
            raise WireError("compressed messages are not supported (no grpc-encoding was agreed)")
        if len(data) - pos < length:
            raise WireError("truncated message")
        messages.append(data[pos:pos + length])
        pos += length
    return messages


def grpc_message(text: str) -> str:
    """Percent-encode a grpc-message value as the gRPC HTTP/2 protocol requires."""
    return "".join(
        chr(byte) if 0x20 <= byte <= 0x7E and byte != 0x25 else f"%{byte:02X}"
        for byte in text.encode()
    )


# -- protobuf wire format ----------------------------------------------------------------------

def encode_strings(fields: dict[int, str]) -> bytes:
    """A message of string fields; empty strings are left out, as proto3 does."""
    return b"".join(protobuf.string(number, text) for number, text in sorted(fields.items()))


def decode_strings(data: bytes, wanted: set[int]) -> dict[int, str]:
    """The string fields numbered in `wanted`; every other field is skipped."""
    try:
        parsed = protobuf.parse(data)
        fields = {number: protobuf.text(parsed, number, f"field {number}")
                  for number in wanted if isinstance(parsed.get(number), bytes)}
    except protobuf.ProtobufError as exc:
        raise WireError(str(exc)) from None
    return fields
