"""The waypoint's HTTP/1.1 codec (waypoint/http1/codec.py) with bytes alone."""

from __future__ import annotations

import pytest

from waypoint.http1 import codec
from waypoint.http1.codec import DATA, END, HEAD, ParseError, Parser


def feed(parser: Parser, data: bytes, *, split: int | None = None) -> list:
    """Events as plain values (DATA copied), the input optionally cut in two at `split`."""
    parts = [data] if split is None else [data[:split], data[split:]]
    events = []
    for part in parts:
        events += [(k, bytes(v) if k == DATA else v) for k, v in parser.receive(memoryview(part))]
    return events


def body_of(events: list) -> bytes:
    return b"".join(v for k, v in events if k == DATA)


def refusal(data: bytes, *, request: bool = True) -> ParseError:
    with pytest.raises(ParseError) as info:
        Parser(request=request).receive(data)
    return info.value


REQUEST = b"POST /a?b=1 HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\nX-Thing:  v  \r\n\r\nhello"


def test_a_request_with_content_length_gives_head_body_end():
    events = feed(Parser(request=True), REQUEST)
    assert [k for k, _ in events] == [HEAD, DATA, END]
    head = events[0][1]
    assert (head.method, head.target, head.authority, head.framing, head.length) == (
        b"POST", b"/a?b=1", b"echo", codec.LENGTH, 5)
    assert (b"x-thing", b"v") in head.headers  # names lower-cased, values trimmed
    assert body_of(events) == b"hello"


@pytest.mark.parametrize("split", range(1, len(REQUEST)))
def test_a_request_cut_anywhere_parses_the_same(split):
    events = feed(Parser(request=True), REQUEST, split=split)
    assert events[0][0] == HEAD and events[-1][0] == END
    assert body_of(events) == b"hello"


def test_a_head_arriving_byte_by_byte_is_found_once_whole():
    parser = Parser(request=True)
    events = []
    for byte in REQUEST:
        events += feed(parser, bytes([byte]))
    assert [k for k, _ in events][0] == HEAD and events[-1][0] == END
    assert body_of(events) == b"hello"


def test_chunked_body_is_decoded_with_trailers():
    data = (b"PUT / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nx-sum: 42\r\n\r\n")
    for split in range(1, len(data)):
        events = feed(Parser(request=True), data, split=split)
        assert body_of(events) == b"hello0123456789"
        assert events[-1] == (END, [(b"x-sum", b"42")])


def test_pipelined_requests_wait_for_next_message():
    parser = Parser(request=True)
    events = feed(parser, b"GET /1 HTTP/1.1\r\nhost: x\r\n\r\nGET /2 HTTP/1.1\r\nhost: x\r\n\r\n")
    assert [k for k, _ in events] == [HEAD, END]
    assert parser.done
    second = parser.next_message()
    assert second[0][1].target == b"/2"


def test_leading_empty_lines_before_a_request_are_skipped():
    events = feed(Parser(request=True), b"\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert events[0][1].target == b"/"


@pytest.mark.parametrize("data, status", [
    (b"GET  / HTTP/1.1\r\nhost: x\r\n\r\n", 400),  # malformed request line
    (b"GET /\r\nhost: x\r\n\r\n", 400),
    (b"G(T / HTTP/1.1\r\nhost: x\r\n\r\n", 400),  # method not a token
    (b"GET /a b HTTP/1.1\r\nhost: x\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nhost: x\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nhost: x\r\nx-a: 1\rx-b: 2\r\n\r\n", 400),  # bare CR: CR in a value
    (b"GET / HTTP/1.1\r\nhost: x\r\nx-a: 1\nx-b: 2\r\n\r\n", 400),  # bare LF
    (b"GET / HTTP/1.1\r\nhost: x\r\nx-a: 1\x00\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n folded\r\n\r\n", 400),  # obs-fold
    (b"GET / HTTP/1.1\r\nhost: x\r\nx-a : 1\r\n\r\n", 400),  # space before the colon
    (b"GET / HTTP/1.1\r\nhost: x\r\nno colon\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1x\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nhost: x\r\nexpect: something\r\n\r\n", 417),
])
def test_requests_http11_refuses_get_their_status(data, status):
    assert refusal(data).status == status


@pytest.mark.parametrize("body", [
    b"zz\r\nhello\r\n0\r\n\r\n",  # size not hex
    b"5\r\nhelloXX0\r\n\r\n",  # no CRLF after the data
    b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
    b"ffffffffffffffffff\r\n",  # absurd size
])
def test_invalid_chunked_encoding_is_refused_with_400(body):
    head = b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    error = refusal(head + body)
    assert error.status == 400


def test_a_head_over_64_kib_is_refused_with_431_before_it_ends():
    parser = Parser(request=True)
    parser.receive(b"GET / HTTP/1.1\r\nhost: x\r\n")
    with pytest.raises(ParseError) as info:
        for _ in range(70):
            parser.receive(b"x-filler: " + b"a" * 1000 + b"\r\n")
    assert info.value.status == 431


def test_more_than_100_fields_is_431():
    data = b"GET / HTTP/1.1\r\nhost: x\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(101)) + b"\r\n"
    assert refusal(data).status == 431


def test_eof_mid_body_is_an_error_and_between_messages_is_not():
    parser = Parser(request=True)
    feed(parser, b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
    with pytest.raises(ParseError):
        parser.eof()
    idle = Parser(request=True)
    assert idle.eof() == []


def test_response_framing_head_request_and_interim_responses():
    parser = Parser(request=False)
    parser.expect_response_to(b"HEAD")
    events = feed(parser, b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n")
    assert [k for k, _ in events] == [HEAD, END]  # no body after a HEAD
    parser = Parser(request=False)
    parser.expect_response_to(b"GET")
    events = feed(parser, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    assert events[0][1].status == 204 and events[-1][0] == END


def test_a_close_delimited_response_ends_at_eof():
    parser = Parser(request=False)
    events = feed(parser, b"HTTP/1.1 200 OK\r\n\r\nabc")
    assert events[0][1].framing == codec.UNTIL_CLOSE and not events[0][1].keep_alive
    assert parser.eof() == [(END, [])]


def test_hop_by_hop_fields_and_those_connection_names_are_dropped():
    headers = [(b"connection", b"x-private, close"), (b"x-private", b"1"), (b"keep-alive", b"timeout=5"),
               (b"te", b"trailers"), (b"transfer-encoding", b"chunked"), (b"upgrade", b"h2c"),
               (b"proxy-connection", b"keep-alive"), (b"content-length", b"3"), (b"x-kept", b"yes")]
    parser = Parser(request=True)
    head = feed(parser, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: x-private, close\r\n\r\n")[0][1]
    assert codec.hop_by_hop(headers, head.connection) == [(b"x-kept", b"yes")]


def test_encoding_a_head_and_chunks():
    data = codec.encode_request_head(b"GET", b"/p", b"h", [(b"a", b"1")], codec.CHUNKED)
    assert data == b"GET /p HTTP/1.1\r\nhost: h\r\na: 1\r\ntransfer-encoding: chunked\r\n\r\n"
    assert b"".join(codec.encode_chunk(b"hello")) == b"5\r\nhello\r\n"
    big = b"x" * 20000
    pieces = codec.encode_chunk(memoryview(big))
    assert len(pieces) == 3 and bytes(b"".join(bytes(p) for p in pieces)) == b"4e20\r\n" + big + b"\r\n"
    assert codec.encode_last_chunk([(b"t", b"1")]) == b"0\r\nt: 1\r\n\r\n"
