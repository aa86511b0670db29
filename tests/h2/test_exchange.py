"""A client Connection and a server Connection talking through bytes alone: every frame type in
both directions, CONNECT tunnels with half-close, interleaved streams."""

from __future__ import annotations

import pytest

from wisp.h2 import frames
from wisp.h2.connection import Connection
from wisp.h2.errors import FlowControlError, H2Error, StreamClosedError
from wisp.h2.events import (
    DataReceived,
    GoAwayReceived,
    HeadersReceived,
    PingAcked,
    SettingsAcked,
    SettingsReceived,
    StreamReset,
    WindowUpdated,
)
from wisp.h2.settings import Settings
from wisp.h2.testing import exchange, parse_frames, take

CONNECT = [(":method", "CONNECT"), (":authority", "10.244.1.10:8080"),
           ("baggage", "k8s.namespace.name=shop"), ("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-00")]


def test_handshake_exchanges_settings_both_ways_and_the_connection_window():
    client = Connection(client=True, local=Settings(initial_window_size=1 << 22), connection_window=1 << 24)
    server = Connection(client=False, local=Settings(max_concurrent_streams=200))
    client.initiate()
    sent = take(client)
    assert sent.startswith(frames.PREFACE)
    kinds = [(f.type, f.stream_id) for f in parse_frames(sent)]
    assert kinds == [(frames.SETTINGS, 0), (frames.WINDOW_UPDATE, 0)]
    events = server.receive(sent)
    assert events == [SettingsReceived({frames.SETTINGS_ENABLE_PUSH: 0, frames.SETTINGS_INITIAL_WINDOW_SIZE: 1 << 22}),
                      WindowUpdated(0)]
    assert server.peer_settings.initial_window_size == 1 << 22
    server.initiate()
    events = exchange(server, client)
    assert events == [SettingsReceived({frames.SETTINGS_ENABLE_PUSH: 0, frames.SETTINGS_MAX_CONCURRENT_STREAMS: 200}),
                      SettingsAcked()]
    assert client.peer_settings.max_concurrent_streams == 200
    assert exchange(client, server) == [SettingsAcked()]


def test_connect_tunnel_with_half_close_both_ways(pair):
    client, server = pair
    sid = client.open_stream(CONNECT)
    assert sid == 1
    assert exchange(client, server) == [HeadersReceived(1, CONNECT, False)]
    server.send_headers(1, [(":status", "200")])
    assert exchange(server, client) == [HeadersReceived(1, [(":status", "200")], False)]
    client.send_data(1, b"request bytes")
    client.end_stream(1)
    assert client.stream_state(1) == "half-closed (local)"
    events = exchange(client, server)
    assert events == [DataReceived(1, b"request bytes", 13, False), DataReceived(1, b"", 0, True)]
    assert server.stream_state(1) == "half-closed (remote)"
    server.send_data(1, b"response bytes", end_stream=True)
    assert exchange(server, client) == [DataReceived(1, b"response bytes", 14, True)]
    assert server.stream_state(1) == "closed" and server.open_streams == 0
    assert client.open_streams == 0


def test_interleaved_streams_keep_their_own_data(pair):
    client, server = pair
    ids = [client.open_stream(CONNECT) for _ in range(3)]
    assert ids == [1, 3, 5]
    exchange(client, server)
    for sid in reversed(ids):
        server.send_headers(sid, [(":status", "200")])
    exchange(server, client)
    for round_ in range(3):
        for sid in ids:
            client.send_data(sid, f"{sid}:{round_};".encode())
    got: dict[int, bytes] = {}
    for event in exchange(client, server):
        got[event.stream_id] = got.get(event.stream_id, b"") + event.data
    assert got == {sid: b"".join(f"{sid}:{r};".encode() for r in range(3)) for sid in ids}
    assert server.open_streams == 3


def test_request_with_body_and_trailers_from_the_server(pair):
    client, server = pair
    request = [(":method", "POST"), (":scheme", "https"), (":path", "/wisp.Config/Stream"),
               (":authority", "cp:15012"), ("content-type", "application/grpc")]
    sid = client.open_stream(request)
    client.send_data(sid, b"ack", end_stream=True)
    assert exchange(client, server) == [HeadersReceived(sid, request, False), DataReceived(sid, b"ack", 3, True)]
    server.send_headers(sid, [(":status", "100")])
    server.send_headers(sid, [(":status", "200")])
    server.send_data(sid, b"snapshot")
    server.send_headers(sid, [("grpc-status", "0")], end_stream=True)
    assert exchange(server, client) == [
        HeadersReceived(sid, [(":status", "100")], False),
        HeadersReceived(sid, [(":status", "200")], False),
        DataReceived(sid, b"snapshot", 8, False),
        HeadersReceived(sid, [("grpc-status", "0")], True),
    ]
    assert client.stream_state(sid) == "closed"


def test_rst_stream_both_directions(pair):
    client, server = pair
    a = client.open_stream(CONNECT)
    b = client.open_stream(CONNECT)
    exchange(client, server)
    client.reset_stream(a)
    assert exchange(client, server) == [StreamReset(a, frames.CANCEL, True)]
    server.reset_stream(b, frames.CONNECT_ERROR)
    assert exchange(server, client) == [StreamReset(b, frames.CONNECT_ERROR, True)]
    assert client.open_streams == 0 and server.open_streams == 0
    with pytest.raises(StreamClosedError):
        client.send_data(a, b"late")


def test_ping_both_directions_is_answered_by_the_codec(pair):
    client, server = pair
    client.ping(b"client!!")
    assert exchange(client, server) == []
    assert exchange(server, client) == [PingAcked(b"client!!")]
    server.ping(b"server!!")
    assert exchange(server, client) == []
    assert exchange(client, server) == [PingAcked(b"server!!")]


def test_settings_change_mid_connection_is_acknowledged(pair):
    client, server = pair
    frames.append_settings(server.out, {frames.SETTINGS_MAX_CONCURRENT_STREAMS: 7})
    server._settings_unacked += 1
    assert exchange(server, client) == [SettingsReceived({frames.SETTINGS_MAX_CONCURRENT_STREAMS: 7})]
    assert client.peer_settings.max_concurrent_streams == 7
    assert exchange(client, server) == [SettingsAcked()]


def test_window_update_both_directions(pair):
    client, server = pair
    sid = client.open_stream(CONNECT)
    exchange(client, server)
    server.send_headers(sid, [(":status", "200")])
    exchange(server, client)
    half = 2 * 1024 * 1024
    client.send_data(sid, b"x" * half)
    events = exchange(client, server)
    assert [len(e.data) for e in events] == [1024 * 1024, 1024 * 1024]   # split at max_frame_size
    for event in events:
        server.consumed(sid, event.flow_controlled_length)
    kinds = [(f.type, f.stream_id) for f in parse_frames(server.out)]
    assert kinds == [(frames.WINDOW_UPDATE, sid)]   # the connection's 16 MiB window is not half used
    assert exchange(server, client) == [WindowUpdated(sid)]
    assert client.send_window(sid) == 4 * 1024 * 1024
    server.send_data(sid, b"y" * half)
    exchange(server, client)
    client.consumed(sid, half)
    assert exchange(client, server) == [WindowUpdated(sid)]


def test_a_data_frame_header_for_a_payload_sent_behind_it(pair):
    # What wisp.engine.hbone sends from the read buffer's headroom: the same bytes send_data
    # would queue, the windows accounted, refused while other frames wait in `out`.
    client, server = pair
    sid = client.open_stream(CONNECT)
    exchange(client, server)
    server.send_headers(sid, [(":status", "200")])
    exchange(server, client)
    with pytest.raises(H2Error, match="still queued"):
        client.ping(b"12345678")
        client.data_frame_header(sid, 10)
    take(client)
    window = client.send_window(sid)
    payload = b"p" * 20000
    wire = client.data_frame_header(sid, len(payload)) + payload
    assert client.out == b""
    assert client.send_window(sid) == window - len(payload)
    assert server.receive(wire) == [DataReceived(sid, payload, len(payload), False)]
    with pytest.raises(FlowControlError):
        client.data_frame_header(sid, client.send_window(sid) + 1)
    client.end_stream(sid)
    take(client)
    with pytest.raises(StreamClosedError):
        client.data_frame_header(sid, 1)


def test_goaway_both_directions(pair):
    client, server = pair
    sid = client.open_stream(CONNECT)
    exchange(client, server)
    server.goaway(debug=b"draining")
    assert exchange(server, client) == [GoAwayReceived(frames.NO_ERROR, sid, b"draining")]
    client.goaway(frames.NO_ERROR)
    assert exchange(client, server) == [GoAwayReceived(frames.NO_ERROR, 0, b"")]
    assert client.goaway_sent and client.goaway_received


def test_header_values_go_out_as_plain_literals_unless_huffman_is_asked_for():
    import hpack

    for huffman, visible in ((False, True), (True, False)):
        client = Connection(client=True, huffman=huffman)
        client.initiate()
        take(client)
        client.open_stream(CONNECT)
        (headers,) = parse_frames(take(client))
        assert (b"k8s.namespace.name=shop" in headers.payload) is visible
        assert hpack.Decoder().decode(headers.payload) == CONNECT


def test_a_field_marked_true_is_never_indexed(pair):
    import hpack

    client, server = pair
    client.open_stream(CONNECT[:2] + [("traceparent", "00-unique-00", True), ("baggage", "k=v")])
    (headers,) = parse_frames(take(client))
    decoder = hpack.Decoder()
    assert decoder.decode(headers.payload)[2] == ("traceparent", "00-unique-00")
    assert [name for name, _ in decoder.header_table.dynamic_entries] == [b"baggage", b":authority", b":method"]
