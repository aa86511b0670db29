"""parse_authority with strings alone: an HBONE CONNECT's `:authority` is `ip:port` or
`[ipv6]:port`, the port in ASCII digits; anything else is InvalidAuthority, never another error."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wisp.hbone.headers import Authority, InvalidAuthority, parse_authority


@pytest.mark.parametrize("text, ip, port", [
    ("10.77.0.3:8080", "10.77.0.3", 8080),
    ("10.77.0.3:1", "10.77.0.3", 1),
    ("10.77.0.3:65535", "10.77.0.3", 65535),
    ("[fd00::3]:443", "fd00::3", 443),
])
def test_literal_ip_and_ascii_port_are_parsed(text, ip, port):
    assert parse_authority(text) == Authority(ipaddress.ip_address(ip), port)


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
                                  "fd00::3:80", "[10.77.0.3]:80", "[fd00::3]80", "１０.77.0.3:80"])
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
