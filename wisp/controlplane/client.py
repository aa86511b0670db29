"""Client side of the control plane: an HTTP/2 client, certificate requests, the config stream.

Runs on trio (httpx picks its backend from the running loop). The subscriber reconnects with
backoff and keeps serving the last good config while the control plane is away.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Callable

import httpx
import structlog
import trio

from wisp.identity import CertBundle, IdentityError, SpiffeId, generate_key, load_pem_certificates, make_csr
from wisp.model import ModelSnapshot

from .protocol import ACK_PATH, CERTIFICATE_PATH, STREAM_PATH, ConfigView, StreamProtocolError, decode

log = structlog.get_logger("wisp.controlplane")


class ControlPlaneError(Exception):
    """The control plane refused a request or answered something unusable."""

    def __init__(self, status: int | None, message: str) -> None:
        self.status = status
        super().__init__(f"control plane answered {status}: {message}" if status else message)


def make_client(address: str, roots_pem: bytes, token: str, *, timeout: float = 10.0) -> httpx.AsyncClient:
    """An HTTP/2 client for `https://<address>`, trusting only the mesh's roots."""
    ctx = ssl.create_default_context(cadata=roots_pem.decode("ascii"))
    return httpx.AsyncClient(
        base_url=f"https://{address}", http2=True, verify=ctx, timeout=timeout,
        headers={"authorization": f"Bearer {token}"},
    )


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text.strip() or response.reason_phrase


async def fetch_certificate(client: httpx.AsyncClient, identity: SpiffeId, lifetime_seconds: int | None = None) -> CertBundle:
    """A fresh key and a certificate for `identity` from the control plane's CA."""
    key = generate_key()
    request = {"csr": make_csr(key, identity).decode(), "identity": str(identity)}
    if lifetime_seconds is not None:
        request["ttl_seconds"] = lifetime_seconds
    response = await client.post(CERTIFICATE_PATH, json=request)
    if response.status_code != 200:
        raise ControlPlaneError(response.status_code, _error_message(response))
    try:
        chain = response.json()["cert_chain"]
        certs = [load_pem_certificates(pem.encode(), "certificate chain") for pem in chain]
    except (ValueError, KeyError, TypeError, AttributeError, IdentityError) as exc:
        raise ControlPlaneError(200, f"unusable certificate response: {exc}") from None
    if len(certs) < 2:
        raise ControlPlaneError(200, "certificate response needs a leaf and a root bundle")
    leaf = certs[0][0]
    intermediates = tuple(c for group in certs[1:-1] for c in group)
    bundle = CertBundle(key, leaf, intermediates, tuple(certs[-1]))
    if bundle.identity != identity:
        raise ControlPlaneError(200, f"the CA issued {bundle.identity}, not {identity}")
    return bundle


class ConfigSubscriber:
    """Follows the config stream; `on_update(snapshot)` runs after each applied version."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        subscriber_id: str,
        on_update: Callable[[ModelSnapshot], None],
        *,
        backoff_min: float = 0.1,
        backoff_max: float = 15.0,
        read_timeout: float = 30.0,
        ack_delay: float = 0.1,
    ) -> None:
        self.client = client
        self.id = subscriber_id
        self.on_update = on_update
        self.view = ConfigView()
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
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
            except (httpx.HTTPError, ControlPlaneError) as exc:
                log.warning("config stream unavailable", error=str(exc) or type(exc).__name__,
                            retry_in=round(backoff, 2))
                received = False
            self.connected = False
            self.reconnects += 1
            backoff = self.backoff_min if received else min(backoff * 2, self.backoff_max)
            await trio.sleep(backoff * random.uniform(0.8, 1.2))

    async def _follow(self, resume: bool) -> bool:
        params = {"subscriber": self.id}
        if resume and self.view.version:
            params["version"] = self.view.version
        self._ack_wanted = trio.Event()
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._acknowledge)
            try:
                received = await self._read(params)
            except (StreamProtocolError, httpx.HTTPError, ControlPlaneError) as exc:
                failure = exc  # raised below, outside the nursery, as itself
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return received

    async def _read(self, params: dict[str, str]) -> bool:
        timeout = httpx.Timeout(10.0, read=self.read_timeout)
        received = False
        async with self.client.stream("GET", STREAM_PATH, params=params, timeout=timeout) as response:
            if response.status_code != 200:
                await response.aread()
                raise ControlPlaneError(response.status_code, _error_message(response))
            self.connected = True
            async for line in response.aiter_lines():
                if not line:
                    continue
                try:
                    message = decode(line)
                    applied = self.view.apply(message)
                except StreamProtocolError as exc:
                    await self._ack(getattr(exc, "version", None) or self.view.version or "", str(exc))
                    raise
                received = True
                if applied:
                    self.on_update(self.view.snapshot)
                    self.synced.set()
                    self._ack_wanted.set()
        return received

    async def _acknowledge(self) -> None:
        """Ack the latest applied version `ack_delay` after the first unacknowledged one.

        One ack covers every version before it, so a burst of deltas costs one request, and the
        requests stay out of the way of reading: the control plane fans each change out to every
        node at once, and an ack per message would compete with the reads for the same CPU.
        """
        acked = None
        while True:
            await self._ack_wanted.wait()
            self._ack_wanted = trio.Event()  # what is applied from now on wants another ack
            await trio.sleep(self.ack_delay)
            if self.view.version != acked:
                acked = self.view.version
                await self._ack(acked, None)

    async def _ack(self, version: str, error: str | None) -> None:
        try:
            response = await self.client.post(ACK_PATH, json={"subscriber": self.id, "version": version, "error": error})
        except httpx.HTTPError as exc:
            log.debug("ack not delivered", version=version, error=str(exc))
            return
        if response.status_code >= 300:
            log.debug("ack refused", version=version, status=response.status_code)
