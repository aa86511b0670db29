"""What a peer gets wrong and what the codec answers (RFC 9113 §5.1, §5.4, §6, §8): connection
errors end in GOAWAY + ConnectionTerminated, stream errors in RST_STREAM + StreamReset(remote=False),
and nothing raises."""

from __future__ import annotations

import pytest

from wisp.h2 import frames
from wisp.h2.connection import Connection
from wisp.h2.events import ConnectionTerminated, DataReceived, HeadersReceived, StreamReset
from wisp.h2.settings import Settings
from wisp.h2.testing import RawPeer, exchange, parse_frames, take

CONNECT = [(":method", "CONNECT"), (":authority", "10.0.0.1:80")]


def terminated(conn: Connection, events: list, code: int) -> None:
    assert isinstance(events[-1], ConnectionTerminated), events
    assert events[-1].error_code == code, events[-1]
    last = parse_frames(take(conn))[-1]
    assert last.type == frames.GOAWAY and last.error_code == code
    assert conn.is_closed


def test_frames_split_at_every_byte_are_reassembled(peer):
    server = Connection(client=False)
    wire = peer.client_preface() + peer.request(1) + peer.data(1, b"hello", end_stream=True) + peer.ping()
    events = []
    for i in range(len(wire)):
        events += [e if type(e) is not DataReceived else DataReceived(e.stream_id, bytes(e.data),
                                                                        e.flow_controlled_length, e.end_stream)
                   for e in server.receive(wire[i:i + 1])]
    assert [type(e).__name__ for e in events[:2]] == ["SettingsReceived", "HeadersReceived"]
    # The DATA frame is handed out as its bytes arrive, END_STREAM with the last of them.
    assert events[2:] == [DataReceived(1, bytes([c]), 1, i == 4) for i, c in enumerate(b"hello")]


def test_payloads_are_views_of_the_input_until_the_next_receive(peer, server):
    buf = bytearray(peer.request(1) + peer.data(1, b"abc"))
    events = server.receive(memoryview(buf))
    assert events[1] == DataReceived(1, b"abc", 3, False)
    assert type(events[1].data) is memoryview
    buf[-3:] = b"XYZ"  # a shell that reuses its buffer must copy what it keeps
    assert bytes(events[1].data) == b"XYZ"


def test_payloads_out_of_the_codecs_own_buffer_are_copies(peer, server):
    wire = peer.request(1) + peer.data(1, b"abc")
    server.receive(wire[:-5])  # a frame header cut short: the codec keeps it
    events = server.receive(wire[-5:])
    assert events == [DataReceived(1, b"abc", 3, False)] and type(events[0].data) is bytes


def test_a_data_frame_larger_than_a_read_streams_and_is_charged_once(peer):
    server = Connection(client=False, local=Settings(max_frame_size=1 << 20, initial_window_size=1 << 20),
                        connection_window=1 << 20)
    server.receive(peer.client_preface() + peer.request(1))
    payload = bytes(range(256)) * 1024  # 256 KiB in one frame
    wire = peer.data(1, payload, end_stream=True)
    got, windows = [], []
    for i in range(0, len(wire), 16384):
        for e in server.receive(wire[i:i + 16384]):
            assert type(e) is DataReceived
            got.append((bytes(e.data), e.flow_controlled_length, e.end_stream))
        windows.append(server._conn_recv)
    assert b"".join(g[0] for g in got) == payload
    assert sum(g[1] for g in got) == len(payload)
    assert [g[2] for g in got] == [False] * (len(got) - 1) + [True]
    assert windows[0] == (1 << 20) - len(payload) == windows[-1]  # the whole frame, at its header
    server.consumed(1, len(payload))
    assert parse_frames(take(server))  # WINDOW_UPDATE once consumed


def test_a_stream_reset_while_its_frame_streams_returns_the_rest_to_the_connection(peer):
    server = Connection(client=False, local=Settings(max_frame_size=1 << 20, initial_window_size=1 << 20),
                        connection_window=1 << 20)
    server.receive(peer.client_preface() + peer.request(1) + peer.request(3))
    wire = peer.data(1, b"x" * 100000) + peer.data(3, b"y" * 10, end_stream=True)
    first = server.receive(wire[:50000])
    assert sum(len(e.data) for e in first) == 50000 - 9
    server.consumed(1, 50000 - 9)
    server.reset_stream(1)
    rest = server.receive(wire[50000:])
    assert [(type(e).__name__, e.stream_id) for e in rest] == [("DataReceived", 3)]
    assert bytes(rest[0].data) == b"y" * 10 and rest[0].end_stream
    server.consumed(3, 10)
    # Everything stream 1 was sent came back to the connection window, with stream 3's.
    assert server._conn_recv + server._conn_unacked == 1 << 20


def test_invalid_preface_is_a_protocol_error():
    server = Connection(client=False)
    events = server.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    terminated(server, events, frames.PROTOCOL_ERROR)


def test_first_frame_must_be_settings(peer):
    server = Connection(client=False)
    events = server.receive(frames.PREFACE + peer.ping())
    terminated(server, events, frames.PROTOCOL_ERROR)


def test_frame_larger_than_max_frame_size_is_a_frame_size_error_before_it_is_buffered(peer, server):
    header_only = RawPeer.frame(frames.DATA, 0, 1, b"x" * 16385)[:9]
    events = server.receive(peer.request(1) + header_only)
    terminated(server, events, frames.FRAME_SIZE_ERROR)
    assert len(server._inbuf) == 0


def test_frame_up_to_the_advertised_max_frame_size_is_accepted(peer):
    server = Connection(client=False, local=Settings(max_frame_size=1 << 20, initial_window_size=1 << 21),
                        connection_window=1 << 22)
    server.receive(peer.client_preface() + peer.request(1))
    events = server.receive(peer.data(1, b"x" * (1 << 20)))
    assert events == [DataReceived(1, b"x" * (1 << 20), 1 << 20, False)]


@pytest.mark.parametrize("frame, code", [
    (RawPeer.frame(frames.PING, 0, 0, b"1234567"), frames.FRAME_SIZE_ERROR),
    (RawPeer.frame(frames.PING, 0, 1, b"12345678"), frames.PROTOCOL_ERROR),
    (RawPeer.frame(frames.SETTINGS, 0, 0, b"12345"), frames.FRAME_SIZE_ERROR),
    (RawPeer.frame(frames.SETTINGS, frames.FLAG_ACK, 0, b"123456"), frames.FRAME_SIZE_ERROR),
    (RawPeer.frame(frames.SETTINGS, 0, 3, b""), frames.PROTOCOL_ERROR),
    (RawPeer.frame(frames.WINDOW_UPDATE, 0, 0, b"123"), frames.FRAME_SIZE_ERROR),
    (RawPeer.frame(frames.RST_STREAM, 0, 1, b"12345"), frames.FRAME_SIZE_ERROR),
    (RawPeer.frame(frames.RST_STREAM, 0, 0, b"1234"), frames.PROTOCOL_ERROR),
    (RawPeer.frame(frames.GOAWAY, 0, 0, b"1234567"), frames.FRAME_SIZE_ERROR),
    (RawPeer.frame(frames.GOAWAY, 0, 1, b"12345678"), frames.PROTOCOL_ERROR),
    (RawPeer.frame(frames.PRIORITY, 0, 1, b"1234"), frames.FRAME_SIZE_ERROR),
    (RawPeer.frame(frames.PRIORITY, 0, 0, b"\0\0\0\1\1"), frames.PROTOCOL_ERROR),
    (RawPeer.frame(frames.DATA, 0, 0, b"x"), frames.PROTOCOL_ERROR),
    (RawPeer.frame(frames.HEADERS, frames.FLAG_END_HEADERS, 0, b"\x82"), frames.PROTOCOL_ERROR),
    (RawPeer.frame(frames.CONTINUATION, frames.FLAG_END_HEADERS, 1, b"\x82"), frames.PROTOCOL_ERROR),
    (RawPeer.frame(frames.PUSH_PROMISE, frames.FLAG_END_HEADERS, 1, b"\0\0\0\2\x82"), frames.PROTOCOL_ERROR),
    (RawPeer.settings({frames.SETTINGS_MAX_FRAME_SIZE: 16383}), frames.PROTOCOL_ERROR),
    (RawPeer.settings({frames.SETTINGS_MAX_FRAME_SIZE: 1 << 24}), frames.PROTOCOL_ERROR),
    (RawPeer.settings({frames.SETTINGS_ENABLE_PUSH: 2}), frames.PROTOCOL_ERROR),
], ids=lambda v: repr(v)[:40])
def test_malformed_frames_are_connection_errors(server, frame, code):
    terminated(server, server.receive(frame), code)


def test_data_on_an_idle_stream_is_a_protocol_error(server, peer):
    terminated(server, server.receive(peer.data(5, b"x")), frames.PROTOCOL_ERROR)


def test_rst_stream_on_an_idle_stream_is_a_protocol_error(server, peer):
    terminated(server, server.receive(peer.rst(5)), frames.PROTOCOL_ERROR)


def test_data_padding_as_long_as_the_frame_is_a_protocol_error(server, peer):
    server.receive(peer.request(1))
    bad = RawPeer.frame(frames.DATA, frames.FLAG_PADDED, 1, bytes([3]) + b"ab")
    terminated(server, server.receive(bad), frames.PROTOCOL_ERROR)


def test_push_promise_is_a_protocol_error_on_a_client(client, peer):
    client.open_stream(CONNECT)
    events = client.receive(RawPeer.frame(frames.PUSH_PROMISE, frames.FLAG_END_HEADERS, 1, b"\0\0\0\2" + peer.block([(":status", "200")])))
    terminated(client, events, frames.PROTOCOL_ERROR)


def test_server_opening_a_stream_is_a_protocol_error(client, peer):
    terminated(client, client.receive(peer.headers(2, [(":status", "200")])), frames.PROTOCOL_ERROR)


def test_server_enabling_push_is_a_protocol_error(client, peer):
    terminated(client, client.receive(peer.settings({frames.SETTINGS_ENABLE_PUSH: 1})), frames.PROTOCOL_ERROR)


def test_priority_is_ignored_even_for_idle_streams(server, peer):
    assert server.receive(peer.priority(9, 1) + peer.request(1)) == [HeadersReceived(1, CONNECT, False)]
    assert server.stream_state(9) == "idle"
    assert parse_frames(take(server)) == []


def test_unknown_frame_types_and_settings_are_ignored(server, peer):
    events = server.receive(RawPeer.frame(0x42, 0xFF, 1, b"whatever") + peer.settings({0x99: 7}) + peer.request(1))
    assert [type(e).__name__ for e in events] == ["SettingsReceived", "HeadersReceived"]


def test_malformed_hpack_is_a_compression_error(server):
    # An indexed field naming dynamic table entry 70, which does not exist.
    bad = RawPeer.frame(frames.HEADERS, frames.FLAG_END_HEADERS, 1, bytes([0x80 | 70]))
    terminated(server, server.receive(bad), frames.COMPRESSION_ERROR)


def test_truncated_hpack_is_a_compression_error(server):
    bad = RawPeer.frame(frames.HEADERS, frames.FLAG_END_HEADERS, 1, b"\x40\x0aab")   # literal cut short
    terminated(server, server.receive(bad), frames.COMPRESSION_ERROR)


def test_header_list_beyond_max_header_list_size_ends_the_connection(peer):
    server = Connection(client=False, local=Settings(max_header_list_size=1000))
    server.receive(peer.client_preface())
    take(server)
    events = server.receive(peer.headers(1, CONNECT + [("x-big", "v" * 2000)]))
    terminated(server, events, frames.ENHANCE_YOUR_CALM)


@pytest.mark.parametrize("headers", [
    [(":method", "CONNECT")],                                               # no :authority
    [(":method", "CONNECT"), (":authority", "a:1"), (":path", "/")],        # CONNECT with :path
    [(":method", "GET"), (":authority", "a")],                              # no :scheme/:path
    [(":authority", "a:1")],                                                # no :method
    [(":method", "CONNECT"), (":authority", "a:1"), (":status", "200")],    # response pseudo-header
    [(":method", "CONNECT"), (":authority", "a:1"), (":method", "GET")],    # duplicate
    [(":method", "CONNECT"), ("x", "1"), (":authority", "a:1")],            # pseudo after regular
    [(":method", "CONNECT"), (":authority", "a:1"), ("X-Upper", "1")],      # uppercase name
    [(":method", "CONNECT"), (":authority", "a:1"), ("connection", "close")],
    [(":method", "CONNECT"), (":authority", "a:1"), ("te", "gzip")],
    [(":method", "CONNECT"), (":authority", "a:1"), ("x", "a\r\nb")],
    [(":method", "CONNECT"), (":authority", "a:1"), ("x", " padded")],
    [(":method", "CONNECT"), (":authority", "a:1"), (":protocol", "websocket")],
], ids=lambda h: repr(h[-1]))
def test_malformed_requests_are_refused_with_a_stream_error(server, peer, headers):
    events = server.receive(peer.headers(1, headers) + peer.request(3))
    assert events == [StreamReset(1, frames.PROTOCOL_ERROR, False), HeadersReceived(3, CONNECT, False)]
    (rst,) = parse_frames(take(server))
    assert (rst.type, rst.stream_id, rst.error_code) == (frames.RST_STREAM, 1, frames.PROTOCOL_ERROR)


def test_connect_without_scheme_and_path_and_te_trailers_are_valid(server, peer):
    headers = CONNECT + [("te", "trailers"), ("forwarded", 'for="10.0.0.2:5000"')]
    assert server.receive(peer.headers(1, headers)) == [HeadersReceived(1, headers, False)]


def test_response_without_status_is_a_stream_error(client, peer):
    sid = client.open_stream(CONNECT)
    assert client.receive(peer.headers(sid, [("x", "1")])) == [StreamReset(sid, frames.PROTOCOL_ERROR, False)]


def test_trailers_without_end_stream_are_a_stream_error(server, peer):
    server.receive(peer.request(1))
    assert server.receive(peer.headers(1, [("x", "1")])) == [StreamReset(1, frames.PROTOCOL_ERROR, False)]


def test_stream_depending_on_itself_is_refused(server, peer):
    block = peer.block(CONNECT)
    frame = RawPeer.frame(frames.HEADERS, frames.FLAG_END_HEADERS | frames.FLAG_PRIORITY, 1,
                          b"\0\0\0\1\x10" + block)
    assert server.receive(frame) == [StreamReset(1, frames.PROTOCOL_ERROR, False)]


def test_data_after_the_peer_ended_its_side_is_a_stream_error(server, peer):
    server.receive(peer.request(1, end_stream=True))
    assert server.receive(peer.data(1, b"x")) == [StreamReset(1, frames.STREAM_CLOSED, False)]


def test_data_after_the_stream_fully_closed_is_a_connection_error(server, peer):
    server.receive(peer.request(1, end_stream=True))
    server.send_headers(1, [(":status", "200")], end_stream=True)
    assert server.stream_state(1) == "closed"
    terminated(server, server.receive(peer.data(1, b"x")), frames.STREAM_CLOSED)


def test_frames_after_the_peer_reset_a_stream_are_stream_closed(server, peer):
    server.receive(peer.request(1))
    server.receive(peer.rst(1))
    assert server.receive(peer.data(1, b"x")) == []
    (rst,) = parse_frames(take(server))
    assert (rst.type, rst.stream_id, rst.error_code) == (frames.RST_STREAM, 1, frames.STREAM_CLOSED)


def test_frames_in_flight_after_we_reset_a_stream_are_ignored(server, peer):
    server.receive(peer.request(1))
    server.reset_stream(1)
    take(server)
    assert server.receive(peer.data(1, b"x") + peer.headers(1, [("x", "1")], end_stream=True)
                          + peer.window_update(1, 5) + peer.rst(1)) == []
    assert parse_frames(take(server)) == []
    assert not server.is_closed


def test_reused_stream_id_is_refused(server, peer):
    server.receive(peer.request(3))
    # Stream 1 was skipped, so it is closed (§5.1.1): a HEADERS on it opens nothing.
    events = server.receive(peer.request(1))
    assert events == []
    assert parse_frames(take(server))[0].error_code == frames.STREAM_CLOSED


def test_input_after_a_connection_error_is_ignored(server, peer):
    server.receive(RawPeer.frame(frames.DATA, 0, 0, b"x"))
    assert server.receive(peer.request(1)) == []


def test_data_on_a_closed_stream_whose_data_is_still_unconsumed_is_a_connection_error(pair):
    client, server = pair
    sid = client.open_stream([(":method", "CONNECT"), (":authority", "a:1")], end_stream=True)
    exchange(client, server)
    server.send_headers(sid, [(":status", "200")])
    server.send_data(sid, b"unread", end_stream=True)
    exchange(server, client)
    assert client.stream_state(sid) == "closed"   # kept: the application still holds 6 bytes
    frames.append_data(server.out, sid, b"more")
    terminated(client, exchange(server, client), frames.STREAM_CLOSED)
