"""Socket construction shared by the data plane: listeners, outbound connects, marks and options.

The data plane uses plain stdlib sockets driven by trio's readiness waits, because pod sockets are
created on a thread that has entered the pod's network namespace and because TLS runs on
`ssl.SSLSocket` directly (see wisp.hbone.tls).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

import trio

# Linux constants (include/uapi/linux/in.h, socket.h) that Python does not export everywhere.
SO_MARK = getattr(socket, "SO_MARK", 36)
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
IPV6_TRANSPARENT = 75
SO_ORIGINAL_DST = 80

Address = tuple[str, int]


def format_address(ip: str, port: int) -> str:
    """`ip:port`, with an IPv6 address in brackets."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def tune(sock: socket.socket, *, mark: int | None = None) -> None:
    """Options every data-plane TCP socket gets: no Nagle, keepalive 180 s/180 s/9, optional mark."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 180)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 180)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 9)
    if mark is not None:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)


def listener(
    address: Address, *, backlog: int = 1024, reuse_port: bool = True, mark: int | None = None,
    transparent: bool = False,
) -> socket.socket:
    """A non-blocking TCP listening socket. SO_REUSEPORT lets worker processes share a port."""
    host, port = address
    sock = socket.socket(family_of(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit it (Linux): without it a pod's connection captured on 15001
        # kept Nagle on ztunnel's side, and a response that reached ztunnel as two DATA frames
        # (a waypoint's head, then its body) waited for the client's delayed ACK: 40 ms per
        # keep-alive request (bench/waypoint, strace of the waypoint: docs/performance.md).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        if transparent:
            set_transparent(sock)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def set_transparent(sock: socket.socket) -> None:
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)


async def accept(sock: socket.socket) -> tuple[socket.socket, Address]:
    """Accept one connection from a non-blocking listener without blocking the event loop."""
    while True:
        try:
            conn, peer = sock.accept()
        except (BlockingIOError, InterruptedError):
            await trio.lowlevel.wait_readable(sock)
            continue
        except OSError as exc:
            # The peer gave up between SYN and accept; nothing to serve.
            if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                continue
            raise
        conn.setblocking(False)
        return conn, peer[:2]


def new_tcp_socket(host: str, *, mark: int | None = None, source: str | None = None,
                   transparent: bool = False) -> socket.socket:
    """A non-blocking TCP socket for an outbound connection, optionally bound to `source`.

    Creating it is a separate step from connecting so that a caller can create it on a thread
    inside a pod's network namespace and connect from the event loop.
    """
    sock = socket.socket(family_of(host), socket.SOCK_STREAM)
    try:
        tune(sock, mark=mark)
        if transparent:
            # Binding to the peer's address (not one of ours) needs both options.
            set_transparent(sock)
            if sock.family == socket.AF_INET:
                sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        if source is not None:
            # The port is picked by connect, for the whole 4-tuple. Bound at bind() it is taken
            # from the source address's one pool whatever the destination, and a port whose
            # last connection is in TIME_WAIT (ours, as the side that closes first towards the
            # app) stays unusable for 60 s even where the pod allows reusing it (tcp_tw_reuse
            # applies to connect's choice only): one client's 28,232 connections in a minute
            # ran the server pod out of ports (bench/storm, docs/reliability.md). Envoy's
            # original_src fixed the same way (envoyproxy/envoy#38288).
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def connect(sock: socket.socket, address: Address) -> None:
    """Connect a non-blocking socket; OSError with the kernel's reason on failure."""
    try:
        sock.connect(address)
        return
    except (BlockingIOError, InterruptedError):
        pass
    await trio.lowlevel.wait_writable(sock)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, f"connect to {address[0]}:{address[1]} failed: {errno.errorcode.get(err, err)}")


async def open_tcp(address: Address, *, mark: int | None = None, source: str | None = None) -> socket.socket:
    sock = new_tcp_socket(address[0], mark=mark, source=source)
    try:
        await connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


def close(sock: socket.socket) -> None:
    """Close a socket other tasks may be waiting on: they wake with ClosedResourceError."""
    if sock.fileno() >= 0:
        trio.lowlevel.notify_closing(sock)
        sock.close()


_LINGER_RST = struct.pack("ii", 1, 0)


def reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0) rather than FIN: how a refused or denied connection ends."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass
    sock.close()


def original_dst(sock: socket.socket) -> Address:
    """Where a REDIRECTed connection was going (SO_ORIGINAL_DST); falls back to the local address."""
    import struct

    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
            port = struct.unpack_from("!H", raw, 2)[0]
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port = struct.unpack_from("!H", raw, 2)[0]
        return socket.inet_ntoa(raw[4:8]), port
    except OSError:
        return sock.getsockname()[:2]
