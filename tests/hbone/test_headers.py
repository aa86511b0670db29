"""parse_authority with strings alone: an HBONE CONNECT's `:authority` is `ip:port` or
`[ipv6]:port`, the port in ASCII digits; anything else is InvalidAuthority, never another error."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wisp.hbone.headers import Authority, InvalidAuthority, forwarded, forwarded_host, new_traceparent, parse_authority


@pytest.mark.parametrize("text, ip, port, version", [
    ("10.77.0.3:8080", "10.77.0.3", 8080, 4),
    ("10.77.0.3:1", "10.77.0.3", 1, 4),
    ("10.77.0.3:65535", "10.77.0.3", 65535, 4),
    ("[fd00::3]:443", "fd00::3", 443, 6),
    ("[FD00:0::3]:443", "fd00::3", 443, 6),  # the form socket addresses have
    ("[::ffff:10.0.0.1]:80", "::ffff:10.0.0.1", 80, 6),
])
def test_literal_ip_and_ascii_port_are_parsed(text, ip, port, version):
    assert parse_authority(text) == Authority(ip, port, version)


@given(st.ip_addresses(), st.integers(1, 65535))
def test_every_address_parses_to_the_form_sockets_report(ip, port):
    text = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    parsed = parse_authority(text)
    assert (parsed.ip, parsed.port, parsed.version) == (socket.inet_ntop(family, ip.packed), port, ip.version)
    assert str(parsed) == text.replace(str(ip), parsed.ip)


@given(st.text(alphabet="0123456789abcdefABCDEF.:%x ", max_size=24))
def test_an_address_is_accepted_exactly_when_ipaddress_accepts_it(host):
    try:
        expected = ipaddress.ip_address(host)
    except ValueError:
        expected = None
    if expected is not None and "%" in host:
        expected = None  # a zone index: ipaddress takes it, an HBONE target may not carry one
    text = f"[{host}]:80" if ":" in host else f"{host}:80"
    try:
        parsed = parse_authority(text)
    except InvalidAuthority:
        assert expected is None
        return
    assert expected is not None and parsed.version == expected.version


# Each of these passes str.isdigit(); int() raises on the first two and reads the others.
@pytest.mark.parametrize("port", ["²", "8080²", "٨٠", "８０", "߀1", "𝟠𝟘"])
def test_a_port_of_non_ascii_digits_is_an_invalid_authority(port):
    assert port.isdigit()
    with pytest.raises(InvalidAuthority, match="no valid port"):
        parse_authority(f"10.77.0.3:{port}")
    with pytest.raises(InvalidAuthority, match="no valid port"):
        parse_authority(f"[fd00::3]:{port}")


@pytest.mark.parametrize("text", ["", "10.77.0.3", "10.77.0.3:", "10.77.0.3:0", "10.77.0.3:65536",
                                  "10.77.0.3:+80", "10.77.0.3: 80", "10.77.0.3:-1", "web:80",
                                  "fd00::3:80", "[10.77.0.3]:80", "[fd00::3]80", "１０.77.0.3:80", "010.77.0.3:80",
                                  "[fe80::1%eth0]:80"])
def test_malformed_authorities_are_refused(text):
    with pytest.raises(InvalidAuthority):
        parse_authority(text)


@given(st.text(max_size=40) | st.builds(lambda p: f"10.0.0.1:{p}", st.text(max_size=8)))
def test_any_text_parses_or_is_an_invalid_authority(text):
    try:
        parsed = parse_authority(text)
    except InvalidAuthority:
        return
    assert 0 < parsed.port < 65536 and str(parsed.port) in text


@pytest.mark.parametrize("client, host, expected", [
    (("10.244.1.5", 40000), None, 'for="10.244.1.5:40000"'),
    (("fd00::5", 40000), None, 'for="[fd00::5]:40000"'),
    (("10.244.1.5", 40000), "web.shop.svc.cluster.local", 'for="10.244.1.5:40000";host=web.shop.svc.cluster.local'),
    (None, "web.shop.svc.cluster.local", "host=web.shop.svc.cluster.local"),
])
def test_forwarded_names_the_client_and_the_service_it_addressed(client, host, expected):
    assert forwarded(client, host) == expected
    assert forwarded_host(forwarded(client, host)) == host


def test_traceparents_are_well_formed_and_unique():
    seen = {new_traceparent() for _ in range(1000)}
    assert len(seen) == 1000
    for value in seen:
        version, trace, span, flags = value.split("-")
        assert (version, flags, len(trace), len(span)) == ("00", "00", 32, 16)
        assert int(trace, 16) and int(span, 16)
