"""Opening connections in the loop: a non-blocking TCP connect, then a TLS 1.3 handshake.

Both are loop handlers that call back once: `on_done(result)` with the connected socket (or
SSLSocket), or `on_error(reason)` with words a person can act on. A deadline timer bounds each.
OpenSSL reads and writes the kernel socket itself (`ssl.SSLSocket`, non-blocking), so no bytes
are copied through MemoryBIOs in Python.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Callable

from wisp.hbone.tls import describe_ssl_error

from .loop import READ, WRITE, Loop, Timer


class Connect:
    """Connect `sock` (non-blocking, maybe bound) to `address`, then call back once."""

    __slots__ = ("loop", "sock", "address", "on_done", "on_error", "_timer", "_finished")

    def __init__(self, loop: Loop, sock: socket.socket, address: tuple[str, int], *, timeout: float,
                 on_done: Callable[[socket.socket], None], on_error: Callable[[str], None]) -> None:
        self.loop = loop
        self.sock = sock
        self.address = address
        self.on_done = on_done
        self.on_error = on_error
        self._finished = False
        self._timer: Timer | None = None
        try:
            sock.connect(address)
        except (BlockingIOError, InterruptedError):
            self._timer = loop.call_later(timeout, self._timed_out)
            loop.register(sock.fileno(), self, WRITE)
            return
        except OSError as exc:
            reason = self._reason(exc.errno)  # `exc` is unbound once the except block ends
            loop.call_soon(lambda: self._fail(reason))
            return
        loop.call_soon(self._connected)

    def _reason(self, err: int | None) -> str:
        return f"connect to {self.address[0]}:{self.address[1]} failed: {errno.errorcode.get(err or 0, err)}"

    def on_readable(self) -> None:
        self.on_writable()

    def on_writable(self) -> None:
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self.loop.unregister(self.sock.fileno())
        if err:
            self._fail(self._reason(err))
        else:
            self._connected()

    def _connected(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
        self.on_done(self.sock)

    def _timed_out(self) -> None:
        self.abort(f"connect to {self.address[0]}:{self.address[1]} timed out")

    def _fail(self, reason: str) -> None:
        if self._finished:
            return
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
        self.loop.unregister(self.sock.fileno())
        self.sock.close()
        self.on_error(reason)

    def abort(self, reason: str) -> None:
        if not self._finished:
            self._fail(reason)


class Handshake:
    """A TLS handshake on a connected socket, driven by readiness; calls back once."""

    __slots__ = ("loop", "sock", "fd", "on_done", "on_error", "_timer", "_finished", "local", "peer")

    def __init__(self, loop: Loop, raw: socket.socket, ctx: ssl.SSLContext, *, server_side: bool,
                 timeout: float, on_done: Callable[[Handshake], None],
                 on_error: Callable[[str], None]) -> None:
        self.loop = loop
        self.on_done = on_done
        self.on_error = on_error
        self._finished = False
        self.fd = raw.fileno()
        try:
            # Taken now: once the peer goes away the kernel no longer tells.
            self.local = raw.getsockname()[:2]
            self.peer = raw.getpeername()[:2]
            self.sock = ctx.wrap_socket(raw, server_side=server_side, do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            raw.close()
            self._finished = True
            reason = f"cannot start TLS: {exc}"  # `exc` is unbound once the except block ends
            loop.call_soon(lambda: on_error(reason))
            return
        self._timer = loop.call_later(timeout, lambda: self.abort(f"TLS handshake not finished within {timeout:g} s"))
        loop.register(self.fd, self, READ)
        self._step()

    def on_readable(self) -> None:
        self._step()

    def on_writable(self) -> None:
        self._step()

    def _step(self) -> None:
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.loop.want(self.fd, READ)
            return
        except ssl.SSLWantWriteError:
            self.loop.want(self.fd, WRITE)
            return
        except ssl.SSLError as exc:
            self._fail(f"TLS handshake failed: {describe_ssl_error(exc)}")
            return
        except OSError as exc:
            self._fail(f"TLS handshake failed: {exc.strerror or exc}")
            return
        self._finished = True
        self._timer.cancel()
        self.loop.unregister(self.fd)
        self.on_done(self)

    def _fail(self, reason: str) -> None:
        if self._finished:
            return
        self._finished = True
        self._timer.cancel()
        self.loop.unregister(self.fd)
        try:
            self.sock.close()
        except OSError:
            pass
        self.on_error(reason)

    def abort(self, reason: str) -> None:
        self._fail(reason)
