"""Opening HBONE connections in the loop, and the TLS they run on.

- `Connect`: a non-blocking TCP connect.
- `TlsTransport`: TLS over a connected, non-blocking TCP socket through memory BIOs
  (`ssl.SSLObject`). The engine moves the bytes itself: one `recv_into` of up to 256 KiB feeds
  OpenSSL's incoming BIO, and what OpenSSL encrypted during a pass leaves with one `send` (or
  `sendmsg`). Python's `ssl` cannot turn on OpenSSL's read-ahead, so an `ssl.SSLSocket` reads
  every record with two `read` calls (its 5-byte header, then its body) and writes every record
  with one: 128 reads and 64 writes per MiB of bulk (docs/performance.md, "Fifth pass").
- `Handshake`: the TLS 1.3 handshake on a `TlsTransport`, driven by readiness.

`Connect` and `Handshake` call back once: `on_done(result)`, or `on_error(reason)` with words a
person can act on. A deadline timer bounds each.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Callable

from wisp.hbone.tls import describe_ssl_error

from .loop import READ, WRITE, Loop, Timer

RECEIVE_SIZE = 256 * 1024
# One receive buffer for every TLS connection of the process: a pass serves one connection at a
# time, and the incoming BIO copies what it is given (`TlsTransport.feed`).
_RECEIVED = memoryview(bytearray(RECEIVE_SIZE))
# Bytes go through a BIO at most this many at a time. OpenSSL's memory BIO keeps the largest
# buffer it ever held until the connection ends: 256 KiB at once left ~260 KiB per BIO on every
# connection that once carried bulk, 64 KiB pieces ~66 KiB (measured on 200 connections).
PIECE = 64 * 1024


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


class TlsTransport:
    """TLS through memory BIOs over a connected, non-blocking TCP socket.

    OpenSSL never touches the socket: `tls` (an `ssl.SSLObject`) works on the two BIOs, and this
    class moves bytes between them and the kernel.
    - `receive()`: one `recv_into` (≤ 256 KiB) of what the kernel holds. Returns the byte count,
      0 at EOF (OpenSSL is told: its next read returns 0 after a close_notify, raises
      SSLEOFError without one), or None when the socket had nothing. The bytes enter the
      incoming BIO a piece (≤ 64 KiB) at a time: `feed()` adds the next one, and `backlog` says
      how many wait. They wait in a buffer the whole process shares, so a caller decrypts all
      of them before anything else receives (the loop serves one connection at a time).
    - `tls.read(n, buffer)`: the plaintext of the next complete record (SSLWantReadError: none).
    - `encrypt(data)`: all of `data` into TLS records, queued for `send()`. Callers encrypt only
      while `blocked` is False, which keeps their own buffer the backpressure.
    - `send()`: one system call for everything queued (`queue`), oldest first, and whatever
      OpenSSL wrote itself (`outgoing`: handshake flights, alerts, KeyUpdate answers). True when nothing is left; False
      when the kernel took less (`blocked`): the rest is kept, in order, for the next call once
      the socket is writable. Bytes are never dropped or reordered.
    Socket errors (OSError) and OpenSSL's (SSLError, an OSError) propagate; callers put them in
    words.
    """

    __slots__ = ("sock", "fd", "tls", "incoming", "outgoing", "backlog", "blocked", "queue", "_fed",
                 "_recv_into", "_send")

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, *, server_side: bool) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        # No server_hostname: HBONE sends no SNI, and peers are checked by SPIFFE ID afterwards.
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server_side)
        self.backlog = 0  # received bytes not in the incoming BIO yet
        self._fed = 0
        self.blocked = False
        self.queue: list[bytes | memoryview] = []  # ciphertext not sent yet, oldest first
        self._recv_into = sock.recv_into
        self._send = sock.send

    def receive(self) -> int | None:
        try:
            n = self._recv_into(_RECEIVED)
        except (BlockingIOError, InterruptedError):
            return None
        if n <= PIECE:  # requests and responses: all at once
            if n:
                self.incoming.write(_RECEIVED[:n])
            else:
                self.incoming.write_eof()
        else:
            self._fed = 0
            self.backlog = n
            self.feed()
        return n

    def feed(self) -> None:
        """The next piece of what `receive` got into the incoming BIO (nothing if none waits)."""
        size = self.backlog
        if size:
            start = self._fed
            if size > PIECE:
                size = PIECE
            self.incoming.write(_RECEIVED[start:start + size])
            self._fed = start + size
            self.backlog -= size

    def encrypt(self, data: bytes | bytearray | memoryview) -> None:
        write, outgoing, queue = self.tls.write, self.outgoing, self.queue
        if outgoing.pending:  # OpenSSL's own output goes first
            queue.append(outgoing.read())
        if len(data) <= PIECE:
            write(data)
            queue.append(outgoing.read())
            return
        view = memoryview(data)
        for start in range(0, len(view), PIECE):
            write(view[start:start + PIECE])
            queue.append(outgoing.read())

    def send(self) -> bool:
        queue = self.queue
        if self.outgoing.pending:
            queue.append(self.outgoing.read())
        if not queue:
            self.blocked = False
            return True
        try:
            # A bulk pass queues a few 64 KiB pieces; sendmsg takes them in one call (at most
            # IOV_MAX, 1,024 on Linux, at a time).
            sent = self._send(queue[0]) if len(queue) == 1 else self.sock.sendmsg(queue[:512])
        except (BlockingIOError, InterruptedError):
            sent = 0
        i = 0
        while i < len(queue) and sent >= len(queue[i]):
            sent -= len(queue[i])
            i += 1
        del queue[:i]
        if queue and sent:
            queue[0] = memoryview(queue[0])[sent:]
        self.blocked = bool(queue)
        return not queue

    def close(self) -> None:
        self.queue.clear()
        self.backlog = 0
        self.sock.close()


class Handshake:
    """A TLS handshake on a connected socket, driven by readiness; calls back once.

    Done, its `transport` carries the connection; the last flight (a client's Finished) may
    still wait in `transport` for the kernel, and the incoming BIO may already hold the peer's
    first application records: the connection sends the one and reads the other first.
    """

    __slots__ = ("loop", "transport", "fd", "on_done", "on_error", "_timer", "_finished", "local", "peer")

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
            self.transport = TlsTransport(raw, ctx, server_side=server_side)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
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
        transport = self.transport
        ended = False
        try:
            while True:
                try:
                    transport.tls.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                else:
                    # The last flight leaves now, as when OpenSSL wrote the socket itself: a
                    # client that refuses the server next still completed the handshake. What
                    # the kernel does not take now leaves with the connection's first write.
                    transport.send()
                    break
                if not transport.send():
                    # The peer waits for this flight before it answers: only writable matters.
                    self.loop.want(self.fd, WRITE)
                    return
                if ended:  # OpenSSL was told of the EOF and still wants more
                    self._fail("TLS handshake failed: the peer closed the connection")
                    return
                received = transport.receive()
                if received is None:
                    self.loop.want(self.fd, READ)
                    return
                while transport.backlog:  # a flight is a few KiB, but a peer may send anything
                    transport.feed()
                ended = received == 0  # the next do_handshake reports it, or the peer's alert
        except ssl.SSLError as exc:
            self._send_alert()
            self._fail(f"TLS handshake failed: {describe_ssl_error(exc)}")
            return
        except OSError as exc:
            self._fail(f"TLS handshake failed: {exc.strerror or exc}")
            return
        self._finished = True
        self._timer.cancel()
        self.loop.unregister(self.fd)
        self.on_done(self)

    def _send_alert(self) -> None:
        """OpenSSL wrote an alert (e.g. a client certificate it does not trust): the peer learns
        why from it, as it did when OpenSSL wrote the socket itself. Best effort."""
        try:
            self.transport.send()
        except OSError:
            pass

    def _fail(self, reason: str) -> None:
        if self._finished:
            return
        self._finished = True
        self._timer.cancel()
        self.loop.unregister(self.fd)
        try:
            self.transport.close()
        except OSError:
            pass
        self.on_error(reason)

    def abort(self, reason: str) -> None:
        self._fail(reason)
