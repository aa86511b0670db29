"""Copy bytes both ways between two streams, propagating half-close, counting per chunk.

Reads are large (256 KiB) so Python runs once per chunk, not per byte. EOF on one side becomes
send_eof on the other (TCP shutdown(WR) ↔ HTTP/2 END_STREAM) and the other direction goes on;
the splice ends when both directions have ended, or at the first error, which stops both.
"""

from __future__ import annotations

import socket
import struct

import trio

from wisp import sockets
from wisp.hbone import HboneStream

from ..metrics import Transfer

CHUNK = 256 * 1024


async def splice(client: trio.abc.HalfCloseableStream, server: trio.abc.HalfCloseableStream,
                 transfer: Transfer | None = None) -> Transfer:
    """Run until both directions finish; errors end both and are recorded in `transfer.error`."""
    transfer = transfer or Transfer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_copy, client, server, transfer, True, nursery.cancel_scope)
        nursery.start_soon(_copy, server, client, transfer, False, nursery.cancel_scope)
    return transfer


async def _copy(src: trio.abc.HalfCloseableStream, dst: trio.abc.HalfCloseableStream,
                transfer: Transfer, upstream: bool, scope: trio.CancelScope) -> None:
    forwarding = isinstance(src, HboneStream) and isinstance(dst, trio.SocketStream)
    if forwarding:
        # HBONE's reader writes arriving data to the socket itself; this task sees only what the
        # socket would not take at once, and the end of the stream.
        src.forward_to(dst.socket.fileno(), transfer.count_upstream if upstream else transfer.count_downstream)
    try:
        while True:
            data = await src.receive_some(CHUNK)
            if not data:
                break
            await dst.send_all(data)
            if upstream:
                transfer.upstream += len(data)
            else:
                transfer.downstream += len(data)
        await dst.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        if transfer.error is None:
            transfer.error = str(exc) or type(exc).__name__
        scope.cancel()
    finally:
        if forwarding:
            # Before the caller closes the socket: a closed descriptor's number is soon reused.
            src.stop_forwarding()


def tcp_stream(sock: socket.socket) -> trio.SocketStream:
    """A trio stream over a connected stdlib socket (ownership moves to the stream)."""
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


def reset(stream: trio.SocketStream | socket.socket) -> None:
    """Close with RST (SO_LINGER 0) rather than FIN: how a denied connection ends."""
    sock = stream.socket if isinstance(stream, trio.SocketStream) else stream
    try:
        if sock.fileno() >= 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    if isinstance(sock, socket.socket):
        sockets.close(sock)
    else:
        sock.close()  # a trio socket wakes its waiters itself
