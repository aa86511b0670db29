"""The CONNECT request's fields: authority, baggage, forwarded and traceparent, as ztunnel sends them."""

from __future__ import annotations

import random
import socket
from collections.abc import Mapping
from dataclasses import dataclass


class InvalidAuthority(ValueError):
    """A CONNECT `:authority` that is not `ip:port` or `[ipv6]:port`."""


@dataclass(slots=True, frozen=True)
class Authority:
    """A parsed target: `ip` in the text form the socket module gives addresses (inet_ntop's),
    so it compares equal to `getsockname()`'s."""

    ip: str
    port: int
    version: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.version == 6 else f"{self.ip}:{self.port}"


def parse_authority(text: str) -> Authority:
    """Parse an HBONE target; only literal IPs are allowed (no names, no zones)."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise InvalidAuthority(f"authority {text!r} is not [ipv6]:port")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise InvalidAuthority(f"authority {text!r} is not ip:port")
    # inet_pton rather than ipaddress: the same strictness (four decimal octets without leading
    # zeros, no zone index) at a tenth of the cost, once per connection.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        packed = socket.inet_pton(family, host)
    except (OSError, ValueError):
        raise InvalidAuthority(f"authority {text!r} does not name an IP address") from None
    if text.startswith("[") and family != socket.AF_INET6:
        raise InvalidAuthority(f"authority {text!r} brackets an IPv4 address")
    ip = host if family == socket.AF_INET else socket.inet_ntop(family, packed)
    # ASCII digits only: str.isdigit() also accepts '²' or '٣', which int() then refuses or reads.
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise InvalidAuthority(f"authority {text!r} has no valid port (1-65535)")
    return Authority(ip, int(port), 6 if family == socket.AF_INET6 else 4)


def new_traceparent() -> str:
    """A W3C traceparent with fresh trace and span ids, not sampled (as ztunnel sends).

    From `random`, not the kernel: trace ids need to be unique, not secret (W3C Trace Context
    §3.2.2.3), and two getrandom calls were 1.2% of a ztunnel's CPU under connection churn."""
    # The module's generator: the random module reseeds it in a forked child, so workers differ.
    trace, span = random.getrandbits(128) or 1, random.getrandbits(64) or 1  # all-zero ids are invalid
    return f"00-{trace:032x}-{span:016x}-00"


def baggage(values: Mapping[str, str | None]) -> str:
    """`k=v` pairs joined by commas, empty values left out (W3C baggage, ztunnel's keys)."""
    return ",".join(f"{k}={v}" for k, v in values.items() if v)


def parse_baggage(value: str) -> dict[str, str]:
    result = {}
    for member in value.split(","):
        key, sep, val = member.strip().partition("=")
        if sep and key:
            result[key.strip()] = val.split(";", 1)[0].strip()
    return result


def forwarded(client: tuple[str, int] | None, host: str | None = None) -> str:
    """`for="ip:port"` and, when the client addressed a service, `;host=<fqdn>`."""
    parts = []
    if client is not None:
        ip, port = client  # a socket address: already in canonical form
        addr = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        parts.append(f'for="{addr}"')
    if host:
        parts.append(f"host={host}")
    return ";".join(parts)


def forwarded_host(value: str) -> str | None:
    """The `host=` parameter of a Forwarded header (the only part a receiver trusts)."""
    for element in value.split(","):
        for pair in element.split(";"):
            key, sep, val = pair.strip().partition("=")
            if sep and key.lower() == "host":
                return val.strip('"') or None
    return None


def connect_headers(
    authority: Authority | str,
    *,
    baggage_values: Mapping[str, str | None] | None = None,
    client: tuple[str, int] | None = None,
    service_host: str | None = None,
    traceparent: str | None = None,
) -> list[tuple[bytes, bytes]]:
    """HTTP/2 headers of an HBONE CONNECT request."""
    headers = [(b":method", b"CONNECT"), (b":authority", str(authority).encode("ascii"))]
    if baggage_values:
        value = baggage(baggage_values)
        if value:
            headers.append((b"baggage", value.encode()))
    fwd = forwarded(client, service_host)
    if fwd:
        headers.append((b"forwarded", fwd.encode()))
    headers.append((b"traceparent", (traceparent or new_traceparent()).encode("ascii")))
    return headers
