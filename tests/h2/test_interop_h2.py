"""wisp.h2 against the h2 library (used only here, as an independent peer), both ways."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings

from wisp.h2 import frames
from wisp.h2.connection import Connection
from wisp.h2.events import DataReceived, GoAwayReceived, HeadersReceived, PingAcked, StreamReset
from wisp.h2.settings import Settings
from wisp.h2.testing import take

MiB = 1024 * 1024
CONNECT = [(":method", "CONNECT"), (":authority", "10.244.1.10:8080"), ("baggage", "k8s.cluster.name=c1")]


def h2_peer(client_side: bool) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=client_side, header_encoding="latin-1"))
    conn.local_settings = h2.settings.Settings(client=client_side, initial_values={
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4 * MiB,
        h2.settings.SettingCodes.MAX_FRAME_SIZE: 1 * MiB,
    })
    conn.max_inbound_frame_size = 1 * MiB
    conn.initiate_connection()
    conn.increment_flow_control_window(16 * MiB - 65535)
    return conn


def ours(client: bool) -> Connection:
    conn = Connection(client=client, local=Settings(initial_window_size=4 * MiB, max_frame_size=MiB,
                                                    max_concurrent_streams=None if client else 200),
                      connection_window=16 * MiB)
    conn.initiate()
    return conn


def to_h2(conn: Connection, peer: h2.connection.H2Connection) -> list:
    return peer.receive_data(take(conn))


def test_our_client_tunnels_through_an_h2_server():
    server = h2_peer(client_side=False)
    client = ours(client=True)
    to_h2(client, server)
    client.receive(server.data_to_send())
    sid = client.open_stream(CONNECT)
    client.send_data(sid, b"x" * (3 * MiB))
    events = to_h2(client, server)
    request = next(e for e in events if isinstance(e, h2.events.RequestReceived))
    assert request.headers == CONNECT
    got = sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived))
    assert got == 3 * MiB   # beyond h2's 65535 default: our window settings reached it
    server.send_headers(sid, [(":status", "200")])
    server.send_data(sid, b"y" * 100_000, end_stream=True)
    events = client.receive(server.data_to_send())
    assert events[0] == HeadersReceived(sid, [(":status", "200")], False)
    assert sum(len(e.data) for e in events[1:]) == 100_000 and events[-1].end_stream
    client.consumed(sid, 100_000)
    client.end_stream(sid)
    events = to_h2(client, server)
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)
    client.ping(b"pingpong")
    to_h2(client, server)
    assert client.receive(server.data_to_send()) == [PingAcked(b"pingpong")]


def test_h2_client_tunnels_through_our_server():
    client = h2_peer(client_side=True)
    server = ours(client=False)
    server.receive(client.data_to_send())
    client.receive_data(take(server))
    server.receive(client.data_to_send())
    for sid in (1, 3):
        client.send_headers(sid, CONNECT)
        client.send_data(sid, bytes([sid]) * 70_000)
    events = server.receive(client.data_to_send())
    assert [e.stream_id for e in events if isinstance(e, HeadersReceived)] == [1, 3]
    for e in events:
        if isinstance(e, DataReceived):
            server.consumed(e.stream_id, len(e.data))
    server.send_headers(1, [(":status", "200")])
    server.send_data(1, b"ok", end_stream=True)
    server.reset_stream(3, frames.CONNECT_ERROR)
    events = to_h2(server, client)
    kinds = [type(e).__name__ for e in events]
    assert "ResponseReceived" in kinds and "StreamEnded" in kinds
    reset = next(e for e in events if isinstance(e, h2.events.StreamReset))
    assert (reset.stream_id, reset.error_code) == (3, h2.errors.ErrorCodes.CONNECT_ERROR)
    # h2 took our 4 MiB stream window (70,000 consumed is below the half-window threshold).
    assert client.local_flow_control_window(3) == 4 * MiB - 70_000
    client.send_headers(5, CONNECT)
    client.reset_stream(5)
    client.ping(b"12345678")
    assert server.receive(client.data_to_send()) == []   # opened and reset in one read: unseen
    events = client.receive_data(take(server))
    assert any(isinstance(e, h2.events.PingAckReceived) for e in events)


def test_goaway_between_h2_and_us_both_ways():
    client = h2_peer(client_side=True)
    server = ours(client=False)
    server.receive(client.data_to_send())
    client.receive_data(take(server))
    client.send_headers(1, CONNECT)
    server.receive(client.data_to_send())
    server.goaway(debug=b"drain")
    events = to_h2(server, client)
    term = next(e for e in events if isinstance(e, h2.events.ConnectionTerminated))
    assert (term.error_code, term.last_stream_id, term.additional_data) == (0, 1, b"drain")

    peer = h2_peer(client_side=False)
    ours_client = ours(client=True)
    to_h2(ours_client, peer)
    ours_client.receive(peer.data_to_send())
    sid = ours_client.open_stream(CONNECT)
    to_h2(ours_client, peer)
    ours_client.open_stream(CONNECT)
    peer.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR, last_stream_id=sid)
    events = ours_client.receive(peer.data_to_send())
    assert events == [GoAwayReceived(0, sid, b""), StreamReset(sid + 2, frames.REFUSED_STREAM, True)]


def test_h2_detects_our_flow_control_and_we_detect_its_violations():
    client = h2_peer(client_side=True)
    server = Connection(client=False, local=Settings(initial_window_size=1000))
    server.receive(client.data_to_send())
    client.receive_data(take(server))
    server.receive(client.data_to_send())
    client.send_headers(1, CONNECT)
    assert client.local_flow_control_window(1) == 1000   # h2 took our window
    client.send_data(1, b"a" * 1000)
    # Bypass h2's own check to play a peer that overruns the window.
    client._get_stream_by_id(1).outbound_flow_control_window += 10
    client.outbound_flow_control_window += 10
    client.send_data(1, b"b" * 10)
    events = server.receive(client.data_to_send())
    assert events[-1] == StreamReset(1, frames.FLOW_CONTROL_ERROR, False)
    reset = [e for e in client.receive_data(take(server)) if isinstance(e, h2.events.StreamReset)]
    assert reset[0].error_code == h2.errors.ErrorCodes.FLOW_CONTROL_ERROR
