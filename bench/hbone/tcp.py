"""The plain-TCP anchor's stream: a trio stream over a non-blocking socket, in TlsStream's style.

It mirrors `wisp.hbone.tls.TlsStream` line for line minus OpenSSL (recv/send on the socket, trio
readiness waits when the kernel says EAGAIN), so TCP vs TLS vs HBONE differ only by protocol,
not by how the event loop is driven.
"""

from __future__ import annotations

import errno
import socket

import trio

from wisp.hbone.tls import READ_SIZE


class TcpStream(trio.abc.HalfCloseableStream):
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        size = max_bytes or READ_SIZE
        blocked = False
        while True:
            if self._closed:
                raise trio.ClosedResourceError("TCP stream is closed")
            try:
                data = self._sock.recv(size)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._sock)
                blocked = True
            except OSError as exc:
                raise _broken(exc, self._closed) from None
        if not blocked:  # a read that waited has been through the scheduler, as in TlsStream
            await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    async def send_all(self, data) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        with memoryview(data) as view:
            while view:
                if self._closed:
                    raise trio.ClosedResourceError("TCP stream is closed")
                try:
                    sent = self._sock.send(view)
                    view = view[sent:]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self._sock)
                except OSError as exc:
                    raise _broken(exc, self._closed) from None
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._sock)

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._sock.fileno() >= 0:
                trio.lowlevel.notify_closing(self._sock)
            self._sock.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


def _broken(exc: OSError, closed: bool) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno == errno.EBADF or closed:
        return trio.ClosedResourceError("TCP stream is closed")
    return trio.BrokenResourceError(f"connection lost: {exc.strerror or exc}")
