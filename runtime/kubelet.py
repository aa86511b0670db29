"""The kubelet: one pod's life from its network to its deletion, for the local runtime and Kubernetes.

One implementation (`PodLifecycle.run_pod`) runs every pod, in this order, as a node's kubelet:
its network (the pod's namespace and interface, or the node's for host-network pods), its files
(tokens, volumes), its init containers one after another to completion, then its containers
supervised under the pod's restartPolicy, each with its readiness, liveness and startup probes
(`probes.py`), its status reported as it changes, and on cancellation everything undone:
containers stopped (SIGTERM, SIGKILL after the grace period), network and files removed.
A container killed for a failed liveness or startup probe gets the pod's
terminationGracePeriodSeconds; a crash-looping one waits with kubelet's back-off
(`processes.py`). The pod's tasks (status, probes, file refreshes) live in its own nursery,
which ends before the teardown starts, so none of them acts on a pod half torn down.

What differs between the two runtimes are the seams a subclass fills in:
- `_network_up`/`_network_down`: the local runtime makes the pod's veth itself
  (runtime/topology.py) and runs `wisp-cni` with a synthetic prevResult carrying the IP it
  allocated, retrying until it succeeds; the Kubernetes kubelet runs the node's CNI conflist
  (runtime/kube/kubelet.py).
- `_files_up`/`_files_down` and `_sandbox`: the local runtime projects a waypoint's token into
  the pod's sandbox; Kubernetes materialises the pod's volumes and binds them at their mount paths.
- `_env_sources`, `_base_env` and `_report`: where ConfigMaps and Secrets come from, the variables
  every container gets, and where status goes (the operator's local API, or pods/<name>/status).
- `probing`: the local runtime probes readiness fast (1 s while ready, 0.3 s otherwise, one
  result decides) and runs no liveness or startup probes, as it always has; Kubernetes follows
  each probe's own timings and thresholds.

A container's image is mapped to a program by `images.py` (the local runtime ignores images:
its manifests run commands, from wisp's programs then the PATH, as they always have); its
variables and command line are read from the spec by `podspec.py` (Kubernetes' `$(VAR)`
expansion included). A container that
cannot start (unknown image, missing ConfigMap) stays waiting with a reason and a message: the
pod stays Pending and says why, it never hangs and never fails the other containers.

Local containers run confined as a container runtime would confine them (`sandbox.py`): a uid
of the pod's own, no capabilities, and a private view of the files without the mesh's run
directory, sockets and keys. A pod gets its service account's token projected into that view
when the control plane issued one (locally: a waypoint's, `<state>/tokens/waypoint-<ns>-<sa>`,
with the root certificate beside it), at the path it has on the machine, so its arguments stay
valid.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio

from wisp import runpaths as runtime_paths
from . import images, podspec, probes
from .operator_client import OperatorClient, OperatorError
from .processes import Exit, Supervised
from .sandbox import Sandbox, plan, pod_uid, program_paths
from .topology import Node, PodNet, Topology, netns_exec

log = structlog.get_logger("runtime.kubelet")

CNI_VERSION = "1.0.0"
RESYNC_INTERVAL = 10.0
CONFIG_ERROR = "CreateContainerConfigError"
CONFIG_RETRY_MAX = 30.0  # seconds between attempts at a container whose configuration is missing
# What container runtimes set in a pod's network namespace: an unprivileged process may bind any
# port (nginx on 80) and send ICMP echo through ping sockets.
POD_SYSCTLS = ("net.ipv4.ip_unprivileged_port_start=0", "net.ipv4.ping_group_range=0 2147483647")


@dataclass(slots=True, frozen=True)
class Probing:
    """How probes are run: each probe's own timings, or the local runtime's fast readiness."""

    spec_timing: bool = True
    liveness: bool = True
    startup: bool = True


LOCAL_PROBING = Probing(spec_timing=False, liveness=False, startup=False)
KUBERNETES_PROBING = Probing()


@dataclass(slots=True)
class ContainerState:
    """One container of a running pod, as its status reports it."""

    name: str
    image: str
    init: bool = False
    supervised: Supervised | None = None
    reason: str = "ContainerCreating"  # while waiting
    message: str = ""
    probe_ready: bool = True  # the readiness probe's verdict (True without one)
    has_startup: bool = False  # a startup probe gates the others
    startup_passed: bool = False  # in the current run
    sandbox: Sandbox | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.supervised is not None and self.supervised.running

    @property
    def started(self) -> bool:
        """Kubernetes' `started`: running, and past its startup probe if it has one."""
        return self.running and (not self.has_startup or self.startup_passed)

    @property
    def ready(self) -> bool:
        return self.running and self.started and self.probe_ready

    @property
    def restarts(self) -> int:
        return self.supervised.restarts if self.supervised is not None else 0


@dataclass(slots=True)
class PodRecord:
    """What the runtime knows of one running pod (shown by `wisp get` and the status file)."""

    namespace: str
    name: str
    node: Node
    ip: str
    spec: dict[str, Any]
    labels: dict[str, str]
    phase: str = "Pending"
    ready: bool = False
    net: PodNet | None = None
    containers: list[Supervised] = field(default_factory=list)
    cni_attempts: int = 0
    message: str = ""
    hosts: list | None = None  # the /etc/hosts entries last written for it
    sandbox: Sandbox | None = None  # what its containers (and `wisp exec`) are confined to
    uid: str = ""  # the API object's uid (Kubernetes); "" locally
    pod: dict[str, Any] = field(default_factory=dict)  # the whole object, as last seen
    states: list[ContainerState] = field(default_factory=list)  # init containers first
    started_at: float | None = None
    initialized: bool = False
    grace: float | None = None  # seconds containers get between SIGTERM and SIGKILL at the end
    deleting: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    @property
    def host_network(self) -> bool:
        return bool(self.spec.get("hostNetwork"))

    @property
    def app_states(self) -> list[ContainerState]:
        return [s for s in self.states if not s.init]


def pod_phase(states: list[ContainerState], *, network_ready: bool, initialized: bool) -> str:
    """Kubernetes' phase of a pod from its containers: Pending until every container has run,
    Succeeded or Failed once all have ended for good, Running otherwise."""
    apps = [s for s in states if not s.init]
    # An init container ends for good with a failure only under restartPolicy Never.
    if any(s.init and s.supervised and s.supervised.terminated and s.supervised.terminated.code for s in states):
        return "Failed"
    if not network_ready or not initialized or not apps:
        return "Pending"
    if any(s.supervised is None or (s.supervised.started_at is None) for s in apps):
        return "Pending"
    ended = [s.supervised.terminated for s in apps if s.supervised.terminated is not None]
    if len(ended) == len(apps):
        return "Succeeded" if all(e.code == 0 for e in ended) else "Failed"
    return "Running"


class PodLifecycle:
    """A pod's life (see the module docstring); subclasses fill in the seams."""

    probing: Probing = KUBERNETES_PROBING
    inherit_env = True  # containers get the runtime's environment under their own
    status_interval = 0.25

    def __init__(self, *, bin_dir: Path, logs: Path, restart_delay: float = 1.0,
                 max_restart_delay: float | None = None) -> None:
        self.bin_dir = bin_dir
        self.logs = logs
        self.restart_delay = restart_delay
        self.max_restart_delay = max_restart_delay

    # -- the sequence ------------------------------------------------------------------------------
    async def run_pod(self, record: PodRecord, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Bring the pod up and keep it running until cancelled, then tear it down."""
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._status_loop, record)
                await self._network_up(record)
                await self._files_up(record, nursery)
                record.started_at = record.started_at or time.time()
                await self._run_init_containers(record, nursery)
                record.initialized = True
                for container in record.spec.get("containers") or []:
                    await self._start_container(record, container, nursery, init=False)
        finally:
            with trio.CancelScope(shield=True):
                await self._teardown(record)

    async def _run_init_containers(self, record: PodRecord, nursery: trio.Nursery) -> None:
        for container in record.spec.get("initContainers") or []:
            state = await self._start_container(record, container, nursery, init=True)
            # Until it could start (a configuration error is retried), then until it succeeded;
            # one that failed under restartPolicy Never has failed the pod and nothing follows.
            while state.supervised is None or state.supervised.terminated is None \
                    or state.supervised.terminated.code != 0:
                if state.supervised is not None and state.supervised.terminated is not None:
                    await trio.sleep_forever()
                await trio.sleep(0.1)

    async def _start_container(self, record: PodRecord, container: dict[str, Any], nursery: trio.Nursery, *,
                               init: bool) -> ContainerState:
        state = ContainerState(str(container.get("name", "app")), str(container.get("image") or ""), init=init)
        record.states.append(state)
        if not await self._launch(record, container, state, nursery) and state.reason == CONFIG_ERROR:
            # As kubelet retries on its next sync: the ConfigMap or Secret may come.
            nursery.start_soon(self._retry_launch, record, container, state, nursery)
        return state

    async def _retry_launch(self, record: PodRecord, container: dict[str, Any], state: ContainerState,
                            nursery: trio.Nursery) -> None:
        delay = self.restart_delay
        while True:
            await trio.sleep(delay)
            delay = min(delay * 2, CONFIG_RETRY_MAX)
            if await self._launch(record, container, state, nursery):
                record.message = ""
                return

    async def _launch(self, record: PodRecord, container: dict[str, Any], state: ContainerState,
                      nursery: trio.Nursery) -> bool:
        """Start the container's process under its restart policy; False (and the container
        waiting with the reason) when it cannot."""
        name = state.name
        try:
            sources = await self._env_sources(record, podspec.env_sources(container))
            own = podspec.container_env(container, record.pod or {"metadata": {"name": record.name,
                                                                                "namespace": record.namespace},
                                                                   "spec": record.spec},
                                        host_ip=record.node.ip, pod_ip=record.ip, sources=sources,
                                        services=self._service_env())
            command, args = podspec.command_line(container, own)
            argv = images.resolve(self._image(state), command, args, self.bin_dir)
            state.sandbox = self._sandbox(record, container)
        except images.ImageError as exc:
            self._waiting(record, state, exc.reason, exc.message)
            return False
        except (podspec.ContainerConfigError, probes.ProbeError) as exc:
            self._waiting(record, state, CONFIG_ERROR, str(exc))
            return False
        image = images.lookup(self._image(state))
        state.env = {**self._base_env(record, image), **own}
        policy = str(record.spec.get("restartPolicy") or "Always")
        if state.init:
            policy = "Never" if policy == "Never" else "OnFailure"
        supervised = Supervised(
            name=f"{record.namespace}/{record.name}/{name}", netns=record.net.netns, argv=argv,
            log_path=self.logs / f"{record.namespace}_{record.name}_{name}.log", env=state.env,
            restart_delay=self.restart_delay, max_restart_delay=self.max_restart_delay,
            sandbox=state.sandbox, restart_policy=policy, inherit_env=self.inherit_env,
            cgroups=self._cgroups(record, state),
        )
        state.supervised = await nursery.start(supervised.run)
        state.reason, state.message = "", ""
        record.containers.append(supervised)
        if not state.init:
            await self._start_probes(record, state, container, nursery)
        return True

    def _waiting(self, record: PodRecord, state: ContainerState, reason: str, message: str) -> None:
        if (state.reason, state.message) != (reason, message):
            log.warning("container cannot start", pod=f"{record.namespace}/{record.name}", container=state.name,
                        reason=reason, message=message)
        state.reason, state.message = reason, message
        record.message = f"container {state.name}: {message}"

    # -- probes ------------------------------------------------------------------------------------
    async def _start_probes(self, record: PodRecord, state: ContainerState, container: dict[str, Any],
                            nursery: trio.Nursery) -> None:
        kinds = [("readiness", container.get("readinessProbe"))]
        if self.probing.liveness:
            kinds.append(("liveness", container.get("livenessProbe")))
        startup = container.get("startupProbe") if self.probing.startup else None
        kinds.append(("startup", startup))
        state.has_startup = startup is not None
        for kind, spec in kinds:
            if spec is None:
                continue
            try:
                probe = probes.parse_probe(spec, container)
            except probes.ProbeError as exc:
                # Kubernetes' API refuses such a probe; a local manifest may have one. It fails.
                log.warning("probe cannot run", pod=f"{record.namespace}/{record.name}", container=state.name,
                            kind=kind, error=str(exc))
                probe = None
            if kind == "readiness":
                state.probe_ready = False
            nursery.start_soon(self._probe_loop, record, state, kind, probe)

    async def _probe_loop(self, record: PodRecord, state: ContainerState, kind: str,
                          probe: probes.Probe | None) -> None:
        assert state.supervised is not None
        supervised = state.supervised
        tracker = probes.Tracker.liveness(probe) if probe and kind == "liveness" else (
            probes.Tracker.readiness(probe) if probe else None)
        run = None
        next_at = 0.0
        while True:
            if not supervised.running:
                if kind == "readiness":
                    state.probe_ready = False
                if supervised.terminated is not None:  # ended for good: nothing left to probe
                    return
                await trio.sleep(0.1)
                continue
            if supervised.started_at != run:
                run = supervised.started_at
                state.startup_passed = False if kind == "startup" else state.startup_passed
                if tracker is not None:
                    tracker.reset(kind == "liveness")
                delay = probe.initial_delay if probe is not None and self.probing.spec_timing else 0.0
                next_at = trio.current_time() + delay
            gated = kind != "startup" and not state.started
            done = kind == "startup" and state.startup_passed
            if gated or done or tracker is None:
                # Startup gates the others; a probe that cannot run never passes.
                await trio.sleep(0.2 if gated else 1.0)
                continue
            await trio.sleep_until(next_at)
            if supervised.started_at != run or not supervised.running:
                continue
            target = probes.ProbeTarget(record.node.netns, record.ip, record.net.netns if record.net else "",
                                        state.sandbox, state.env)
            ok = await probes.check(probe, target)
            if not self.probing.spec_timing:
                tracker.passed = ok
            else:
                tracker.record(ok)
            if kind == "readiness":
                state.probe_ready = tracker.passed
            elif kind == "startup":
                if tracker.passed:
                    state.startup_passed = True
                elif tracker.failures >= probe.failure_threshold:
                    log.warning("startup probe failed; restarting the container", container=supervised.name)
                    await self._restart(record, supervised)
            elif not tracker.passed:
                log.warning("liveness probe failed; restarting the container", container=supervised.name,
                            failures=tracker.failures)
                await self._restart(record, supervised)
            if self.probing.spec_timing:
                next_at = trio.current_time() + probe.period
            else:
                next_at = trio.current_time() + (1.0 if ok else 0.3)

    async def _restart(self, record: PodRecord, supervised: Supervised) -> None:
        """Kill a container for a failed probe: SIGTERM, SIGKILL after the pod's grace period."""
        grace = record.spec.get("terminationGracePeriodSeconds")
        # Passed to this stop only: `stop_timeout` is the pod's deletion grace (or `wisp down`'s),
        # which a deletion arriving while the probe's kill waits must keep.
        valid = isinstance(grace, int) and not isinstance(grace, bool) and grace >= 0
        await supervised.restart(float(grace) if valid else None)

    # -- status ------------------------------------------------------------------------------------
    def refresh(self, record: PodRecord) -> None:
        """Phase and readiness from the containers as they are now."""
        network_ready = record.net is not None and record.started_at is not None
        record.phase = pod_phase(record.states, network_ready=network_ready, initialized=record.initialized)
        apps = record.app_states
        record.ready = (record.phase == "Running" and bool(apps) and len(apps) == len(record.spec.get("containers") or [])
                        and all(s.ready for s in apps))

    async def _status_loop(self, record: PodRecord) -> None:
        while True:
            self.refresh(record)
            await self._report(record)
            await trio.sleep(self.status_interval)

    # -- teardown ----------------------------------------------------------------------------------
    async def _teardown(self, record: PodRecord) -> None:
        if record.grace is not None:
            for container in record.containers:
                container.stop_timeout = record.grace
        async with trio.open_nursery() as nursery:
            for container in record.containers:
                nursery.start_soon(container.stop)
        # Directory trees and cgroups: file work, off the event loop the node's other pods share.
        await trio.to_thread.run_sync(self._files_down, record)
        await self._network_down(record)
        record.phase = "Terminated"
        record.ready = False
        await self._forget(record)

    # -- seams ---------------------------------------------------------------------------------------
    async def _network_up(self, record: PodRecord) -> None:
        raise NotImplementedError

    async def _network_down(self, record: PodRecord) -> None:
        raise NotImplementedError

    async def _files_up(self, record: PodRecord, nursery: trio.Nursery) -> None:
        """Make the pod's files; a task that keeps them fresh goes into `nursery`."""

    def _files_down(self, record: PodRecord) -> None:
        """Remove the pod's files; runs on a worker thread."""

    def _sandbox(self, record: PodRecord, container: dict[str, Any]) -> Sandbox:
        raise NotImplementedError

    def _image(self, state: ContainerState) -> str:
        """The image whose programs the container runs (images.py)."""
        return state.image

    def _cgroups(self, record: PodRecord, state: ContainerState) -> tuple[str, ...]:
        """The cgroup directories the container's processes go into."""
        return ()

    async def _env_sources(self, record: PodRecord, wanted: set[tuple[str, str]]
                           ) -> dict[tuple[str, str], dict[str, str] | None]:
        return {key: None for key in wanted}

    def _service_env(self) -> dict[str, str]:
        return {}

    def _base_env(self, record: PodRecord, image: images.Image) -> dict[str, str]:
        return {"HOSTNAME": record.name, "HOME": "/",
                "PATH": images.search_path(image, self.bin_dir, os.environ.get("PATH", "/usr/bin:/bin"))}

    async def _report(self, record: PodRecord) -> None:
        pass

    async def _forget(self, record: PodRecord) -> None:
        pass


class Kubelet(PodLifecycle):
    """The local runtime's kubelet: pods of the manifests directory, status to the operator."""

    probing = LOCAL_PROBING

    def __init__(self, topology: Topology, operator: OperatorClient, *, bin_dir: Path, logs: Path,
                 cni_socket, restart_delay: float = 1.0, state_dir: Path | None = None) -> None:
        super().__init__(bin_dir=bin_dir, logs=logs, restart_delay=restart_delay)
        self.topology = topology
        self.operator = operator
        self.cni_socket = cni_socket
        self.state_dir = state_dir
        self.uids: set[int] = set()  # of the pods running now
        self._reported: dict[tuple[str, str], tuple[bool, float]] = {}

    async def _network_up(self, record: PodRecord) -> None:
        record.net = await trio.to_thread.run_sync(
            self.topology.add_pod, record.node, record.namespace, record.name, record.ip)
        await trio.to_thread.run_sync(lambda: netns_exec(record.net.netns, ["sysctl", "-qw", *POD_SYSCTLS]))
        record.sandbox = self._pod_sandbox(record)
        await self._send(record)
        await self._cni_add(record)

    def _image(self, state: ContainerState) -> str:
        # Local manifests run commands; their images (a placeholder such as local waypoints'
        # "local", or the project's image) are not looked at: wisp's programs, then the PATH.
        return ""

    def _sandbox(self, record: PodRecord, container: dict[str, Any]) -> Sandbox:
        sandbox = record.sandbox
        workdir = container.get("workingDir")
        if sandbox is not None and isinstance(workdir, str) and workdir.startswith("/"):
            sandbox = dataclasses.replace(sandbox, workdir=workdir)
        return sandbox

    def _base_env(self, record: PodRecord, image: images.Image) -> dict[str, str]:
        return {**super()._base_env(record, image), "POD_NAME": record.name, "POD_NAMESPACE": record.namespace,
                "POD_IP": record.ip}

    def _pod_sandbox(self, record: PodRecord) -> Sandbox:
        uid = pod_uid(self.topology.prefix, record.namespace, record.name, self.uids)
        self.uids.add(uid)
        project = []
        if self.state_dir is not None:
            account = str(record.spec.get("serviceAccountName") or "default")
            token = self.state_dir / "tokens" / f"waypoint-{record.namespace}-{account}"
            if token.is_file():
                roots = self.state_dir / "root-cert.pem"
                project = [(str(token), str(token)), (str(roots), str(roots))]
        return plan(uid, uid, run_root=str(runtime_paths.RUN_ROOT), needed=program_paths(self.bin_dir),
                    project=project)

    async def _report(self, record: PodRecord) -> None:
        # Report changes at once; otherwise now and then, which also brings a restarted
        # control plane up to date.
        if record.net is None or record.started_at is None:
            return
        last = self._reported.get(record.key)
        now = trio.current_time()
        if last is None or last[0] != record.ready or now - last[1] >= RESYNC_INTERVAL:
            self._reported[record.key] = (record.ready, now)
            await self._send(record)

    async def _send(self, record: PodRecord) -> None:
        try:
            await self.operator.set_pod_runtime(record.namespace, record.name, node=record.node.name,
                                                pod_ip=record.ip, phase=record.phase, ready=record.ready)
        except OperatorError as exc:
            # The control plane may not have read the manifest yet; the next report catches up.
            log.debug("pod state not reported yet", pod=f"{record.namespace}/{record.name}", error=str(exc))

    async def _cni_add(self, record: PodRecord) -> None:
        """Run the plugin chain until it succeeds, as kubelet retries a failed sandbox."""
        delay = 0.2
        while True:
            record.cni_attempts += 1
            ok, detail = await self._cni(record, "ADD")
            if ok:
                record.message = ""
                return
            record.message = f"CNI ADD failed: {detail}"
            log.warning("CNI ADD failed; retrying", pod=f"{record.namespace}/{record.name}",
                        attempt=record.cni_attempts, detail=detail)
            await self._send(record)
            await trio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _cni(self, record: PodRecord, command: str) -> tuple[bool, str]:
        assert record.net is not None
        container_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{record.net.netns}").hex
        config = {
            "cniVersion": CNI_VERSION, "name": "wisp", "type": "wisp-cni",
            "agent_socket": str(self.cni_socket(record.node.name)),
            "prevResult": {
                "cniVersion": CNI_VERSION,
                "interfaces": [{"name": "eth0", "sandbox": record.net.netns_path}],
                "ips": [{"address": f"{record.ip}/{record.node.pod_network.prefixlen}",
                         "gateway": record.node.gateway, "interface": 0}],
            },
        }
        env = {
            **os.environ, "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
            "CNI_NETNS": record.net.netns_path, "CNI_IFNAME": "eth0", "CNI_PATH": str(self.bin_dir),
            "CNI_ARGS": (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={record.namespace};K8S_POD_NAME={record.name};"
                         f"K8S_POD_INFRA_CONTAINER_ID={container_id}"),
        }
        try:
            result = await trio.run_process([str(self.bin_dir / "wisp-cni")], stdin=json.dumps(config).encode(),
                                            capture_stdout=True, capture_stderr=True, env=env, check=False)
        except OSError as exc:
            return False, f"cannot run wisp-cni: {exc}"
        if result.returncode == 0:
            return True, ""
        try:
            error = json.loads(result.stdout)
            return False, f"{error.get('msg')} ({error.get('details', '')}) code {error.get('code')}"
        except ValueError:
            return False, (result.stdout or result.stderr).decode(errors="replace").strip()[:300]

    async def _network_down(self, record: PodRecord) -> None:
        if record.sandbox is not None:
            self.uids.discard(record.sandbox.uid)
        if record.net is not None:
            ok, detail = await self._cni(record, "DEL")
            if not ok:
                log.warning("CNI DEL failed", pod=f"{record.namespace}/{record.name}", detail=detail)
            await trio.to_thread.run_sync(self.topology.remove_pod, record.net)

    async def _forget(self, record: PodRecord) -> None:
        self._reported.pop(record.key, None)
        try:
            await self.operator.clear_pod_runtime(record.namespace, record.name)
        except OperatorError:
            pass


def exit_state(ended: Exit) -> dict[str, Any]:
    """A terminated container state as Kubernetes writes it."""
    state: dict[str, Any] = {"exitCode": ended.code, "reason": "Completed" if ended.code == 0 else "Error",
                             "startedAt": rfc3339(ended.started), "finishedAt": rfc3339(ended.finished)}
    if ended.signal:
        state["signal"] = ended.signal
    return state


def rfc3339(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
