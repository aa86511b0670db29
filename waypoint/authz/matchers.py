"""Value matchers built once per config: Istio's string forms, CIDRs, ports and path templates.

Each builder takes the values of one policy field and returns a function of one request value
that says whether any of them matches (the field's values OR). Regular expressions are compiled
here, never per request. The string forms are Istio's (``pilot/pkg/security/authz/matcher``):

- ``*`` alone: present. For header-like fields (``hosts``, ``methods``, ``request.headers``) it is
  Envoy's ``present_match`` (an empty value counts); elsewhere it is the regex ``.+`` (not empty).
- ``*suffix``, ``prefix*``: suffix and prefix matches; anything else is exact.
- ``hosts`` ignore case.

Path values with ``{*}`` or ``{**}`` are URI templates, matched like Envoy's ``uri_template``
(``source/extensions/path/uri_template_lib``): ``{*}`` is one non-empty path segment of RFC 3986
pchar (without ``*``/``=``), ``{**}`` any run of them and ``/`` (so ``/a/{**}`` matches ``/a/``
but not ``/a``); literal segments are exact; the whole path must match.

A value a builder cannot read raises `BadValue`; the compiler decides what that means (Istio
drops an ALLOW rule and ignores the value in a DENY).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable

from .attributes import Address


class BadValue(ValueError):
    """A policy value that cannot be matched (not an IP, not a port, a malformed template)."""


StringTest = Callable[[str | None], bool]
AddressTest = Callable[[Address | None], bool]

_PCHAR = "a-zA-Z0-9\\-._~%!$&'()+,;:@"
_PATH_GLOB = f"[{_PCHAR}]+"
_TEXT_GLOB = f"[{_PCHAR}/]*"
_TEMPLATE_LITERAL = re.compile(f"[{_PCHAR}=]+")


def _never(_: object) -> bool:
    return False


def strings(values: Iterable[str], *, ignore_case: bool = False, present_if_empty: bool = False) -> StringTest:
    """Istio's exact / ``prefix*`` / ``*suffix`` / ``*`` forms, OR-ed."""
    exact: set[str] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    presence = False
    for value in values:
        if ignore_case:
            value = value.lower()
        if value == "*":
            presence = True
        elif value.startswith("*"):
            suffixes.append(value[1:])
        elif value.endswith("*"):
            prefixes.append(value[:-1])
        else:
            exact.add(value)
    if presence:
        # Presence subsumes every other form (values are never empty).
        if present_if_empty:
            return lambda v: v is not None
        return lambda v: bool(v)
    frozen = frozenset(exact)
    pre, suf = tuple(prefixes), tuple(suffixes)
    if not pre and not suf:
        if not frozen:
            return _never
        return frozen.__contains__  # None is never in a set of strings
    if not frozen and not suf:
        return lambda v: v is not None and v.startswith(pre)
    if not frozen and not pre:
        return lambda v: v is not None and v.endswith(suf)

    def test(v: str | None) -> bool:
        if v is None:
            return False
        return v in frozen or (bool(pre) and v.startswith(pre)) or (bool(suf) and v.endswith(suf))

    return test


def _or_patterns(test: StringTest, patterns: list[re.Pattern[str]]) -> StringTest:
    """``test``, or a full match of one of ``patterns``."""
    if not patterns:
        return test
    frozen = tuple(patterns)
    return lambda v: test(v) or (v is not None and any(p.fullmatch(v) for p in frozen))


def namespaces(values: Iterable[str]) -> StringTest:
    """Source namespaces: Istio turns every ``*`` into ``.*`` (a glob, not only at either end)."""
    plain: list[str] = []
    globs: list[re.Pattern[str]] = []
    for value in values:
        inner = value.strip("*") if value != "*" else ""
        if "*" in inner:
            globs.append(re.compile(".*".join(re.escape(part) for part in value.split("*"))))
        else:
            plain.append(value)
    return _or_patterns(strings(plain), globs)


def cidrs(values: Iterable[str]) -> AddressTest:
    """IP addresses and CIDR ranges (``10.0.0.1``, ``10.0.0.0/8``), OR-ed."""
    ranges: list[tuple[int, int, int]] = []
    for value in values:
        try:
            network = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise BadValue(f"{value!r} is not an IP address or CIDR range") from None
        mask = int(network.netmask)
        ranges.append((network.version, int(network.network_address) & mask, mask))
    frozen = tuple(ranges)

    def test(address: Address | None) -> bool:
        if address is None:
            return False
        version, number = address
        for net_version, network, mask in frozen:
            if net_version == version and number & mask == network:
                return True
        return False

    return test


def port(value: str | int) -> int:
    """One port value (policies write strings; YAML may give integers)."""
    if isinstance(value, bool):
        raise BadValue(f"{value!r} is not a port number")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value)
    else:
        raise BadValue(f"{value!r} is not a port number")
    if not 0 <= number <= 65535:
        raise BadValue(f"{value!r} is not a port number (0-65535)")
    return number


def ports(values: Iterable[str | int]) -> Callable[[int], bool]:
    return frozenset(port(v) for v in values).__contains__


def is_path_template(value: str) -> bool:
    return "{*}" in value or "{**}" in value


def path_template(value: str) -> re.Pattern[str]:
    """An Istio path template (``/api/{*}/items/{**}``) as the regex Envoy builds from it."""
    if not value.startswith("/"):
        raise BadValue(f"path template {value!r} must start with '/'")
    body = value[1:]
    parts: list[str] = []
    seen_text_glob = False
    segments = body.split("/") if body else []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "" and last and i > 0:
            parts.append("")  # a trailing "/"
            continue
        if segment in ("{*}", "{**}"):
            if seen_text_glob:
                raise BadValue(f"path template {value!r}: {{**}} must be the last operator")
            seen_text_glob = segment == "{**}"
            parts.append(_TEXT_GLOB if seen_text_glob else _PATH_GLOB)
            continue
        # Istio's validation refuses anything else with braces ("{**}.txt", "{x}").
        if not _TEMPLATE_LITERAL.fullmatch(segment):
            raise BadValue(f"path template {value!r} has an invalid segment {segment!r}")
        parts.append(re.escape(segment))
    return re.compile("/" + "/".join(parts))


def paths(values: Iterable[str]) -> StringTest:
    """``paths``/``notPaths`` values against the normalised path without its query."""
    plain: list[str] = []
    templates: list[re.Pattern[str]] = []
    for value in values:
        if is_path_template(value):
            templates.append(path_template(value))
        else:
            plain.append(value)
    return _or_patterns(strings(plain), templates)
