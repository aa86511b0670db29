"""Enrolling pods on this node into the mesh and taking them out, driven by pod views and CNI ADD.

Enrol: install the in-pod rules (idempotent) → ZDS Add and wait for ztunnel's ack → add the pod
IP to the probe set → annotate `ambient.istio.io/redirection: enabled` (`pending` while ztunnel
has not acked; it flips to `enabled` when the ack comes). Unenrol: ZDS Del → remove the rules if
the netns still exists → drop the IP from the probe set → remove the annotation.
Whether a pod belongs in the mesh is `wisp.enrolment.enrolment`, the control plane's own rule.
Operations on one pod are serialised by a per-pod lock; different pods proceed independently.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from wisp.enrolment import enrolment
from wisp.kube import InvalidObject
from wisp.zds.node import ZdsPod, ZdsServer
from wisp.zds.protocol import WorkloadInfo

from .errors import CniAgentError, EnrolmentFailed
from .hostprobe import HostProbe
from .podnetns import NetnsLocator
from .podsource import REDIRECTION_ANNOTATION, PodKey, PodSource, PodView
from .rules import PodRules, families_for

log = structlog.get_logger("cni.enrolment")

ENABLED = "enabled"
PENDING = "pending"
TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True, slots=True)
class CniAddRequest:
    netns: str
    pod_name: str
    pod_namespace: str
    pod_ips: tuple[str, ...]
    container_id: str


@dataclass(slots=True)
class Enrolled:
    uid: str
    key: PodKey
    ips: tuple[str, ...]
    netns: str | None
    state: str = PENDING  # the annotation the pod should carry
    written: str | None = None  # the annotation last written (or seen on the pod)


@dataclass(slots=True)
class _Locks:
    by_uid: dict[str, trio.Lock] = field(default_factory=dict)

    def __call__(self, uid: str) -> trio.Lock:
        return self.by_uid.setdefault(uid, trio.Lock())


def pod_ips(pod: dict[str, Any]) -> tuple[str, ...]:
    status = pod.get("status") or {}
    ips = [entry.get("ip") for entry in status.get("podIPs") or [] if isinstance(entry, dict)]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    return tuple(ip for ip in ips if isinstance(ip, str) and ip)


def workload_info(pod: dict[str, Any]) -> WorkloadInfo:
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    return WorkloadInfo(meta.get("name", ""), meta.get("namespace", ""),
                        spec.get("serviceAccountName") or "default")


def _uid(pod: dict[str, Any]) -> str:
    return pod["metadata"]["uid"]


def _annotation(pod: dict[str, Any]) -> str | None:
    return ((pod.get("metadata") or {}).get("annotations") or {}).get(REDIRECTION_ANNOTATION)


class Enroller:
    def __init__(self, *, source: PodSource, zds: ZdsServer, rules: PodRules, probes: HostProbe,
                 locator: NetnsLocator, pod_wait: float = 5.0, resync_interval: float = 30.0) -> None:
        self.source = source
        self.zds = zds
        self.rules = rules
        self.probes = probes
        self.locator = locator
        self.pod_wait = pod_wait
        self.resync_interval = resync_interval
        self.view: PodView | None = None
        self.enrolled: dict[str, Enrolled] = {}
        self._view_changed = trio.Event()
        self._lock = _Locks()
        self._acks_send, self._acks_recv = trio.open_memory_channel[str](math.inf)

    # -- inputs ----------------------------------------------------------------------------------
    def publish(self, view: PodView) -> None:
        """The pod source's callback: keep the newest view and wake whoever waits for one.

        Every view is complete, so the last one received is the truth; versions are not
        compared (a restarted control plane starts counting again).
        """
        self.view = view
        self._view_changed.set()
        self._view_changed = trio.Event()

    def ztunnel_acked(self, uid: str) -> None:
        """The ZDS server's callback when ztunnel takes a pod."""
        self._acks_send.send_nowait(uid)

    async def first_view(self) -> PodView:
        while self.view is None:
            await self._view_changed.wait()
        return self.view

    # -- start-up ------------------------------------------------------------------------------
    async def startup(self, view: PodView) -> None:
        """Take back the pods annotated `enabled`: rules re-applied, into the first ZDS snapshot."""
        for key, pod in view.pods.items():
            if _annotation(pod) != ENABLED:
                continue
            uid, ips = _uid(pod), pod_ips(pod)
            netns = self.locator.find(pod)
            if netns is not None:
                try:
                    await self.rules.apply(netns, ips)
                except CniAgentError as exc:
                    log.error("cannot re-apply redirection at start-up", pod=_name(key), error=str(exc))
            else:
                log.info("enrolled pod has no network namespace; ztunnel is told to keep it", pod=_name(key))
            self.zds.register(ZdsPod(uid, workload_info(pod), netns))
            self.enrolled[uid] = Enrolled(uid, key, ips, netns, ENABLED, ENABLED)
            log.info("pod taken back at start-up", pod=_name(key), uid=uid, netns=netns)
        await self.probes.install()
        await self.probes.sync(ip for e in self.enrolled.values() for ip in e.ips)

    # -- steady state ----------------------------------------------------------------------------
    async def follow_views(self) -> None:
        """Reconcile on every new view, and every `resync_interval` (retries failed steps)."""
        while True:
            if self.view is not None:
                await self.reconcile(self.view)
            with trio.move_on_after(self.resync_interval):
                await self._view_changed.wait()

    async def follow_acks(self) -> None:
        async for uid in self._acks_recv:
            async with self._lock(uid):
                entry = self.enrolled.get(uid)
                if entry is not None and entry.state != ENABLED:
                    entry.state = ENABLED
                    await self._guarded(self._annotate, entry, ENABLED)

    async def reconcile(self, view: PodView) -> None:
        wanted: dict[str, dict[str, Any]] = {}
        for key, pod in view.pods.items():
            if self._should_enrol(key, pod, view):
                wanted[_uid(pod)] = pod
        for uid in [u for u in self.enrolled if u not in wanted]:
            await self._guarded(self.unenrol, uid)
        for uid, pod in wanted.items():
            entry = self.enrolled.get(uid)
            if entry is None:
                netns = self.locator.find(pod)
                if netns is None:
                    continue  # not running yet: CNI ADD will bring it
                await self._guarded(self.enrol, pod, netns, pod_ips(pod))
            else:
                ips = pod_ips(pod)
                if ips and set(ips) != set(entry.ips):
                    await self._guarded(self._update_ips, uid, ips)
                if _annotation(pod) != entry.state:
                    # Lost, changed by someone else, or an earlier write failed: write ours again.
                    await self._guarded(self._reannotate, uid)
        # Annotations as they are now (the steps above may have changed some), for the pods this
        # pass decided about.
        latest = self.view or view
        for key, pod in latest.pods.items():
            uid = _uid(pod)
            decided = key in view.pods and _uid(view.pods[key]) == uid
            if decided and uid not in wanted and uid not in self.enrolled and _annotation(pod) is not None:
                # Left over from a removal whose write failed, or from before a restart.
                await self._guarded(self.source.set_redirection, key[0], key[1], None)

    def _should_enrol(self, key: PodKey, pod: dict[str, Any], view: PodView) -> bool:
        if (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
            return False
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            return False
        try:
            return enrolment(pod, view.namespaces.get(key[0])).enrolled
        except InvalidObject as exc:
            log.warning("cannot decide enrolment of a malformed pod", pod=_name(key), error=str(exc))
            uid = _uid(pod)
            return uid in self.enrolled  # keep whatever it had until it is fixed

    async def _guarded(self, fn, *args) -> None:
        try:
            await fn(*args)
        except CniAgentError as exc:
            log.error("enrolment step failed; will retry", step=fn.__name__, error=str(exc))

    async def _update_ips(self, uid: str, ips: tuple[str, ...]) -> None:
        """The pod's addresses became known (enrolled before its IP was reported) or changed."""
        async with self._lock(uid):
            entry = self.enrolled.get(uid)
            if entry is None:
                return
            if entry.netns is not None and families_for(ips) != families_for(entry.ips):
                await self.rules.apply(entry.netns, ips)
            await self.probes.add([ip for ip in ips if ip not in entry.ips])
            await self.probes.remove([ip for ip in entry.ips if ip not in ips])
            entry.ips = ips

    async def _reannotate(self, uid: str) -> None:
        async with self._lock(uid):
            entry = self.enrolled.get(uid)
            if entry is not None:
                entry.written = None
                await self._annotate(entry, entry.state)

    # -- CNI ADD -----------------------------------------------------------------------------------
    async def cni_add(self, request: CniAddRequest) -> dict[str, Any]:
        """Answer the plugin: enrolled (fully, with ztunnel's ack) or not for the mesh, or raise."""
        key = (request.pod_namespace, request.pod_name)
        view = await self._wait_for_pod(key)
        if view is None:
            raise EnrolmentFailed(f"pod {_name(key)} is not known to the control plane yet "
                                  f"(waited {self.pod_wait} s); retry")
        pod = view.pods[key]
        try:
            decision = enrolment(pod, view.namespaces.get(key[0]))
        except InvalidObject as exc:
            raise EnrolmentFailed(str(exc)) from None
        if not decision.enrolled:
            log.info("pod not enrolled", pod=_name(key), reason=decision.reason)
            return {"enrolled": False, "reason": decision.reason}
        ips = request.pod_ips or pod_ips(pod)
        state, error = await self.enrol(pod, request.netns, ips)
        if state != ENABLED:
            raise EnrolmentFailed(f"redirection for {_name(key)} is in place but ztunnel has not taken "
                                  f"the pod yet: {error}")
        return {"enrolled": True, "redirection": state}

    async def _wait_for_pod(self, key: PodKey) -> PodView | None:
        with trio.move_on_after(self.pod_wait):
            while self.view is None or key not in self.view.pods:
                await self._view_changed.wait()
            return self.view
        return None

    # -- the two operations ----------------------------------------------------------------------
    async def enrol(self, pod: dict[str, Any], netns: str, ips: Iterable[str]) -> tuple[str, str]:
        """Enrol (or re-enrol, idempotently); returns (annotation written, ztunnel's error if any)."""
        uid, ips = _uid(pod), tuple(ips)
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        async with self._lock(uid):
            try:
                await self.rules.apply(netns, ips)
            except CniAgentError as exc:
                raise EnrolmentFailed(f"cannot enrol {_name(key)}: {exc}") from None
            entry = self.enrolled.get(uid)
            if entry is None:
                entry = self.enrolled[uid] = Enrolled(uid, key, ips, netns, PENDING, _annotation(pod))
            entry.ips, entry.netns = ips, netns
            outcome = await self.zds.add(ZdsPod(uid, workload_info(pod), netns))
            state = ENABLED if outcome.acked else PENDING
            # A pod ztunnel already had stays enabled while a repeated Add is retried.
            entry.state = ENABLED if outcome.acked or entry.state == ENABLED else PENDING
            await self.probes.add(ips)
            if outcome.acked:
                log.info("pod enrolled", pod=_name(key), uid=uid, ips=list(ips))
            else:
                log.warning("pod redirected but not yet taken by ztunnel", pod=_name(key), uid=uid,
                            error=outcome.error)
            await self._annotate(entry, entry.state)
            return state, outcome.error

    async def unenrol(self, uid: str) -> None:
        async with self._lock(uid):
            entry = self.enrolled.get(uid)
            if entry is None:
                return
            outcome = await self.zds.remove(uid)
            if not outcome.acked:
                log.warning("ztunnel did not confirm removal", pod=_name(entry.key), error=outcome.error)
            if entry.netns is not None and os.path.exists(entry.netns):
                await self.rules.remove(entry.netns)
            await self.probes.remove(entry.ips)
            del self.enrolled[uid]
            pod = self.view.pods.get(entry.key) if self.view is not None else None
            if pod is not None and _uid(pod) == uid and (_annotation(pod) is not None or entry.written):
                await self._annotate(entry, None)
            if not self._lock(uid).statistics().tasks_waiting:
                self._lock.by_uid.pop(uid, None)
            log.info("pod left the mesh", pod=_name(entry.key), uid=uid)

    async def _annotate(self, entry: Enrolled, value: str | None) -> None:
        if entry.written == value:
            return
        await self.source.set_redirection(entry.key[0], entry.key[1], value)
        entry.written = value


def _name(key: PodKey) -> str:
    return f"{key[0]}/{key[1]}"
