"""The CONNECT request's fields: authority, baggage, forwarded and traceparent, as ztunnel sends them."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class InvalidAuthority(ValueError):
    """A CONNECT `:authority` that is not `ip:port` or `[ipv6]:port`."""


@dataclass(slots=True, frozen=True)
class Authority:
    ip: IPAddress
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.ip.version == 6 else f"{self.ip}:{self.port}"


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
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidAuthority(f"authority {text!r} does not name an IP address") from None
    if text.startswith("[") and ip.version != 6:
        raise InvalidAuthority(f"authority {text!r} brackets an IPv4 address")
    # ASCII digits only: str.isdigit() also accepts '²' or '٣', which int() then refuses or reads.
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise InvalidAuthority(f"authority {text!r} has no valid port (1-65535)")
    return Authority(ip, int(port))


def new_traceparent() -> str:
    """A W3C traceparent with fresh trace and span ids, not sampled (as ztunnel sends)."""
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-00"


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
        ip = ipaddress.ip_address(client[0])
        addr = f"[{ip}]:{client[1]}" if ip.version == 6 else f"{ip}:{client[1]}"
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
