"""Listeners in the loop: accept in batches, survive running out of descriptors, bound each source.

An accept that fails for lack of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM) stops accepting for
a short back-off instead of failing the process (Istio's accept loop does the same); the kernel
keeps the pending connections in the backlog meanwhile. Each source IP may hold at most
`per_source` live connections on one listener: one noisy pod cannot take every descriptor of
the node's ztunnel. A refused connection is closed with RST at once.
"""

from __future__ import annotations

import errno
import resource
import socket
from collections.abc import Callable

import structlog

from wisp import sockets

from .loop import READ, Loop

log = structlog.get_logger("wisp.engine.accept")

_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_GONE_ERRORS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})
_BATCH = 64
BACKOFF = 0.1
DEFAULT_PER_SOURCE = 16384

# on_accept(conn, peer, release): serve `conn`; call release() once it is closed.
OnAccept = Callable[[socket.socket, tuple[str, int], Callable[[], None]], None]


class Acceptor:
    def __init__(self, loop: Loop, sock: socket.socket, on_accept: OnAccept, *, name: str,
                 per_source: int = DEFAULT_PER_SOURCE) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.name = name
        self.on_accept = on_accept
        self.per_source = per_source
        self.by_source: dict[str, int] = {}
        self.accepted = 0
        self.refused = 0
        self.resource_errors = 0
        self._paused = False
        self.closed = False
        loop.register(self.fd, self, READ)

    def on_readable(self) -> None:
        if self._paused:
            return
        for _ in range(_BATCH):
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _GONE_ERRORS:
                    continue
                if exc.errno in _RESOURCE_ERRORS:
                    self._back_off(exc)
                    return
                raise
            ip = peer[0]
            count = self.by_source.get(ip, 0)
            if count >= self.per_source:
                self.refused += 1
                sockets.reset(conn)
                if self.refused & (self.refused - 1) == 0:  # log the 1st, 2nd, 4th, 8th …
                    log.warning("connection refused: too many from one source", listener=self.name,
                                source=ip, limit=self.per_source, refused=self.refused)
                continue
            self.by_source[ip] = count + 1
            self.accepted += 1
            conn.setblocking(False)
            self.on_accept(conn, peer[:2], _Release(self, ip))

    def release(self, ip: str) -> None:
        count = self.by_source.get(ip, 0) - 1
        if count > 0:
            self.by_source[ip] = count
        else:
            self.by_source.pop(ip, None)

    def _back_off(self, exc: OSError) -> None:
        self.resource_errors += 1
        if self.resource_errors & (self.resource_errors - 1) == 0:
            log.warning("accept failed for lack of resources; backing off", listener=self.name,
                        error=errno.errorcode.get(exc.errno or 0, str(exc)), seconds=BACKOFF,
                        times=self.resource_errors)
        self._paused = True
        self.loop.want(self.fd, 0)
        self.loop.call_later(BACKOFF, self._resume)

    def _resume(self) -> None:
        if self.closed:
            return
        self._paused = False
        self.loop.want(self.fd, READ)
        self.on_readable()

    def on_writable(self) -> None:
        pass

    def abort(self, reason: str) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting (the socket is closed; connections already accepted go on)."""
        if self.closed:
            return
        self.closed = True
        self.loop.unregister(self.fd)
        self.sock.close()


class _Release:
    """Called once when an accepted connection is gone; later calls do nothing."""

    __slots__ = ("_acceptor", "_ip")

    def __init__(self, acceptor: Acceptor, ip: str) -> None:
        self._acceptor: Acceptor | None = acceptor
        self._ip = ip

    def __call__(self) -> None:
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            acceptor.release(self._ip)


def raise_file_limit() -> tuple[int, int]:
    """Raise this process's open-file limit as far as it may go (Istio's ztunnel does at start).

    The soft limit goes to the hard one; as root, both go to the kernel's per-process maximum
    (fs.nr_open). Returns the (soft, hard) limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open") as f:
            ceiling = int(f.read())
    except (OSError, ValueError):
        ceiling = hard
    for target in ((ceiling, ceiling), (hard, hard)):
        if target[0] <= soft and target[1] <= hard:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, target)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)
