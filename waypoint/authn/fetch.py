"""Key sets from ``jwksUri``: fetched by the waypoint through the mesh, cached, refreshed.

Who fetches (the decision and its reasons are in docs/architecture.md): the waypoint itself, over
its own upstream path, presenting its mesh identity, as Envoy does in Istio's ``Envoy`` JWKS fetch
mode for a URI that names a mesh Service. The URI must be ``http://<host>[:port]/<path>`` whose
host is a Service the waypoint knows: ``<name>.<namespace>.svc.<domain>``, ``<name>.<namespace>.svc``,
``<name>.<namespace>``, the Service's hostname, or one of its VIPs; the port is the Service port
(default 80). The request goes to one of its endpoints like any request the waypoint forwards:
HBONE to a meshed pod (mTLS, so the key server sees and may authorize the waypoint's SPIFFE
identity), plain TCP to a pod outside the mesh. Nothing else is ever dialled: an ``https://`` URL,
an unknown host or an IP that is no Service VIP is a fetch failure with a reason, never a
connection to the outside.

`RemoteJwks` keeps one entry per URI that the current config needs (`track`):

- the first fetch starts when a config first names the URI; until it succeeds a token whose rule
  uses it is refused with "Jwks remote fetch is failed" (a request never waits for a fetch: the
  pipeline decides synchronously), while requests without a token pass;
- after a success the set is refreshed every `refresh_interval` (300 s, Envoy's remote JWKS
  ``cache_duration`` as Istio configures it); after a failure the fetch is retried with backoff
  from 1 s to 60 s, and the last good set stays in use meanwhile;
- a token whose ``kid`` the set lacks calls `unknown_kid`, which fetches again at once unless a
  fetch is in flight or one started less than `min_refetch_interval` (5 s) ago, so a key rotation
  is picked up within seconds and a flood of tokens with made-up kids costs at most one fetch per
  URI every 5 s;
- a URI no config names any more is forgotten (its timer cancelled).

A fetched document must answer 200 within `FETCH_TIMEOUT` (5 s, Istio's ``jwtRule.timeout``
default) and be at most `MAX_JWKS_BYTES`; a document without a usable key does not replace a good
set. Fetches and their outcomes are logged once each (never per request).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import structlog

from wisp.model import Service

from .jwks import MAX_JWKS_BYTES, KeySet, kids, parse_jwks

if TYPE_CHECKING:  # the pool and the endpoint belong to the waypoint's upstream side
    from ..config import Endpoint
    from ..http1.upstream import Http1Pool, UpstreamConnection

log = structlog.get_logger("waypoint.authn")

REFRESH_INTERVAL = 300.0
MIN_REFETCH_INTERVAL = 5.0
RETRY_INITIAL = 1.0
RETRY_MAX = 60.0
FETCH_TIMEOUT = 5.0

# fetch(uri, done): done(body, None) or done(None, reason), later, exactly once.
Fetch = Callable[[str, Callable[[bytes | None, str | None], None]], None]
CallLater = Callable[[float, Callable[[], None]], object]


@dataclass(slots=True)
class _Entry:
    uri: str
    keys: KeySet | None = None
    fetched_at: float = 0.0
    started_at: float = -1e18
    in_flight: bool = False
    failures: int = 0
    last_error: str = ""
    timer: object | None = None
    generation: int = 0


class RemoteJwks:
    """The key sets of the ``jwksUri``s in force (see the module docstring)."""

    def __init__(self, fetch: Fetch, call_later: CallLater, *, clock: Callable[[], float] = time.monotonic,
                 refresh_interval: float = REFRESH_INTERVAL,
                 min_refetch_interval: float = MIN_REFETCH_INTERVAL) -> None:
        self._fetch = fetch
        self._call_later = call_later
        self._clock = clock
        self.refresh_interval = refresh_interval
        self.min_refetch_interval = min_refetch_interval
        self._entries: dict[str, _Entry] = {}
        self.fetches = 0

    # -- what the pipeline reads ------------------------------------------------------------------
    def keys(self, uri: str) -> KeySet | None:
        entry = self._entries.get(uri)
        return entry.keys if entry is not None else None

    def unknown_kid(self, uri: str) -> None:
        entry = self._entries.get(uri)
        if entry is None or entry.in_flight:
            return
        if self._clock() - entry.started_at < self.min_refetch_interval:
            return
        log.info("jwks refetch for an unknown kid", uri=uri)
        self._start(entry)

    def error(self, uri: str) -> str:
        entry = self._entries.get(uri)
        return entry.last_error if entry is not None else ""

    # -- what the config decides ------------------------------------------------------------------
    def track(self, uris: Iterable[str]) -> None:
        """Keep exactly `uris` fetched: start the new ones, forget the others."""
        wanted = set(uris)
        for uri in list(self._entries):
            if uri not in wanted:
                self._drop(self._entries.pop(uri))
        for uri in sorted(wanted - self._entries.keys()):
            entry = self._entries[uri] = _Entry(uri)
            self._start(entry)

    def close(self) -> None:
        for entry in self._entries.values():
            self._drop(entry)
        self._entries.clear()

    # -- fetching -----------------------------------------------------------------------------------
    def _drop(self, entry: _Entry) -> None:
        entry.generation += 1
        if entry.timer is not None:
            entry.timer.cancel()  # type: ignore[attr-defined]
            entry.timer = None

    def _schedule(self, entry: _Entry, delay: float) -> None:
        if entry.timer is not None:
            entry.timer.cancel()  # type: ignore[attr-defined]
        generation = entry.generation

        def due() -> None:
            entry.timer = None
            if entry.generation == generation and not entry.in_flight:
                self._start(entry)

        entry.timer = self._call_later(delay, due)

    def _start(self, entry: _Entry) -> None:
        entry.in_flight = True
        entry.started_at = self._clock()
        generation = entry.generation
        self.fetches += 1

        def done(body: bytes | None, reason: str | None) -> None:
            if entry.generation != generation or self._entries.get(entry.uri) is not entry:
                return  # forgotten meanwhile
            entry.in_flight = False
            self._finished(entry, body, reason)

        try:
            self._fetch(entry.uri, done)
        except Exception as exc:  # a fetch that raises instead of calling back must not stop the config
            log.warning("jwks fetch could not start", uri=entry.uri, error=str(exc))
            done(None, f"fetch could not start: {exc}")

    def _finished(self, entry: _Entry, body: bytes | None, reason: str | None) -> None:
        if body is not None:
            keys = parse_jwks(body)
            if keys.usable:
                changed = entry.keys is None or kids(entry.keys) != kids(keys) or len(entry.keys.keys) != len(keys.keys)
                entry.keys = keys
                entry.fetched_at = self._clock()
                entry.failures = 0
                entry.last_error = ""
                if changed:
                    log.info("jwks fetched", uri=entry.uri, keys=len(keys.keys), kids=sorted(kids(keys)),
                             skipped=list(keys.skipped))
                self._schedule(entry, self.refresh_interval)
                return
            reason = keys.status
        entry.failures += 1
        entry.last_error = reason or "unknown failure"
        delay = min(RETRY_MAX, RETRY_INITIAL * 2 ** (entry.failures - 1))
        log.warning("jwks fetch failed", uri=entry.uri, reason=entry.last_error, retry_in=delay,
                    keeping_previous_keys=entry.keys is not None)
        self._schedule(entry, delay)


# -- the URL → a Service of the mesh ------------------------------------------------------------------


class BadJwksUri(ValueError):
    """A jwksUri the waypoint will not fetch (with the reason)."""


@dataclass(frozen=True, slots=True)
class JwksTarget:
    host: str  # as written in the URL (the Host header)
    port: int
    path: str  # path and query


def parse_uri(uri: str) -> JwksTarget:
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise BadJwksUri(f"{uri!r} is not a URL: {exc}") from None
    if parts.scheme != "http":
        raise BadJwksUri(f"{uri!r}: only http:// URLs of Services in the mesh are fetched (the HBONE tunnel "
                         "encrypts and authenticates them); https:// and other schemes are not supported")
    if not parts.hostname:
        raise BadJwksUri(f"{uri!r} has no host")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return JwksTarget(parts.hostname, port or 80, path)


def service_for_host(host: str, services_by_name: Mapping[tuple[str, str], Service],
                     services_by_vip: Mapping[str, Service]) -> Service | None:
    """The Service a URL host names, or None (see the module docstring for the forms)."""
    host = host.lower().rstrip(".")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return services_by_vip.get(host)
    labels = host.split(".")
    if len(labels) >= 2:
        service = services_by_name.get((labels[1], labels[0]))
        if service is not None and (len(labels) == 2 or labels[2] == "svc"):
            return service
    for service in services_by_name.values():
        if service.hostname.lower() == host:
            return service
    return None


def request_bytes(target: JwksTarget) -> bytes:
    host = target.host if target.port == 80 else f"{target.host}:{target.port}"
    return (f"GET {target.path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n"
            "User-Agent: wisp-waypoint-jwks\r\n\r\n").encode("latin-1")


class _Download:
    """One GET on an HTTP/1.1 upstream connection (an `Owner` of `waypoint.http1.upstream`)."""

    def __init__(self, pool: Http1Pool, conn: UpstreamConnection, done: Callable[[bytes | None, str | None], None],
                 call_later: CallLater, timeout: float) -> None:
        self.pool = pool
        self.conn = conn
        self.done = done
        self.status = 0
        self.body = bytearray()
        self.finished = False
        self.timer = call_later(timeout, self._timed_out)

    def _finish(self, body: bytes | None, reason: str | None) -> None:
        if self.finished:
            return
        self.finished = True
        self.timer.cancel()  # type: ignore[attr-defined]
        self.done(body, reason)

    def _timed_out(self) -> None:
        if not self.finished:
            self.conn.close("jwks fetch timed out")
            self._finish(None, "timed out")

    def response_head(self, head) -> None:
        self.status = head.status

    def response_data(self, data: memoryview) -> bool:
        if len(self.body) + len(data) > MAX_JWKS_BYTES:
            self.conn.close("jwks document too large")
            self._finish(None, f"the document is larger than {MAX_JWKS_BYTES} bytes")
            return True
        self.body += data
        return True

    def response_end(self, trailers) -> None:
        self.pool.release(self.conn)
        if self.status != 200:
            self._finish(None, f"answered {self.status}")
        else:
            self._finish(bytes(self.body), None)

    def upstream_failed(self, reason: str, status: int) -> None:
        self._finish(None, reason)

    def upstream_writable(self) -> None:
        pass


def mesh_fetch(pool: Http1Pool, resolve: Callable[[JwksTarget], Endpoint | None], call_later: CallLater,
               timeout: float = FETCH_TIMEOUT) -> Fetch:
    """A `Fetch` over the waypoint's HTTP/1.1 pool: `resolve` gives the endpoint for a target."""

    def fetch(uri: str, done: Callable[[bytes | None, str | None], None]) -> None:
        try:
            target = parse_uri(uri)
        except BadJwksUri as exc:
            problem = str(exc)
            call_later(0, lambda: done(None, problem))
            return
        endpoint = resolve(target)
        if endpoint is None:
            call_later(0, lambda: done(None, f"{target.host}:{target.port} is no Service port with a healthy "
                                             "endpoint known to this waypoint"))
            return

        def ready(conn, error: str | None, reused: bool) -> None:
            if conn is None:
                done(None, error or "cannot reach the JWKS server")
                return
            download = _Download(pool, conn, done, call_later, timeout)
            conn.begin(download, b"GET")
            conn.send(request_bytes(target))

        # A fresh connection: a pooled one may race with the server closing it, and fetches are rare.
        pool.acquire(endpoint, ready, fresh=True)

    return fetch
