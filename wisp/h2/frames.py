"""HTTP/2 frame layout (RFC 9113 §4, §6): constants and builders that append frames to a bytearray.

Everything here is a plain int or a function over a bytearray, so the hot path pays no enum
lookups and no intermediate frame objects. Builders append the 9-byte header and the payload to
`buf` and do not validate what the caller guarantees (stream ids in range, payload within the
peer's frame size): `wisp.h2.connection` checks those once, before it builds.
"""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER_SIZE = 9

# Frame types (§6).
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# Flags.
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

# Error codes (§7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
SETTINGS_TIMEOUT = 0x4
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
CONNECT_ERROR = 0xA
ENHANCE_YOUR_CALM = 0xB
INADEQUATE_SECURITY = 0xC
HTTP_1_1_REQUIRED = 0xD

ERROR_NAMES = {
    NO_ERROR: "NO_ERROR",
    PROTOCOL_ERROR: "PROTOCOL_ERROR",
    INTERNAL_ERROR: "INTERNAL_ERROR",
    FLOW_CONTROL_ERROR: "FLOW_CONTROL_ERROR",
    SETTINGS_TIMEOUT: "SETTINGS_TIMEOUT",
    STREAM_CLOSED: "STREAM_CLOSED",
    FRAME_SIZE_ERROR: "FRAME_SIZE_ERROR",
    REFUSED_STREAM: "REFUSED_STREAM",
    CANCEL: "CANCEL",
    COMPRESSION_ERROR: "COMPRESSION_ERROR",
    CONNECT_ERROR: "CONNECT_ERROR",
    ENHANCE_YOUR_CALM: "ENHANCE_YOUR_CALM",
    INADEQUATE_SECURITY: "INADEQUATE_SECURITY",
    HTTP_1_1_REQUIRED: "HTTP_1_1_REQUIRED",
}

# Settings identifiers (§6.5.2).
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME_SIZE = 16384
MAX_MAX_FRAME_SIZE = (1 << 24) - 1
MAX_WINDOW = (1 << 31) - 1
MAX_STREAM_ID = (1 << 31) - 1


def error_name(code: int) -> str:
    """The RFC's name of an error code, or its hex value when it has none."""
    return ERROR_NAMES.get(code) or f"0x{code:x}"


# The 24-bit length goes out as a 16-bit high part and an 8-bit low part.
_HEADER = struct.Struct(">HBBBL")
_pack_header = _HEADER.pack
unpack_header = _HEADER.unpack_from
_U32 = struct.Struct(">L")
_U32x2 = struct.Struct(">LL")
_SETTING = struct.Struct(">HL")
_PRIORITY = struct.Struct(">LB")


def append_header(buf: bytearray, length: int, ftype: int, flags: int, stream_id: int) -> None:
    """Append a bare 9-byte frame header (the payload follows from the caller)."""
    buf += _pack_header(length >> 8, length & 0xFF, ftype, flags, stream_id)


def append_data(buf: bytearray, stream_id: int, data, end_stream: bool = False) -> None:
    """One DATA frame; `data` must fit the peer's SETTINGS_MAX_FRAME_SIZE."""
    n = len(data)
    buf += _pack_header(n >> 8, n & 0xFF, DATA, FLAG_END_STREAM if end_stream else 0, stream_id)
    if n:
        buf += data


def append_header_block(
    buf: bytearray, stream_id: int, block: bytes, *, end_stream: bool, max_frame_size: int
) -> None:
    """HEADERS, then as many CONTINUATION frames as `block` needs at `max_frame_size`."""
    flags = FLAG_END_STREAM if end_stream else 0
    if len(block) <= max_frame_size:
        n = len(block)
        buf += _pack_header(n >> 8, n & 0xFF, HEADERS, flags | FLAG_END_HEADERS, stream_id)
        buf += block
        return
    view = memoryview(block)
    ftype = HEADERS
    while view:
        piece = view[:max_frame_size]
        view = view[max_frame_size:]
        n = len(piece)
        last = FLAG_END_HEADERS if not view else 0
        buf += _pack_header(n >> 8, n & 0xFF, ftype, flags | last, stream_id)
        buf += piece
        ftype, flags = CONTINUATION, 0


def append_rst_stream(buf: bytearray, stream_id: int, error_code: int) -> None:
    buf += _pack_header(0, 4, RST_STREAM, 0, stream_id)
    buf += _U32.pack(error_code)


def append_settings(buf: bytearray, settings: dict[int, int] | None = None, *, ack: bool = False) -> None:
    """SETTINGS with `settings` (identifier → value), or an empty SETTINGS ACK."""
    items = settings or {}
    n = 6 * len(items)
    buf += _pack_header(n >> 8, n & 0xFF, SETTINGS, FLAG_ACK if ack else 0, 0)
    for ident, value in items.items():
        buf += _SETTING.pack(ident, value)


def append_ping(buf: bytearray, opaque: bytes, *, ack: bool = False) -> None:
    buf += _pack_header(0, 8, PING, FLAG_ACK if ack else 0, 0)
    buf += opaque


def append_goaway(buf: bytearray, last_stream_id: int, error_code: int, debug: bytes = b"") -> None:
    n = 8 + len(debug)
    buf += _pack_header(n >> 8, n & 0xFF, GOAWAY, 0, 0)
    buf += _U32x2.pack(last_stream_id, error_code)
    buf += debug


def append_window_update(buf: bytearray, stream_id: int, increment: int) -> None:
    buf += _pack_header(0, 4, WINDOW_UPDATE, 0, stream_id)
    buf += _U32.pack(increment)


def append_priority(buf: bytearray, stream_id: int, depends_on: int, weight: int = 15,
                    exclusive: bool = False) -> None:
    """PRIORITY (deprecated by RFC 9113; never sent by wisp, built for tests and tools)."""
    buf += _pack_header(0, 5, PRIORITY, 0, stream_id)
    buf += _PRIORITY.pack(depends_on | (0x80000000 if exclusive else 0), weight)


def append_frame(buf: bytearray, ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> None:
    """Any frame, payload given whole (PUSH_PROMISE, unknown types, deliberately broken frames)."""
    n = len(payload)
    buf += _pack_header(n >> 8, n & 0xFF, ftype, flags, stream_id)
    buf += payload
