"""The daemon of `wisp up --kubernetes`: the test bed's control plane with network-namespace nodes.

`wisp up --kubernetes --nodes N` starts it in the background (`python -m runtime.kube.daemon`)
and watches `status.json`; `wisp down` sends SIGTERM. It runs, in one trio process:

- the test bed's real control plane (runtime/testbed/cluster.py `start()`: etcd, kube-apiserver,
  kube-controller-manager, kube-scheduler on 127.0.0.1), started on the main thread because its
  processes die with the thread that started them (PR_SET_PDEATHSIG);
- the local runtime's network (runtime/topology.py): switch `<prefix>-net`, nodes
  `<prefix>-nodeI` at 10.250.0.(10+I) with bridge cni0 on 10.244.I.0/24;
- the API server forwarder at 10.250.0.1:6443 in the switch (apiforward.py), which the
  `kubernetes` Service (10.96.0.1:443) reaches;
- the Node objects and their Leases (nodes.py), kube-proxy's DNAT (proxy.py);
- per node: its own node-local directories (`<run>/<prefix>/nodes/<node>/host/...`, nodeview.py),
  the primary CNI conflist (runtime/cnichain.py: bridge + host-local for the node's /24) and a
  kubelet (runtime/kube/kubelet.py NodeKubelet) running the pods bound to it.

Contract:
- `status.json` (in the run directory, as the local daemon's) has `phase` (starting, ready,
  failed, stopping, stopped), `error`, `prefix`, `pid`, `kubernetes: true`, `kubeconfig` (the
  admin kubeconfig of the cluster), `kubectl` (the test bed's built kubectl), `server`, `nodes`
  and `pods` (each kubelet's `status()`: namespace, name, node, ip, netns, phase, ready,
  sandbox, ... as `wisp get/exec` read them).
- SIGTERM or SIGINT, whenever it comes (one arriving while the control plane starts unwinds
  `start()`; one before trio's receiver is installed is kept and acted on at once): the kubelets are cancelled first (each tears its pods down: containers
  stopped, CNI DEL, netns removed), then the node registrations, kube-proxy and forwarder end,
  the topology is destroyed with the mesh's cgroups, and the control plane stops with its directory (etcd's data
  included). Ready is reported only once every node is schedulable (not-ready taint lifted). A
  task failing after ready tears the run down the same way and leaves `phase: failed` with the error.
- A run killed with SIGKILL leaves no control plane process (PDEATHSIG); its namespaces, run
  directory and test-bed directory are removed by the next `wisp up` or `wisp down`
  (`runtime.daemon.clean`, `runtime.testbed.cluster.remove_stale`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import structlog
import trio

from runtime import cgroups
from runtime.cnichain import write_primary_conflist
from runtime.testbed import build
from runtime.testbed import cluster as testbed
from runtime.topology import CONTROL_PLANE_IP, Node, Topology
from wisp import log as wisp_log
from wisp.runpaths import RuntimePaths

from .api import KubeApi
from .apiforward import API_FORWARD_PORT, ApiForwarder
from .kubelet import NodeKubelet
from .nodes import NodeRegistry
from .nodeview import NODE_DIRS, NodeView
from .proxy import KubeProxy

log = structlog.get_logger("runtime.kube")

# How long the kubelets get to tear their pods down (grace periods included) before the rest goes.
KUBELET_STOP_SECONDS = 90.0


def node_view(paths: RuntimePaths, node: Node) -> NodeView:
    return NodeView(paths.root / "nodes" / node.name)


class KubeRuntime:
    def __init__(self, prefix: str, node_count: int, cluster: testbed.Cluster, *, restart_delay: float = 1.0) -> None:
        self.paths = RuntimePaths(prefix)
        self.topology = Topology(prefix)
        self.node_count = node_count
        self.cluster = cluster
        self.restart_delay = restart_delay
        self.bin_dir = Path(sys.executable).parent
        self.nodes: list[Node] = []
        self.kubelets: list[NodeKubelet] = []
        self.forwarder: ApiForwarder | None = None
        self.proxy: KubeProxy | None = None
        self.registry: NodeRegistry | None = None
        self.phase = "starting"
        self.error = ""
        self._stop = trio.Event()
        self._kubelet_scope: trio.CancelScope | None = None
        self._kubelets_done = trio.Event()

    def stop(self) -> None:
        self._stop.set()

    # -- the whole life ------------------------------------------------------------------------------
    async def run(self) -> None:
        api = KubeApi.for_cluster(self.cluster)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_status_loop)
                nursery.start_soon(self._stop_when_told, nursery)
                try:
                    await self._bring_up(nursery, api)
                except Exception as exc:
                    self.phase, self.error = "failed", str(exc) or type(exc).__name__
                    log.exception("the Kubernetes mesh failed to start")
                    self._write_status()
                    nursery.cancel_scope.cancel()
                    return
                self.phase = "ready"
                log.info("the Kubernetes mesh is ready", nodes=len(self.nodes), server=self.cluster.server)
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                if self.phase != "failed":
                    self.phase = "stopping"
                self._write_status()
                await api.aclose()
                await trio.to_thread.run_sync(self.topology.destroy)
                left = await trio.to_thread.run_sync(cgroups.remove_all, self.topology.prefix)
                if left:
                    log.warning("cgroups left (processes still in them)", cgroups=left)

    async def _stop_when_told(self, nursery: trio.Nursery) -> None:
        await self._stop.wait()
        if self.phase != "failed":
            self.phase = "stopping"
        self._write_status()
        if self._kubelet_scope is not None:
            log.info("stopping the kubelets")
            self._kubelet_scope.cancel()
            with trio.move_on_after(KUBELET_STOP_SECONDS) as waited:
                await self._kubelets_done.wait()
            if waited.cancelled_caught:
                log.error("the kubelets did not stop in time", seconds=KUBELET_STOP_SECONDS)
        nursery.cancel_scope.cancel()

    async def _bring_up(self, nursery: trio.Nursery, api: KubeApi) -> None:
        self.nodes = await trio.to_thread.run_sync(self.topology.create, self.node_count)
        self.forwarder = ApiForwarder(self.topology.switch, (CONTROL_PLANE_IP, API_FORWARD_PORT),
                                      ("127.0.0.1", self.cluster.ports.apiserver))
        await nursery.start(self.forwarder.run)
        self.registry = NodeRegistry(api, self.nodes)
        await nursery.start(self.registry.run)
        views = {}
        for node in self.nodes:
            view = node_view(self.paths, node)
            for path in NODE_DIRS:
                view.host_path(path).mkdir(parents=True, exist_ok=True)
            await trio.to_thread.run_sync(write_primary_conflist, view, node)
            views[node.name] = view
        self.proxy = KubeProxy(api, self.topology, self.nodes, (CONTROL_PLANE_IP, API_FORWARD_PORT))
        await nursery.start(self.proxy.run)
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        self.kubelets = [
            NodeKubelet(api, node, views[node.name], topology=self.topology, bin_dir=self.bin_dir,
                        logs=self.paths.logs, pods_dir=views[node.name].root / "pods", hosts=self.proxy.hosts,
                        restart_delay=self.restart_delay)
            for node in self.nodes
        ]
        await nursery.start(self._run_kubelets)
        await self.registry.wait_schedulable(timeout=60)

    async def _run_kubelets(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with trio.CancelScope() as scope:
                self._kubelet_scope = scope
                async with trio.open_nursery() as nursery:
                    for kubelet in self.kubelets:
                        await nursery.start(kubelet.run)
                    task_status.started()
        finally:
            self._kubelets_done.set()

    # -- status ------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        pods: list[dict[str, Any]] = []
        for kubelet in self.kubelets:
            try:
                pods += kubelet.status()
            except Exception as exc:  # a kubelet's bug must not stop status.json, which `wisp down` reads
                log.error("kubelet status failed", error=str(exc))
        return {
            "phase": self.phase, "error": self.error, "prefix": self.topology.prefix, "pid": os.getpid(),
            "updated": time.time(), "kubernetes": True,
            "kubeconfig": str(self.cluster.kubeconfig), "kubectl": str(self.cluster.binaries.kubectl),
            "server": self.cluster.server, "testbed_dir": str(self.cluster.workdir),
            "nodes": [{"name": n.name, "netns": n.netns, "ip": n.ip, "pod_network": str(n.pod_network)}
                      for n in self.nodes],
            "components": {},
            "api_forwarder": {"address": f"{CONTROL_PLANE_IP}:{API_FORWARD_PORT}",
                              "connections": self.forwarder.connections if self.forwarder else 0},
            "pods": sorted(pods, key=lambda p: (p.get("namespace", ""), p.get("name", ""))),
        }

    def _write_status(self) -> None:
        write_status(self.paths, self.status())

    async def _write_status_loop(self) -> None:
        while True:
            self._write_status()
            await trio.sleep(0.5)


def write_status(paths: RuntimePaths, status: dict[str, Any]) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    tmp = paths.status.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, indent=1))
    os.replace(tmp, paths.status)


class _Stopped(Exception):
    """SIGTERM or SIGINT arrived while the control plane was starting."""


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wisp-kube-runtime",
                                     description="the Kubernetes-backed mesh's daemon (started by wisp up --kubernetes)")
    parser.add_argument("--prefix", default="wisp")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--restart-delay", type=float, default=1.0)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    wisp_log.configure(args.log_level, json=True)
    paths = RuntimePaths(args.prefix)
    starting = {"phase": "starting", "error": "", "prefix": args.prefix, "pid": os.getpid(), "updated": time.time(),
                "kubernetes": True, "nodes": [], "components": {}, "pods": []}
    write_status(paths, starting)
    # Until trio takes the signals over, a stop request unwinds start(), which stops what it started.
    signal.signal(signal.SIGTERM, _raise_stopped)
    signal.signal(signal.SIGINT, _raise_stopped)
    try:
        cluster = testbed.start(build.installed(), timeout=120)
    except _Stopped:
        write_status(paths, dict(starting, phase="stopped", updated=time.time()))
        return 0
    except (build.MissingBinaries, testbed.TestbedError, OSError) as exc:
        write_status(paths, dict(starting, phase="failed", error=f"the control plane did not start: {exc}",
                                 updated=time.time()))
        return 1
    # From here a stop request must reach runtime.run()'s teardown: until trio's receiver takes the
    # signals over, it is only noted (raising now would skip cluster.stop() below, or land inside trio).
    requested: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: requested.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: requested.append(signum))
    try:
        runtime = KubeRuntime(args.prefix, args.nodes, cluster, restart_delay=args.restart_delay)
    except BaseException:
        cluster.stop()
        raise

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

                async def on_signal() -> None:
                    async for _ in signals:
                        runtime.stop()

                nursery.start_soon(on_signal)
                if requested:
                    runtime.stop()
                await runtime.run()
                nursery.cancel_scope.cancel()

    try:
        trio.run(serve)
    except Exception as exc:  # a task's bug after ready: the run is torn down (run()'s finally), and says so
        log.exception("the Kubernetes mesh failed")
        runtime.phase, runtime.error = "failed", runtime.error or f"{type(exc).__name__}: {exc}"
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cluster.stop()
        failed = runtime.phase == "failed"
        runtime.phase = "failed" if failed else "stopped"
        runtime.kubelets = []
        write_status(paths, runtime.status())
        log.info("the Kubernetes mesh stopped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
