"""The kubelet of a node that is a network namespace, driven by a real Kubernetes API server.

`NodeKubelet` plays one node's kubelet: it lists and watches the pods bound to its node
(fieldSelector `spec.nodeName`), runs each new one with the runtime's shared pod lifecycle
(runtime/kubelet.py `PodLifecycle`: network, files, init containers, containers under
restartPolicy, probes, teardown) and writes what it sees to `pods/<name>/status`.

The seams it fills in:
- network: a pod netns `<prefix>-<ns>-<pod>` (wisp.runpaths.pod_netns_name) set up by the node's
  standard CNI chain (runtime/cnichain.py `cni_add`/`cni_del` with the node's conflist, run in the
  node's netns with the node's view of node-local paths), the pod IP from the CNI result, retried
  with back-off while it fails (the pod stays Pending with the plugin's error); a host-network
  pod runs in the node's netns with the node's IP and no CNI;
- files: runtime/kube/volumes.py `PodVolumes` under `pods_dir/<uid>`, bound into each
  container's sandbox at its mount paths, refreshed while the pod runs;
- a container's sandbox from the pod's and the container's securityContext (runtime/podspec.py);
- ConfigMaps and Secrets for `env`/`envFrom` read from the API;
- status: phase, hostIP(s), podIP(s), startTime, the conditions PodScheduled (kept as the
  scheduler wrote it), PodReadyToStartContainers, Initialized, ContainersReady and Ready with their
  transition times, and a status per container (`build_status`, pure); written with a merge patch
  only when it changed;
- /etc/hosts of each pod from `hosts(namespace)` (kube-proxy's job, runtime/kube/proxy.py),
  written before its first container starts and rewritten in place when the services change,
  by a task of the pod's that ends before its teardown.

Deletion: a pod with a deletionTimestamp gets SIGTERM in every container, up to
`metadata.deletionGracePeriodSeconds` to exit, then SIGKILL; then CNI DEL, its netns, /etc/netns
files and volume directory go, and the pod is deleted with gracePeriodSeconds 0 and a uid
precondition (as kubelet confirms a graceful deletion). A pod that vanishes from the API (deleted
with grace 0, or missing from a relist) is torn down the same way without the confirmation.
A pod already Succeeded or Failed is not started again. A second pod of the same name waits until
the first one's teardown is done (they share a netns name).

`run()` never dies of the API: a 410 Gone relists, other errors back off (0.2 s doubling to 5 s)
and retry. Cancelling it tears every pod down (containers get their normal 5 s stop timeout, not
their grace period: this is `wisp down`), without deleting the pods from the API.

`status()` gives one entry per pod in the shape of the local daemon's status.json pods
(namespace, name, node, ip, netns, phase, ready, message, labels, sandbox — the first
container's, for `wisp exec` —, containers) plus `uid`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio

from runtime import cgroups, cnichain, podspec
from runtime.kubelet import (
    KUBERNETES_PROBING,
    POD_SYSCTLS,
    ContainerState,
    PodLifecycle,
    PodRecord,
    exit_state,
    rfc3339,
)
from runtime.sandbox import Sandbox, plan, pod_uid, program_paths
from runtime.topology import NETNS_ETC, Node, PodNet, Topology, netns_exec, run as run_command
from wisp import runpaths

from .api import ApiError, Gone, KubeApi
from .nodeview import NodeView
from .volumes import PodVolumes, VolumeError

log = structlog.get_logger("runtime.kube.kubelet")

BACKOFF_START, BACKOFF_MAX = 0.2, 5.0
# A crash-looping container waits restart_delay, doubling up to this (kubelet: 10 s to 5 min).
MAX_RESTART_DELAY = 60.0
CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
HOSTS_INTERVAL = 1.0


# -- status, pure ---------------------------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class ContainerView:
    """One container as its status reports it (read off the running pod)."""

    name: str
    image: str
    ready: bool
    started: bool
    restart_count: int
    state: dict[str, Any]
    last_state: dict[str, Any]
    container_id: str = ""


@dataclass(slots=True, frozen=True)
class PodView:
    phase: str
    host_ip: str
    pod_ip: str
    start_time: str | None
    conditions: dict[str, tuple[bool, str]]  # type → (status, lastTransitionTime)
    containers: tuple[ContainerView, ...]
    init_containers: tuple[ContainerView, ...] = ()
    message: str = ""
    reason: str = ""


def transition(previous: dict[str, tuple[bool, str]], wanted: dict[str, bool], now: str) -> dict[str, tuple[bool, str]]:
    """Conditions with their transition times: a condition keeps its time until its status flips."""
    result = {}
    for kind, status in wanted.items():
        old = previous.get(kind)
        result[kind] = old if old is not None and old[0] == status else (status, now)
    return result


def container_status(view: ContainerView) -> dict[str, Any]:
    status: dict[str, Any] = {
        "name": view.name, "image": view.image or "wisp", "imageID": "", "ready": view.ready,
        "started": view.started, "restartCount": view.restart_count, "state": view.state,
        "lastState": view.last_state,
    }
    if view.container_id:
        status["containerID"] = view.container_id
    return status


def build_status(pod: dict[str, Any], view: PodView) -> dict[str, Any]:
    """The pod's status subresource as kubelet writes it, from what the node sees (`view`)."""
    existing = {c.get("type"): c for c in (pod.get("status") or {}).get("conditions") or [] if isinstance(c, dict)}
    conditions = []
    # The scheduler's, when it bound the pod; kubelet states it itself for a pod that named its node.
    scheduled = existing.get("PodScheduled") or {"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                                                 "lastTransitionTime": view.conditions["PodReadyToStartContainers"][1]}
    conditions.append(scheduled)
    for kind in CONDITIONS:
        status, since = view.conditions[kind]
        entry: dict[str, Any] = {"type": kind, "status": "True" if status else "False",
                                 "lastProbeTime": None, "lastTransitionTime": since}
        # The reasons and messages of kubelet's pkg/kubelet/status/generate.go.
        if not status and kind in ("ContainersReady", "Ready"):
            if view.phase == "Succeeded":
                entry["reason"] = "PodCompleted"
            else:
                unready = [c.name for c in view.containers if not c.ready]
                entry["reason"] = "ContainersNotReady"
                entry["message"] = f"containers with unready status: [{' '.join(unready)}]"
        elif not status and kind == "Initialized":
            incomplete = [c.name for c in view.init_containers
                          if (c.state.get("terminated") or {}).get("exitCode", -1) != 0]
            entry["reason"] = "ContainersNotInitialized"
            entry["message"] = f"containers with incomplete status: [{' '.join(incomplete)}]"
        conditions.append(entry)
    conditions += [c for kind, c in existing.items() if kind not in CONDITIONS and kind != "PodScheduled"]
    status: dict[str, Any] = {
        "phase": view.phase, "conditions": conditions,
        "hostIP": view.host_ip, "hostIPs": [{"ip": view.host_ip}],
        "containerStatuses": [container_status(c) for c in view.containers],
    }
    if view.pod_ip:
        status["podIP"] = view.pod_ip
        status["podIPs"] = [{"ip": view.pod_ip}]
    if view.start_time:
        status["startTime"] = view.start_time
    if view.init_containers:
        status["initContainerStatuses"] = [container_status(c) for c in view.init_containers]
    if view.message:
        status["message"] = view.message
    if view.reason:
        status["reason"] = view.reason
    return status


def container_view(state: ContainerState | None, spec: dict[str, Any], uid: str, *,
                   not_reached: str = "ContainerCreating") -> ContainerView:
    """What a container's status says, from its runtime state (None: not reached yet, waiting
    with reason `not_reached`: ContainerCreating, or PodInitializing while init containers run)."""
    name = str(spec.get("name", ""))
    image = str(spec.get("image") or "")
    if state is None:
        return ContainerView(name, image, False, False, 0, {"waiting": {"reason": not_reached}}, {})
    supervised = state.supervised
    last = {"terminated": exit_state(supervised.last_exit)} if supervised and supervised.last_exit else {}
    if supervised is None:
        waiting: dict[str, Any] = {"reason": state.reason or "ContainerCreating"}
        if state.message:
            waiting["message"] = state.message
        return ContainerView(name, image, False, False, 0, {"waiting": waiting}, {})
    container_id = f"wisp://{uid}-{name}"
    if supervised.terminated is not None:
        # Its last run is its state, not its last state.
        return ContainerView(name, image, False, False, supervised.restarts,
                             {"terminated": exit_state(supervised.terminated)}, {}, container_id)
    if supervised.running and supervised.started_at is not None:
        state_obj: dict[str, Any] = {"running": {"startedAt": rfc3339(supervised.started_at)}}
    elif supervised.waiting and supervised.last_exit is not None:
        state_obj = {"waiting": {"reason": "CrashLoopBackOff",
                                 "message": f"back-off restarting failed container {name}"}}
    else:
        state_obj = {"waiting": {"reason": "ContainerCreating"}}
    return ContainerView(name, image, state.ready, state.started, supervised.restarts, state_obj, last, container_id)


# -- the kubelet ----------------------------------------------------------------------------------
@dataclass(slots=True)
class _Running:
    record: PodRecord
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


class _KubePods(PodLifecycle):
    """The shared pod lifecycle with the Kubernetes seams (see the module docstring)."""

    probing = KUBERNETES_PROBING
    inherit_env = False

    def __init__(self, owner: NodeKubelet) -> None:
        super().__init__(bin_dir=owner.bin_dir, logs=owner.logs, restart_delay=owner.restart_delay,
                         max_restart_delay=max(MAX_RESTART_DELAY, owner.restart_delay))
        self.owner = owner
        self.status_interval = 0.5
        self._written: dict[str, dict[str, Any]] = {}
        self._conditions: dict[str, dict[str, tuple[bool, str]]] = {}
        self._volumes: dict[str, PodVolumes] = {}
        self._uids: dict[str, int] = {}

    # -- network -----------------------------------------------------------------------------------
    async def _network_up(self, record: PodRecord) -> None:
        node = record.node
        self._uids[record.uid] = pod_uid(self.owner.topology.prefix, record.namespace, record.name,
                                         self._uids.values())
        if record.host_network:
            record.ip = node.ip
            record.net = PodNet(record.namespace, record.name, node, node.netns, node.ip, "")
            return
        netns = runpaths.pod_netns_name(self.owner.topology.prefix, record.namespace, record.name)
        await trio.to_thread.run_sync(_fresh_netns, netns)
        await trio.to_thread.run_sync(lambda: netns_exec(netns, ["sysctl", "-qw", *POD_SYSCTLS]))
        pending = PodNet(record.namespace, record.name, node, netns, "", "")
        delay = BACKOFF_START
        while True:
            record.cni_attempts += 1
            try:
                result = await cnichain.cni_add(self.owner.view, node.netns, container_id=_container_id(record),
                                                netns_path=pending.netns_path, args=_cni_args(record))
                record.ip = _result_ip(result)
                break
            except (cnichain.CniError, ValueError, OSError) as exc:
                record.message = f"CNI ADD failed: {exc}"
                log.warning("CNI ADD failed; retrying", pod=f"{record.namespace}/{record.name}",
                            attempt=record.cni_attempts, error=str(exc))
                await trio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
        record.message = ""
        record.net = PodNet(record.namespace, record.name, node, netns, record.ip, "")
        # Before any container starts: `ip netns exec` binds the file over /etc/hosts only if it
        # exists then, and a process that resolved nothing at start may never ask again.
        await self.owner._write_hosts(record)

    async def _cni_del(self, record: PodRecord, net: PodNet) -> None:
        try:
            await cnichain.cni_del(self.owner.view, record.node.netns, container_id=_container_id(record),
                                   netns_path=net.netns_path, args=_cni_args(record))
        except (cnichain.CniError, OSError) as exc:
            log.warning("CNI DEL failed", pod=f"{record.namespace}/{record.name}", error=str(exc))

    async def _network_down(self, record: PodRecord) -> None:
        self._uids.pop(record.uid, None)
        if record.host_network:
            return
        netns = runpaths.pod_netns_name(self.owner.topology.prefix, record.namespace, record.name)
        net = record.net or PodNet(record.namespace, record.name, record.node, netns, "", "")
        if os.path.exists(net.netns_path):
            await self._cni_del(record, net)
        await trio.to_thread.run_sync(_remove_netns, record.node, netns, record.ip)

    # -- files -------------------------------------------------------------------------------------
    async def _files_up(self, record: PodRecord, nursery: trio.Nursery) -> None:
        # In the pod's own nursery, which ends before its teardown starts: a rewrite racing the
        # teardown would make /etc/netns/<netns> again after its removal.
        nursery.start_soon(self.owner._hosts_loop, record)
        if not record.spec.get("volumes"):
            return
        uid, gid = self._volume_owner(record)
        pod_dir = self.owner.pods_dir / record.uid
        volumes = PodVolumes(self.owner.api, record.pod, self.owner.view, pod_dir, uid, gid)
        self._volumes[record.uid] = volumes
        delay = BACKOFF_START
        while True:
            try:
                await volumes.prepare()
                break
            except VolumeError as exc:
                record.message = f"volumes: {exc}"
                for container in record.spec.get("containers") or []:
                    if not any(s.name == container.get("name") for s in record.states):
                        record.states.append(ContainerState(str(container.get("name")), str(container.get("image") or ""),
                                                            reason="CreateContainerConfigError", message=str(exc)))
                log.warning("volumes not ready; retrying", pod=f"{record.namespace}/{record.name}", error=str(exc))
                await trio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
        record.states = [s for s in record.states if s.supervised is not None]
        record.message = ""
        nursery.start_soon(volumes.refresh_forever)

    def _volume_owner(self, record: PodRecord) -> tuple[int, int]:
        context = record.spec.get("securityContext") or {}
        own = self._uids.get(record.uid) or pod_uid(self.owner.topology.prefix, record.namespace, record.name)
        uid = context.get("runAsUser") if isinstance(context.get("runAsUser"), int) else own
        gid = next((context[k] for k in ("fsGroup", "runAsGroup") if isinstance(context.get(k), int)), uid)
        return uid, gid

    def _cgroups(self, record: PodRecord, state: ContainerState) -> tuple[str, ...]:
        try:
            return tuple(str(d) for d in cgroups.container_dirs(self.owner.topology.prefix, record.uid, state.name))
        except OSError as exc:
            log.warning("no cgroup for the container", pod=f"{record.namespace}/{record.name}", error=str(exc))
            return ()

    def _files_down(self, record: PodRecord) -> None:
        strays = cgroups.kill_pod(self.owner.topology.prefix, record.uid)
        if strays:
            log.warning("killed processes that outlived the pod's containers", pod=f"{record.namespace}/{record.name}",
                        pids=strays)
        left = cgroups.remove_pod(self.owner.topology.prefix, record.uid)
        if left:
            log.warning("pod cgroups left (processes still in them)", pod=f"{record.namespace}/{record.name}",
                        left=left)
        volumes = self._volumes.pop(record.uid, None)
        if volumes is not None:
            try:
                volumes.cleanup()
            except OSError as exc:
                log.warning("volume clean-up failed", pod=f"{record.namespace}/{record.name}", error=str(exc))
        shutil.rmtree(self.owner.pods_dir / record.uid, ignore_errors=True)

    # -- containers --------------------------------------------------------------------------------
    def _sandbox(self, record: PodRecord, container: dict[str, Any]) -> Sandbox:
        own = self._uids.get(record.uid) or pod_uid(self.owner.topology.prefix, record.namespace, record.name)
        security = podspec.security(record.pod, container, own)
        workdir = container.get("workingDir")
        sandbox = plan(security.uid, security.gid, run_root=str(runpaths.RUN_ROOT),
                       needed=program_paths(self.bin_dir),
                       workdir=workdir if isinstance(workdir, str) and workdir.startswith("/") else "/")
        volumes = self._volumes.get(record.uid)
        binds: tuple[tuple[str, str, bool], ...] = ()
        if volumes is not None:
            try:
                binds = tuple(volumes.mounts(container))
            except VolumeError as exc:
                raise podspec.ContainerConfigError(str(exc)) from None
        elif container.get("volumeMounts"):
            raise podspec.ContainerConfigError(
                f"volume {container['volumeMounts'][0].get('name')!r} of the mount is not a volume of the pod")
        # The programs are the image's files: a volume mounted over a directory holding them
        # (an emptyDir at /tmp, with the project checked out under /tmp) must not hide them,
        # so they are bound back on top of it, read-only, as the sandbox binds deeper paths last.
        covered = [path for path in program_paths(self.bin_dir)
                   if any(_under(path, target) for _, target, _ in binds) and path not in sandbox.expose]
        return dataclasses.replace(sandbox, expose=sandbox.expose + tuple(covered), binds=binds,
                                   capabilities=security.capabilities, privileged=security.privileged)

    async def _env_sources(self, record: PodRecord, wanted: set[tuple[str, str]]
                           ) -> dict[tuple[str, str], dict[str, str] | None]:
        found: dict[tuple[str, str], dict[str, str] | None] = {}
        for kind, name in wanted:
            try:
                obj = await self.owner.api.get(f"/api/v1/namespaces/{record.namespace}/{kind}/{name}", missing_ok=True)
            except ApiError as exc:
                raise podspec.ContainerConfigError(f"cannot read {kind[:-1]} {name}: {exc}") from None
            found[(kind, name)] = None if obj is None else _data(obj, secret=kind == "secrets")
        return found

    def _service_env(self) -> dict[str, str]:
        return podspec.service_env()

    # -- status ------------------------------------------------------------------------------------
    async def _report(self, record: PodRecord) -> None:
        if record.deleting or not record.uid:
            return
        status = self.status_of(record)
        if status == self._written.get(record.uid):
            return
        path = f"/api/v1/namespaces/{record.namespace}/pods/{record.name}/status"
        try:
            await self.owner.api.patch(path, {"metadata": {"uid": record.uid}, "status": status})
        except ApiError as exc:
            # 404: gone (the watch says so); 409: a newer pod of that name. Retried next round.
            if exc.status not in (404, 409):
                log.warning("status not written", pod=f"{record.namespace}/{record.name}", error=str(exc))
            return
        self._written[record.uid] = status

    def status_of(self, record: PodRecord) -> dict[str, Any]:
        now = rfc3339(time.time())
        apps = record.spec.get("containers") or []
        states = {s.name: s for s in record.states if not s.init}
        waiting = "PodInitializing" if record.spec.get("initContainers") and record.net is not None else \
            "ContainerCreating"
        views = tuple(container_view(states.get(str(c.get("name"))), c, record.uid, not_reached=waiting)
                      for c in apps)
        inits = {s.name: s for s in record.states if s.init}
        init_views = tuple(container_view(inits.get(str(c.get("name"))), c, record.uid)
                           for c in record.spec.get("initContainers") or [])
        containers_ready = bool(views) and all(v.ready for v in views)
        wanted = {
            "PodReadyToStartContainers": record.net is not None,
            # As kubelet: a pod without init containers is initialized from the start.
            "Initialized": record.initialized or not record.spec.get("initContainers"),
            "ContainersReady": containers_ready,
            "Ready": containers_ready and record.ready,
        }
        conditions = transition(self._conditions.get(record.uid, {}), wanted, now)
        self._conditions[record.uid] = conditions
        view = PodView(record.phase, record.node.ip, record.ip if record.net is not None else "",
                       rfc3339(record.started_at) if record.started_at else None, conditions, views, init_views,
                       message=record.message)
        return build_status(record.pod, view)

    async def _forget(self, record: PodRecord) -> None:
        self._written.pop(record.uid, None)
        self._conditions.pop(record.uid, None)


class NodeKubelet:
    def __init__(self, api: KubeApi, node: Node, view: NodeView, *, topology: Topology, bin_dir: Path, logs: Path,
                 pods_dir: Path, hosts: Callable[[str], list[tuple[str, list[str]]]],
                 restart_delay: float = 1.0) -> None:
        self.api = api
        self.node = node
        self.view = view
        self.topology = topology
        self.bin_dir = bin_dir
        self.logs = logs
        self.pods_dir = pods_dir
        self.hosts = hosts
        self.restart_delay = restart_delay
        self.lifecycle = _KubePods(self)
        self._pods: dict[str, _Running] = {}  # by uid
        self._nursery: trio.Nursery | None = None

    # -- following the API -------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run the node's pods until cancelled; then tear every one down."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await self._follow()
        finally:
            self._nursery = None
            # The mesh's cgroup directories once empty (another node's kubelet may still hold
            # pods there; a directory in use is left to it).
            cgroups.remove_all(self.topology.prefix)

    async def _follow(self) -> None:
        selector = f"spec.nodeName={self.node.name}"
        backoff = BACKOFF_START
        failing = False
        while True:
            try:
                items, version = await self.api.list("/api/v1/pods", fieldSelector=selector)
                self._relisted(items)
                while True:
                    async for kind, pod in self.api.watch("/api/v1/pods", version, fieldSelector=selector):
                        version = str((pod.get("metadata") or {}).get("resourceVersion") or version)
                        if kind in ("ADDED", "MODIFIED"):
                            self._observed(pod)
                        elif kind == "DELETED":
                            self._vanished(str(pod["metadata"].get("uid", "")))
                    backoff, failing = BACKOFF_START, False
            except Gone:
                log.info("pod watch expired; listing again", node=self.node.name)
            except (ApiError, ValueError, KeyError, TypeError) as exc:
                if not failing:
                    log.warning("pod list or watch failed; retrying", node=self.node.name, error=str(exc))
                failing = True
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _relisted(self, items: list[dict[str, Any]]) -> None:
        present = {str(p["metadata"].get("uid")) for p in items}
        for uid in list(self._pods):
            if uid not in present:
                self._vanished(uid)
        for pod in items:
            self._observed(pod)

    def _observed(self, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        if not uid or (pod.get("spec") or {}).get("nodeName") != self.node.name:
            return
        running = self._pods.get(uid)
        if running is not None:
            running.record.pod = pod
            running.record.labels = dict(meta.get("labels") or {})
            if meta.get("deletionTimestamp") and not running.record.deleting:
                self._delete(running, meta.get("deletionGracePeriodSeconds"))
            return
        if meta.get("deletionTimestamp"):
            assert self._nursery is not None
            self._nursery.start_soon(self._confirm_deletion, pod)
            return
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return
        self._start(pod)

    def _start(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        record = PodRecord(str(meta.get("namespace")), str(meta.get("name")), self.node, "", spec,
                           dict(meta.get("labels") or {}), uid=str(meta["uid"]), pod=pod)
        running = _Running(record)
        self._pods[record.uid] = running
        assert self._nursery is not None
        self._nursery.start_soon(self._run_pod, running)

    async def _run_pod(self, running: _Running) -> None:
        record = running.record
        try:
            with running.scope:
                # A pod of the same name (a previous uid) is still being torn down: same netns name.
                for other in list(self._pods.values()):
                    if other is not running and other.record.key == record.key:
                        await other.done.wait()
                try:
                    await self.lifecycle.run_pod(record)
                except Exception as exc:  # a bug or the machine: this pod stops, the node goes on
                    log.exception("pod failed in the kubelet", pod=f"{record.namespace}/{record.name}")
                    record.message = f"the wisp kubelet could not run this pod: {type(exc).__name__}: {exc}"
                    await self._report_failure(record)
                    # Kept (not restarted on the next event) until it is deleted.
                    await trio.sleep_forever()
        finally:
            running.done.set()
            if self._pods.get(record.uid) is running:
                del self._pods[record.uid]
        if record.deleting:
            await self._confirm_deletion(record.pod)

    async def _report_failure(self, record: PodRecord) -> None:
        path = f"/api/v1/namespaces/{record.namespace}/pods/{record.name}/status"
        with trio.move_on_after(10):
            try:
                await self.api.patch(path, {"metadata": {"uid": record.uid}, "status": {
                    "phase": "Failed", "reason": "KubeletError", "message": record.message}})
            except ApiError as exc:
                log.warning("status not written", pod=f"{record.namespace}/{record.name}", error=str(exc))

    def _delete(self, running: _Running, grace: Any) -> None:
        record = running.record
        record.deleting = True
        default = (record.spec.get("terminationGracePeriodSeconds"))
        seconds = grace if isinstance(grace, int) else default if isinstance(default, int) else 30
        record.grace = float(max(seconds, 0))
        for container in record.containers:
            container.stop_timeout = record.grace
        log.info("deleting pod", pod=f"{record.namespace}/{record.name}", grace=record.grace)
        running.scope.cancel()

    def _vanished(self, uid: str) -> None:
        running = self._pods.get(uid)
        if running is not None:
            log.info("pod gone from the API; tearing it down", pod=f"{running.record.namespace}/{running.record.name}")
            running.scope.cancel()

    async def _confirm_deletion(self, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        path = f"/api/v1/namespaces/{meta.get('namespace')}/pods/{meta.get('name')}"
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": meta.get("uid")}}
        delay = BACKOFF_START
        for _ in range(8):
            try:
                await self.api.delete(path, body=body)
                return
            except ApiError as exc:
                if exc.status in (404, 409):  # gone already, or a newer pod of that name
                    return
                log.warning("pod deletion not confirmed; retrying", pod=path, error=str(exc))
                await trio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    async def _hosts_loop(self, record: PodRecord) -> None:
        if record.host_network:
            return
        failing = False
        while True:
            try:
                await self._write_hosts(record)
                failing = False
            except OSError as exc:  # a running pod keeps its last names; the next round tries again
                if not failing:
                    log.warning("hosts file not rewritten", pod=f"{record.namespace}/{record.name}", error=str(exc))
                failing = True
            await trio.sleep(HOSTS_INTERVAL)

    async def _write_hosts(self, record: PodRecord) -> None:
        """The pod's /etc/hosts: its own name and the Services' (kube-proxy's table), if changed."""
        if record.host_network or record.net is None:
            return
        entries = [(record.ip, [record.name])]
        try:
            entries += self.hosts(record.namespace)
        except Exception as exc:  # kube-proxy's table is another component: it must not end the pod
            log.warning("hosts entries unavailable", error=str(exc))
        if entries != record.hosts:
            await trio.to_thread.run_sync(self.topology.write_hosts, record.net.netns, entries)
            record.hosts = entries

    # -- reporting -----------------------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        pods = []
        for running in sorted(self._pods.values(), key=lambda r: r.record.key):
            record = running.record
            first = next((s for s in record.states if not s.init and s.sandbox is not None), None)
            pods.append({
                "namespace": record.namespace, "name": record.name, "node": record.node.name, "ip": record.ip,
                "netns": record.net.netns if record.net else None, "phase": record.phase, "ready": record.ready,
                "message": record.message, "labels": record.labels, "uid": record.uid,
                "sandbox": first.sandbox.to_json() if first is not None else None,
                "containers": [{"name": s.name, "pid": s.supervised.pid if s.supervised else None,
                                "restarts": s.restarts} for s in record.states],
            })
        return pods


# -- helpers ----------------------------------------------------------------------------------------
def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _container_id(record: PodRecord) -> str:
    return hashlib.sha256(f"wisp-sandbox/{record.uid}".encode()).hexdigest()


def _cni_args(record: PodRecord) -> dict[str, str]:
    return {"K8S_POD_NAMESPACE": record.namespace, "K8S_POD_NAME": record.name,
            "K8S_POD_INFRA_CONTAINER_ID": _container_id(record), "K8S_POD_UID": record.uid}


def _result_ip(result: dict[str, Any]) -> str:
    for entry in result.get("ips") or []:
        address = str(entry.get("address", ""))
        if address and ":" not in address:
            return address.split("/", 1)[0]
    raise ValueError(f"the CNI result has no IPv4 address: {result!r}")


def _data(obj: dict[str, Any], *, secret: bool) -> dict[str, str]:
    data: dict[str, str] = {}
    if secret:
        for key, value in (obj.get("data") or {}).items():
            data[key] = base64.b64decode(str(value)).decode("utf-8", errors="replace")
        data.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
    else:
        data.update({k: str(v) for k, v in (obj.get("data") or {}).items()})
    return data


def _fresh_netns(netns: str) -> None:
    """`ip netns add` (after removing what a crashed run left under that name) with its loopback
    up, as the container runtime sets it up itself before the CNI chain runs."""
    if os.path.exists(os.path.join("/run/netns", netns)):
        run_command(["ip", "netns", "delete", netns], check=False)
    run_command(["ip", "netns", "add", netns])
    run_command(["ip", "-n", netns, "link", "set", "lo", "up"])


def _remove_netns(node: Node, netns: str, ip: str) -> None:
    run_command(["ip", "netns", "delete", netns], check=False)
    if ip:
        run_command(["ip", "-n", node.netns, "neigh", "flush", "to", ip], check=False)
    shutil.rmtree(os.path.join(NETNS_ETC, netns), ignore_errors=True)

