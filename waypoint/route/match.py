"""Per-request matching over rules sorted once per config: the first match in precedence order.

The HTTP set is indexed so a request does not walk every match:

- Exact matches sit in a dict by path, and every Exact match outranks every other kind, so the
  entries under the request's path are tried first, in precedence order.
- PathPrefix matches sit in a dict by prefix. A path has at most one element-wise prefix of each
  length, and prefixes rank by length before anything else, so trying the request's own
  prefixes from longest to shortest (``/a/b/c``, ``/a/b``, ``/a``, ``/``) and each one's entries
  in precedence order visits candidates exactly in global precedence order.
- RegularExpression matches, last in rank, are tried in order; one ``RE2::Set`` pass tells
  which of their patterns match the path, so each costs a set lookup, not a regex call.

``PathPrefix`` is element-wise (``HTTPPathMatch``, ``PathMatchPathPrefix``): ``/foo`` matches
``/foo``, ``/foo/`` and ``/foo/bar``, not ``/foobar``. Method, header and query-param checks
follow the path. A gRPC set is a plain sorted list (rules are few, the checks cheap).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .parse import GrpcMatch, HttpMatch, PathType, Rule, ValueMatch
from .regex import Regex, RegexSet
from .request import HttpRequest, first_query_value, grpc_service_method


@dataclass(frozen=True, slots=True)
class Entry:
    """One match of one rule. ``prefix`` is the PathPrefix it matched (for ReplacePrefixMatch)."""

    rule: Rule
    prefix: bytes = b""
    method: bytes | None = None
    headers: tuple[ValueMatch, ...] = ()
    query: tuple[ValueMatch, ...] = ()
    grpc: GrpcMatch | None = None


def _headers_match(entry: Entry, headers: Any) -> bool:
    for check in entry.headers:
        value = headers.get(check.name)
        if value is None or not check.matches(value):
            return False
    return True


def _rest_matches(entry: Entry, request: HttpRequest, query: bytes) -> bool:
    if entry.method is not None and entry.method != request.method:
        return False
    if entry.headers and not _headers_match(entry, request.headers):
        return False
    for check in entry.query:
        value = first_query_value(query, check.name)
        if value is None or not check.matches(value):
            return False
    return True


@dataclass(frozen=True, slots=True)
class HttpRoutes:
    """The HTTPRoute matches for one Service port and one group of clients."""

    exact: dict[bytes, tuple[Entry, ...]] = field(default_factory=dict)
    prefix: dict[bytes, tuple[Entry, ...]] = field(default_factory=dict)
    # (index of the pattern in ``regex_set``, entry), in precedence order.
    regex: tuple[tuple[int, Entry], ...] = ()
    regex_set: RegexSet | None = None
    grpc: bool = False

    def match(self, request: HttpRequest, path: bytes, query: bytes) -> Entry | None:
        if self.exact:
            for entry in self.exact.get(path, ()):
                if _rest_matches(entry, request, query):
                    return entry
        prefixes = self.prefix
        if prefixes:
            if path != b"/" and not path.endswith(b"/"):
                for entry in prefixes.get(path, ()):
                    if _rest_matches(entry, request, query):
                        return entry
            end = len(path)
            while True:
                end = path.rfind(b"/", 0, end)
                if end <= 0:
                    break
                for entry in prefixes.get(path[:end], ()):
                    if _rest_matches(entry, request, query):
                        return entry
            for entry in prefixes.get(b"/", ()):
                if _rest_matches(entry, request, query):
                    return entry
        if self.regex_set is not None:
            hits = self.regex_set.matching(path)
            if hits:
                for pattern, entry in self.regex:
                    if pattern in hits and _rest_matches(entry, request, query):
                        return entry
        return None


def build_http(matches: Iterable[tuple[tuple[Any, ...], HttpMatch, Rule]]) -> HttpRoutes:
    """An index of (precedence key, match, rule) triples; sorted here, once."""
    exact: dict[bytes, list[Entry]] = {}
    prefix: dict[bytes, list[Entry]] = {}
    regex: list[tuple[int, Entry]] = []
    patterns: dict[str, int] = {}
    regexes: list[Regex] = []
    for _, match, rule in sorted(matches, key=lambda item: item[0]):
        entry = Entry(rule, match.path if match.path_type is PathType.PREFIX else b"", match.method,
                      match.headers, match.query)
        if match.path_type is PathType.EXACT:
            exact.setdefault(match.path, []).append(entry)
        elif match.path_type is PathType.PREFIX:
            prefix.setdefault(match.path, []).append(entry)
        else:
            assert match.path_regex is not None
            index = patterns.get(match.path_regex.pattern)
            if index is None:
                index = patterns[match.path_regex.pattern] = len(regexes)
                regexes.append(match.path_regex)
            regex.append((index, entry))
    return HttpRoutes(
        {k: tuple(v) for k, v in exact.items()},
        {k: tuple(v) for k, v in prefix.items()},
        tuple(regex),
        RegexSet(regexes) if regexes else None,
    )


def _grpc_matches(match: GrpcMatch, service_method: tuple[bytes, bytes] | None) -> bool:
    if match.service is None and match.method is None and match.service_regex is None and match.method_regex is None:
        return True
    if service_method is None:
        return False
    service, method = service_method
    if match.service is not None and service != match.service:
        return False
    if match.method is not None and method != match.method:
        return False
    if match.service_regex is not None and not match.service_regex.fullmatch(service):
        return False
    return match.method_regex is None or match.method_regex.fullmatch(method)


@dataclass(frozen=True, slots=True)
class GrpcRoutes:
    """The GRPCRoute matches for one Service port and one group of clients, in precedence order."""

    entries: tuple[Entry, ...] = ()
    grpc: bool = True

    def match(self, request: HttpRequest, path: bytes, query: bytes) -> Entry | None:
        service_method = grpc_service_method(path)
        for entry in self.entries:
            assert entry.grpc is not None
            if _grpc_matches(entry.grpc, service_method) and _headers_match(entry, request.headers):
                return entry
        return None


def build_grpc(matches: Iterable[tuple[tuple[Any, ...], GrpcMatch, Rule]]) -> GrpcRoutes:
    ordered = sorted(matches, key=lambda item: item[0])
    return GrpcRoutes(tuple(Entry(rule, headers=match.headers, grpc=match) for _, match, rule in ordered))
