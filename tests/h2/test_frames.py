"""Frame builders produce what RFC 9113 §6 lays out (checked by hyperframe's independent parser)."""

from __future__ import annotations

import hyperframe.frame as hf

from wisp.h2 import frames


def parse(buf: bytearray) -> hf.Frame:
    frame, length = hf.Frame.parse_frame_header(memoryview(bytes(buf[:9])))
    frame.parse_body(memoryview(bytes(buf[9:9 + length])))
    assert len(buf) == 9 + length
    return frame


def test_data_frame_carries_payload_and_end_stream():
    buf = bytearray()
    frames.append_data(buf, 5, b"hello", end_stream=True)
    frame = parse(buf)
    assert isinstance(frame, hf.DataFrame)
    assert (frame.stream_id, frame.data, frame.flags) == (5, b"hello", {"END_STREAM"})


def test_header_block_splits_into_continuations_at_the_frame_size():
    buf = bytearray()
    frames.append_header_block(buf, 3, b"a" * 40000, end_stream=True, max_frame_size=16384)
    first = hf.Frame.parse_frame_header(memoryview(bytes(buf[:9])))[0]
    assert isinstance(first, hf.HeadersFrame) and first.flags == {"END_STREAM"}
    kinds, pos, total = [], 0, 0
    while pos < len(buf):
        frame, length = hf.Frame.parse_frame_header(memoryview(bytes(buf[pos:pos + 9])))
        kinds.append((type(frame).__name__, sorted(frame.flags), length))
        total += length
        pos += 9 + length
    assert kinds == [("HeadersFrame", ["END_STREAM"], 16384), ("ContinuationFrame", [], 16384),
                     ("ContinuationFrame", ["END_HEADERS"], 40000 - 32768)]
    assert total == 40000


def test_small_header_block_is_one_headers_frame():
    buf = bytearray()
    frames.append_header_block(buf, 1, b"xyz", end_stream=False, max_frame_size=16384)
    frame = parse(buf)
    assert isinstance(frame, hf.HeadersFrame)
    assert frame.flags == {"END_HEADERS"} and frame.data == b"xyz"


def test_control_frames():
    buf = bytearray()
    frames.append_rst_stream(buf, 7, frames.REFUSED_STREAM)
    assert parse(buf).error_code == frames.REFUSED_STREAM
    buf = bytearray()
    frames.append_settings(buf, {frames.SETTINGS_MAX_FRAME_SIZE: 1 << 20, frames.SETTINGS_ENABLE_PUSH: 0})
    assert parse(buf).settings == {frames.SETTINGS_MAX_FRAME_SIZE: 1 << 20, frames.SETTINGS_ENABLE_PUSH: 0}
    buf = bytearray()
    frames.append_settings(buf, ack=True)
    assert parse(buf).flags == {"ACK"}
    buf = bytearray()
    frames.append_ping(buf, b"abcdefgh", ack=True)
    frame = parse(buf)
    assert (frame.opaque_data, frame.flags) == (b"abcdefgh", {"ACK"})
    buf = bytearray()
    frames.append_goaway(buf, 9, frames.ENHANCE_YOUR_CALM, b"why")
    frame = parse(buf)
    assert (frame.last_stream_id, frame.error_code, frame.additional_data) == (9, 11, b"why")
    buf = bytearray()
    frames.append_window_update(buf, 3, 1 << 20)
    assert parse(buf).window_increment == 1 << 20
    buf = bytearray()
    frames.append_priority(buf, 3, 1, weight=200, exclusive=True)
    frame = parse(buf)
    assert (frame.depends_on, frame.stream_weight, frame.exclusive) == (1, 200, True)


def test_error_names():
    assert frames.error_name(frames.ENHANCE_YOUR_CALM) == "ENHANCE_YOUR_CALM"
    assert frames.error_name(0x99) == "0x99"
