"""The certificate manager: fetch per identity, rotate at half-life, back off, forget."""

from __future__ import annotations

import datetime as dt
import random

import pytest
import trio

from wisp.identity import CertBundle, SpiffeId
from ztunnel.identity import BACKOFF_MAX, CertificateUnavailable, CertManager, backoff_delay

from ..conftest import spiffe

WEB = spiffe("shop", "web")


def test_backoff_doubles_from_half_a_second_with_jitter_and_caps():
    rng = random.Random(1)
    assert 0.4 <= backoff_delay(1, rng) <= 0.6
    assert 0.8 <= backoff_delay(2, rng) <= 1.2
    assert backoff_delay(30, rng) <= BACKOFF_MAX


class FakeCa:
    def __init__(self, ca, lifetime: dt.timedelta = dt.timedelta(hours=24)) -> None:
        self.ca = ca
        self.lifetime = lifetime
        self.calls = 0
        self.failures = 0

    async def __call__(self, identity: SpiffeId) -> CertBundle:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise RuntimeError("CA unavailable")
        return self.ca.issue(identity, lifetime=self.lifetime)


async def test_tracked_identity_gets_a_certificate(ca, autojump_clock):
    fetch = FakeCa(ca)
    async with CertManager(fetch) as certs:
        certs.track(WEB)
        bundle = await certs.get(WEB)
        assert bundle.identity == WEB
        assert certs.ready()
        (item,) = certs.dump()
        assert item["identity"] == str(WEB) and item["state"] == "available" and "rotation" in item


async def test_untracked_identity_is_refused(ca):
    async with CertManager(FakeCa(ca)) as certs:
        with pytest.raises(CertificateUnavailable, match="no pod on this node"):
            await certs.get(WEB)


async def test_failures_back_off_then_succeed(ca, autojump_clock):
    fetch = FakeCa(ca)
    fetch.failures = 3
    async with CertManager(fetch) as certs:
        certs.track(WEB)
        start = trio.current_time()
        await certs.get(WEB, timeout=60)
        # 0.5 + 1 + 2 s (±20%) of backoff before the fourth call succeeded.
        assert fetch.calls == 4
        assert 2.8 <= trio.current_time() - start <= 4.2


async def test_certificate_rotates_at_half_life(ca):
    fetch = FakeCa(ca, lifetime=dt.timedelta(seconds=64))
    async with CertManager(fetch) as certs:
        certs.track(WEB)
        first = await certs.get(WEB)
        # Back-dated by a minute, a 64 s leaf reaches half-life two seconds after issue.
        with trio.fail_after(6):
            while certs.current(WEB).serial == first.serial:
                await trio.sleep(0.1)
        assert fetch.calls == 2


async def test_rotation_waits_for_half_life_and_no_longer(ca, autojump_clock):
    """A 24 h certificate is renewed 12 h after its not_before, not sooner (an audit made it
    rotate at once and the test above, with only an upper bound, still passed) and not later.
    The manager's wall clock follows trio's (autojump), so 12 hours pass in no time."""
    start_wall, start = dt.datetime.now(dt.timezone.utc), trio.current_time()

    def now() -> dt.datetime:
        return start_wall + dt.timedelta(seconds=trio.current_time() - start)

    fetched_at: list[float] = []

    async def fetch(identity: SpiffeId) -> CertBundle:
        fetched_at.append(trio.current_time() - start)
        return ca.issue(identity, lifetime=dt.timedelta(hours=24), now=now())

    async with CertManager(fetch, now=now) as certs:
        certs.track(WEB)
        first = await certs.get(WEB)
        half_life = (first.rotation_time - now()).total_seconds()
        assert 11 * 3600 < half_life <= 12 * 3600  # back-dated a little, as leaves are
        await trio.sleep(half_life - 5)
        assert fetched_at == [0.0] and certs.current(WEB).serial == first.serial
        await trio.sleep(10)
        assert len(fetched_at) == 2 and half_life - 1 <= fetched_at[1] <= half_life + 1
        assert certs.current(WEB).serial != first.serial


async def test_the_valid_certificate_is_kept_while_its_renewal_fails(ca, autojump_clock):
    """docs/identity.md: proxies keep the valid certificate while a renewal fails."""
    start_wall, start = dt.datetime.now(dt.timezone.utc), trio.current_time()

    def now() -> dt.datetime:
        return start_wall + dt.timedelta(seconds=trio.current_time() - start)

    failing = False
    calls = 0

    async def fetch(identity: SpiffeId) -> CertBundle:
        nonlocal calls
        calls += 1
        if failing:
            raise RuntimeError("CA unavailable")
        return ca.issue(identity, lifetime=dt.timedelta(hours=24), now=now())

    async with CertManager(fetch, now=now) as certs:
        certs.track(WEB)
        first = await certs.get(WEB)
        failing = True
        # Past half-life, renewals fail for the next 11 hours (many retries, backoff capped).
        await trio.sleep((first.rotation_time - now()).total_seconds() + 11 * 3600)
        assert calls > 10
        assert certs.current(WEB).serial == first.serial
        assert (await certs.get(WEB)).serial == first.serial
        (item,) = certs.dump()
        assert item["state"] == "available" and item["last_error"] == "CA unavailable"
        # The CA returns: the next retry renews it.
        failing = False
        await trio.sleep(BACKOFF_MAX + 1)
        assert certs.current(WEB).serial != first.serial


async def test_last_pod_leaving_forgets_the_identity(ca, autojump_clock):
    async with CertManager(FakeCa(ca)) as certs:
        certs.track(WEB)
        certs.track(WEB)
        await certs.get(WEB)
        certs.untrack(WEB)
        assert certs.current(WEB) is not None
        certs.untrack(WEB)
        assert certs.current(WEB) is None and certs.tracked() == []
