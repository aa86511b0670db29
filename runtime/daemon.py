"""The local runtime's daemon: builds the network, runs the mesh's processes and the pods.

`wisp up` starts it in the background and watches `status.json`; `wisp down` sends SIGTERM, on
which it stops every pod and process and removes every namespace it made.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import structlog
import trio

from wisp import log as wisp_log

from . import cgroups, probes
from .kubelet import Kubelet, PodRecord
from .manifests import (
    desired_pods,
    load_directory,
    resolve_target_port,
    selects,
    services,
)
from .operator_client import OperatorClient, OperatorError
from wisp.runpaths import RuntimePaths
from .processes import Supervised
from .rollout import Rollouts
from .topology import CONTROL_PLANE_IP, SERVICE_HOOKS, Node, Topology, service_rules

log = structlog.get_logger("runtime")

ZTUNNEL_READY_PORT = 15021
# How long a ztunnel being replaced serves its established connections (Istio: the DaemonSet's
# terminationGracePeriodSeconds, 30 s by default).
ZTUNNEL_DRAIN_SECONDS = 30.0


class Runtime:
    def __init__(self, prefix: str, node_count: int, *, restart_delay: float = 1.0, ztunnel_workers: int = 1,
                 ztunnel_drain_seconds: float = ZTUNNEL_DRAIN_SECONDS) -> None:
        self.paths = RuntimePaths(prefix)
        self.topology = Topology(prefix)
        self.node_count = node_count
        self.ztunnel_workers = ztunnel_workers
        self.bin_dir = Path(sys.executable).parent
        self.operator = OperatorClient(self.paths)
        self.restart_delay = restart_delay
        self.nodes: list[Node] = []
        self.components: dict[str, Supervised] = {}
        self.ztunnel_drain_seconds = ztunnel_drain_seconds
        self.rollouts = Rollouts(self.paths, self.components, lambda: self.nodes, ztunnel_drain_seconds)
        self.pods: dict[tuple[str, str], PodRecord] = {}
        self._pod_scopes: dict[tuple[str, str], trio.CancelScope] = {}
        self.phase = "starting"
        self.error = ""
        self._manifest_digest = ""
        self._objects: list[dict[str, Any]] = []
        self._last_rules: str | None = None
        self._next_ip: dict[str, int] = {}
        self.kubelet = Kubelet(self.topology, self.operator, bin_dir=self.bin_dir, logs=self.paths.logs,
                               cni_socket=self.paths.cni_socket, restart_delay=restart_delay,
                               state_dir=self.paths.state)

    # -- the whole life ------------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_status_loop)
                try:
                    await self._bring_up(nursery)
                except Exception as exc:
                    self.phase, self.error = "failed", str(exc)
                    log.exception("mesh failed to start")
                    self._write_status()
                    nursery.cancel_scope.cancel()
                    return
                nursery.start_soon(self.rollouts.serve)
                await self._sync_forever(nursery)
        finally:
            with trio.CancelScope(shield=True):
                await self._tear_down()

    async def _bring_up(self, nursery: trio.Nursery) -> None:
        self.nodes = await trio.to_thread.run_sync(self.topology.create, self.node_count)
        for node in self.nodes:
            await trio.to_thread.run_sync(self.topology.set_service_rules, node, SERVICE_HOOKS)
            self.paths.node_dir(node.name).mkdir(parents=True, exist_ok=True)
        self.paths.state.mkdir(parents=True, exist_ok=True)
        node_args = [arg for node in self.nodes for arg in ("--node", node.name)]
        await self._start(nursery, "operator", self.topology.switch, [
            str(self.bin_dir / "wisp-operator"), "--manifests", str(self.paths.manifests),
            "--state-dir", str(self.paths.state), "--listen", f"{CONTROL_PLANE_IP}:15012",
            "--advertise", CONTROL_PLANE_IP, "--local-socket", str(self.paths.operator_socket), *node_args,
        ])
        await self._wait("the control plane", self.operator.ready, 30)
        for node in self.nodes:
            common = ["--node", node.name, "--control-plane", f"{CONTROL_PLANE_IP}:15012",
                      "--root-cert", str(self.paths.root_cert)]
            await self._start(nursery, f"node-agent-{node.name}", node.netns, [
                str(self.bin_dir / "wisp-node-agent"), *common, "--prefix", self.topology.prefix,
                "--zds-socket", str(self.paths.zds_socket(node.name)),
                "--cni-socket", str(self.paths.cni_socket(node.name)),
                "--token-file", str(self.paths.token(f"node-agent-{node.name}")),
                # ztunnel has no DNS proxy on 15053 yet; capturing DNS would break it.
                "--no-dns-capture",
            ])
            await self._start(nursery, f"ztunnel-{node.name}", node.netns, [
                str(self.bin_dir / "wisp-ztunnel"), *common,
                "--zds-socket", str(self.paths.zds_socket(node.name)),
                "--token-file", str(self.paths.token(f"ztunnel-{node.name}")),
                "--workers", str(self.ztunnel_workers),
                # A rollout restart starts a second ztunnel beside this one (rollout.py).
                "--replace", "--drain-seconds", f"{self.ztunnel_drain_seconds:g}",
            ])
        for node in self.nodes:
            await self._wait(f"ztunnel on {node.name}", lambda node=node: self._ztunnel_ready(node), 60)
        await self.sync(nursery)
        await self._wait("the pods", self._pods_ready, 120)
        await self._wait("the configuration to reach every ztunnel", self._config_settled, 60)
        self.phase = "ready"
        log.info("mesh ready", nodes=len(self.nodes), pods=len(self.pods))

    async def _start(self, nursery: trio.Nursery, name: str, netns: str, argv: list[str]) -> None:
        supervised = Supervised(name, netns, argv, self.paths.logs / f"{name}.log",
                                restart_delay=self.restart_delay)
        self.components[name] = await nursery.start(supervised.run)

    async def _wait(self, what: str, check, timeout: float) -> None:
        deadline = trio.current_time() + timeout
        while not await check():
            if trio.current_time() > deadline:
                raise RuntimeError(f"{what} not ready after {timeout:g} s; see logs in {self.paths.logs}")
            await trio.sleep(0.2)

    async def _ztunnel_ready(self, node: Node) -> bool:
        status, _ = await probes.http_get(node.netns, (node.ip, ZTUNNEL_READY_PORT), "/healthz/ready", timeout=1)
        return status == 200

    async def _pods_ready(self) -> bool:
        # Service rules and each pod's /etc/hosts follow the pods as they come up, so both are
        # complete by the time the mesh says it is ready.
        await self._sync_services()
        return all(p.ready and p.hosts is not None for p in self.pods.values())

    async def _config_settled(self) -> bool:
        """The control plane sees every pod ready and every ztunnel acknowledged its latest
        config: only then does traffic through services find its endpoints everywhere."""
        for _ in range(2):  # twice, so a reconcile already under way is seen through
            try:
                listing, subscribers = await self.operator.objects(), await self.operator.subscribers()
            except OperatorError:
                return False
            pods = [o for o in listing["objects"] if o.get("kind") == "Pod"]
            if not all(_ready(pod) for pod in pods):
                return False
            # Every ztunnel process subscribes on its own: worker i of a node as ztunnel-<node>-w<i>.
            # Ids are per caller, so the node counts too: another node's ztunnel may use any id.
            current = {(s["id"], s["node"]) for s in subscribers["subscribers"] if s["role"] == "ztunnel"
                       and s["connected"] and s["acked_version"] == subscribers["version"]}
            if not self._ztunnel_subscribers() <= current:
                return False
            await trio.sleep(0.2)
        return True

    def _ztunnel_subscribers(self) -> set[tuple[str, str]]:
        return {(f"ztunnel-{node.name}-w{index}" if index else f"ztunnel-{node.name}", node.name)
                for node in self.nodes for index in range(self.ztunnel_workers)}

    # -- keeping pods and services in line with the manifests --------------------------------------
    async def _sync_forever(self, nursery: trio.Nursery) -> None:
        while True:
            await trio.sleep(0.5)
            digest = _digest(self.paths.manifests)
            if digest != self._manifest_digest:
                await self.sync(nursery)
            else:
                await self._sync_services()

    async def sync(self, nursery: trio.Nursery) -> None:
        self._manifest_digest = _digest(self.paths.manifests)
        objects = await trio.to_thread.run_sync(load_directory, self.paths.manifests)
        wanted = {}
        for pod in desired_pods(objects):
            meta = pod["metadata"]
            wanted[(meta["namespace"], meta["name"])] = pod
        for key in list(self.pods):
            if key not in wanted:
                self._pod_scopes.pop(key).cancel()
                del self.pods[key]
        for key, pod in wanted.items():
            if key not in self.pods:
                record = PodRecord(key[0], key[1], self._schedule(pod), "", pod.get("spec") or {},
                                   dict(pod["metadata"].get("labels") or {}))
                record.ip = self._allocate_ip(record.node)
                self.pods[key] = record
                nursery.start_soon(self._run_pod, record)
        self._objects = objects
        await self._sync_services()

    async def _run_pod(self, record: PodRecord) -> None:
        with trio.CancelScope() as scope:
            self._pod_scopes[record.key] = scope
            await self.kubelet.run_pod(record)

    def _schedule(self, pod: dict[str, Any]) -> Node:
        wanted = (pod.get("spec") or {}).get("nodeName")
        for node in self.nodes:
            if node.name == wanted:
                return node
        # Spread: the node with the fewest pods, first node on ties.
        load = {node.name: 0 for node in self.nodes}
        for record in self.pods.values():
            load[record.node.name] += 1
        return min(self.nodes, key=lambda n: (load[n.name], n.index))

    def _allocate_ip(self, node: Node) -> str:
        """The next free address after the last one given out on this node, as host-local IPAM
        does: an address is not reused right after its pod died, while other pods on the bridge
        may still cache the old interface's MAC for it."""
        used = {r.ip for r in self.pods.values() if r.node == node}
        hosts = [str(h) for h in node.pod_network.hosts()][9:]
        start = self._next_ip.get(node.name, 0)
        for step in range(len(hosts)):
            index = (start + step) % len(hosts)
            if hosts[index] not in used:
                self._next_ip[node.name] = index + 1
                return hosts[index]
        raise RuntimeError(f"node {node.name} has no free pod address")

    async def _sync_services(self) -> None:
        specs = services(self._objects)
        rules, hosts = [], []
        for svc in specs:
            if not svc.cluster_ip:
                continue
            hosts.append((svc.namespace, svc.cluster_ip, svc.hostnames, svc.name))
            for port in svc.ports:
                endpoints = []
                for record in self.pods.values():
                    if record.namespace == svc.namespace and record.ready and selects(svc.selector, record.labels):
                        target = resolve_target_port({"spec": record.spec}, port.target)
                        if target is not None:
                            endpoints.append((record.ip, target))
                rules.append((svc.cluster_ip, port.port, sorted(endpoints)))
        text = service_rules(rules)
        if text != self._last_rules:
            for node in self.nodes:
                await trio.to_thread.run_sync(self.topology.set_service_rules, node, text)
            self._last_rules = text
        for record in self.pods.values():
            if record.net is None:
                continue
            entries = [(record.ip, [record.name])]
            for namespace, vip, names, short in hosts:
                entries.append((vip, names + ([short] if namespace == record.namespace else [])))
            if entries != record.hosts:
                await trio.to_thread.run_sync(self.topology.write_hosts, record.net.netns, entries)
                record.hosts = entries

    # -- status and teardown ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "phase": self.phase, "error": self.error, "prefix": self.topology.prefix, "pid": os.getpid(),
            "updated": time.time(),
            "nodes": [{"name": n.name, "netns": n.netns, "ip": n.ip, "pod_network": str(n.pod_network)}
                      for n in self.nodes],
            "components": {name: {"pid": c.pid, "running": c.running, "restarts": c.restarts,
                                  "netns": c.netns, "log": str(c.log_path)}
                           for name, c in self.components.items()},
            "rollouts": self.rollouts.status(),
            "pods": [{"namespace": r.namespace, "name": r.name, "node": r.node.name, "ip": r.ip,
                      "netns": r.net.netns if r.net else None, "phase": r.phase, "ready": r.ready,
                      "message": r.message, "labels": r.labels,
                      "sandbox": r.sandbox.to_json() if r.sandbox else None,
                      "containers": [{"name": c.name, "pid": c.pid, "restarts": c.restarts} for c in r.containers]}
                     for r in sorted(self.pods.values(), key=lambda r: r.key)],
        }

    def _write_status(self) -> None:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        tmp = self.paths.status.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status(), indent=1))
        os.replace(tmp, self.paths.status)

    async def _write_status_loop(self) -> None:
        while True:
            self._write_status()
            await trio.sleep(0.25)

    async def _tear_down(self) -> None:
        self.phase = "stopping"
        self._write_status()
        for scope in self._pod_scopes.values():
            scope.cancel()
        for component in self.components.values():
            await component.stop()
        await self.operator.aclose()
        await trio.to_thread.run_sync(self.topology.destroy)
        self.phase = "stopped"
        self._write_status()
        log.info("mesh stopped")


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _digest(directory: Path) -> str:
    digest = hashlib.sha256()
    if directory.is_dir():
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path}:{stat.st_mtime_ns}:{stat.st_size}".encode())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wisp-runtime", description="the local mesh's daemon (started by wisp up)")
    parser.add_argument("--prefix", default="wisp")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--restart-delay", type=float, default=1.0)
    parser.add_argument("--ztunnel-workers", type=int, default=1)
    parser.add_argument("--ztunnel-drain-seconds", type=float, default=ZTUNNEL_DRAIN_SECONDS)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    wisp_log.configure(args.log_level, json=True)
    runtime = Runtime(args.prefix, args.nodes, restart_delay=args.restart_delay, ztunnel_workers=args.ztunnel_workers,
                      ztunnel_drain_seconds=args.ztunnel_drain_seconds)

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runtime.run)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(serve)
    return 0 if runtime.phase != "failed" else 1


def clean(prefix: str) -> list[str]:
    """Remove what a crashed run of `prefix` left: processes in its namespaces, the namespaces, files."""
    topology = Topology(prefix)
    from .topology import list_netns, run

    for netns in list_netns(prefix):
        for pid in run(["ip", "netns", "pids", netns], check=False).split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    gone = topology.destroy()
    # The pods' cgroups (runtime/cgroups.py) can go once the killed processes have been reaped.
    for _ in range(20):
        if not cgroups.remove_all(prefix):
            break
        time.sleep(0.1)
    paths = RuntimePaths(prefix)
    shutil.rmtree(paths.root, ignore_errors=True)
    return gone


if __name__ == "__main__":
    sys.exit(main())
