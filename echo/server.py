"""The echo app's listeners: accept connections and hand each to its protocol, one task each.

The HTTP port speaks HTTP/1.1 and, for clients that open with the HTTP/2 preface, HTTP/2 (gRPC
included); the gRPC port speaks HTTP/2 only; the TCP port echoes bytes. Whatever one connection
does wrong ends that connection and nothing else.
"""

from __future__ import annotations

import socket
from functools import partial

import structlog
import trio

from .config import READ_SIZE, EchoConfig
from .http1 import serve_http1
from .http2 import PREFACE, serve_http2
from .report import format_peer

log = structlog.get_logger("wisp.echo")


async def serve(
    config: EchoConfig,
    *,
    http: socket.socket | None = None,
    grpc: socket.socket | None = None,
    tcp: socket.socket | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve on the given listening sockets until cancelled; started once all accept.

    Taking sockets that already listen (rather than ports) lets a caller bind port 0, learn the
    port, and connect without racing the server.
    """
    kinds = {"http": http, "grpc": grpc, "tcp": tcp}
    async with trio.open_nursery() as nursery:
        for kind, sock in kinds.items():
            if sock is not None:
                listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                handler = partial(_connection, kind, config)
                nursery.start_soon(trio.serve_listeners, handler, [listener])
        task_status.started()


async def echo_tcp(stream: trio.abc.HalfCloseableStream) -> int:
    """Send back every byte until the client half-closes, then close our side; the byte count."""
    total = 0
    while data := await stream.receive_some(READ_SIZE):
        await stream.send_all(data)
        total += len(data)
    await stream.send_eof()
    return total


async def _connection(kind: str, config: EchoConfig, stream: trio.SocketStream) -> None:
    peer = "unknown"
    try:
        peer = format_peer(stream.socket.getpeername())
        if kind == "tcp":
            total = await echo_tcp(stream)
            if config.log_requests:
                log.info("tcp connection", peer=peer, bytes=total)
            return
        initial = await _first_bytes(stream)
        if initial.startswith(PREFACE):
            await serve_http2(stream, initial, peer, config, grpc_only=kind == "grpc")
        elif initial and kind == "http":
            await serve_http1(stream, initial, peer, config)
        elif initial:
            log.debug("not HTTP/2 on the gRPC port", peer=peer)
    except (trio.BrokenResourceError, OSError) as exc:
        # The client went away (reset, or gone before we asked its address): no one to answer.
        log.debug("connection lost", kind=kind, peer=peer, error=str(exc))
    except Exception:
        # A bug met by one connection's input must not take down every other connection.
        log.exception("echo connection failed", kind=kind, peer=peer)
    finally:
        await trio.aclose_forcefully(stream)


async def _first_bytes(stream: trio.abc.ReceiveStream) -> bytes:
    """Read until the bytes can be told apart from the HTTP/2 preface (or the client stops)."""
    data = b""
    while len(data) < len(PREFACE) and PREFACE.startswith(data):
        chunk = await stream.receive_some(READ_SIZE)
        if not chunk:
            break
        data += chunk
    return data

