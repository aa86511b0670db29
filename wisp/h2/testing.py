"""Test helpers for code built on wisp.h2, shipped with it (as trio ships trio.testing).

`RawPeer` writes arbitrary frames, valid or not, with its own HPACK encoder, for tests that
play a misbehaving peer; `parse_frames` splits what a Connection sent into `Frame`s to assert on;
`handshake` and `exchange` move bytes between two Connections.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import hpack

from . import frames
from .connection import Connection


@dataclass(slots=True, frozen=True)
class Frame:
    type: int
    flags: int
    stream_id: int
    payload: bytes

    def u32(self, offset: int = 0) -> int:
        return struct.unpack_from(">L", self.payload, offset)[0]

    @property
    def error_code(self) -> int:
        """RST_STREAM's code, or GOAWAY's."""
        return self.u32(4 if self.type == frames.GOAWAY else 0)


def parse_frames(data: bytes | bytearray) -> list[Frame]:
    """Every whole frame in `data`, after a client preface if it starts with one."""
    data = bytes(data)
    if data.startswith(frames.PREFACE):
        data = data[len(frames.PREFACE):]
    found = []
    pos = 0
    while len(data) - pos >= 9:
        hi, lo, ftype, flags, sid = frames.unpack_header(data, pos)
        length = hi << 8 | lo
        if pos + 9 + length > len(data):
            break
        found.append(Frame(ftype, flags, sid & frames.MAX_STREAM_ID, data[pos + 9:pos + 9 + length]))
        pos += 9 + length
    return found


def take(conn: Connection) -> bytes:
    """Everything `conn` queued to send, removed from its `out`."""
    data = bytes(conn.out)
    del conn.out[:]
    return data


def exchange(a: Connection, b: Connection) -> list:
    """Deliver what `a` queued to `b`; returns `b`'s events."""
    return b.receive(take(a))


def handshake(client: Connection, server: Connection) -> None:
    """Prefaces, SETTINGS and their ACKs both ways."""
    client.initiate()
    server.initiate()
    exchange(client, server)
    exchange(server, client)
    exchange(client, server)


class RawPeer:
    """Builds frames as a peer would send them, including ones no correct peer sends."""

    def __init__(self) -> None:
        self.encoder = hpack.Encoder()

    def block(self, headers: list[tuple[str, str]]) -> bytes:
        return self.encoder.encode(headers)

    @staticmethod
    def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
        buf = bytearray()
        frames.append_frame(buf, ftype, flags, sid, payload)
        return bytes(buf)

    def client_preface(self, settings: dict[int, int] | None = None) -> bytes:
        return frames.PREFACE + self.settings(settings)

    @staticmethod
    def settings(values: dict[int, int] | None = None, *, ack: bool = False) -> bytes:
        buf = bytearray()
        frames.append_settings(buf, values, ack=ack)
        return bytes(buf)

    def headers(self, sid: int, headers: list[tuple[str, str]], *, end_stream: bool = False,
                end_headers: bool = True) -> bytes:
        flags = (frames.FLAG_END_STREAM if end_stream else 0) | (frames.FLAG_END_HEADERS if end_headers else 0)
        return self.frame(frames.HEADERS, flags, sid, self.block(headers))

    def request(self, sid: int, authority: str = "10.0.0.1:80", *, end_stream: bool = False) -> bytes:
        return self.headers(sid, [(":method", "CONNECT"), (":authority", authority)], end_stream=end_stream)

    @staticmethod
    def data(sid: int, payload: bytes, *, end_stream: bool = False, pad: int | None = None) -> bytes:
        flags = frames.FLAG_END_STREAM if end_stream else 0
        if pad is not None:
            flags |= frames.FLAG_PADDED
            payload = bytes([pad]) + payload + b"\0" * pad
        return RawPeer.frame(frames.DATA, flags, sid, payload)

    @staticmethod
    def rst(sid: int, code: int = frames.CANCEL) -> bytes:
        buf = bytearray()
        frames.append_rst_stream(buf, sid, code)
        return bytes(buf)

    @staticmethod
    def window_update(sid: int, increment: int) -> bytes:
        buf = bytearray()
        frames.append_window_update(buf, sid, increment)
        return bytes(buf)

    @staticmethod
    def ping(opaque: bytes = b"\0" * 8, *, ack: bool = False) -> bytes:
        buf = bytearray()
        frames.append_ping(buf, opaque, ack=ack)
        return bytes(buf)

    @staticmethod
    def goaway(last: int, code: int = frames.NO_ERROR, debug: bytes = b"") -> bytes:
        buf = bytearray()
        frames.append_goaway(buf, last, code, debug)
        return bytes(buf)

    @staticmethod
    def priority(sid: int, depends_on: int) -> bytes:
        buf = bytearray()
        frames.append_priority(buf, sid, depends_on)
        return bytes(buf)
