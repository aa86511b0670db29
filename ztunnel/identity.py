"""Certificates for the identities of the pods this ztunnel serves (ztunnel's identity/).

One worker per tracked identity fetches a certificate, sleeps until half its lifetime and
fetches again. A failed fetch backs off 500 ms ×2 ±20% up to 150 s while the current
certificate (if still valid) keeps serving. At most 8 fetches run at once. An identity is
tracked while at least one enrolled pod has it; the last pod leaving forgets its certificate.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
import trio

from wisp.identity import CertBundle, SpiffeId

log = structlog.get_logger("ztunnel.identity")

Fetcher = Callable[[SpiffeId], Awaitable[CertBundle]]

BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 150.0
MAX_CONCURRENT_FETCHES = 8


class CertificateUnavailable(Exception):
    """No valid certificate for an identity (not tracked, or the CA has not answered yet)."""


@dataclass(slots=True)
class _Entry:
    identity: SpiffeId
    refs: int = 0
    bundle: CertBundle | None = None
    ready: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    last_error: str | None = None
    failures: int = 0


def backoff_delay(failures: int, rng: random.Random | None = None) -> float:
    """Delay after the `failures`-th consecutive failure: 0.5 s ×2 each time, ±20%, ≤150 s."""
    base = min(BACKOFF_INITIAL * 2 ** max(failures - 1, 0), BACKOFF_MAX)
    return min(base * (rng or random).uniform(0.8, 1.2), BACKOFF_MAX)


class CertManager:
    """Use as `async with CertManager(fetch) as certs`; `track`, `untrack`, `await get`."""

    def __init__(self, fetch: Fetcher, *, max_concurrent: int = MAX_CONCURRENT_FETCHES,
                 now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)) -> None:
        self._fetch = fetch
        self._limit = trio.Semaphore(max_concurrent)
        self._now = now
        self._entries: dict[SpiffeId, _Entry] = {}
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> CertManager:
        self._manager = trio.open_nursery()
        self._nursery = await self._manager.__aenter__()
        return self

    async def __aexit__(self, *exc_info) -> bool | None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        return await self._manager.__aexit__(*exc_info)

    def track(self, identity: SpiffeId) -> None:
        """One more pod has `identity`; the first starts fetching its certificate."""
        entry = self._entries.get(identity)
        if entry is None:
            entry = self._entries[identity] = _Entry(identity)
            assert self._nursery is not None, "use CertManager as an async context manager"
            self._nursery.start_soon(self._maintain, entry)
        entry.refs += 1

    def untrack(self, identity: SpiffeId) -> None:
        """One pod with `identity` left; the last one forgets the certificate."""
        entry = self._entries.get(identity)
        if entry is None:
            return
        entry.refs -= 1
        if entry.refs <= 0:
            del self._entries[identity]
            entry.scope.cancel()
            log.info("certificate forgotten", identity=str(identity))

    def tracked(self) -> list[SpiffeId]:
        return sorted(self._entries)

    def current(self, identity: SpiffeId) -> CertBundle | None:
        entry = self._entries.get(identity)
        if entry is None or entry.bundle is None or entry.bundle.is_expired(self._now()):
            return None
        return entry.bundle

    async def get(self, identity: SpiffeId, timeout: float = 10.0) -> CertBundle:
        """The valid certificate for a tracked identity, waiting up to `timeout` for the first."""
        entry = self._entries.get(identity)
        if entry is None:
            raise CertificateUnavailable(f"no pod on this node has identity {identity}")
        bundle = self.current(identity)
        if bundle is not None:
            return bundle
        with trio.move_on_after(timeout):
            while True:
                await entry.ready.wait()
                bundle = self.current(identity)
                if bundle is not None:
                    return bundle
                entry.ready = trio.Event()
        raise CertificateUnavailable(
            f"no certificate for {identity} yet: {entry.last_error or 'the CA has not answered'}"
        )

    def ready(self) -> bool:
        return all(self.current(identity) is not None for identity in self._entries)

    def dump(self) -> list[dict]:
        out = []
        for identity, entry in sorted(self._entries.items()):
            item: dict = {"identity": str(identity), "pods": entry.refs, "state": "pending"}
            if entry.bundle is not None:
                item.update(
                    state="expired" if entry.bundle.is_expired(self._now()) else "available",
                    not_before=entry.bundle.not_before.isoformat(),
                    expiration=entry.bundle.not_after.isoformat(),
                    rotation=entry.bundle.rotation_time.isoformat(),
                    serial=f"{entry.bundle.serial:x}",
                )
            if entry.last_error:
                item["last_error"] = entry.last_error
            out.append(item)
        return out

    async def _maintain(self, entry: _Entry) -> None:
        with entry.scope:
            while True:
                try:
                    async with self._limit:
                        bundle = await self._fetch(entry.identity)
                except Exception as exc:  # the CA's answer is network input: retry, keep serving
                    entry.failures += 1
                    entry.last_error = str(exc) or type(exc).__name__
                    delay = backoff_delay(entry.failures)
                    log.warning("certificate fetch failed", identity=str(entry.identity),
                                error=entry.last_error, retry_in=round(delay, 2),
                                serving_previous=self.current(entry.identity) is not None)
                    await trio.sleep(delay)
                    continue
                entry.bundle, entry.failures, entry.last_error = bundle, 0, None
                entry.ready.set()
                log.info("certificate issued", identity=str(entry.identity),
                         expiration=bundle.not_after.isoformat())
                wait = (bundle.rotation_time - self._now()).total_seconds()
                # A floor keeps a certificate issued already past half-life from spinning the CA.
                await trio.sleep(max(wait, 1.0))
