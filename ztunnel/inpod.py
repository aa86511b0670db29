"""In-pod mode: the ZDS client that receives pod network namespaces, and the pod proxies' lifecycle.

`ZdsSession` is the protocol per connection, sans-IO: it validates each datagram and tracks
the snapshot phase. `ZdsClient` is the shell: connect (backoff 10 ms → 15 s), Hello, then for
each message act on `PodManager` and Ack (with the error text when it failed). `PodManager`
starts one PodProxy per pod, keyed by uid and netns identity: the same netns again is a no-op,
a different one replaces the proxy; a failed start is NACKed and retried every 5 s.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog
import trio

from wisp import netns, zds
from wisp.zds import Add, Del, Keep, Request, SnapshotSent, WorkloadInfo, ZdsError

from .listeners import open_pod_listeners
from .proxy import Pod, PodProxy

if TYPE_CHECKING:
    from .app import Ztunnel

log = structlog.get_logger("ztunnel.inpod")

BACKOFF_MIN = 0.01
BACKOFF_MAX = 15.0
RETRY_INTERVAL = 5.0


class PodStartError(Exception):
    """A pod's proxy could not start (netns gone, listeners refused); the agent is told why."""


# -- protocol, sans-IO -----------------------------------------------------------------------------
@dataclass(slots=True)
class ZdsSession:
    """One connection to the node agent: Hello, a snapshot of Add/Keep, SnapshotSent, then updates."""

    snapshot_uids: set[str] = field(default_factory=set)
    snapshot_done: bool = False

    @staticmethod
    def hello() -> bytes:
        return zds.encode(zds.Hello())

    def receive(self, data: bytes, fds: list[int]) -> Request:
        """Validate one datagram; ZdsError says what is wrong (the caller closes the fds)."""
        request = zds.decode_request(data)
        zds.check_fds(request, fds)
        if isinstance(request, SnapshotSent):
            if self.snapshot_done:
                raise ZdsError("SnapshotSent received twice on one connection")
            self.snapshot_done = True
        elif isinstance(request, (Add, Keep)) and not self.snapshot_done:
            self.snapshot_uids.add(request.uid)
        return request

    @staticmethod
    def ack(error: str | None = None) -> bytes:
        return zds.encode(zds.Ack(error or ""))


# -- pods ------------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Pending:
    info: WorkloadInfo
    fd: int


class PodManager:
    """The pod proxies of this ztunnel, by pod uid. Run `run` in a nursery before use."""

    def __init__(self, ztunnel: Ztunnel) -> None:
        self.ztunnel = ztunnel
        self.proxies: dict[str, PodProxy] = {}
        self.pending: dict[str, _Pending] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._retry_loop)
                task_status.started()
                await trio.sleep_forever()
        finally:
            for pending in self.pending.values():
                zds.close_fd(pending.fd)
            self.pending.clear()

    async def add(self, uid: str, info: WorkloadInfo, fd: int) -> None:
        """Start (or keep, or replace) the proxy of `uid`; owns `fd` from here on."""
        try:
            ident = netns.identity(fd)
        except OSError as exc:
            zds.close_fd(fd)
            raise PodStartError(f"netns fd for {uid} is unusable: {exc}") from None
        current = self.proxies.get(uid)
        if current is not None and current.pod.netns == ident:
            zds.close_fd(fd)
            log.debug("pod already enrolled with this netns", uid=uid)
            return
        if current is not None:
            log.info("pod netns changed; replacing its proxy", uid=uid)
            await self.remove(uid)
        self._drop_pending(uid)
        try:
            await self._start(uid, info, fd, ident)
        except PodStartError:
            self.pending[uid] = _Pending(info, fd)
            raise

    async def _start(self, uid: str, info: WorkloadInfo, fd: int, ident: netns.NetnsId) -> None:
        assert self._nursery is not None, "PodManager.run must be running"
        try:
            pod_listeners = await open_pod_listeners(fd)
        except OSError as exc:
            raise PodStartError(f"cannot open listeners in the netns of {uid}: {exc}") from None
        proxy = PodProxy(self.ztunnel, Pod(uid, info, ident), fd, pod_listeners)
        try:
            await self._nursery.start(proxy.run)
        except Exception as exc:
            raise PodStartError(f"proxy for {uid} failed to start: {exc}") from None
        self.proxies[uid] = proxy

    def keep(self, uid: str) -> None:
        if uid not in self.proxies and uid not in self.pending:
            raise PodStartError(f"keep for unknown pod {uid}; send Add with its netns")

    async def remove(self, uid: str) -> None:
        self._drop_pending(uid)
        proxy = self.proxies.pop(uid, None)
        if proxy is None:
            return
        proxy.stop()
        await proxy.stopped.wait()

    async def retain(self, uids: Iterable[str]) -> list[str]:
        """Remove every pod not in `uids` (after a snapshot); returns the removed uids."""
        keep = set(uids)
        gone = [uid for uid in (*self.proxies, *self.pending) if uid not in keep]
        for uid in gone:
            log.info("pod not in the node agent's snapshot; removing", uid=uid)
            await self.remove(uid)
        return gone

    async def drain(self, timeout: float) -> None:
        async with trio.open_nursery() as nursery:
            for proxy in list(self.proxies.values()):
                nursery.start_soon(proxy.drain, timeout)

    def _drop_pending(self, uid: str) -> None:
        pending = self.pending.pop(uid, None)
        if pending is not None:
            zds.close_fd(pending.fd)

    async def _retry_loop(self) -> None:
        while True:
            await trio.sleep(RETRY_INTERVAL)
            for uid, pending in list(self.pending.items()):
                if self.pending.get(uid) is not pending:
                    continue
                try:
                    await self._start(uid, pending.info, pending.fd, netns.identity(pending.fd))
                except (PodStartError, OSError) as exc:
                    log.warning("pod proxy start failed again", uid=uid, error=str(exc))
                    continue
                del self.pending[uid]
                log.info("pod proxy started after retry", uid=uid)


# -- the client shell ------------------------------------------------------------------------------
class ZdsClient:
    def __init__(self, path: str, pods: PodManager) -> None:
        self.path = path
        self.pods = pods
        self.snapshot_done = trio.Event()  # set after the first snapshot was applied
        self.connections = 0
        self.errors = 0

    async def run(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            try:
                await _connect(sock, self.path)
            except OSError as exc:
                sock.close()
                log.debug("node agent not reachable", path=self.path, error=str(exc), retry_in=backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_MIN
            self.connections += 1
            log.info("connected to the node agent", path=self.path)
            try:
                await self.serve(sock)
                log.warning("node agent closed the connection")
            except OSError as exc:
                log.warning("node agent connection failed", error=str(exc))
            finally:
                trio.lowlevel.notify_closing(sock)
                sock.close()
            await trio.sleep(backoff)

    async def serve(self, sock: socket.socket) -> None:
        """Speak ZDS on a connected socket until the peer closes it."""
        session = ZdsSession()
        await _send(sock, session.hello())
        while True:
            try:
                data, fds = await zds.receive(sock)
            except ZdsError as exc:
                await self._nack(sock, str(exc))
                continue
            if not data and not fds:
                return
            try:
                request = session.receive(data, fds)
            except ZdsError as exc:
                for fd in fds:
                    zds.close_fd(fd)
                await self._nack(sock, str(exc))
                continue
            error = await self._apply(session, request, fds)
            await _send(sock, session.ack(error))

    async def _nack(self, sock: socket.socket, error: str) -> None:
        self.errors += 1
        log.warning("invalid message from the node agent", error=error)
        await _send(sock, ZdsSession.ack(error))

    async def _apply(self, session: ZdsSession, request: Request, fds: list[int]) -> str | None:
        try:
            if isinstance(request, Add):
                await self.pods.add(request.uid, request.info, fds[0])
            elif isinstance(request, Keep):
                self.pods.keep(request.uid)
            elif isinstance(request, Del):
                await self.pods.remove(request.uid)
            elif isinstance(request, SnapshotSent):
                await self.pods.retain(session.snapshot_uids)
                self.snapshot_done.set()
                log.info("node agent snapshot applied", pods=len(session.snapshot_uids))
        except PodStartError as exc:
            self.errors += 1
            log.warning("pod request failed", request=type(request).__name__, error=str(exc))
            return str(exc)
        return None


async def _connect(sock: socket.socket, path: str) -> None:
    try:
        sock.connect(path)
    except (BlockingIOError, InterruptedError):
        await trio.lowlevel.wait_writable(sock)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))


async def _send(sock: socket.socket, payload: bytes) -> None:
    with trio.move_on_after(zds.ACK_TIMEOUT):
        await zds.send(sock, payload)
        return
    raise OSError(f"node agent did not take our message within {zds.ACK_TIMEOUT:g} s")
