"""ztunnel's side of ZDS against a fake node agent: Hello, acks, snapshot, garbage, reconnect."""

from __future__ import annotations

import os
import socket

import pytest
import trio

from wisp import netns
from wisp.zds import protocol, transport
from wisp.zds.protocol import Add, Del, Keep, SnapshotSent, WorkloadInfo
from wisp.zds.workload import WorkloadSession, ZdsClient
from ztunnel.inpod.manager import PodStartError


class FakePods:
    """Records what the client asked for; `fail` makes add refuse a uid."""

    def __init__(self) -> None:
        self.pods: dict[str, netns.NetnsId] = {}
        self.calls: list[tuple] = []
        self.fail: set[str] = set()

    async def add(self, uid, info, fd):
        ident = netns.identity(fd)
        os.close(fd)
        self.calls.append(("add", uid, info))
        if uid in self.fail:
            raise PodStartError(f"proxy for {uid} failed to start: listeners refused")
        self.pods[uid] = ident

    def keep(self, uid):
        self.calls.append(("keep", uid))
        if uid not in self.pods:
            raise PodStartError(f"keep for unknown pod {uid}")

    async def remove(self, uid):
        self.calls.append(("remove", uid))
        self.pods.pop(uid, None)

    async def retain(self, uids):
        gone = [u for u in self.pods if u not in set(uids)]
        for uid in gone:
            await self.remove(uid)
        return gone


class Agent:
    """The node agent's end of a SOCK_SEQPACKET pair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)

    async def recv(self) -> bytes:
        with trio.fail_after(5):
            while True:
                try:
                    data, fds = transport.recv_datagram(self.sock)
                    assert not fds
                    return data
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(self.sock)

    async def send(self, payload: bytes, fd: int | None = None) -> protocol.Ack:
        transport.send_datagram(self.sock, payload, fd)
        return protocol.decode_response(await self.recv())

    async def request(self, message, fd: int | None = None) -> protocol.Ack:
        return await self.send(protocol.encode(message), fd)


@pytest.fixture
def netns_fd():
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    yield fd
    os.close(fd)


@pytest.fixture
async def session(nursery):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    pods = FakePods()
    client = ZdsClient("/nonexistent", pods)
    nursery.start_soon(client.serve, ours)
    agent = Agent(theirs)
    assert protocol.decode_hello(await agent.recv()) == protocol.Hello()
    yield agent, pods, client
    theirs.close()


async def test_add_with_a_netns_fd_is_acked_and_starts_the_pod(session, netns_fd):
    agent, pods, _ = session
    ack = await agent.request(Add("u1", WorkloadInfo("web-1", "shop", "web")), netns_fd)
    assert ack.ok
    assert pods.calls == [("add", "u1", WorkloadInfo("web-1", "shop", "web"))]
    assert pods.pods["u1"] == netns.identity(netns_fd)


async def test_add_without_an_fd_is_nacked(session):
    agent, pods, _ = session
    ack = await agent.request(Add("u1"))
    assert "exactly one" in ack.error
    assert pods.calls == []


async def test_keep_or_del_with_an_fd_is_nacked(session, netns_fd):
    agent, _, _ = session
    assert "must not carry" in (await agent.request(Keep("u1"), netns_fd)).error
    assert "must not carry" in (await agent.request(Del("u1"), netns_fd)).error


async def test_garbage_is_nacked_and_the_session_goes_on(session, netns_fd):
    agent, pods, client = session
    for junk in (b"\xff\xff\xff", b"\x0b", b"\x0a\x05\x0a\x02u", os.urandom(64)):
        ack = await agent.send(junk)
        assert not ack.ok
    assert (await agent.request(Add("u1"), netns_fd)).ok
    assert "u1" in pods.pods
    assert client.errors >= 3


async def test_failed_start_is_nacked_with_the_reason(session, netns_fd):
    agent, pods, _ = session
    pods.fail.add("u1")
    ack = await agent.request(Add("u1"), netns_fd)
    assert "failed to start" in ack.error


async def test_keep_for_an_unknown_pod_is_nacked(session):
    agent, _, _ = session
    assert "unknown pod" in (await agent.request(Keep("ghost"))).error


async def test_snapshot_drops_pods_not_announced_and_marks_the_snapshot_done(netns_fd, nursery):
    pods = FakePods()
    pods.pods = {"stale": netns.NetnsId(0, 0), "kept": netns.NetnsId(0, 1)}
    client = ZdsClient("/nonexistent", pods)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    nursery.start_soon(client.serve, ours)
    agent = Agent(theirs)
    await agent.recv()
    assert (await agent.request(Keep("kept"))).ok
    assert (await agent.request(Add("new"), netns_fd)).ok
    assert not client.snapshot_done.is_set()
    assert (await agent.request(SnapshotSent())).ok
    assert client.snapshot_done.is_set()
    assert set(pods.pods) == {"kept", "new"}
    # After the snapshot, Del removes and a second SnapshotSent is a protocol error.
    assert (await agent.request(Del("kept"))).ok
    assert set(pods.pods) == {"new"}
    assert "twice" in (await agent.request(SnapshotSent())).error
    theirs.close()


def test_session_counts_only_snapshot_phase_uids():
    s = WorkloadSession()
    s.receive(protocol.encode(Keep("a")), [])
    s.receive(protocol.encode(SnapshotSent()), [])
    s.receive(protocol.encode(Del("a")), [])
    assert s.snapshot_uids == {"a"} and s.snapshot_done


async def test_client_connects_once_the_agent_listens_and_reconnects(tmp_path, netns_fd, nursery):
    path = str(tmp_path / "ztunnel.sock")
    pods = FakePods()
    client = ZdsClient(path, pods)
    nursery.start_soon(client.run)
    await trio.sleep(0.1)  # nobody listens yet: the client backs off and retries
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(path)
    server.listen(1)
    server.setblocking(False)
    for round_ in range(2):
        with trio.fail_after(5):
            while True:
                try:
                    conn, _ = server.accept()
                    break
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(server)
        agent = Agent(conn)
        assert protocol.decode_hello(await agent.recv()).version == 1
        assert (await agent.request(Add(f"u{round_}"), netns_fd)).ok
        assert (await agent.request(SnapshotSent())).ok
        conn.close()  # the agent restarts; the client must come back
    assert client.connections == 2
    # The second snapshot did not mention u0.
    assert set(pods.pods) == {"u1"}
    server.close()
