"""Test doubles for the node agent's peers (a fake ztunnel speaking ZDS from the other end) and
scratch network namespaces for tests."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
from collections.abc import Callable, Iterator
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


# -- scratch network namespaces ----------------------------------------------------------------
def random_prefix() -> str:
    """A unique name prefix for a test's namespaces (`wisp-tcni<hex>`), so leftovers are findable."""
    return f"wisp-tcni{secrets.token_hex(3)}"


@contextlib.contextmanager
def scratch_netns(name: str, *, loopback_up: bool = True) -> Iterator[str]:
    """A fresh network namespace (as `ip netns add` makes it), removed on exit even on failure."""
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        if loopback_up:  # as in any real pod
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
        yield wnetns.path_of(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def netns_run(path: str, *argv: str) -> str:
    """Run a command in a namespace, synchronously (test assertions)."""
    return subprocess.run(["nsenter", f"--net={path}", *argv], check=True, capture_output=True, text=True).stdout
