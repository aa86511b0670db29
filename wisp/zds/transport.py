"""ZDS datagrams on a unix SOCK_SEQPACKET socket: both sides' I/O, shared.

One message per datagram, a netns fd in SCM_RIGHTS beside an Add. The helpers work on
non-blocking stdlib sockets under trio; the protocol itself (what a datagram may say) is
`protocol.py`'s. Descriptors received are the caller's to close (`close_fd`).
"""

from __future__ import annotations

import array
import os
import socket
from pathlib import Path

import trio

from .protocol import MAX_MESSAGE, ZdsError


def send_datagram(sock: socket.socket, payload: bytes, fd: int | None = None) -> None:
    """Send one message, with `fd` in SCM_RIGHTS. The socket must be non-blocking or ready."""
    ancillary = []
    if fd is not None:
        ancillary.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes()))
    sock.sendmsg([payload], ancillary)


def recv_datagram(sock: socket.socket) -> tuple[bytes, list[int]]:
    """Receive one message and any fds it carried (the caller owns and must close them).

    Raises ZdsError for a truncated datagram or truncated ancillary data, after closing any fds.
    Returns (b"", []) when the peer closed the connection.
    """
    fd_size = array.array("i").itemsize
    data, ancdata, flags, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4 * fd_size))
    fds: list[int] = []
    for level, kind, blob in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(blob) - len(blob) % fd_size
            fds.extend(array.array("i", blob[:usable]))
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            close_fd(fd)
        raise ZdsError("datagram or its file descriptors were truncated")
    return data, fds


async def send(sock: socket.socket, payload: bytes, fd: int | None = None) -> None:
    """`send_datagram` on a non-blocking socket, waiting while it is full."""
    while True:
        try:
            send_datagram(sock, payload, fd)
            return
        except (BlockingIOError, InterruptedError):
            await trio.lowlevel.wait_writable(sock)


async def receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """`recv_datagram` on a non-blocking socket, waiting for a message."""
    while True:
        try:
            return recv_datagram(sock)
        except (BlockingIOError, InterruptedError):
            await trio.lowlevel.wait_readable(sock)


def close_fd(fd: int) -> None:
    """Close a received descriptor nobody will use; one already closed is fine."""
    try:
        os.close(fd)
    except OSError:
        pass


def new_socket() -> socket.socket:
    """A non-blocking, close-on-exec SOCK_SEQPACKET socket, not yet connected."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    return sock


async def connect(sock: socket.socket, path: str) -> None:
    """Connect a non-blocking socket to the agent at `path`; OSError with the kernel's reason."""
    try:
        sock.connect(path)
    except (BlockingIOError, InterruptedError):
        await trio.lowlevel.wait_writable(sock)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err)) from None


def listen(path: str) -> socket.socket:
    """The agent's listening socket at `path`, readable by its owner only."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Path(path).unlink(missing_ok=True)  # a stale socket from a previous agent would make bind fail
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
