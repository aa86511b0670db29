"""A fake ztunnel: the node agent's ZDS peer, driven by a test.

It connects to the agent's ZDS socket, says Hello, records every request with the identity of
the netns an Add carried, and answers each (an Ack, or the error `answer` returns). The real
ztunnel side is wisp/zds/workload.py; this one lets a test choose the answers and see the order.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

import trio

from wisp import netns as wnetns
from wisp import sockets as wsockets
from wisp.zds import protocol, transport
from wisp.zds.protocol import Ack, Add, Hello, Request


@dataclass(frozen=True, slots=True)
class Received:
    message: Request
    netns: wnetns.NetnsId | None  # identity of the fd an Add carried


class FakeZtunnel:
    """Connects to the agent's ZDS socket, says Hello, records requests and answers each.

    `answer(request)` returns the Ack error for a request ("" acks). Use `serve()` in a nursery
    for automatic answers, or `receive()`/`ack()` by hand.
    """

    def __init__(self, path: str, answer: Callable[[Request], str] | None = None) -> None:
        self.path = path
        self.answer = answer or (lambda request: "")
        self.sock: socket.socket | None = None
        self.received: list[Received] = []
        self.closed_by_agent = trio.Event()
        self._changed = trio.Event()

    async def connect(self, *, hello: bool = True, timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while True:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
                try:
                    sock.connect(self.path)
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    sock.close()
                    await trio.sleep(0.01)
        sock.setblocking(False)
        self.sock = sock
        if hello:
            await self.send_raw(protocol.encode(Hello()))

    async def send_raw(self, payload: bytes, fd: int | None = None) -> None:
        assert self.sock is not None
        await transport.send(self.sock, payload, fd)

    async def ack(self, error: str = "") -> None:
        await self.send_raw(protocol.encode(Ack(error)))

    async def receive(self, timeout: float = 5.0) -> Received | None:
        """The next request from the agent, or None when the agent closed the connection."""
        assert self.sock is not None
        with trio.fail_after(timeout):
            try:
                data, fds = await transport.receive(self.sock)
            except ConnectionResetError:
                data, fds = b"", []
        if not data and not fds:
            self.closed_by_agent.set()
            return None
        try:
            message = protocol.decode_request(data)
            protocol.check_fds(message, fds)
            ident = wnetns.identity(fds[0]) if isinstance(message, Add) else None
        finally:
            for fd in fds:
                os.close(fd)
        got = Received(message, ident)
        self.received.append(got)
        self._changed.set()
        self._changed = trio.Event()
        return got

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Answer every request until the agent closes the connection; connects first if needed
        (waiting for the agent to listen, as ztunnel's backoff would)."""
        task_status.started()
        if self.sock is None:
            await self.connect(timeout=30)
        try:
            while True:
                got = await self.receive(timeout=3600)
                if got is None:
                    return
                await self.ack(self.answer(got.message))
        except (trio.ClosedResourceError, BrokenPipeError, ConnectionResetError):
            return  # closed by the test, or by the agent mid-answer

    async def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while not predicate(self.received):
                await self._changed.wait()

    def messages(self) -> list[Request]:
        return [r.message for r in self.received]

    def close(self) -> None:
        if self.sock is not None:
            wsockets.close(self.sock)
            self.sock = None
