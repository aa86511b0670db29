"""Flow control (RFC 9113 §5.2, §6.9): exact accounting, WINDOW_UPDATE at half a window,
peers exceeding stream and connection windows, SETTINGS_INITIAL_WINDOW_SIZE changes mid-stream."""

from __future__ import annotations

import pytest

from wisp.h2 import frames
from wisp.h2.connection import Connection
from wisp.h2.errors import FlowControlError
from wisp.h2.events import ConnectionTerminated, DataReceived, StreamReset, WindowUpdated
from wisp.h2.settings import Settings
from wisp.h2.testing import RawPeer, exchange, parse_frames, take

CONNECT = [(":method", "CONNECT"), (":authority", "10.0.0.1:80")]


def updates(conn: Connection) -> list[tuple[int, int]]:
    return [(f.stream_id, f.u32()) for f in parse_frames(take(conn)) if f.type == frames.WINDOW_UPDATE]


def small_server(peer: RawPeer, **kwargs) -> Connection:
    """Stream window 1000, connection window 65535 (the default), frames up to 16 KiB."""
    conn = Connection(client=False, local=Settings(initial_window_size=1000), **kwargs)
    conn.receive(peer.client_preface())
    conn.receive(peer.settings(ack=True))
    take(conn)
    return conn


def test_window_update_is_sent_once_half_the_stream_window_is_consumed(peer):
    server = small_server(peer)
    server.receive(peer.request(1))
    server.receive(peer.data(1, b"a" * 499))
    server.consumed(1, 499)
    assert updates(server) == []
    server.receive(peer.data(1, b"a" * 1))
    server.consumed(1, 1)
    assert updates(server) == [(1, 500)]


def test_connection_window_update_at_half_the_connection_window(peer):
    server = Connection(client=False, local=Settings(initial_window_size=1 << 20, max_frame_size=1 << 16))
    server.receive(peer.client_preface())
    take(server)
    for sid in (1, 3, 5):
        server.receive(peer.request(sid))
    for sid in (1, 3):
        server.receive(peer.data(sid, b"z" * 16000))
        server.consumed(sid, 16000)
    assert updates(server) == []   # 32000 < 65535 / 2
    server.receive(peer.data(5, b"z" * 1000))
    server.consumed(5, 1000)
    assert updates(server) == [(0, 33000)]


def test_consumed_beyond_what_was_delivered_is_clamped(peer):
    server = small_server(peer)
    server.receive(peer.request(1))
    server.receive(peer.data(1, b"a" * 100))
    server.consumed(1, 10_000)
    server.receive(peer.data(1, b"a" * 400))
    server.consumed(1, 399)
    assert updates(server) == []   # only 499 of the 500 that would trigger
    server.consumed(1, 1)
    assert updates(server) == [(1, 500)]


def test_padding_is_returned_by_the_codec(peer):
    server = small_server(peer)
    server.receive(peer.request(1))
    events = server.receive(peer.data(1, b"abc", pad=200))
    assert events == [DataReceived(1, b"abc", 204, False)]
    server.receive(peer.data(1, b"abc", pad=200))
    server.receive(peer.data(1, b"", pad=100))
    assert updates(server) == [(1, 503)]   # 201 + 201 + 101 of padding; the data is still owed


def test_peer_exceeding_the_stream_window_gets_flow_control_error_on_that_stream(peer):
    server = small_server(peer)
    server.receive(peer.request(1))
    server.receive(peer.request(3))
    assert server.receive(peer.data(1, b"a" * 1000)) == [DataReceived(1, b"a" * 1000, 1000, False)]
    events = server.receive(peer.data(1, b"b") + peer.data(3, b"ok"))
    assert events == [StreamReset(1, frames.FLOW_CONTROL_ERROR, False), DataReceived(3, b"ok", 2, False)]
    sent = parse_frames(take(server))
    assert [(f.type, f.stream_id, f.error_code) for f in sent] == [(frames.RST_STREAM, 1, frames.FLOW_CONTROL_ERROR)]
    assert not server.is_closed


def test_peer_exceeding_the_connection_window_ends_the_connection(peer):
    server = Connection(client=False, local=Settings(initial_window_size=1 << 20, max_frame_size=1 << 16))
    server.receive(peer.client_preface())
    take(server)
    server.receive(peer.request(1) + peer.request(3))
    server.receive(peer.data(1, b"a" * 40000))
    events = server.receive(peer.data(3, b"b" * 25536))   # 65536 > 65535
    assert events == [ConnectionTerminated(frames.FLOW_CONTROL_ERROR, "DATA beyond the connection's flow-control window")]
    (goaway,) = parse_frames(take(server))
    assert goaway.type == frames.GOAWAY and goaway.error_code == frames.FLOW_CONTROL_ERROR


def test_data_on_a_closed_stream_still_counts_against_the_connection_window(peer):
    server = Connection(client=False, local=Settings(initial_window_size=1 << 20, max_frame_size=1 << 16))
    server.receive(peer.client_preface())
    take(server)
    server.receive(peer.request(1))
    server.reset_stream(1)
    server.receive(peer.data(1, b"x" * 40000))   # in flight when we reset: ignored, window returned
    assert updates(server) == [(0, 40000)]


def test_sender_never_exceeds_the_window_and_resumes_on_update(pair):
    client, server = pair
    sid = client.open_stream(CONNECT)
    assert client.send_window(sid) == 4 * 1024 * 1024
    client.send_data(sid, b"x" * (4 * 1024 * 1024))
    assert client.send_window(sid) == 0
    with pytest.raises(FlowControlError):
        client.send_data(sid, b"y")
    events = exchange(client, server)
    for event in events[1:]:
        server.consumed(sid, len(event.data))
    assert exchange(server, client) == [WindowUpdated(sid)] * 2   # one per half window
    assert client.send_window(sid) == 4 * 1024 * 1024


def test_connection_window_limits_all_streams_together(peer, client):
    a = client.open_stream(CONNECT)
    b = client.open_stream(CONNECT)
    client.send_data(a, b"x" * 60000)
    assert client.send_window(b) == 5535
    client.receive(peer.window_update(0, 10000))
    assert client.send_window(b) == 15535


def test_initial_window_size_change_mid_stream_adjusts_open_streams(peer, client):
    sid = client.open_stream(CONNECT)
    client.send_data(sid, b"x" * 60000)
    assert client.send_window(sid) == 5535
    client.receive(peer.window_update(0, 1 << 20))
    client.receive(peer.settings({frames.SETTINGS_INITIAL_WINDOW_SIZE: 50000}))
    assert client.send_window(sid) == 0   # 65535 - 15535 - 60000 = -10000: wait for updates
    client.receive(peer.window_update(sid, 10001))
    assert client.send_window(sid) == 1
    client.receive(peer.settings({frames.SETTINGS_INITIAL_WINDOW_SIZE: 100000}))
    assert client.send_window(sid) == 50001
    later = client.open_stream(CONNECT)
    assert client.send_window(later) == 100000


def test_initial_window_size_above_the_maximum_is_a_flow_control_error(peer, client):
    events = client.receive(peer.settings({frames.SETTINGS_INITIAL_WINDOW_SIZE: 1 << 31}))
    assert [type(e) for e in events] == [ConnectionTerminated]
    assert events[0].error_code == frames.FLOW_CONTROL_ERROR


def test_initial_window_size_change_that_overflows_a_stream_window_is_a_connection_error(peer, client):
    sid = client.open_stream(CONNECT)
    client.receive(peer.window_update(sid, frames.MAX_WINDOW - 65535))
    events = client.receive(peer.settings({frames.SETTINGS_INITIAL_WINDOW_SIZE: 65536}))
    assert [(type(e), e.error_code) for e in events] == [(ConnectionTerminated, frames.FLOW_CONTROL_ERROR)]


def test_window_update_overflowing_a_stream_resets_that_stream(peer, client):
    sid = client.open_stream(CONNECT)
    events = client.receive(peer.window_update(sid, frames.MAX_WINDOW))
    assert events == [StreamReset(sid, frames.FLOW_CONTROL_ERROR, False)]
    assert not client.is_closed


def test_window_update_overflowing_the_connection_is_a_connection_error(peer, client):
    events = client.receive(peer.window_update(0, frames.MAX_WINDOW))
    assert [(type(e), e.error_code) for e in events] == [(ConnectionTerminated, frames.FLOW_CONTROL_ERROR)]


def test_zero_window_update_is_a_stream_error_on_a_stream_and_a_connection_error_on_zero(peer, client):
    sid = client.open_stream(CONNECT)
    assert client.receive(peer.window_update(sid, 0)) == [StreamReset(sid, frames.PROTOCOL_ERROR, False)]
    events = client.receive(peer.window_update(0, 0))
    assert [(type(e), e.error_code) for e in events] == [(ConnectionTerminated, frames.PROTOCOL_ERROR)]


def test_unconsumed_data_of_a_stream_the_peer_reset_goes_back_to_the_connection(peer):
    server = Connection(client=False, local=Settings(initial_window_size=1 << 20, max_frame_size=1 << 16))
    server.receive(peer.client_preface())
    take(server)
    server.receive(peer.request(1) + peer.request(3))
    server.receive(peer.data(1, b"x" * 40000))
    assert server.receive(peer.rst(1)) == [StreamReset(1, frames.CANCEL, True)]
    assert updates(server) == [(0, 40000)]
    server.consumed(1, 40000)   # too late: already returned, not twice
    assert updates(server) == []
    assert server.receive(peer.data(3, b"y" * 60000)) == [DataReceived(3, b"y" * 60000, 60000, False)]


def test_increase_connection_window_sends_the_update_and_raises_the_refill_threshold(peer):
    server = small_server(peer)
    server.increase_connection_window((1 << 20) - 65535)
    assert updates(server) == [(0, (1 << 20) - 65535)]
    server.receive(peer.request(1, end_stream=False))
    for _ in range(100):   # 100 × 1000 bytes: within a 1 MiB window, more than 65535
        server.receive(peer.data(1, b"q" * 1000))
        server.consumed(1, 1000)
    assert not server.is_closed
    # The stream's window (1000) refills on every read; the connection's is below half of 1 MiB.
    assert updates(server) == [(1, 1000)] * 100
