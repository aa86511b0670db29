"""The waypoint's own certificate: fetched from the control plane's CA and renewed at half-life.

A waypoint has one identity, its Gateway's ServiceAccount (`WaypointSettings.identity`). It
presents the certificate on 15008 to clients and on every upstream HBONE connection. A failed
fetch backs off 0.5 s ×2 up to 60 s while the current certificate, if still valid, keeps
serving. Without a control plane (tests, benchmarks) the certificate comes from a directory
(`from_directory`: key.pem, cert-chain.pem, root-cert.pem, as Istio's `cacerts` names them).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
import trio

from wisp.identity import CertBundle, SpiffeId
from wisp.identity.openssl import make_bundle

log = structlog.get_logger("waypoint.identity")

BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 60.0


class CertificateSource:
    """Holds the waypoint's current certificate; `run` keeps it fresh."""

    def __init__(self, identity: SpiffeId, fetch: Callable[[SpiffeId], Awaitable[CertBundle]]) -> None:
        self.identity = identity
        self._fetch = fetch
        self.bundle: CertBundle | None = None
        self.last_error: str | None = None
        self.changed = trio.Event()

    def current(self) -> CertBundle | None:
        bundle = self.bundle
        if bundle is None or bundle.is_expired(dt.datetime.now(dt.timezone.utc)):
            return None
        return bundle

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        failures = 0
        while True:
            try:
                bundle = await self._fetch(self.identity)
            except Exception as exc:  # the CA's answer is network input: retry, keep serving
                failures += 1
                self.last_error = str(exc) or type(exc).__name__
                delay = min(BACKOFF_INITIAL * 2 ** (failures - 1), BACKOFF_MAX) * random.uniform(0.8, 1.2)
                log.warning("certificate fetch failed", identity=str(self.identity), error=self.last_error,
                            retry_in=round(delay, 2))
                await trio.sleep(delay)
                continue
            failures = 0
            self.bundle, self.last_error = bundle, None
            self.changed.set()
            self.changed = trio.Event()
            log.info("certificate issued", identity=str(self.identity), expiration=bundle.not_after.isoformat())
            wait = (bundle.rotation_time - dt.datetime.now(dt.timezone.utc)).total_seconds()
            await trio.sleep(max(wait, 1.0))


def from_directory(directory: str) -> Callable[[SpiffeId], Awaitable[CertBundle]]:
    """A fetch that reads key.pem, cert-chain.pem and root-cert.pem from `directory`."""
    async def fetch(identity: SpiffeId) -> CertBundle:
        base = Path(directory)
        key = (base / "key.pem").read_bytes()
        chain = (base / "cert-chain.pem").read_bytes()
        roots = (base / "root-cert.pem").read_bytes()
        return await make_bundle(key, [chain, roots], identity)
    return fetch
