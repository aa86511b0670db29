"""The node agent's ZDS server: Istio's sequence, netns fds, acks, retries and bad peers."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from tests.support.fake_ztunnel import FakeZtunnel
from tests.support.netns import random_prefix, scratch_netns
from tests.support.wait import wait_until
from wisp.zds import protocol
from wisp.zds.node import NodeSession, ZdsPod, ZdsServer
from wisp.zds.protocol import Ack, Add, Del, Hello, Keep, SnapshotSent, WorkloadInfo, ZdsError

INFO = WorkloadInfo("web", "shop", "web-sa")


# -- the protocol state, sans-IO ---------------------------------------------------------------
def test_session_expects_hello_first():
    session = NodeSession()
    with pytest.raises(ZdsError):
        session.receive(protocol.encode(Ack()), [])


def test_session_refuses_to_send_before_hello():
    with pytest.raises(ZdsError, match="before"):
        NodeSession().send(SnapshotSent())


def test_session_accepts_one_ack_per_request():
    session = NodeSession()
    assert session.receive(protocol.encode(Hello()), []) == Hello()
    session.send(Keep("uid-1"))
    assert session.receive(protocol.encode(Ack("boom")), []) == Ack("boom")
    with pytest.raises(ZdsError, match="unsolicited"):
        session.receive(protocol.encode(Ack()), [])


def test_session_rejects_file_descriptors_from_ztunnel():
    with pytest.raises(ZdsError, match="file descriptor"):
        NodeSession().receive(protocol.encode(Hello()), [99])


def test_session_does_not_take_an_add_for_a_nack():
    session = NodeSession()
    session.receive(protocol.encode(Hello()), [])
    session.send(SnapshotSent())
    # Add{uid} and Ack{error} share field numbers; only a canonical Ack counts.
    with pytest.raises(ZdsError, match="not a WorkloadResponse"):
        session.receive(protocol.encode(Add("uid-1", INFO)), [])


# -- the server over a real SOCK_SEQPACKET socket -----------------------------------------------
@pytest.fixture
def sockdir():
    path = tempfile.mkdtemp(prefix="wisp-tcni")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pod_netns():
    with scratch_netns(f"{random_prefix()}-shop-web") as path:
        yield path


@pytest.fixture
async def server(sockdir):
    acks: list[str] = []
    srv = ZdsServer(os.path.join(sockdir, "run", "ztunnel.sock"), ack_timeout=0.5, retry_interval=0.1,
                    on_ack=acks.append)
    srv.acks = acks
    async with trio.open_nursery() as nursery:
        await nursery.start(srv.serve)
        yield srv
        nursery.cancel_scope.cancel()


async def snapshot(fake: FakeZtunnel) -> list:
    """Receive and ack everything up to and including SnapshotSent."""
    got = []
    while True:
        item = await fake.receive()
        assert item is not None, "agent closed the connection during the snapshot"
        got.append(item)
        await fake.ack()
        if isinstance(item.message, SnapshotSent):
            return got


async def test_snapshot_adds_each_enrolled_pod_with_its_netns_fd(server, pod_netns):
    server.register(ZdsPod("uid-web", INFO, pod_netns))
    fake = FakeZtunnel(server.path)
    await fake.connect()
    try:
        got = await snapshot(fake)
        assert [g.message for g in got] == [Add("uid-web", INFO), SnapshotSent()]
        st = os.stat(pod_netns)
        assert (got[0].netns.dev, got[0].netns.ino) == (st.st_dev, st.st_ino)
        assert server.acks == ["uid-web"]
    finally:
        fake.close()


async def test_snapshot_keeps_pods_whose_netns_is_gone(server):
    server.register(ZdsPod("uid-gone", INFO, f"/var/run/netns/{random_prefix()}-gone"))
    server.register(ZdsPod("uid-unknown", INFO, None))
    fake = FakeZtunnel(server.path)
    await fake.connect()
    try:
        assert [g.message for g in await snapshot(fake)] == [Keep("uid-gone"), Keep("uid-unknown"), SnapshotSent()]
    finally:
        fake.close()


async def test_add_after_snapshot_waits_for_the_ack(server, pod_netns):
    fake = FakeZtunnel(server.path)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        await fake.wait_for(lambda r: SnapshotSent() in [x.message for x in r])
        outcome = await server.add(ZdsPod("uid-web", INFO, pod_netns))
        assert outcome.acked
        assert fake.messages()[-1] == Add("uid-web", INFO)
        assert server.is_acked("uid-web")
        fake.close()
        nursery.cancel_scope.cancel()


async def test_unenrol_sends_del(server, pod_netns):
    fake = FakeZtunnel(server.path)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        await fake.wait_for(lambda r: SnapshotSent() in [x.message for x in r])
        await server.add(ZdsPod("uid-web", INFO, pod_netns))
        outcome = await server.remove("uid-web")
        assert outcome.acked
        assert fake.messages()[-1] == Del("uid-web")
        assert "uid-web" not in server.pods
        fake.close()
        nursery.cancel_scope.cancel()


async def test_add_without_ztunnel_reports_it_and_goes_into_the_next_snapshot(server, pod_netns):
    outcome = await server.add(ZdsPod("uid-web", INFO, pod_netns))
    assert not outcome.acked and "no ztunnel" in outcome.error
    fake = FakeZtunnel(server.path)
    await fake.connect()
    try:
        assert [g.message for g in await snapshot(fake)] == [Add("uid-web", INFO), SnapshotSent()]
    finally:
        fake.close()


async def test_nacked_pod_is_offered_again_until_acked(server, pod_netns):
    answers = iter(["proxy failed to start", "still failing"])
    fake = FakeZtunnel(server.path, answer=lambda m: next(answers, "") if isinstance(m, Add) else "")
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        await fake.wait_for(lambda r: SnapshotSent() in [x.message for x in r])
        outcome = await server.add(ZdsPod("uid-web", INFO, pod_netns))
        assert not outcome.acked and "proxy failed to start" in outcome.error
        await wait_until(lambda: "uid-web" in server.acks, timeout=3, what="ztunnel's ack of uid-web")
        assert [m for m in fake.messages() if isinstance(m, Add)] == [Add("uid-web", INFO)] * 3
        assert server.is_acked("uid-web")
        fake.close()
        nursery.cancel_scope.cancel()


async def test_missing_ack_drops_the_connection_and_the_next_one_resyncs(server, pod_netns):
    server.register(ZdsPod("uid-web", INFO, pod_netns))
    silent = FakeZtunnel(server.path)
    await silent.connect()
    try:
        assert (await silent.receive()).message == Add("uid-web", INFO)
        assert await silent.receive(timeout=3) is None  # no ack in 0.5 s: the agent hangs up
    finally:
        silent.close()
    fake = FakeZtunnel(server.path)
    await fake.connect()
    try:
        assert [g.message for g in await snapshot(fake)] == [Add("uid-web", INFO), SnapshotSent()]
    finally:
        fake.close()


GARBAGE = {
    "random bytes": (b"\xff\xff\xff\xff\x0f\x99garbage", False),
    "add without fd": (protocol.encode(Add("uid-x", INFO)), False),
    "del with an fd": (protocol.encode(Del("uid-x")), True),
    "ack carrying an fd": (protocol.encode(Ack()), True),
}


@pytest.mark.parametrize("name", list(GARBAGE))
async def test_garbage_drops_that_connection_and_the_agent_keeps_serving(server, name):
    payload, with_fd = GARBAGE[name]
    bad = FakeZtunnel(server.path)
    await bad.connect()
    try:
        assert (await bad.receive()).message == SnapshotSent()
        fd = os.open("/dev/null", os.O_RDONLY) if with_fd else None
        try:
            await bad.send_raw(payload, fd)
        finally:
            if fd is not None:
                os.close(fd)
        assert await bad.receive(timeout=3) is None
    finally:
        bad.close()
    await _agent_still_serves(server)


async def test_message_before_hello_drops_the_connection(server):
    bad = FakeZtunnel(server.path)
    await bad.connect(hello=False)
    try:
        await bad.ack()
        assert await bad.receive(timeout=3) is None
    finally:
        bad.close()
    await _agent_still_serves(server)


async def test_unsupported_hello_version_drops_the_connection(server):
    bad = FakeZtunnel(server.path)
    await bad.connect(hello=False)
    try:
        await bad.send_raw(protocol.encode(Hello(version=7)))
        assert await bad.receive(timeout=3) is None
    finally:
        bad.close()
    await _agent_still_serves(server)


BEFORE_HELLO = {
    "silent": None,
    "message before hello": protocol.encode(Ack()),
    "bad hello version": protocol.encode(Hello(version=7)),
    "random bytes": GARBAGE["random bytes"][0],
}


@pytest.mark.parametrize("name", list(BEFORE_HELLO))
async def test_a_connection_without_a_good_hello_never_displaces_the_serving_ztunnel(server, pod_netns, name):
    """While a good ztunnel is connected and serving: a connection becomes the active session
    only with its Hello (an audit promoted it on accept and every garbage test still passed,
    because none had a good ztunnel connected meanwhile)."""
    good = FakeZtunnel(server.path)
    async with trio.open_nursery() as nursery:
        await nursery.start(good.serve)
        await good.wait_for(lambda r: SnapshotSent() in [x.message for x in r])
        active = server.connection
        seen = server.connections_seen
        bad = FakeZtunnel(server.path)
        await bad.connect(hello=False)
        try:
            # Accepted, and still not the one new pods go to (nor, before several ztunnels could
            # be connected at once, the one that ended the good one's connection).
            await wait_until(lambda: server.connections_seen == seen + 1, what="the agent accepting it")
            assert server.connection is active and server.sessions == [active]
            if BEFORE_HELLO[name] is not None:
                await bad.send_raw(BEFORE_HELLO[name])
                assert await bad.receive(timeout=3) is None  # dropped
            # The good ztunnel is still the active session, its connection open, and it gets
            # the next pod (a silent connection is still open meanwhile).
            assert server.connection is active and not good.closed_by_agent.is_set()
            assert (await server.add(ZdsPod("uid-web", INFO, pod_netns))).acked
            assert good.messages()[-1] == Add("uid-web", INFO)
        finally:
            bad.close()
        good.close()
        nursery.cancel_scope.cancel()


async def _agent_still_serves(server: ZdsServer) -> None:
    good = FakeZtunnel(server.path)
    await good.connect()
    try:
        assert [g.message for g in await snapshot(good)] == [SnapshotSent()]
    finally:
        good.close()


@asynccontextmanager
async def old_and_new_ztunnels(server: ZdsServer) -> AsyncIterator[tuple[FakeZtunnel, FakeZtunnel]]:
    """Two ztunnels answering the agent, as during a restart: the old one connected and given
    its snapshot first, then the new one. Both are closed however the test ends."""
    old, new = FakeZtunnel(server.path), FakeZtunnel(server.path)
    try:
        async with trio.open_nursery() as nursery:
            for fake in (old, new):
                await nursery.start(fake.serve)
                await fake.wait_for(lambda r: SnapshotSent() in [x.message for x in r])
            yield old, new
            nursery.cancel_scope.cancel()
    finally:
        old.close()
        new.close()


async def test_a_second_ztunnel_gets_the_snapshot_while_the_first_stays_connected(server, pod_netns):
    """A restart: the new ztunnel is given every pod while the old one keeps its connection
    (it still serves established connections until it drains)."""
    server.register(ZdsPod("uid-web", INFO, pod_netns))
    async with old_and_new_ztunnels(server) as (old, new):
        assert new.messages() == [Add("uid-web", INFO), SnapshotSent()]
        assert server.connection is not None and len(server.sessions) == 2
        with trio.move_on_after(0.3):
            await old.closed_by_agent.wait()
        assert not old.closed_by_agent.is_set()


async def test_new_pods_go_to_the_newest_ztunnel_and_removals_to_every_one(server, pod_netns):
    async with old_and_new_ztunnels(server) as (old, new):
        assert (await server.add(ZdsPod("uid-web", INFO, pod_netns))).acked
        assert new.messages()[-1] == Add("uid-web", INFO)
        assert Add("uid-web", INFO) not in old.messages()
        assert (await server.remove("uid-web")).acked
        await old.wait_for(lambda r: Del("uid-web") in [x.message for x in r])
        assert new.messages()[-1] == Del("uid-web")


async def test_when_the_old_ztunnel_leaves_the_new_one_keeps_serving(server, pod_netns):
    async with old_and_new_ztunnels(server) as (old, new):
        newest = server.connection
        old.close()  # the old ztunnel finished draining
        await wait_until(lambda: len(server.sessions) == 1, timeout=3, what="the agent dropping the old session")
        assert server.connection is newest
        assert (await server.add(ZdsPod("uid-web", INFO, pod_netns))).acked
        assert new.messages()[-1] == Add("uid-web", INFO)


async def test_the_oldest_connection_goes_when_too_many_ztunnels_said_hello(sockdir):
    srv = ZdsServer(os.path.join(sockdir, "ztunnel.sock"), ack_timeout=0.5, max_sessions=2)
    fakes = [FakeZtunnel(srv.path) for _ in range(3)]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(srv.serve)
            for fake in fakes:
                await nursery.start(fake.serve)
                await fake.wait_for(lambda r: SnapshotSent() in [x.message for x in r])
            with trio.fail_after(3):
                await fakes[0].closed_by_agent.wait()
            assert not fakes[1].closed_by_agent.is_set() and not fakes[2].closed_by_agent.is_set()
            assert len(srv.sessions) == 2
            nursery.cancel_scope.cancel()
    finally:
        for fake in fakes:
            fake.close()


async def test_stale_socket_file_is_replaced(sockdir):
    path = os.path.join(sockdir, "ztunnel.sock")
    with open(path, "w"):
        pass
    srv = ZdsServer(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(srv.serve)
        fake = FakeZtunnel(path)
        await fake.connect()
        assert (await fake.receive()).message == SnapshotSent()
        fake.close()
        nursery.cancel_scope.cancel()
    assert not os.path.exists(path)
