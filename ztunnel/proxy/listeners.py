"""Sockets in an enrolled pod's network namespace: its three listeners, and connect sockets.

Listeners are opened on a worker thread in the pod's netns (once per pod); connect sockets on
the event-loop thread, switched into the netns for the socket() call (once per connection).
The listeners are kept in one place so that a supervisor handing netns fds to N worker processes
can have each worker open the same listeners: all are SO_REUSEPORT, so the kernel spreads
connections, and a new ztunnel taking over from a draining one opens its copies next to the old
ones before those close. Closing a SO_REUSEPORT listener resets the connections still waiting in
its accept queue unless the pod's namespace has net.ipv4.tcp_migrate_req=1 (Linux 5.14), which
moves them to another listener of the group: opening the listeners sets it
(docs/architecture.md, "Zero-drop ztunnel restart").
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from wisp import netns, sockets
from wisp.engine.loop import Loop
from wisp.engine.tls import Connect

from ..config import INBOUND_PLAINTEXT_PORT, INBOUND_PORT, OUTBOUND_PORT
# Every socket ztunnel makes in a pod carries this mark, so the in-pod rules let it through.
MARK = 0x539
# How long a connection to an app or a peer may take to open.
CONNECT_TIMEOUT = 10.0
# Per network namespace: read through the calling thread's namespace.
MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req"

log = structlog.get_logger("ztunnel.proxy")


@dataclass(slots=True)
class PodListeners:
    outbound: socket.socket
    inbound_plaintext: socket.socket
    inbound: socket.socket

    def close(self) -> None:
        for sock in (self.outbound, self.inbound_plaintext, self.inbound):
            sockets.close(sock)


def migrate_requests() -> bool:
    """Have the calling thread's network namespace hand a closed listener's queued connections to
    another listener of its SO_REUSEPORT group instead of resetting them; False if the kernel
    cannot (before 5.14) or refuses, which only costs those connections on a restart."""
    try:
        with open(MIGRATE_REQ, "r+") as knob:
            if knob.read().strip() != "1":
                knob.seek(0)
                knob.write("1")
        return True
    except OSError as exc:
        log.warning("cannot set net.ipv4.tcp_migrate_req in the pod; a ztunnel restart may reset "
                    "connections still in the accept queue", error=str(exc))
        return False


def open_listeners(host: str = "0.0.0.0") -> PodListeners:
    """Open the listeners in the calling thread's network namespace."""
    migrate_requests()
    opened: list[socket.socket] = []
    try:
        for port in (OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, INBOUND_PORT):
            opened.append(sockets.listener((host, port), mark=MARK, transparent=True, reuse_port=True))
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    return PodListeners(*opened)


async def open_pod_listeners(netns_fd: int, host: str = "0.0.0.0") -> PodListeners:
    return await netns.run_in_netns(netns_fd, open_listeners, host)


def pod_socket(netns_fd: int, host: str, *, source: str | None = None,
               transparent: bool = False) -> socket.socket:
    """A marked, non-blocking TCP socket for connecting to `host`, made inside the pod.

    Made on the calling (event-loop) thread, which enters the pod's netns for the socket() call
    alone (bench.netns_socket: ~25 µs per socket this way, ~130–150 µs through a worker thread).
    """
    return netns.socket_in_netns(netns_fd, sockets.new_tcp_socket, host, mark=MARK, source=source,
                                 transparent=transparent)


def connect_in_pod(loop: Loop, netns_fd: int, address: tuple[str, int], *,
                   on_done: Callable[[socket.socket], None], on_error: Callable[[str], None],
                   source: str | None = None, timeout: float = CONNECT_TIMEOUT) -> None:
    """Connect to `address` from the pod's netns, carrying ztunnel's mark; call back once.

    With `source` (the real client's IP), made transparently: inbound traffic reaches the app as
    if straight from its client, the socket binding the client's address (IP_TRANSPARENT), and
    the in-pod rules route the app's replies back to ztunnel by the mark.
    """
    try:
        sock = pod_socket(netns_fd, address[0], source=source, transparent=source is not None)
    except OSError as exc:
        on_error(f"cannot open a socket in the pod: {exc.strerror or exc}")
        return
    Connect(loop, sock, address, timeout=timeout, on_done=on_done, on_error=on_error)
