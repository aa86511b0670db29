"""ZDS, the node agent's side: hands enrolled pods' network namespaces to ztunnel (Istio's sequence and semantics).

The agent listens on a unix SOCK_SEQPACKET socket; ztunnel connects and says Hello; the agent
sends one Add (netns fd in SCM_RIGHTS) or Keep (pod whose netns it cannot open) per enrolled pod,
each acked, then SnapshotSent; then Add/Del as pods come and go. `NodeSession` is the sans-IO
protocol state of one connection (ztunnel's main process also speaks it to its worker
processes); `ZdsServer` is the node agent's shell.

Several ztunnels may be connected at once, as during a restart or upgrade: a new one connects
while the old one still serves its established connections (docs/architecture.md, "Zero-drop
ztunnel restart"). As Istio's node agent does, every connection that said Hello gets the full
snapshot, a new pod goes to the newest connection only, and a removed pod to every connection.
An older connection is not cut when a newer one says Hello: it ends when that ztunnel closes it
(a draining ztunnel does), or when more than `max_sessions` ztunnels said Hello (the oldest
goes). A connection that never says a valid Hello gets nothing and displaces nobody.

Failure handling: a NACK leaves the pod un-acked and it is offered again every `retry_interval`;
an ack that does not come within `ack_timeout` drops the connection (a late ack could otherwise
be taken for the answer to the next request) and ztunnel's reconnect brings a fresh snapshot.
Anything from ztunnel that is not what the protocol expects drops that connection only.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import trio

from wisp import netns as wnetns
from wisp import peercred
from wisp import sockets as wsockets

from . import protocol, transport
from .protocol import Ack, Add, Del, Hello, Keep, Request, SnapshotSent, WorkloadInfo, ZdsError

log = structlog.get_logger("cni.zds")

ACK_TIMEOUT = protocol.ACK_TIMEOUT
RETRY_INTERVAL = 5.0
# ztunnels served at once: the serving one and its successor, with room for a restart that
# comes while an old one still drains. More means something reconnects in a loop.
MAX_SESSIONS = 4


@dataclass(frozen=True, slots=True)
class ZdsPod:
    """A pod ztunnel should serve: uid (metadata.uid), workload info, netns path (None: Keep)."""

    uid: str
    info: WorkloadInfo
    netns: str | None


@dataclass(frozen=True, slots=True)
class Outcome:
    acked: bool
    error: str = ""


class NodeSession:
    """Protocol state of one ztunnel connection, sans-IO.

    ztunnel speaks first (Hello); after that it may only answer, one Ack per request, and it
    never sends file descriptors.
    """

    def __init__(self) -> None:
        self.hello: Hello | None = None
        self.outstanding: Request | None = None

    def receive(self, data: bytes, fds: list[int]) -> Hello | Ack:
        """Interpret one datagram from ztunnel; ZdsError if it breaks the protocol."""
        if fds:
            raise ZdsError(f"ztunnel sent {len(fds)} file descriptor(s); only the agent sends them")
        if self.hello is None:
            self.hello = protocol.decode_hello(data)
            return self.hello
        if self.outstanding is None:
            raise ZdsError("unsolicited message: no request is waiting for an ack")
        ack = protocol.decode_response(data)
        # Protobuf would ignore unknown fields, and an Add or Keep read as a WorkloadResponse looks
        # like a NACK; ztunnel's acks are canonical, so anything else is not an ack.
        if protocol.encode(ack) != data:
            raise ZdsError("not a WorkloadResponse: the message carries fields an Ack does not have")
        self.outstanding = None
        return ack

    def send(self, request: Request) -> bytes:
        if self.hello is None:
            raise ZdsError("cannot send a request before ztunnel's Hello")
        if self.outstanding is not None:
            raise ZdsError("a request is still waiting for its ack")
        self.outstanding = request
        return protocol.encode(request)


class _Drop(Exception):
    """End this connection; the message says why."""


@dataclass(eq=False)
class _Work:
    message: Add | Del
    pod: ZdsPod | None = None
    done: trio.Event = field(default_factory=trio.Event)
    outcome: Outcome = Outcome(False, "not sent")

    def finish(self, outcome: Outcome) -> None:
        if not self.done.is_set():
            self.outcome = outcome
            self.done.set()


class _Connection:
    def __init__(self, server: ZdsServer, sock: socket.socket, number: int) -> None:
        self.server = server
        self.sock = sock
        self.number = number
        self.session = NodeSession()
        self.cancel_scope = trio.CancelScope()
        self.work_send, self.work_recv = trio.open_memory_channel[_Work](math.inf)
        self.ack_send, self.ack_recv = trio.open_memory_channel[Ack](1)
        self.hello = trio.Event()
        self.ready = False
        self.acked: set[str] = set()
        self.queued: set[str] = set()
        self.log = log.bind(connection=number)
        self.end_reason = "agent stopping"

    def submit(self, work: _Work) -> None:
        if isinstance(work.message, Add):
            self.queued.add(work.message.uid)
        self.work_send.send_nowait(work)

    async def run(self) -> None:
        try:
            with self.cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader)
                    await self._writer()
        except* _Drop as group:
            self.end_reason = str(group.exceptions[0])
        except* OSError as group:
            self.end_reason = f"socket error: {group.exceptions[0]}"
        finally:
            self.close(self.end_reason)

    def close(self, reason: str) -> None:
        wsockets.close(self.sock)
        self.work_send.close()
        while True:
            try:
                work = self.work_recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            work.finish(Outcome(False, f"ztunnel connection ended: {reason}"))
        self.server._connection_ended(self)
        self.log.info("ztunnel connection closed", reason=reason)

    async def _reader(self) -> None:
        while True:
            try:
                data, fds = await _recv(self.sock)
            except ZdsError as exc:
                self.log.warning("dropping ztunnel connection: unreadable datagram", error=str(exc))
                raise _Drop(f"unreadable datagram: {exc}") from None
            if not data and not fds:
                raise _Drop("ztunnel closed the connection")
            try:
                message = self.session.receive(data, fds)
            except ZdsError as exc:
                self.log.warning("dropping ztunnel connection: protocol violation", error=str(exc),
                                 datagram=data[:64].hex())
                raise _Drop(f"protocol violation: {exc}") from None
            finally:
                for fd in fds:
                    transport.close_fd(fd)
            if isinstance(message, Hello):
                self.server._promote(self)
                self.log.info("ztunnel said hello", version=message.version,
                              connected=len(self.server.sessions))
                self.hello.set()
            else:
                self.ack_send.send_nowait(message)

    async def _writer(self) -> None:
        with trio.move_on_after(self.server.ack_timeout) as scope:
            await self.hello.wait()
        if scope.cancelled_caught:
            raise _Drop(f"no Hello within {self.server.ack_timeout} s")
        snapshot = list(self.server.pods.values())
        for pod in snapshot:
            await self._offer(pod, in_snapshot=True)
        ack = await self._request(SnapshotSent())
        if not ack.ok:
            self.log.warning("ztunnel refused the snapshot", error=ack.error)
        self.ready = True
        self.log.info("snapshot sent", pods=len(snapshot), acked=len(self.acked))
        async for work in self.work_recv:
            if isinstance(work.message, Add):
                self.queued.discard(work.message.uid)
                pod = self.server.pods.get(work.message.uid)
                if pod is None:
                    work.finish(Outcome(False, "pod was removed before ztunnel got it"))
                    continue
                work.finish(await self._offer(pod, in_snapshot=False))
            else:
                ack = await self._request(work.message)
                self.acked.discard(work.message.uid)
                if not ack.ok:
                    self.log.warning("ztunnel refused to remove a pod", uid=work.message.uid, error=ack.error)
                work.finish(Outcome(ack.ok, ack.error))

    async def _offer(self, pod: ZdsPod, *, in_snapshot: bool) -> Outcome:
        """Add (with the netns fd) or, in a snapshot, Keep when the netns cannot be opened."""
        fd = None
        if pod.netns is not None:
            try:
                fd = wnetns.open_netns(pod.netns)
            except OSError as exc:
                if not in_snapshot:
                    return Outcome(False, str(exc))
                self.log.info("pod netns unavailable; sending Keep", uid=pod.uid, error=str(exc))
        elif not in_snapshot:
            return Outcome(False, "the pod's network namespace is not known")
        try:
            message: Add | Keep = Add(pod.uid, pod.info) if fd is not None else Keep(pod.uid)
            ack = await self._request(message, fd)
        finally:
            if fd is not None:
                os.close(fd)
        if ack.ok:
            self.acked.add(pod.uid)
            self.server._acked(pod.uid)
            return Outcome(True)
        self.acked.discard(pod.uid)
        self.log.warning("ztunnel refused a pod; will retry", uid=pod.uid, error=ack.error,
                         retry_in=self.server.retry_interval)
        return Outcome(False, f"ztunnel refused the pod: {ack.error}")

    async def _request(self, message: Request, fd: int | None = None) -> Ack:
        payload = self.session.send(message)
        with trio.move_on_after(self.server.ack_timeout) as scope:
            await transport.send(self.sock, payload, fd)
            return await self.ack_recv.receive()
        assert scope.cancelled_caught
        self.log.warning("ztunnel did not ack in time; dropping the connection so it resyncs",
                         message=type(message).__name__, timeout=self.server.ack_timeout)
        raise _Drop(f"no ack for {type(message).__name__} within {self.server.ack_timeout} s")


class ZdsServer:
    """Keeps the set of pods ztunnel should serve and tells the connected ztunnels about it."""

    def __init__(self, path: str, *, ack_timeout: float = ACK_TIMEOUT, retry_interval: float = RETRY_INTERVAL,
                 on_ack: Callable[[str], None] | None = None, max_sessions: int = MAX_SESSIONS) -> None:
        self.path = path
        self.ack_timeout = ack_timeout
        self.retry_interval = retry_interval
        self.on_ack = on_ack
        self.max_sessions = max_sessions
        self.pods: dict[str, ZdsPod] = {}
        # Connections that said Hello, oldest first; the last is the one new pods go to.
        self.sessions: list[_Connection] = []
        self.connections_seen = 0

    @property
    def connection(self) -> _Connection | None:
        """The newest ztunnel connection that said Hello: it gets new pods."""
        return self.sessions[-1] if self.sessions else None

    # -- what the agent calls ------------------------------------------------------------------
    def register(self, pod: ZdsPod) -> None:
        """Include the pod in snapshots from now on, without sending anything (start-up)."""
        self.pods[pod.uid] = pod

    def is_acked(self, uid: str) -> bool:
        conn = self.connection
        return conn is not None and uid in conn.acked

    async def add(self, pod: ZdsPod) -> Outcome:
        """Have ztunnel serve the pod; returns once ztunnel acked or refused, or it cannot be asked."""
        self.pods[pod.uid] = pod
        conn = self.connection
        if conn is None:
            return Outcome(False, "no ztunnel is connected")
        work = _Work(Add(pod.uid, pod.info), pod)
        conn.submit(work)
        return await self._wait(work)

    async def remove(self, uid: str) -> Outcome:
        """Stop serving the pod, on every connected ztunnel (an old one still draining holds the
        pod's netns too). Without a connection the next snapshot simply leaves it out. The
        outcome is the newest connection's; an older one that fails to remove it is logged."""
        if self.pods.pop(uid, None) is None:
            return Outcome(True)
        newest = self.connection
        if newest is None:
            return Outcome(True)
        works = {conn: _Work(Del(uid)) for conn in self.sessions}
        for conn, work in works.items():
            conn.submit(work)
        outcome = await self._wait(works[newest])
        for conn, work in works.items():
            if conn is not newest and work.done.is_set() and not work.outcome.acked:
                conn.log.warning("an older ztunnel did not remove a pod", uid=uid, error=work.outcome.error)
        return outcome

    async def _wait(self, work: _Work) -> Outcome:
        # The connection finishes every item (ack, NACK, or its own end); this bound only guards
        # against a long queue in front of it.
        with trio.move_on_after(self.ack_timeout * 3):
            await work.done.wait()
            return work.outcome
        return Outcome(False, "ztunnel is busy; still queued")

    # -- serving -------------------------------------------------------------------------------
    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listener = transport.listen(self.path)
        log.info("ZDS listening", path=self.path)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._retry_loop)
                task_status.started()
                while True:
                    sock, _ = await wsockets.accept(listener)
                    # Whoever connects gets every pod's netns: only root or our own uid may.
                    if not peercred.admit(sock, peercred.privileged_uids(), what="ZDS"):
                        wsockets.close(sock)
                        continue
                    self.connections_seen += 1
                    conn = _Connection(self, sock, self.connections_seen)
                    # It replaces the active session only once it said Hello (see _promote):
                    # a client that connects and sends garbage must not cut ztunnel off.
                    conn.log.info("ztunnel connected")
                    nursery.start_soon(conn.run)
        finally:
            wsockets.close(listener)
            Path(self.path).unlink(missing_ok=True)

    def _promote(self, conn: _Connection) -> None:
        """`conn` said Hello: new pods go to it from now on. Older connections stay (their
        ztunnel drains and closes them), unless there are more than `max_sessions`. A session
        says Hello once (`NodeSession.receive`), so `conn` is not among them yet."""
        self.sessions.append(conn)
        while len(self.sessions) > self.max_sessions:
            oldest = self.sessions.pop(0)
            oldest.end_reason = f"more than {self.max_sessions} ztunnels connected; the oldest goes"
            oldest.cancel_scope.cancel()

    def _connection_ended(self, conn: _Connection) -> None:
        if conn in self.sessions:
            self.sessions.remove(conn)

    def _acked(self, uid: str) -> None:
        if self.on_ack is not None:
            self.on_ack(uid)

    async def _retry_loop(self) -> None:
        while True:
            await trio.sleep(self.retry_interval)
            conn = self.connection
            if conn is None or not conn.ready:
                continue
            for uid, pod in list(self.pods.items()):
                if uid not in conn.acked and uid not in conn.queued and pod.netns is not None:
                    conn.log.info("offering un-acked pod to ztunnel again", uid=uid)
                    conn.submit(_Work(Add(uid, pod.info), pod))


# -- socket shell ------------------------------------------------------------------------------
async def _recv(sock: socket.socket) -> tuple[bytes, list[int]]:
    try:
        return await transport.receive(sock)
    except ConnectionResetError:
        return b"", []
