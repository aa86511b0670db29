"""Properties of the outside-facing parsers, for hypothesis (the fuzz targets check that bad input
is refused cleanly; these check that good input is read right, however it arrives)."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from waypoint.http1.codec import DATA, END, HEAD, Parser
from wisp.hbone.headers import parse_authority
from wisp.zds import protocol
from wisp.zds.protocol import Add, Del, Keep, SnapshotSent, WorkloadInfo

tokens = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
values = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=0, max_size=20)


@st.composite
def requests(draw) -> tuple[bytes, list[tuple[bytes, list, bytes]]]:
    """A few pipelined HTTP/1.1 requests as a client writes them, and what each should read as."""
    wire = b""
    expected = []
    for _ in range(draw(st.integers(1, 3))):
        method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE"]))
        target = b"/" + draw(tokens).encode()
        fields = [(b"host", b"cart.shop")] + [(b"x-" + draw(tokens).encode(), draw(values).encode())
                                              for _ in range(draw(st.integers(0, 3)))]
        body = draw(st.binary(max_size=200))
        chunked = draw(st.booleans())
        head = method + b" " + target + b" HTTP/1.1\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields)
        if chunked:
            wire += head + b"transfer-encoding: chunked\r\n\r\n"
            if body:
                wire += b"%x\r\n" % len(body) + body + b"\r\n"
            wire += b"0\r\n\r\n"
        else:
            wire += head + b"content-length: %d\r\n\r\n" % len(body) + body
        expected.append((method, target, body))
    return wire, expected


def read_all(wire: bytes, cuts: list[int]) -> list[tuple[bytes, bytes, bytes]]:
    parser = Parser(request=True)
    messages: list[tuple[bytes, bytes, bytes]] = []
    current: list = []

    def take(events) -> None:
        for kind, value in events:
            if kind == HEAD:
                current[:] = [value.method, value.target, b""]
            elif kind == DATA:
                current[2] += bytes(value)
            elif kind == END:
                messages.append(tuple(current))

    points = sorted({c % (len(wire) + 1) for c in cuts})
    for start, end in zip([0] + points, points + [len(wire)]):
        take(parser.receive(wire[start:end]))
        while parser.done:
            take(parser.next_message())
    return messages


@settings(max_examples=300, deadline=None)
@given(requests(), st.lists(st.integers(0, 10_000), max_size=8))
def test_http1_requests_read_the_same_however_the_bytes_are_split(case, cuts):
    wire, expected = case
    assert read_all(wire, cuts) == expected


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.integers(1, 65535))
def test_an_hbone_authority_parses_to_its_address_and_back(ip, port):
    text = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    authority = parse_authority(text)
    assert ipaddress.ip_address(authority.ip) == ip and authority.port == port
    assert parse_authority(str(authority)) == authority


names = st.text(min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.builds(Add, names, st.builds(WorkloadInfo, st.text(max_size=20), st.text(max_size=20), st.text(max_size=20))),
    st.builds(Keep, names), st.builds(Del, names), st.just(SnapshotSent())))
def test_a_zds_request_survives_encoding_and_decoding(message):
    assert protocol.decode_request(protocol.encode(message)) == message
