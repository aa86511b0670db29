"""Hostile peers (issue 10 part 7): CONTINUATION floods, streams beyond the limit, rapid reset,
PING and SETTINGS floods against a peer that does not read. The connection survives what it can
and ends with GOAWAY ENHANCE_YOUR_CALM when it cannot, buffering a bounded amount either way."""

from __future__ import annotations

from wisp.h2 import frames
from wisp.h2.connection import Connection
from wisp.h2.events import ConnectionTerminated, DataReceived, HeadersReceived, StreamReset
from wisp.h2.settings import Settings
from wisp.h2.testing import RawPeer, parse_frames, take

CONNECT = [(":method", "CONNECT"), (":authority", "10.0.0.1:80")]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def started(peer: RawPeer, **kwargs) -> Connection:
    local = kwargs.pop("local", Settings(max_concurrent_streams=200, max_frame_size=1 << 20))
    conn = Connection(client=False, local=local, **kwargs)
    conn.receive(peer.client_preface())
    take(conn)
    return conn


def test_continuation_flood_is_cut_off_at_the_header_block_limit(peer):
    server = started(peer, header_block_limit=16 * 1024)
    block = b"\x00" * 1000   # never decoded: the limit trips first
    events = server.receive(RawPeer.frame(frames.HEADERS, 0, 1, block))
    for _ in range(15):
        assert server.receive(RawPeer.frame(frames.CONTINUATION, 0, 1, block)) == []
    assert len(server._cont_block) == 16000
    # The next frame header alone is enough: its payload is never waited for or buffered.
    events = server.receive(RawPeer.frame(frames.CONTINUATION, 0, 1, b"\x00" * (1 << 20))[:9])
    assert events == [ConnectionTerminated(frames.ENHANCE_YOUR_CALM, "header block exceeds 16384 bytes")]
    assert len(server._cont_block) == 0 and len(server._inbuf) == 0
    assert parse_frames(take(server))[-1].error_code == frames.ENHANCE_YOUR_CALM


def test_single_headers_frame_above_the_limit_is_refused_on_its_header(peer):
    server = started(peer, header_block_limit=16 * 1024)
    events = server.receive(RawPeer.frame(frames.HEADERS, frames.FLAG_END_HEADERS, 1, b"\0" * 20000)[:9])
    assert [(type(e), e.error_code) for e in events] == [(ConnectionTerminated, frames.ENHANCE_YOUR_CALM)]


def test_header_block_in_continuations_within_the_limit_is_decoded(peer):
    server = started(peer)
    block = peer.block(CONNECT + [("x-long", "v" * 3000)])
    wire = (RawPeer.frame(frames.HEADERS, 0, 1, block[:1000])
            + RawPeer.frame(frames.CONTINUATION, 0, 1, block[1000:2000])
            + RawPeer.frame(frames.CONTINUATION, frames.FLAG_END_HEADERS, 1, block[2000:]))
    assert server.receive(wire) == [HeadersReceived(1, CONNECT + [("x-long", "v" * 3000)], False)]


def test_frame_between_headers_and_continuation_is_a_protocol_error(peer):
    server = started(peer)
    block = peer.block(CONNECT)
    events = server.receive(RawPeer.frame(frames.HEADERS, 0, 1, block) + peer.ping())
    assert [(type(e), e.error_code) for e in events] == [(ConnectionTerminated, frames.PROTOCOL_ERROR)]


def test_stream_beyond_the_local_limit_is_refused_and_the_connection_lives_on(peer):
    server = started(peer, local=Settings(max_concurrent_streams=2))
    events = server.receive(peer.request(1) + peer.request(3) + peer.request(5))
    assert events == [HeadersReceived(1, CONNECT, False), HeadersReceived(3, CONNECT, False),
                      StreamReset(5, frames.REFUSED_STREAM, False)]
    (rst,) = parse_frames(take(server))
    assert (rst.type, rst.stream_id, rst.error_code) == (frames.RST_STREAM, 5, frames.REFUSED_STREAM)
    assert server.open_streams == 2 and not server.is_closed
    # Data the peer sent on the refused stream is dropped; a slot freed is usable again.
    assert server.receive(peer.data(5, b"x")) == []
    server.receive(peer.rst(1))
    assert server.receive(peer.request(7)) == [HeadersReceived(7, CONNECT, False)]


def test_rapid_reset_ends_the_connection_with_enhance_your_calm(peer):
    clock = Clock()
    server = started(peer, max_resets_per_window=100, reset_window=1.0, clock=clock)
    wire = b"".join(peer.request(sid) + peer.rst(sid) for sid in range(1, 201, 2))
    assert server.receive(wire) == []   # 100 pairs, each hidden within the read
    events = server.receive(peer.request(201) + peer.rst(201))
    assert [(type(e), e.error_code) for e in events] == [(ConnectionTerminated, frames.ENHANCE_YOUR_CALM)]


def test_resets_at_a_sustainable_rate_are_allowed(peer):
    clock = Clock()
    server = started(peer, max_resets_per_window=100, reset_window=1.0, clock=clock)
    for sid in range(1, 1001, 2):   # 500 resets over 10 s: 50 per second
        server.receive(peer.request(sid))
        clock.now += 0.02
        assert server.receive(peer.rst(sid)) == [StreamReset(sid, frames.CANCEL, True)]
    assert not server.is_closed


def test_streams_refused_at_the_limit_count_as_resets(peer):
    server = started(peer, local=Settings(max_concurrent_streams=1), max_resets_per_window=10, clock=Clock())
    server.receive(peer.request(1))
    events = server.receive(b"".join(peer.request(sid) for sid in range(3, 27, 2)))
    assert isinstance(events[-1], ConnectionTerminated) and events[-1].error_code == frames.ENHANCE_YOUR_CALM


def test_stream_opened_and_reset_in_one_read_is_never_reported(peer):
    server = started(peer)
    events = server.receive(peer.request(1) + peer.data(1, b"x" * 1000) + peer.rst(1) + peer.request(3))
    assert events == [HeadersReceived(3, CONNECT, False)]
    assert server.open_streams == 1
    # The hidden stream's data went back to the connection window: 65535 received in total fits.
    server.receive(peer.data(3, b"y" * 64535))
    assert not server.is_closed


def test_stream_reset_never_produces_a_later_headers_received(peer):
    server = started(peer)
    server.receive(peer.request(1))
    assert server.receive(peer.rst(1)) == [StreamReset(1, frames.CANCEL, True)]
    events = server.receive(peer.headers(1, [("x", "1")], end_stream=True) + peer.request(1))
    assert [e for e in events if isinstance(e, HeadersReceived)] == []
    assert not server.is_closed


def test_ping_flood_against_a_peer_that_does_not_read_is_bounded(peer):
    server = started(peer, max_queued_control_frames=50)
    for _ in range(50):
        assert server.receive(peer.ping()) == []
    events = server.receive(peer.ping())
    assert [(type(e), e.error_code) for e in events] == [(ConnectionTerminated, frames.ENHANCE_YOUR_CALM)]
    assert len(server.out) < 50 * 17 + 200


def test_pings_answered_and_written_do_not_count(peer):
    server = started(peer, max_queued_control_frames=50)
    for _ in range(500):
        assert server.receive(peer.ping()) == []
        del server.out[:17]   # the shell wrote the answer
    assert not server.is_closed


def test_settings_flood_against_a_peer_that_does_not_read_is_bounded(peer):
    server = started(peer, max_queued_control_frames=20)
    events = server.receive(b"".join(peer.settings({frames.SETTINGS_MAX_FRAME_SIZE: 20000}) for _ in range(21)))
    assert [(type(e), e.error_code) for e in events[-1:]] == [(ConnectionTerminated, frames.ENHANCE_YOUR_CALM)]
    assert len(events) == 21


def test_large_data_frames_in_pieces_keep_only_one_frame_buffered(peer):
    server = started(peer, local=Settings(max_frame_size=1 << 20, initial_window_size=1 << 22),
                     connection_window=1 << 23)
    server.receive(peer.request(1))
    wire = peer.data(1, b"z" * (1 << 20)) * 4
    got = 0
    for i in range(0, len(wire), 65536):
        for event in server.receive(wire[i:i + 65536]):
            assert isinstance(event, DataReceived)
            got += len(event.data)
        assert len(server._inbuf) <= (1 << 20) + 9
    assert got == 4 << 20


def test_memory_of_closed_streams_is_bounded(peer):
    server = started(peer, max_resets_per_window=10_000)
    for sid in range(1, 6001, 2):
        server.receive(peer.request(sid, end_stream=True))
        server.send_headers(sid, [(":status", "200")], end_stream=True)
        take(server)
    assert server.open_streams == 0
    assert len(server._streams) == 0 and len(server._closed) <= 1024
