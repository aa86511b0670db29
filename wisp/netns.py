"""Network namespaces: entering one for a socket() call, on a worker thread or the event loop's, and identifying one.

A socket stays in the namespace it was created in. `socket_in_netns` switches the calling thread
into a pod's namespace for one synchronous call (creating and tuning a socket) and back, so the
event-loop thread can make a pod's connect socket in a few microseconds; nothing may await in
between, or other tasks would run in the pod's namespace. `run_in_netns` does the same on a
worker thread, for slower work (opening a pod's listeners). Either way a thread that cannot
return home stops the process. Python 3.11 has no os.setns; libc's is called through ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
import trio

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"

log = structlog.get_logger("wisp.netns")
T = TypeVar("T")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
# The namespace threads that call socket_in_netns live in, opened on the first call (see there).
_home_fd: int | None = None


class NetnsError(OSError):
    """A network namespace could not be opened or entered."""


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling thread into the namespace `fd` refers to."""
    if hasattr(os, "setns"):
        os.setns(fd, nstype)
        return
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"setns failed: {os.strerror(err)}")


def path_of(name: str) -> str:
    """Where `ip netns add NAME` mounts a namespace."""
    return os.path.join(NETNS_RUN_DIR, name)


def open_netns(path: str) -> int:
    """An fd for the namespace at `path` (/var/run/netns/X or /proc/PID/ns/net)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetnsError(exc.errno or errno.ENOENT, f"cannot open network namespace {path}: {exc.strerror}") from None


@dataclass(slots=True, frozen=True)
class NetnsId:
    """A namespace's identity: two fds name the same namespace iff device and inode match."""

    dev: int
    ino: int


def identity(fd: int) -> NetnsId:
    st = os.fstat(fd)
    return NetnsId(st.st_dev, st.st_ino)


def in_netns(netns_fd: int, fn: Callable[..., T], *args) -> T:
    """Run `fn(*args)` on this thread inside the namespace, then return the thread home.

    Call it on a worker thread only. If the thread cannot go home it must never run anything
    else, so the process is stopped rather than risk sockets in the wrong namespace.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(netns_fd)
        try:
            return fn(*args)
        finally:
            try:
                setns(home)
            except OSError as exc:
                log.critical("worker thread stuck in a pod network namespace; stopping", error=str(exc))
                os._exit(70)
    finally:
        os.close(home)


def socket_in_netns(netns_fd: int, fn: Callable[..., T], *args, **kwargs) -> T:
    """`fn(*args, **kwargs)` on the calling thread inside the namespace, and the thread home again.

    For one short synchronous call, such as creating a socket, on a thread that lives in the
    process's own namespace (the event loop's): no await may come between the switches. The
    home namespace is opened once per process, from the calling thread on its first call. If the
    thread cannot go home, the process exits: whatever ran next would make sockets in a pod.
    """
    global _home_fd
    if _home_fd is None:
        _home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    setns(netns_fd)  # on failure the thread has not moved
    try:
        return fn(*args, **kwargs)
    finally:
        try:
            setns(_home_fd)
        except OSError as exc:
            log.critical("thread stuck in a pod network namespace; stopping", error=str(exc))
            os._exit(70)


async def run_in_netns(netns_fd: int, fn: Callable[..., T], *args) -> T:
    """`fn(*args)` inside the namespace, on a worker thread, without blocking the event loop."""
    return await trio.to_thread.run_sync(in_netns, netns_fd, fn, *args)
