"""Mutual TLS for HBONE: contexts from certificate bundles, and a trio stream over ssl.SSLSocket.

TLS runs on a non-blocking `ssl.SSLSocket` woken by trio's readiness waits rather than on
`trio.SSLStream`: OpenSSL then reads and writes the kernel socket itself, so bytes are not copied
through MemoryBIOs in Python on the hot path.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections import OrderedDict

import trio

from wisp.identity.bundle import CertBundle

from .errors import TlsError

ALPN_H2 = "h2"
READ_SIZE = 256 * 1024
_CONTEXT_CACHE_SIZE = 1024


def make_context(bundle: CertBundle, *, server_side: bool) -> ssl.SSLContext:
    """A TLS 1.3-only context presenting `bundle` and requiring a peer certificate from its roots."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    # Peers are named by SPIFFE URI SANs, checked after the handshake; DNS names mean nothing here.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=bundle.roots_pem.decode("ascii"))
    ctx.set_alpn_protocols([ALPN_H2])
    # No session tickets: every connection authenticates with a full handshake, as ztunnel does.
    ctx.options |= ssl.OP_NO_TICKET
    if server_side:
        # TLS 1.3 servers send tickets even with OP_NO_TICKET (stateful ones); none at all means
        # no NewSessionTicket records for clients to process after the handshake.
        ctx.num_tickets = 0
    with bundle.pem_file() as path:
        ctx.load_cert_chain(path)
    return ctx


class ContextCache:
    """SSL contexts per (certificate, side), so a rotation builds one context, not one per dial."""

    def __init__(self, size: int = _CONTEXT_CACHE_SIZE) -> None:
        self._size = size
        self._contexts: OrderedDict[tuple[bytes, bool], ssl.SSLContext] = OrderedDict()

    def get(self, bundle: CertBundle, *, server_side: bool) -> ssl.SSLContext:
        key = (bundle.chain_pem, server_side)  # bytes cache their hash: one hashing per bundle
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._contexts[key] = make_context(bundle, server_side=server_side)
            if len(self._contexts) > self._size:
                self._contexts.popitem(last=False)
        else:
            self._contexts.move_to_end(key)
        return ctx


class TlsStream(trio.abc.Stream):
    """A trio stream over a non-blocking SSLSocket whose handshake is complete."""

    def __init__(self, sock: ssl.SSLSocket, local: tuple[str, int], peer: tuple[str, int]) -> None:
        self._sock = sock
        self._closed = False
        self._local = local
        self._peer = peer

    @classmethod
    async def handshake(
        cls, raw: socket.socket, ctx: ssl.SSLContext, *, server_side: bool,
        server_hostname: str | None = None,
    ) -> TlsStream:
        """Wrap `raw` (non-blocking, connected) and complete the handshake; TlsError on failure.

        The socket is consumed either way. Callers bound the time with a cancel scope.
        `server_hostname` is for contexts that check it (HBONE peers are named by SPIFFE ID).
        """
        try:
            # Taken now: once the peer goes away the kernel no longer tells.
            local, peer = raw.getsockname()[:2], raw.getpeername()[:2]
            sock = ctx.wrap_socket(
                raw, server_side=server_side, do_handshake_on_connect=False,
                server_hostname=server_hostname
            )
        except (OSError, ValueError) as exc:
            raw.close()
            raise TlsError(f"cannot start TLS: {exc}") from None
        try:
            while True:
                try:
                    sock.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await trio.lowlevel.wait_readable(sock)
                except ssl.SSLWantWriteError:
                    await trio.lowlevel.wait_writable(sock)
        except ssl.SSLError as exc:
            _close_quietly(sock)
            raise TlsError(f"TLS handshake failed: {describe_ssl_error(exc)}") from None
        except OSError as exc:
            _close_quietly(sock)
            raise TlsError(f"TLS handshake failed: {exc.strerror or exc}") from None
        except BaseException:
            _close_quietly(sock)
            raise
        return cls(sock, local, peer)

    @property
    def socket(self) -> ssl.SSLSocket:
        return self._sock

    def alpn_protocol(self) -> str | None:
        return self._sock.selected_alpn_protocol()

    def local_address(self) -> tuple[str, int]:
        return self._local

    def peer_address(self) -> tuple[str, int]:
        return self._peer

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        size = max_bytes or READ_SIZE
        blocked = False
        while True:
            if self._closed:
                raise trio.ClosedResourceError("TLS stream is closed")
            try:
                data = self._sock.recv(size)
                break
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(self._sock)
                blocked = True
            except ssl.SSLWantWriteError:
                # TLS 1.3 post-handshake messages can make a read want to write. The writer
                # task may already be waiting for writability, so poll instead of competing.
                await trio.sleep(0.001)
                blocked = True
            except ssl.SSLZeroReturnError:
                data = b""
                break
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(f"TLS error: {describe_ssl_error(exc)}") from None
            except OSError as exc:
                if exc.errno == errno.EBADF or self._closed:
                    raise trio.ClosedResourceError("TLS stream is closed") from None
                raise trio.BrokenResourceError(f"connection lost: {exc.strerror or exc}") from None
        if not blocked:
            # A call that waited has been through the scheduler; one that did not must still be
            # a schedule point, as trio's own streams are (a second pass per message is waste).
            await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    async def send_all(self, data) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        with memoryview(data) as view:
            while view:
                if self._closed:
                    raise trio.ClosedResourceError("TLS stream is closed")
                try:
                    sent = self._sock.send(view)
                    view = view[sent:]
                except ssl.SSLWantWriteError:
                    await trio.lowlevel.wait_writable(self._sock)
                except ssl.SSLWantReadError:
                    await trio.sleep(0.001)
                except (ssl.SSLError, OSError) as exc:
                    if isinstance(exc, OSError) and (exc.errno == errno.EBADF or self._closed):
                        raise trio.ClosedResourceError("TLS stream is closed") from None
                    raise trio.BrokenResourceError(self._write_failure(exc)) from None
        await trio.lowlevel.cancel_shielded_checkpoint()

    def _write_failure(self, exc: OSError) -> str:
        """Why a write failed: a peer that rejects us sends an alert and closes, and the write
        may hit the closed socket before any read sees the alert, so look for it."""
        try:
            self._sock.recv(1)
        except ssl.SSLError as alert:
            if getattr(alert, "reason", None) not in (None, "UNEXPECTED_EOF_WHILE_READING"):
                return f"TLS error: {describe_ssl_error(alert)}"
        except OSError:
            pass
        if isinstance(exc, ssl.SSLError):
            return f"TLS error: {describe_ssl_error(exc)}"
        return f"connection lost: {exc.strerror or exc}"

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._sock)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _close_quietly(self._sock)

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


def _close_quietly(sock: socket.socket) -> None:
    try:
        if sock.fileno() >= 0:
            trio.lowlevel.notify_closing(sock)
        sock.close()
    except OSError:
        pass


def describe_ssl_error(exc: ssl.SSLError) -> str:
    """OpenSSL's reason in words a person can act on."""
    reason = getattr(exc, "reason", None) or ""
    verify = getattr(exc, "verify_message", None)
    if verify:
        return f"certificate verify failed: {verify}"
    hints = {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a client certificate and none was sent",
        "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust our certificate's CA",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the peer says our certificate has expired",
        "SSLV3_ALERT_BAD_CERTIFICATE": "the peer rejected our certificate",
        "WRONG_VERSION_NUMBER": "the peer did not speak TLS",
        "HTTP_REQUEST": "the peer sent plain HTTP instead of TLS",
        "UNSUPPORTED_PROTOCOL": "the peer does not support TLS 1.3",
        "TLSV1_ALERT_PROTOCOL_VERSION": "the peer does not support TLS 1.3",
        "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the peer sent no client certificate",
        "NO_SHARED_CIPHER": "no cipher suite in common",
    }
    hint = hints.get(reason)
    return f"{hint} ({reason})" if hint else (reason or str(exc))
