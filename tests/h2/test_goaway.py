"""GOAWAY (RFC 9113 §6.8) with streams in flight, NO_ERROR and error codes, sent by either side;
stream limits on the opening side."""

from __future__ import annotations

import pytest

from wisp.h2 import frames
from wisp.h2.connection import Connection
from wisp.h2.errors import ConnectionClosed, GoingAway, StreamLimitReached
from wisp.h2.events import DataReceived, GoAwayReceived, HeadersReceived, StreamReset
from wisp.h2.settings import Settings
from wisp.h2.testing import exchange, handshake, parse_frames, take

CONNECT = [(":method", "CONNECT"), (":authority", "10.0.0.1:80")]


def test_received_goaway_refuses_streams_above_last_and_lets_the_rest_finish(pair):
    client, server = pair
    assert [client.open_stream(CONNECT) for _ in range(2)] == [1, 3]
    exchange(client, server)
    assert [client.open_stream(CONNECT) for _ in range(2)] == [5, 7]   # in flight during GOAWAY
    server.goaway(debug=b"draining")
    events = exchange(server, client)
    assert events == [GoAwayReceived(frames.NO_ERROR, 3, b"draining"),
                      StreamReset(5, frames.REFUSED_STREAM, True), StreamReset(7, frames.REFUSED_STREAM, True)]
    assert client.stream_state(5) == "closed" and client.stream_state(3) == "open"
    assert client.open_streams == 2
    with pytest.raises(GoingAway):
        client.open_stream(CONNECT)
    client.send_data(3, b"still flowing", end_stream=True)   # below last_stream_id: continues
    assert not client.is_closed


def test_received_goaway_with_an_error_code_is_reported(pair):
    client, server = pair
    sid = client.open_stream(CONNECT)
    exchange(client, server)
    server.goaway(frames.INADEQUATE_SECURITY, b"tls")
    assert server.is_closed
    with pytest.raises(ConnectionClosed):
        server.send_headers(sid, [(":status", "200")])
    assert exchange(server, client) == [GoAwayReceived(frames.INADEQUATE_SECURITY, sid, b"tls")]
    assert client.goaway_last_stream_id == sid


def test_goaway_last_stream_id_never_grows(pair):
    client, server = pair
    frames.append_goaway(server.out, 5, frames.NO_ERROR)
    frames.append_goaway(server.out, 9, frames.NO_ERROR)
    events = exchange(server, client)
    assert [e.last_stream_id for e in events] == [5, 5]


def test_sent_goaway_refuses_later_streams_and_serves_earlier_ones(pair):
    client, server = pair
    a = client.open_stream(CONNECT)
    exchange(client, server)
    b = client.open_stream(CONNECT)   # in flight while the server sends GOAWAY
    server.goaway()
    assert parse_frames(server.out)[-1].u32() == a
    events = exchange(client, server)
    assert events == [StreamReset(b, frames.REFUSED_STREAM, False)]
    rst = parse_frames(server.out)[-1]
    assert (rst.type, rst.stream_id, rst.error_code) == (frames.RST_STREAM, b, frames.REFUSED_STREAM)
    events = exchange(server, client)
    assert events[0] == GoAwayReceived(frames.NO_ERROR, a, b"")
    assert StreamReset(b, frames.REFUSED_STREAM, True) in events
    server.send_headers(a, [(":status", "200")])
    server.send_data(a, b"done", end_stream=True)
    assert exchange(server, client)[-1] == DataReceived(a, b"done", 4, True)


def test_connection_error_goaway_names_the_last_stream_processed(pair):
    client, server = pair
    client.open_stream(CONNECT)
    client.open_stream(CONNECT)
    exchange(client, server)
    server.receive(bytes.fromhex("000001 00 00 00000000 78"))   # DATA on stream 0
    goaway = parse_frames(take(server))[-1]
    assert (goaway.type, goaway.u32(), goaway.error_code) == (frames.GOAWAY, 3, frames.PROTOCOL_ERROR)


def test_open_stream_at_the_peer_limit_raises_until_a_stream_ends():
    client = Connection(client=True)
    server = Connection(client=False, local=Settings(max_concurrent_streams=2))
    handshake(client, server)
    a = client.open_stream(CONNECT)
    client.open_stream(CONNECT)
    with pytest.raises(StreamLimitReached):
        client.open_stream(CONNECT)
    exchange(client, server)
    server.reset_stream(a)
    exchange(server, client)
    assert client.open_stream(CONNECT) == 5
    assert [type(e) for e in exchange(client, server)] == [HeadersReceived]


def test_open_stream_after_sending_goaway_raises(pair):
    client, _ = pair
    client.goaway()
    with pytest.raises(GoingAway):
        client.open_stream(CONNECT)
