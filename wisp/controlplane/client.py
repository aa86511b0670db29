"""Client side of the control plane, as proxies use it: certificate requests and the config stream.

Runs on trio, on wisp's own HTTP/2 connection (`wisp.h2.trio`, the codec on trio). The config
stream is full duplex, the control plane's messages one way and this subscriber's acks the other
on the same HTTP/2 stream; the subscriber reconnects with backoff and keeps serving the last good
config while the control plane is away. A certificate request is one POST on a connection of its
own (once per identity per rotation). Nothing here loads httpx or cryptography: they cost a
proxy 11 MB of RSS (docs/architecture.md); tools and the node agent use `http.make_client`.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

import structlog
import trio

from wisp import sockets
from wisp.h2.errors import H2Error
from wisp.h2.trio import H2Connection, H2Settings, H2Stream
from wisp.hbone.errors import HboneError
from wisp.hbone.tls import TlsStream
from wisp.identity.bundle import CertBundle
from wisp.identity.errors import IdentityError
from wisp.identity.openssl import make_bundle, new_key_and_csr
from wisp.identity.spiffe import SpiffeId
from wisp.model import ModelSnapshot

from .protocol import (
    CERTIFICATE_PATH,
    CONTENT_TYPE,
    MAX_MESSAGE,
    STREAM_PATH,
    ConfigView,
    StreamProtocolError,
    decode,
    encode_ack,
    error_text,
)

log = structlog.get_logger("wisp.controlplane")

# HTTP/2 as the control plane's stream wants it: frames of the protocol's default size.
STREAM_SETTINGS = H2Settings(max_frame_size=16 * 1024)


class ControlPlaneError(Exception):
    """The control plane refused a request or answered something unusable."""

    def __init__(self, status: int | None, message: str) -> None:
        self.status = status
        super().__init__(f"control plane answered {status}: {message}" if status else message)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """How to reach the control plane: `host:port`, the mesh's root certificates, our token."""

    address: str
    roots_pem: bytes
    token: str

    def __post_init__(self) -> None:
        check_address(self.address)

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.roots_pem.decode("ascii"))
        ctx.set_alpn_protocols(["h2"])
        return ctx


def check_address(address: str) -> str:
    """`address` if it is host:port (a name, an IPv4 or a bracketed IPv6 address); ValueError if not."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return address


async def fetch_certificate(endpoint: Endpoint, identity: SpiffeId, lifetime_seconds: int | None = None,
                            *, timeout: float = 10.0) -> CertBundle:
    """A fresh key and a certificate for `identity` from the control plane's CA; ControlPlaneError
    says why not (refused, unreachable, or an answer that is not a usable certificate)."""
    try:
        key_pem, csr_pem = await new_key_and_csr(identity)
    except IdentityError as exc:
        raise ControlPlaneError(None, f"cannot make a key and CSR: {exc}") from None
    request = {"csr": csr_pem.decode(), "identity": str(identity)}
    if lifetime_seconds is not None:
        request["ttl_seconds"] = lifetime_seconds
    status, body = await post_json(endpoint, CERTIFICATE_PATH, request, timeout=timeout)
    if status != 200:
        raise ControlPlaneError(status, error_text(body))
    try:
        chain = [pem.encode() for pem in json.loads(body)["cert_chain"]]
        return await make_bundle(key_pem, chain, identity)
    except (ValueError, KeyError, TypeError, AttributeError, IdentityError) as exc:
        raise ControlPlaneError(200, f"unusable certificate response: {exc}") from None


async def post_json(endpoint: Endpoint, path: str, document: dict, *, timeout: float = 10.0,
                    max_body: int = 1024 * 1024) -> tuple[int, bytes]:
    """POST `document` as JSON on a connection of its own: (status, body up to `max_body`)."""
    body = json.dumps(document, separators=(",", ":")).encode()
    headers = [
        (b":method", b"POST"), (b":scheme", b"https"), (b":authority", endpoint.address.encode()),
        (b":path", path.encode()), (b"authorization", f"Bearer {endpoint.token}".encode()),
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
    ]
    try:
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                conn = await connect(nursery, endpoint)
                try:
                    stream = conn.open_stream(headers)
                    await stream.send_all(body)
                    await stream.send_eof()
                    status = await conn.wait_response(stream)
                    received = bytearray()
                    while len(received) <= max_body and (chunk := await stream.receive_some()):
                        received += chunk
                finally:
                    conn.close()
                    nursery.cancel_scope.cancel()
    except trio.TooSlowError:
        raise ControlPlaneError(None, f"no answer from {endpoint.address} within {timeout:g} s") from None
    except (HboneError, H2Error, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise ControlPlaneError(None, f"request to {endpoint.address} failed: {exc}") from None
    if len(received) > max_body:
        raise ControlPlaneError(status, f"answer over {max_body} bytes")
    return status, bytes(received)


async def connect(nursery: trio.Nursery, endpoint: Endpoint) -> H2Connection:
    """An HTTP/2 connection to the control plane over TLS, served by a task in `nursery`."""
    where = endpoint.address
    try:
        infos = await trio.socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ControlPlaneError(None, f"cannot resolve {where}: {exc.strerror or exc}") from None
    address = infos[0][4]
    sock = sockets.new_tcp_socket(address[0])
    try:
        await sockets.connect(sock, address)
    except OSError as exc:
        sock.close()
        raise ControlPlaneError(None, f"cannot reach the control plane at {where}: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise
    tls = await TlsStream.handshake(sock, endpoint.tls_context(), server_side=False, server_hostname=endpoint.host)
    if tls.alpn_protocol() != "h2":
        tls.close()
        raise ControlPlaneError(None, f"the control plane at {where} did not negotiate HTTP/2")
    conn = H2Connection(tls, client_side=True, settings=STREAM_SETTINGS)
    return await nursery.start(conn.run)


async def open_config_stream(conn: H2Connection, endpoint: Endpoint, query: dict[str, str]) -> H2Stream:
    """POST /v1/config: the duplex config stream, once the control plane answered 200;
    ControlPlaneError with its status and reason otherwise."""
    headers = [
        (b":method", b"POST"), (b":scheme", b"https"), (b":authority", endpoint.address.encode()),
        (b":path", f"{STREAM_PATH}?{urlencode(query)}".encode()),
        (b"authorization", f"Bearer {endpoint.token}".encode()),
        (b"content-type", CONTENT_TYPE.encode()),
    ]
    stream = conn.open_stream(headers)
    status = await conn.wait_response(stream)
    if status == 200:
        return stream
    body = b""
    with trio.move_on_after(1):
        while len(body) < 64 * 1024 and (chunk := await stream.receive_some()):
            body += chunk
    raise ControlPlaneError(status, error_text(body))


class ConfigSubscriber:
    """Follows the config stream; `on_update(snapshot)` runs after each applied version.

    A waypoint passes `gateway` ("namespace/name" of its Gateway): the control plane then sends
    it the ConfigObjects that concern that Gateway (operator/distributor.py).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        subscriber_id: str,
        on_update: Callable[[ModelSnapshot], None],
        *,
        backoff_min: float = 0.1,
        backoff_max: float = 15.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        ack_delay: float = 0.1,
        gateway: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.id = subscriber_id
        self.gateway = gateway
        self.on_update = on_update
        self.view = ConfigView()
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.ack_delay = ack_delay
        self._ack_wanted = trio.Event()
        self.synced = trio.Event()
        self.connected = False
        self.reconnects = 0

    @property
    def snapshot(self) -> ModelSnapshot:
        return self.view.snapshot

    async def run(self) -> None:
        """Follow the stream forever; the last good config stays in `view` across outages."""
        backoff = self.backoff_min
        resume = True
        while True:
            try:
                received = await self._follow(resume)
                resume = True
            except StreamProtocolError as exc:
                log.warning("config stream sent something unusable; resyncing", error=str(exc))
                resume = False
                received = False
            except (ControlPlaneError, HboneError, H2Error, OSError, trio.BrokenResourceError) as exc:
                log.warning("config stream unavailable", error=str(exc) or type(exc).__name__,
                            retry_in=round(backoff, 2))
                received = False
            self.connected = False
            self.reconnects += 1
            backoff = self.backoff_min if received else min(backoff * 2, self.backoff_max)
            await trio.sleep(backoff * random.uniform(0.8, 1.2))

    async def _follow(self, resume: bool) -> bool:
        """One connection: open the stream, apply what arrives, ack it; True if anything came."""
        query = {"subscriber": self.id}
        if self.gateway:
            query["gateway"] = self.gateway
        if resume and self.view.version:
            query["version"] = self.view.version
        self._ack_wanted = trio.Event()
        failure: BaseException | None = None
        received = False
        async with trio.open_nursery() as nursery:
            conn: H2Connection | None = None
            try:
                with trio.fail_after(self.connect_timeout):
                    conn = await connect(nursery, self.endpoint)
                    stream = await open_config_stream(conn, self.endpoint, query)
                self.connected = True
                nursery.start_soon(self._acknowledge, stream)
                received = await self._read(stream, conn)
            except trio.TooSlowError:
                failure = ControlPlaneError(
                    None, f"no config stream from {self.endpoint.address} within {self.connect_timeout:g} s")
            except (StreamProtocolError, ControlPlaneError, HboneError, H2Error, OSError,
                    trio.BrokenResourceError) as exc:
                failure = exc  # raised below, outside the nursery, as itself
            finally:
                if conn is not None:
                    conn.close()
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return received

    async def _read(self, stream: H2Stream, conn: H2Connection) -> bool:
        """Apply each line as it arrives; returns when the control plane ends the stream."""
        received = False
        parts: list[bytes] = []  # the start of a message still arriving
        size = 0
        with trio.CancelScope() as idle:
            while True:
                idle.deadline = trio.current_time() + self.read_timeout
                chunk = await stream.receive_some()
                if not chunk:
                    return received
                start = 0
                while (end := chunk.find(b"\n", start)) >= 0:
                    if parts:
                        parts.append(chunk[start:end])
                        line = b"".join(parts)
                        parts.clear()
                        size = 0
                    else:
                        line = chunk[start:end]
                    start = end + 1
                    if line:
                        received = True
                        if await self._apply(line, stream, conn):
                            return received
                if start < len(chunk):
                    parts.append(chunk[start:] if start else chunk)
                    size += len(chunk) - start
                    if size > MAX_MESSAGE:
                        await self._reject(stream, conn, StreamProtocolError(
                            f"config message over {MAX_MESSAGE} bytes"))
        raise ControlPlaneError(None, f"nothing from the control plane for {self.read_timeout:g} s")

    async def _apply(self, line: bytes, stream: H2Stream, conn: H2Connection) -> bool:
        """Decode and apply one message; True when the control plane closes the stream."""
        try:
            message = decode(line)
            applied = self.view.apply(message)
        except StreamProtocolError as exc:
            await self._reject(stream, conn, exc)
        if message.type == "close":
            log.warning("the control plane closed the config stream; reconnecting", reason=message.reason)
            # End our side before the connection closes: the control plane waits for it.
            with trio.move_on_after(1):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_eof()
                    await conn.wait_flushed()
            return True
        if applied:
            self.on_update(self.view.snapshot)
            self.synced.set()
            self._ack_wanted.set()
        return False

    async def _reject(self, stream: H2Stream, conn: H2Connection, exc: StreamProtocolError):
        """NACK what we could not use, end our side, give the control plane a moment to end its
        side, and raise: the caller resyncs from a snapshot."""
        version = self.view.version or ""  # the NACK names what we still hold
        with trio.move_on_after(1):
            try:
                await stream.send_all(encode_ack(version, str(exc)))
                await stream.send_eof()
                await conn.wait_flushed()
                while await stream.receive_some():
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        raise exc

    async def _acknowledge(self, stream: H2Stream) -> None:
        """Ack the latest applied version `ack_delay` after the first unacknowledged one.

        One ack covers every version before it, so a burst of deltas costs one message, and
        acks stay out of the way of reading: the control plane fans each change out to every
        node at once, and an ack per message would compete with the reads for the same CPU.
        """
        acked = None
        try:
            while True:
                await self._ack_wanted.wait()
                self._ack_wanted = trio.Event()  # what is applied from now on wants another ack
                await trio.sleep(self.ack_delay)
                if self.view.version != acked:
                    acked = self.view.version
                    await stream.send_all(encode_ack(acked, None))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the reader meets the same failure and reconnects

