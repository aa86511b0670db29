"""Key sets from jwksUri (waypoint/authn/fetch.py): what is fetched when, what a failure keeps, how a
rotation is picked up, and which URLs the waypoint refuses to fetch — with a fake clock and timers,
and the HTTP GET over a fake HTTP/1.1 pool connection."""

from __future__ import annotations

import pytest

from tests.waypoint.jwt_keys import Signer, jwks
from waypoint.authn.fetch import (
    BadJwksUri,
    JwksTarget,
    RemoteJwks,
    mesh_fetch,
    parse_uri,
    request_bytes,
    service_for_host,
)
from wisp.model import Service

URI = "http://jwks.auth.svc.cluster.local/keys"
OLD, NEW = Signer.rsa("old"), Signer.rsa("new")


class Clock:
    def __init__(self):
        self.now = 1000.0
        self.timers = []

    def __call__(self):
        return self.now

    def call_later(self, delay, callback):
        timer = Timer(self.now + delay, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds):
        self.now += seconds
        for timer in sorted(self.timers, key=lambda t: t.when):
            if timer.when <= self.now and not timer.cancelled and not timer.fired:
                timer.fired = True
                timer.callback()


class Timer:
    def __init__(self, when, callback):
        self.when, self.callback, self.cancelled, self.fired = when, callback, False, False

    def cancel(self):
        self.cancelled = True


class Server:
    """A fetch function whose answers the test gives."""

    def __init__(self):
        self.pending = []

    def __call__(self, uri, done):
        self.pending.append((uri, done))

    def answer(self, body=None, reason=None):
        uri, done = self.pending.pop(0)
        done(body.encode() if isinstance(body, str) else body, reason)


def store():
    clock, server = Clock(), Server()
    return RemoteJwks(server, clock.call_later, clock=clock), clock, server


def kids(keys):
    return [k.kid for k in keys.keys]


def test_a_uri_is_fetched_when_a_config_names_it_and_refreshed_every_five_minutes():
    jwks_store, clock, server = store()
    jwks_store.track([URI])
    assert [u for u, _ in server.pending] == [URI] and jwks_store.keys(URI) is None
    server.answer(jwks(OLD))
    assert kids(jwks_store.keys(URI)) == ["old"]
    clock.advance(299)
    assert server.pending == []
    clock.advance(2)
    assert len(server.pending) == 1
    server.answer(jwks(NEW))
    assert kids(jwks_store.keys(URI)) == ["new"]


def test_a_failed_fetch_keeps_the_last_good_keys_and_retries_with_backoff():
    jwks_store, clock, server = store()
    jwks_store.track([URI])
    server.answer(jwks(OLD))
    clock.advance(301)
    server.answer(None, "answered 503")
    assert kids(jwks_store.keys(URI)) == ["old"] and jwks_store.error(URI) == "answered 503"
    clock.advance(1.01)
    server.answer('{"keys": []}')  # no usable key: not taken
    assert kids(jwks_store.keys(URI)) == ["old"]
    clock.advance(1.5)
    assert server.pending == []  # second failure waits 2 s
    clock.advance(0.6)
    server.answer(jwks(NEW))
    assert kids(jwks_store.keys(URI)) == ["new"]


def test_an_unknown_kid_refetches_at_once_but_at_most_every_five_seconds():
    jwks_store, clock, server = store()
    jwks_store.track([URI])
    jwks_store.unknown_kid(URI)
    assert len(server.pending) == 1  # the first fetch is still in flight: no second one
    server.answer(jwks(OLD))
    jwks_store.unknown_kid(URI)
    assert len(server.pending) == 0  # the last fetch started under 5 s ago
    clock.advance(5)
    for _ in range(100):
        jwks_store.unknown_kid(URI)
    assert len(server.pending) == 1
    server.answer(jwks(OLD, NEW))
    assert kids(jwks_store.keys(URI)) == ["old", "new"]


def test_a_uri_no_config_names_is_forgotten_and_its_late_answer_ignored():
    jwks_store, clock, server = store()
    jwks_store.track([URI])
    jwks_store.track([])
    server.answer(jwks(OLD))
    assert jwks_store.keys(URI) is None
    clock.advance(3600)
    assert server.pending == []


def test_a_fetch_that_raises_is_a_failure_not_a_crash():
    clock = Clock()

    def broken(uri, done):
        raise RuntimeError("no pool yet")

    jwks_store = RemoteJwks(broken, clock.call_later, clock=clock)
    jwks_store.track([URI])
    assert jwks_store.keys(URI) is None and "no pool yet" in jwks_store.error(URI)


# --- which URLs, and the GET -----------------------------------------------------------------------


AUTH = Service("jwks", "auth", "jwks.auth.svc.cluster.local", ("10.96.5.5",))
BY_NAME = {("auth", "jwks"): AUTH}
BY_VIP = {"10.96.5.5": AUTH}


@pytest.mark.parametrize("host", ["jwks.auth.svc.cluster.local", "jwks.auth.svc", "jwks.auth", "10.96.5.5",
                                  "JWKS.auth.svc.cluster.local."])
def test_a_url_host_names_a_mesh_service(host):
    assert service_for_host(host, BY_NAME, BY_VIP) is AUTH


@pytest.mark.parametrize("host", ["jwks", "jwks.other", "example.com", "10.96.5.6", "jwks.auth.example.com"])
def test_other_hosts_name_no_service(host):
    assert service_for_host(host, BY_NAME, BY_VIP) is None


def test_only_plain_http_urls_are_fetched_the_mesh_encrypts_them():
    assert parse_uri("http://jwks.auth:8080/.well-known/jwks.json?v=2") == JwksTarget(
        "jwks.auth", 8080, "/.well-known/jwks.json?v=2")
    for bad in ("https://jwks.auth/keys", "ftp://jwks.auth/keys", "http:///keys", "http://jwks.auth:99999/"):
        with pytest.raises(BadJwksUri):
            parse_uri(bad)
    assert request_bytes(JwksTarget("jwks.auth", 80, "/k")) == (
        b"GET /k HTTP/1.1\r\nHost: jwks.auth\r\nAccept: application/json\r\nUser-Agent: wisp-waypoint-jwks\r\n\r\n")


class Head:
    def __init__(self, status):
        self.status = status


class Conn:
    def __init__(self):
        self.sent, self.owner, self.closed = b"", None, None

    def begin(self, owner, method):
        self.owner = owner

    def send(self, data):
        self.sent += data
        return True

    def close(self, reason):
        self.closed = reason


class Pool:
    def __init__(self):
        self.conn, self.released = Conn(), []

    def acquire(self, endpoint, on_ready, fresh=False):
        on_ready(self.conn, None, False)

    def release(self, conn):
        self.released.append(conn)


def fetch_once(status, chunks, endpoint="pod"):
    clock, pool, results = Clock(), Pool(), []
    fetch = mesh_fetch(pool, lambda target: endpoint, clock.call_later, timeout=5)
    fetch("http://jwks.auth/keys", lambda body, reason: results.append((body, reason)))
    if endpoint is None:
        clock.advance(0)
        return results, pool, clock
    owner = pool.conn.owner
    owner.response_head(Head(status))
    for chunk in chunks:
        owner.response_data(memoryview(chunk))
    if not results:
        owner.response_end([])
    return results, pool, clock


def test_the_get_returns_a_200_body_and_gives_the_connection_back():
    results, pool, _ = fetch_once(200, [b'{"keys"', b": []}"])
    assert results == [(b'{"keys": []}', None)]
    assert pool.conn.sent.startswith(b"GET /keys HTTP/1.1\r\nHost: jwks.auth\r\n")
    assert pool.released == [pool.conn]


def test_a_non_200_answer_an_oversized_document_and_no_endpoint_are_failures():
    assert fetch_once(404, [b"nope"])[0] == [(None, "answered 404")]
    results, pool, _ = fetch_once(200, [b"x" * (1 << 20), b"y"])
    assert results[0][0] is None and "larger than" in results[0][1] and pool.conn.closed
    results, _, _ = fetch_once(200, [], endpoint=None)
    assert results[0][0] is None and "no Service port" in results[0][1]


def test_a_server_that_never_answers_times_out():
    clock, pool, results = Clock(), Pool(), []
    mesh_fetch(pool, lambda target: "pod", clock.call_later, timeout=5)(
        "http://jwks.auth/keys", lambda body, reason: results.append((body, reason)))
    clock.advance(5)
    assert results == [(None, "timed out")] and pool.conn.closed == "jwks fetch timed out"
    pool.conn.owner.upstream_failed("reset", 503)  # what closing it reports later changes nothing
    assert len(results) == 1
