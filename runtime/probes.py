"""Connections made from inside a namespace: readiness probes, as kubelet sends them from the node."""

from __future__ import annotations

import os

import trio

from wisp import netns, sockets


async def open_in_netns(netns_name: str, address: tuple[str, int], timeout: float = 2.0):
    """A TCP connection from inside `netns_name` (socket made on a thread in that namespace)."""
    fd = netns.open_netns(netns.path_of(netns_name))
    try:
        sock = await netns.run_in_netns(fd, sockets.new_tcp_socket, address[0])
    finally:
        os.close(fd)
    try:
        with trio.fail_after(timeout):
            await sockets.connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


async def tcp_probe(netns_name: str, address: tuple[str, int], timeout: float = 2.0) -> bool:
    try:
        stream = await open_in_netns(netns_name, address, timeout)
    except (OSError, trio.TooSlowError):
        return False
    await stream.aclose()
    return True


async def http_get(netns_name: str, address: tuple[str, int], path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of a plain HTTP/1.0 GET; (0, reason) when the server cannot be reached."""
    try:
        with trio.fail_after(timeout):
            stream = await open_in_netns(netns_name, address, timeout)
            async with stream:
                await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: {address[0]}\r\n\r\n".encode())
                data = b""
                while chunk := await stream.receive_some(65536):
                    data += chunk
                    if len(data) > 1 << 20:
                        break
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        return 0, str(exc).encode()
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    try:
        return int(parts[1]), body
    except (IndexError, ValueError):
        return 0, data[:200]
