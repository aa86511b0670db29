"""Who is at the other end of a unix socket (SO_PEERCRED), and refusing those who may not be.

The node agent's ZDS socket hands out pods' network namespaces, its CNI endpoint enrols pods,
and a ztunnel or waypoint worker's metrics socket answers its main process. Each is meant for
privileged peers only: root (kubelet and the CNI plugin it runs, a node's ztunnel) or the
process's own uid. File modes and a run directory that pods cannot see (docs/architecture.md,
"Pod sandbox") keep others away; this check at accept is the last line. A connection from any
other uid is logged once with the peer's pid, uid and gid and closed before a byte is read.

The kernel records the credentials at connect() (or socketpair()); a peer cannot choose them
without the privilege that would make it an allowed peer anyway.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Collection
from dataclasses import dataclass

import structlog
import trio

log = structlog.get_logger("wisp.peercred")

_UCRED = struct.Struct("=iII")  # struct ucred: pid_t pid; uid_t uid; gid_t gid


@dataclass(slots=True, frozen=True)
class PeerCredentials:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """The credentials the kernel recorded for `sock`'s peer; OSError if it has none."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return PeerCredentials(*_UCRED.unpack(raw))


def privileged_uids() -> frozenset[int]:
    """Who may talk to a node component: root, or whoever this process runs as."""
    return frozenset({0, os.geteuid()})


def own_uid() -> frozenset[int]:
    """Who may talk to a process's own helpers (its workers, its main process): itself."""
    return frozenset({os.geteuid()})


def admit(sock: socket.socket, allowed: Collection[int], *, what: str) -> bool:
    """True if the peer of the accepted `sock` runs as one of `allowed`; otherwise the refusal
    is logged and False returned, and the caller closes the socket."""
    try:
        peer = peer_credentials(sock)
    except OSError as exc:
        log.warning("peer refused: its credentials cannot be read", socket=what, error=str(exc))
        return False
    if peer.uid in allowed:
        return True
    log.warning("peer refused: its uid may not use this socket", socket=what, pid=peer.pid, uid=peer.uid,
                gid=peer.gid, allowed=sorted(allowed))
    return False


class PeerCheckedListener(trio.abc.Listener[trio.SocketStream]):
    """A trio listener on a listening socket that returns only peers in `allowed`, for servers
    that accept on our behalf (hypercorn's connection handler): a refused connection is logged
    and closed and the next one awaited."""

    def __init__(self, sock: socket.socket, allowed: Collection[int], *, what: str) -> None:
        self._inner = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        self.allowed = frozenset(allowed)
        self.what = what

    async def accept(self) -> trio.SocketStream:
        while True:
            stream = await self._inner.accept()
            if admit(stream.socket, self.allowed, what=self.what):
                return stream
            await stream.aclose()

    async def aclose(self) -> None:
        await self._inner.aclose()


def listen_unix(path: str, *, backlog: int = 128) -> socket.socket:
    """A stream socket bound at `path` (an old file there is replaced), mode 0600, listening."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock
