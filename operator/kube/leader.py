"""LeaderElector: one writer among the operator's replicas, by a coordination.k8s.io Lease.

client-go's algorithm (tools/leaderelection) with its defaults: lease duration 15 s, renew
deadline 10 s, retry period 2 s. A candidate reads the Lease; it takes it when nobody holds it,
or when the record it last saw has not changed for a lease duration by its *own* clock (never
trusting the holder's renewTime against a skewed local clock), by an update carrying the
resourceVersion it read, so two candidates cannot both win (the loser gets 409). The leader
renews every retry period; if it cannot renew within the renew deadline it stops leading.
``release()`` (on shutdown) empties holderIdentity so a successor need not wait the lease out.

``is_leader()`` is what the writer asks before each write; ``leading`` is set while leading.
Every replica, leader or not, keeps watching and serving: only writing is the leader's.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

import structlog

from .client import KubeApi, KubeUnavailable

log = structlog.get_logger("wisp.operator.kube.leader")

LEASE_DURATION = 15.0
RENEW_DEADLINE = 10.0
RETRY_PERIOD = 2.0


def _micro_time() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = LEASE_DURATION,
        renew_deadline: float = RENEW_DEADLINE,
        retry_period: float = RETRY_PERIOD,
    ) -> None:
        if not lease_duration > renew_deadline > retry_period > 0:
            raise ValueError("want lease_duration > renew_deadline > retry_period > 0")
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.leading = asyncio.Event()
        self.transitions = 0
        self._observed: dict[str, Any] | None = None  # the Lease spec as last read
        self._observed_at = 0.0  # monotonic time the spec last changed, as we saw it
        self._path = "/apis/coordination.k8s.io/v1/namespaces/%s/leases/%s" % (namespace, name)

    def is_leader(self) -> bool:
        return self.leading.is_set()

    async def run(self) -> None:
        """Campaign, lead while renewals succeed, campaign again after losing; until cancelled."""
        while True:
            while not await self._try_acquire_or_renew():
                await asyncio.sleep(self.retry_period)
            self.leading.set()
            self.transitions += 1
            log.info("leading", lease=self.name, namespace=self.namespace, identity=self.identity)
            last_renew = time.monotonic()
            while True:
                await asyncio.sleep(self.retry_period)
                if await self._try_acquire_or_renew():
                    last_renew = time.monotonic()
                elif time.monotonic() - last_renew > self.renew_deadline or not self._held_by_us():
                    break
            self.leading.clear()
            log.warning("stopped leading", lease=self.name, identity=self.identity)

    async def release(self) -> None:
        """Give the Lease up if we hold it (graceful shutdown)."""
        if not self.leading.is_set():
            return
        self.leading.clear()
        try:
            response = await self.api.request("GET", self._path, timeout=5)
            if not response.ok or (response.body.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease = response.body
            lease["spec"].update({"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": _micro_time()})
            await self.api.request("PUT", self._path, body=lease, timeout=5)
            log.info("lease released", lease=self.name, identity=self.identity)
        except KubeUnavailable as exc:
            log.warning("lease not released", error=str(exc))

    def _held_by_us(self) -> bool:
        return self._observed is not None and self._observed.get("holderIdentity") == self.identity

    async def _try_acquire_or_renew(self) -> bool:
        now = _micro_time()
        try:
            response = await self.api.request("GET", self._path, timeout=self.retry_period * 2)
            if response.status == 404:
                lease = {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(now, now, 0),
                }
                created = await self.api.request("POST", self._path.rsplit("/", 1)[0], body=lease,
                                                 timeout=self.retry_period * 2)
                if created.ok:
                    self._observe(created.body.get("spec") or {})
                return created.ok
            if not response.ok:
                log.warning("cannot read the lease", status=response.status, message=response.message())
                return False
            lease = response.body
            spec = lease.get("spec") or {}
            self._observe(spec)
            holder = spec.get("holderIdentity")
            if holder and holder != self.identity:
                duration = spec.get("leaseDurationSeconds") or self.lease_duration
                if time.monotonic() - self._observed_at < float(duration):
                    return False  # someone else holds a live lease
            ours = holder == self.identity
            transitions = int(spec.get("leaseTransitions") or 0) + (0 if ours else 1)
            acquired = spec.get("acquireTime") if ours and spec.get("acquireTime") else now
            lease["spec"] = self._spec(acquired, now, transitions)
            updated = await self.api.request("PUT", self._path, body=lease, timeout=self.retry_period * 2)
            if updated.ok:
                self._observe(updated.body.get("spec") or {})
                return True
            if updated.status != 409:
                log.warning("cannot update the lease", status=updated.status, message=updated.message())
            return False
        except KubeUnavailable as exc:
            log.warning("lease request failed", error=str(exc))
            return False

    def _spec(self, acquired: str, renewed: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_duration)),
            "acquireTime": acquired,
            "renewTime": renewed,
            "leaseTransitions": transitions,
        }

    def _observe(self, spec: dict[str, Any]) -> None:
        if spec != self._observed:
            self._observed = dict(spec)
            self._observed_at = time.monotonic()
