"""ZDS, ztunnel's side: receive pods from the node agent (or, in a worker, from ztunnel's main process).

`WorkloadSession` is the protocol per connection, sans-IO: it validates each datagram and
tracks the snapshot phase. `ZdsClient` is the shell: connect (backoff 10 ms → 15 s), Hello,
then for each message act on `Pods` and Ack, with the error text when it failed
(`WorkloadError`). A message that breaks the protocol is NACKed with what was wrong; the
connection goes on.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import structlog
import trio

from . import protocol, transport
from .protocol import Add, Del, Keep, Request, SnapshotSent, WorkloadInfo, ZdsError

log = structlog.get_logger("ztunnel.inpod")

BACKOFF_MIN = 0.01
BACKOFF_MAX = 15.0


class WorkloadError(Exception):
    """A pod request could not be carried out; the message goes back to the agent in the NACK."""


class Pods(Protocol):
    """What ZdsClient acts on. `add` owns `fd` from the call on; failures raise WorkloadError."""

    async def add(self, uid: str, info: WorkloadInfo, fd: int) -> None: ...

    def keep(self, uid: str) -> None: ...

    async def remove(self, uid: str) -> None: ...

    async def retain(self, uids: Iterable[str]) -> list[str]: ...


@dataclass(slots=True)
class WorkloadSession:
    """One connection to the node agent: Hello, a snapshot of Add/Keep, SnapshotSent, then updates."""

    snapshot_uids: set[str] = field(default_factory=set)
    snapshot_done: bool = False

    @staticmethod
    def hello() -> bytes:
        return protocol.encode(protocol.Hello())

    def receive(self, data: bytes, fds: list[int]) -> Request:
        """Validate one datagram; ZdsError says what is wrong (the caller closes the fds)."""
        request = protocol.decode_request(data)
        protocol.check_fds(request, fds)
        if isinstance(request, SnapshotSent):
            if self.snapshot_done:
                raise ZdsError("SnapshotSent received twice on one connection")
            self.snapshot_done = True
        elif isinstance(request, (Add, Keep)) and not self.snapshot_done:
            self.snapshot_uids.add(request.uid)
        return request

    @staticmethod
    def ack(error: str | None = None) -> bytes:
        return protocol.encode(protocol.Ack(error or ""))


class ZdsClient:
    def __init__(self, path: str, pods: Pods) -> None:
        self.path = path
        self.pods = pods
        self.snapshot_done = trio.Event()  # set after the first snapshot was applied
        self.connections = 0
        self.errors = 0

    async def run(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            sock = transport.new_socket()
            try:
                await transport.connect(sock, self.path)
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
        session = WorkloadSession()
        await _send(sock, session.hello())
        while True:
            try:
                data, fds = await transport.receive(sock)
            except ZdsError as exc:
                await self._nack(sock, str(exc))
                continue
            if not data and not fds:
                return
            try:
                request = session.receive(data, fds)
            except ZdsError as exc:
                for fd in fds:
                    transport.close_fd(fd)
                await self._nack(sock, str(exc))
                continue
            error = await self._apply(session, request, fds)
            await _send(sock, session.ack(error))

    async def _nack(self, sock: socket.socket, error: str) -> None:
        self.errors += 1
        log.warning("invalid message from the node agent", error=error)
        await _send(sock, WorkloadSession.ack(error))

    async def _apply(self, session: WorkloadSession, request: Request, fds: list[int]) -> str | None:
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
        except WorkloadError as exc:
            self.errors += 1
            log.warning("pod request failed", request=type(request).__name__, error=str(exc))
            return str(exc)
        return None


async def _send(sock: socket.socket, payload: bytes) -> None:
    with trio.move_on_after(protocol.ACK_TIMEOUT):
        await transport.send(sock, payload)
        return
    raise OSError(f"node agent did not take our message within {protocol.ACK_TIMEOUT:g} s")
