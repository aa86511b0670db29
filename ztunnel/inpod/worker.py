"""Worker processes, a worker's side: its two sockets to the main process (see supervisor.py).

Over ZDS the main process is the worker's node agent, so the worker runs the ordinary ZdsClient
on that socket; over the status socket it answers `status <n>` with one JSON line. Either socket
closing means the main process is gone, and the worker shuts down.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable

import structlog
import trio

from wisp.zds.workload import ZdsClient

log = structlog.get_logger("ztunnel.workers")


async def serve_supervisor(zds: ZdsClient, status: Callable[[], dict], shutdown: Callable[[], None],
                           zds_fd: int, status_fd: int, configured: trio.Event) -> None:
    """In a worker: take pods from the main process (through `zds`; only once `configured` is
    set, as a pod's listeners accept at once), answer its status requests with `status()`; when
    either socket closes the main process is gone, so `shutdown()`."""
    for fd in (zds_fd, status_fd):
        os.set_inheritable(fd, False)
    zds_sock = socket.socket(fileno=zds_fd)
    zds_sock.setblocking(False)
    status_sock = socket.socket(fileno=status_fd)
    try:
        async with trio.open_nursery() as nursery:
            async def follow_zds() -> None:
                try:
                    await configured.wait()
                    await zds.serve(zds_sock)
                except OSError as exc:
                    log.warning("ZDS socket to the main process failed", error=str(exc))
                nursery.cancel_scope.cancel()

            async def follow_status() -> None:
                await _answer_status(status, status_sock)
                nursery.cancel_scope.cancel()

            nursery.start_soon(follow_zds)
            nursery.start_soon(follow_status)
    finally:
        trio.lowlevel.notify_closing(zds_sock)
        zds_sock.close()
    log.info("main ztunnel process is gone; shutting down")
    shutdown()


async def _answer_status(status: Callable[[], dict], sock: socket.socket) -> None:
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    buffer = b""
    try:
        while True:
            data = await stream.receive_some(4096)
            if not data:
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                command, _, seq = line.decode("ascii", "replace").partition(" ")
                if command == "status" and seq.isdigit():
                    reply = {"seq": int(seq), **status()}
                else:
                    reply = {"error": f"unknown request {line[:100]!r}; send 'status <n>'"}
                await stream.send_all(json.dumps(reply).encode() + b"\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        await stream.aclose()
