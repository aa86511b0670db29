"""HBONE client: dial a peer's 15008 with mutual TLS, check its identity, open CONNECT streams."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Collection

import trio

from wisp import sockets
from wisp.identity import CertBundle, SpiffeId, spiffe_ids_of

from .connection import CLIENT_SETTINGS, H2Settings, HboneConnection, HboneStream
from .errors import ConnectionClosed, ConnectRefused, HboneError, PeerIdentityError, TlsError
from .tls import ContextCache, TlsStream

# Creates the socket for a dial; ztunnel makes it inside the source pod's network namespace.
SocketFactory = Callable[[tuple[str, int], str | None], Awaitable[socket.socket]]

_REASON_LIMIT = 1024


async def default_socket_factory(address: tuple[str, int], source_ip: str | None) -> socket.socket:
    return sockets.new_tcp_socket(address[0], source=source_ip)


async def dial(
    nursery: trio.Nursery,
    address: tuple[str, int],
    *,
    bundle: CertBundle,
    expected_identities: Collection[SpiffeId],
    source_ip: str | None = None,
    socket_factory: SocketFactory = default_socket_factory,
    settings: H2Settings = CLIENT_SETTINGS,
    contexts: ContextCache | None = None,
    timeout: float = 10.0,
) -> HboneConnection:
    """Open an HBONE connection served by a task in `nursery`.

    Returns once the server's HTTP/2 SETTINGS arrived, so a server that refuses us (bad
    certificate, wrong trust domain) fails here with a message rather than on first use.
    """
    contexts = contexts or ContextCache()
    where = f"{address[0]}:{address[1]}"
    with trio.fail_after(timeout):
        sock = await socket_factory(address, source_ip)
        try:
            await sockets.connect(sock, address)
        except OSError as exc:
            sock.close()
            raise HboneError(f"cannot reach HBONE peer {where}: {exc.strerror or exc}") from None
        except BaseException:
            sock.close()
            raise
        ctx = contexts.get(bundle, server_side=False)
        try:
            tls = await TlsStream.handshake(sock, ctx, server_side=False)
        except TlsError as exc:
            raise TlsError(f"HBONE peer {where}: {exc}") from None
        try:
            _check_peer(tls, where, expected_identities)
            conn = HboneConnection(
                tls, client_side=True, settings=settings,
                peer_identity=spiffe_ids_of(tls.peer_certificate())[0], local_identity=bundle.identity,
            )
        except BaseException:
            tls.close()
            raise
        try:
            return await nursery.start(conn.run)
        except ConnectionClosed as exc:
            raise ConnectionClosed(f"HBONE peer {where} refused the connection: {exc}") from None


def _check_peer(tls: TlsStream, where: str, expected: Collection[SpiffeId]) -> None:
    if tls.alpn_protocol() != "h2":
        raise TlsError(f"HBONE peer {where} did not negotiate ALPN h2")
    cert = tls.peer_certificate()
    presented = spiffe_ids_of(cert) if cert is not None else []
    if not any(identity in expected for identity in presented):
        shown = ", ".join(map(str, presented)) or "no SPIFFE identity"
        wanted = ", ".join(sorted(map(str, expected))) or "nothing"
        raise PeerIdentityError(f"HBONE peer {where} presented {shown}; expected one of {wanted}")


async def open_stream(
    conn: HboneConnection, headers: list[tuple[bytes, bytes]], *, timeout: float = 10.0
) -> HboneStream:
    """Send CONNECT and wait for the answer; ConnectRefused carries any non-200 status."""
    authority = next((v.decode() for k, v in headers if k == b":authority"), "?")
    stream = conn.open_stream(headers)
    try:
        with trio.fail_after(timeout):
            status = await conn.wait_response(stream)
            if status == 200:
                return stream
            reason = await _read_reason(stream)
    except trio.TooSlowError:
        stream.close()
        raise HboneError(f"CONNECT {authority}: no response within {timeout:g} s") from None
    except BaseException:
        stream.close()
        raise
    stream.close()
    raise ConnectRefused(status, authority, reason)


async def _read_reason(stream: HboneStream) -> str:
    """The text body of an error response, if the server sent one (wisp servers do)."""
    body = b""
    with trio.move_on_after(1):
        try:
            while len(body) < _REASON_LIMIT:
                chunk = await stream.receive_some(_REASON_LIMIT - len(body))
                if not chunk:
                    break
                body += chunk
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    return body.decode("utf-8", "replace").strip()
