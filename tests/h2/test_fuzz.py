"""Random frame sequences, valid and garbage, split at random points: the codec never raises,
keeps its buffers bounded, and after every read has either consumed every complete frame or
ended the connection with GOAWAY."""

from __future__ import annotations

import hpack
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from wisp.h2 import frames
from wisp.h2.connection import Connection
from wisp.h2.errors import H2Error
from wisp.h2.events import ConnectionTerminated, DataReceived
from wisp.h2.settings import Settings
from wisp.h2.testing import RawPeer, parse_frames

LIMIT = 4096
MAX_FRAME = 16384
MAX_STREAMS = 4

sids = st.integers(0, 12) | st.integers(0, frames.MAX_STREAM_ID)
u32 = st.integers(0, 0xFFFFFFFF)
header_lists = st.lists(
    st.sampled_from([(":method", "CONNECT"), (":authority", "10.0.0.1:80"), (":status", "200"),
                     (":path", "/"), (":scheme", "https"), (":method", "GET"), ("x", "y"), ("X", "y"),
                     ("te", "trailers"), ("connection", "close"), ("grpc-status", "0")]), max_size=5)


def hpack_block(headers: list[tuple[str, str]]) -> bytes:
    return hpack.Encoder().encode(headers)   # a fresh table: later blocks may still index stale entries


@st.composite
def frame(draw) -> bytes:
    kind = draw(st.integers(0, 12))
    sid = draw(sids)
    flags = draw(st.integers(0, 255))
    if kind == 0:
        return RawPeer.data(sid, draw(st.binary(max_size=300)), end_stream=draw(st.booleans()))
    if kind == 1:
        block = hpack_block(draw(header_lists))
        return RawPeer.frame(frames.HEADERS, flags & ~frames.FLAG_PADDED & ~frames.FLAG_PRIORITY, sid, block)
    if kind == 2:
        return RawPeer.frame(frames.CONTINUATION, flags, sid, draw(st.binary(max_size=2000)))
    if kind == 3:
        return RawPeer.rst(sid, draw(st.integers(0, 15)))
    if kind == 4:
        return RawPeer.window_update(sid, draw(u32))
    if kind == 5:
        values = draw(st.dictionaries(st.integers(0, 10), u32, max_size=4))
        return RawPeer.settings(values, ack=draw(st.booleans()) and not values)
    if kind == 6:
        return RawPeer.ping(draw(st.binary(min_size=8, max_size=8)), ack=draw(st.booleans()))
    if kind == 7:
        return RawPeer.goaway(draw(u32) & frames.MAX_STREAM_ID, draw(st.integers(0, 15)), draw(st.binary(max_size=20)))
    if kind == 8:
        return RawPeer.priority(sid, draw(sids))
    if kind == 9:   # any frame type and flags with a random payload
        return RawPeer.frame(draw(st.integers(0, 20)), flags, sid, draw(st.binary(max_size=64)))
    if kind == 10:  # a request that is likely valid, so streams really open
        return RawPeer().request(draw(st.integers(1, 40)) | 1, end_stream=draw(st.booleans()))
    if kind == 11:  # a frame header announcing a large frame
        return bytes(draw(st.binary(min_size=9, max_size=9)))
    return draw(st.binary(max_size=40))   # garbage


@st.composite
def plausible_frame(draw) -> bytes:
    """Frames a correct peer could send, on a few odd streams, so streams open, flow and close."""
    sid = draw(st.integers(0, 7)) * 2 + 1
    kind = draw(st.integers(0, 7))
    if kind == 6:   # padded DATA, the pad length byte possibly wrong or missing
        return RawPeer.frame(frames.DATA, frames.FLAG_PADDED | draw(st.sampled_from([0, 1])), sid,
                             draw(st.binary(max_size=8)))
    if kind == 7:   # a complete header block of random bytes
        return RawPeer.frame(frames.HEADERS, frames.FLAG_END_HEADERS, sid, draw(st.binary(max_size=30)))
    if kind == 0:
        return RawPeer.data(sid, b"d" * draw(st.integers(0, 3000)), end_stream=draw(st.booleans()))
    if kind == 1:
        return RawPeer.rst(sid)
    if kind == 2:
        return RawPeer.window_update(draw(st.sampled_from([0, sid])), draw(st.integers(1, 1 << 20)))
    if kind == 3:
        return RawPeer.ping()
    if kind == 4:
        return RawPeer.settings({frames.SETTINGS_INITIAL_WINDOW_SIZE: draw(st.integers(0, 1 << 20))})
    return RawPeer().request(sid, end_stream=draw(st.booleans()))


frames_strategy = st.one_of(plausible_frame(), plausible_frame(), plausible_frame(), frame())


def check_after_read(conn: Connection) -> None:
    assert len(conn._cont_block) <= LIMIT
    assert len(conn._closed) <= 1025
    assert len(conn._control_ends) <= 1000
    assert conn._active_peer <= MAX_STREAMS
    inbuf = conn._inbuf
    if conn.is_closed:
        return
    # Progress: no complete frame left unparsed.
    if len(inbuf) >= 9 and not conn._need_preface:
        hi, lo, *_ = frames.unpack_header(inbuf, 0)
        assert len(inbuf) < 9 + (hi << 8 | lo)
        assert hi << 8 | lo <= MAX_FRAME
    assert len(inbuf) < 9 + MAX_FRAME + 24


def app_step(conn: Connection, events: list, action: int) -> None:
    """What an application might do next; only local misuse may raise, and only H2Error."""
    for event in events:
        if isinstance(event, DataReceived) and action & 1:
            conn.consumed(event.stream_id, event.flow_controlled_length)
    try:
        sid = next((e.stream_id for e in events if hasattr(e, "stream_id") and e.stream_id), 1)
        if action == 2:
            conn.send_headers(sid, [(":status", "200")])
        elif action == 4:
            conn.send_data(sid, b"x" * min(100, conn.send_window(sid)))
        elif action == 6:
            conn.reset_stream(sid)
        elif action == 8 and conn.client:
            conn.open_stream([(":method", "CONNECT"), (":authority", "a:1")])
    except H2Error:
        pass


def run(conn: Connection, prefix: bytes, chunks: list[bytes], actions: list[int]) -> None:
    conn.initiate()
    for i, data in enumerate([prefix] + chunks):
        events = conn.receive(data)
        terminated = [e for e in events if isinstance(e, ConnectionTerminated)]
        if terminated:
            assert events[-1] is terminated[0] and len(terminated) == 1
            assert parse_frames(conn.out)[-1].type == frames.GOAWAY
        check_after_read(conn)
        app_step(conn, events, actions[i % len(actions)])
        if len(conn.out) > 1 << 20:
            del conn.out[: len(conn.out) // 2]
    opened = conn._last_peer_id if not conn.client else conn.last_local_stream_id
    event("terminated" if conn.is_closed else "alive")
    event(f"streams seen: {min(opened, 9)}")


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    return out


def make(client: bool) -> Connection:
    return Connection(client=client, header_block_limit=LIMIT, max_queued_control_frames=1000,
                      local=Settings(max_concurrent_streams=MAX_STREAMS, max_frame_size=MAX_FRAME,
                                     max_header_list_size=8192))


fuzz = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz
@given(st.lists(frames_strategy, max_size=40), st.lists(st.integers(0, 1 << 16), max_size=8),
       st.lists(st.integers(0, 9), min_size=1, max_size=5), st.integers(0, 4).map(bool))
def test_server_never_raises_and_stays_bounded(frame_list, cuts, actions, well_started):
    # Mostly a correct start with streams 1 and 3 open, sometimes a preface without SETTINGS.
    prefix = frames.PREFACE + (RawPeer.settings() + RawPeer().request(1) + RawPeer().request(3)
                               if well_started else b"")
    run(make(client=False), prefix, chunked(b"".join(frame_list), cuts), actions)


@fuzz
@given(st.lists(frames_strategy, max_size=40), st.lists(st.integers(0, 1 << 16), max_size=8),
       st.lists(st.integers(0, 9), min_size=1, max_size=5))
def test_client_never_raises_and_stays_bounded(frame_list, cuts, actions):
    conn = make(client=True)
    conn.initiate()
    conn.open_stream([(":method", "CONNECT"), (":authority", "a:1")])
    conn.open_stream([(":method", "CONNECT"), (":authority", "b:1")])
    run(conn, RawPeer.settings(), chunked(b"".join(frame_list), cuts), actions)


@fuzz
@given(st.binary(max_size=3000))
def test_pure_garbage_after_the_preface_never_raises(data):
    conn = make(client=False)
    run(conn, frames.PREFACE + RawPeer.settings(), [data], [0])
