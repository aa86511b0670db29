"""The kubelet's part of the local runtime: one pod's life from sandbox to deletion.

As on a node: create the pod's network namespace and interface, report the pod to the control
plane, run the real CNI plugin chain (`wisp-cni`, with the CNI environment and a chained config
whose prevResult carries the IP) and retry until it succeeds, then start the containers, probe
readiness from the node's namespace, and on deletion undo it all.

Containers run confined as a container runtime would confine them (`sandbox.py`): a uid of the
pod's own, no capabilities, and a private view of the files without the mesh's run directory,
sockets and keys. A pod gets its service account's token projected into that view when the
control plane issued one (locally: a waypoint's, `<state>/tokens/waypoint-<ns>-<sa>`, with the
root certificate beside it), at the path it has on the machine, so its arguments stay valid.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio

from wisp import runpaths as runtime_paths
from . import probes
from .operator_client import OperatorClient, OperatorError
from .processes import Supervised
from .sandbox import Sandbox, plan, pod_uid, program_paths
from .topology import Node, PodNet, Topology, netns_exec

log = structlog.get_logger("runtime.kubelet")

CNI_VERSION = "1.0.0"
RESYNC_INTERVAL = 10.0
# What container runtimes set in a pod's network namespace: an unprivileged process may bind any
# port (nginx on 80) and send ICMP echo through ping sockets.
POD_SYSCTLS = ("net.ipv4.ip_unprivileged_port_start=0", "net.ipv4.ping_group_range=0 2147483647")


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

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name


class Kubelet:
    def __init__(self, topology: Topology, operator: OperatorClient, *, bin_dir: Path, logs: Path,
                 cni_socket, restart_delay: float = 1.0, state_dir: Path | None = None) -> None:
        self.topology = topology
        self.operator = operator
        self.bin_dir = bin_dir
        self.logs = logs
        self.cni_socket = cni_socket
        self.restart_delay = restart_delay
        self.state_dir = state_dir
        self.uids: set[int] = set()  # of the pods running now

    async def run_pod(self, record: PodRecord, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Bring the pod up and keep it running until cancelled, then tear it down."""
        task_status.started()
        try:
            record.net = await trio.to_thread.run_sync(
                self.topology.add_pod, record.node, record.namespace, record.name, record.ip)
            await trio.to_thread.run_sync(
                lambda: netns_exec(record.net.netns, ["sysctl", "-qw", *POD_SYSCTLS]))
            record.sandbox = self._sandbox(record)
            await self._report(record)
            await self._cni_add(record)
            async with trio.open_nursery() as nursery:
                for container in record.spec.get("containers") or []:
                    supervised = self._container(record, container)
                    if supervised is not None:
                        record.containers.append(await nursery.start(supervised.run))
                record.phase = "Running"
                nursery.start_soon(self._readiness, record)
        finally:
            with trio.CancelScope(shield=True):
                await self._teardown(record)

    def _container(self, record: PodRecord, container: dict[str, Any]) -> Supervised | None:
        argv = [str(a) for a in (container.get("command") or [])] + [str(a) for a in (container.get("args") or [])]
        if not argv:
            record.message = f"container {container.get('name')} has no command; the local runtime runs commands, not images"
            log.warning("container without a command", pod=f"{record.namespace}/{record.name}",
                        container=container.get("name"))
            return None
        env = {"HOSTNAME": record.name, "POD_NAME": record.name, "POD_NAMESPACE": record.namespace,
               "POD_IP": record.ip, "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               "HOME": "/"}
        for item in container.get("env") or []:
            if isinstance(item, dict) and isinstance(item.get("name"), str) and "value" in item:
                env[item["name"]] = str(item["value"])
        name = str(container.get("name", "app"))
        sandbox = record.sandbox
        workdir = container.get("workingDir")
        if sandbox is not None and isinstance(workdir, str) and workdir.startswith("/"):
            sandbox = dataclasses.replace(sandbox, workdir=workdir)
        return Supervised(
            name=f"{record.namespace}/{record.name}/{name}", netns=record.net.netns, argv=argv,
            log_path=self.logs / f"{record.namespace}_{record.name}_{name}.log", env=env,
            restart_delay=self.restart_delay, sandbox=sandbox,
        )

    def _sandbox(self, record: PodRecord) -> Sandbox:
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
            await self._report(record)
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

    async def _readiness(self, record: PodRecord) -> None:
        probe = _readiness_probe(record.spec)
        last_report = -RESYNC_INTERVAL
        while True:
            alive = all(c.running for c in record.containers)
            if probe is None:
                ready = alive
            elif probe[0] == "tcp":
                ready = alive and await probes.tcp_probe(record.node.netns, (record.ip, probe[1]))
            else:
                status, _ = await probes.http_get(record.node.netns, (record.ip, probe[1]), probe[2])
                ready = alive and 200 <= status < 400
            # Report changes at once; otherwise now and then, which also brings a restarted
            # control plane up to date.
            now = trio.current_time()
            if ready != record.ready or now - last_report >= RESYNC_INTERVAL:
                record.ready = ready
                await self._report(record)
                last_report = now
            await trio.sleep(1.0 if ready else 0.3)

    async def _teardown(self, record: PodRecord) -> None:
        for container in record.containers:
            await container.stop()
        if record.sandbox is not None:
            self.uids.discard(record.sandbox.uid)
        if record.net is not None:
            ok, detail = await self._cni(record, "DEL")
            if not ok:
                log.warning("CNI DEL failed", pod=f"{record.namespace}/{record.name}", detail=detail)
            await trio.to_thread.run_sync(self.topology.remove_pod, record.net)
        try:
            await self.operator.clear_pod_runtime(record.namespace, record.name)
        except OperatorError:
            pass
        record.phase = "Terminated"
        record.ready = False


def _readiness_probe(spec: dict[str, Any]) -> tuple[str, int, str] | None:
    for container in spec.get("containers") or []:
        probe = container.get("readinessProbe")
        if not isinstance(probe, dict):
            continue
        if isinstance(probe.get("tcpSocket"), dict) and isinstance(probe["tcpSocket"].get("port"), int):
            return "tcp", probe["tcpSocket"]["port"], ""
        http = probe.get("httpGet")
        if isinstance(http, dict) and isinstance(http.get("port"), int):
            return "http", http["port"], str(http.get("path", "/"))
    return None

