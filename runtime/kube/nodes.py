"""The mesh's nodes as Kubernetes Nodes: registration, Lease renewal and status heartbeats.

A kubelet registers its Node, keeps a Lease in `kube-node-lease` renewed (the node-lifecycle
controller marks a node NotReady, then taints and evicts, after 40 s without one) and posts its
status now and then. The runtime plays that part for each network-namespace node, numbered as the
local runtime numbers them (runtime/topology.py: `nodeI` at 10.250.0.(10+I), pods 10.244.I.0/24)
and described with the test bed's object builders (runtime/testbed/nodes.py `node_object`,
`lease_object`), but saying that wisp's runtime runs its pods; the pods themselves are the
kubelets' business (runtime/kube/kubelet.py), not this module's.

Contract:
- `NodeRegistry(api, nodes).run(task_status=...)` creates every Node (status set on create, or
  through the status subresource if the API server dropped it) and its Lease, reports started,
  then renews each Lease every `lease_interval` s and refreshes the Ready condition's heartbeat
  every `status_interval` s until cancelled. A Node or Lease left by an earlier run of the same
  cluster is replaced. Registration errors raise `ApiError` to the caller; renewal errors are
  logged once per failure streak and retried, never ending the task.
- `wait_schedulable(timeout)` returns once the node-lifecycle controller has lifted the
  `node.kubernetes.io/not-ready` taint from every node; `TimeoutError` naming the nodes otherwise.
- `renewals[name]` counts successful Lease renewals (for tests and status).
"""

from __future__ import annotations

import importlib.metadata

import structlog
import trio

from runtime.testbed.nodes import (
    LEASE_NAMESPACE,
    NOT_READY_TAINT,
    lease_object,
    node_object,
    now_micro,
    now_rfc3339,
    simulated_node,
)
from runtime.topology import Node

from .api import STRATEGIC_PATCH, ApiError, KubeApi

log = structlog.get_logger("runtime.kube.nodes")

OS_IMAGE = "wisp runtime (network-namespace node)"


def runtime_version() -> str:
    try:
        return "wisp://" + importlib.metadata.version("wisp")
    except importlib.metadata.PackageNotFoundError:
        return "wisp://0"


def node_manifest(node: Node, kubelet_version: str) -> dict[str, object]:
    """The Node object of runtime node `node` as its kubelet registers it."""
    return node_object(simulated_node(node.index), kubelet_version, os_image=OS_IMAGE,
                       runtime_version=runtime_version(), simulated=False)


class NodeRegistry:
    def __init__(self, api: KubeApi, nodes: list[Node], *, lease_interval: float = 10.0,
                 status_interval: float = 60.0) -> None:
        self.api = api
        self.nodes = nodes
        self.lease_interval = lease_interval
        self.status_interval = status_interval
        self.renewals: dict[str, int] = {node.name: 0 for node in nodes}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        version = str((await self.api.get("/version") or {}).get("gitVersion", "unknown"))
        for node in self.nodes:
            await self._register(node, version)
        log.info("nodes registered", nodes=[node.name for node in self.nodes])
        task_status.started()
        async with trio.open_nursery() as nursery:
            for node in self.nodes:
                nursery.start_soon(self._renew_lease, node)
                nursery.start_soon(self._heartbeat, node)

    async def _register(self, node: Node, version: str) -> None:
        manifest = node_manifest(node, version)
        try:
            created = await self.api.create("/api/v1/nodes", manifest)
        except ApiError as exc:
            if exc.status != 409:
                raise
            await self.api.delete(f"/api/v1/nodes/{node.name}")
            created = await self.api.create("/api/v1/nodes", manifest)
        if not any(c.get("type") == "Ready" for c in (created.get("status") or {}).get("conditions") or []):
            await self.api.patch(f"/api/v1/nodes/{node.name}/status", {"status": manifest["status"]})
        lease = lease_object(simulated_node(node.index), created["metadata"]["uid"])
        leases = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"
        try:
            await self.api.create(leases, lease)
        except ApiError as exc:
            if exc.status != 409:
                raise
            await self.api.delete(f"{leases}/{node.name}")
            await self.api.create(leases, lease)

    async def _renew_lease(self, node: Node) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{node.name}"
        failing = False
        while True:
            await trio.sleep(self.lease_interval)
            try:
                await self.api.patch(path, {"spec": {"holderIdentity": node.name, "renewTime": now_micro()}})
                self.renewals[node.name] += 1
                if failing:
                    log.info("node lease renewed again", node=node.name)
                failing = False
            except ApiError as exc:
                if not failing:
                    log.warning("node lease renewal failed", node=node.name, error=str(exc))
                failing = True

    async def _heartbeat(self, node: Node) -> None:
        path = f"/api/v1/nodes/{node.name}/status"
        failing = False
        while True:
            await trio.sleep(self.status_interval)
            # Strategic merge keys conditions by type: only the heartbeat times change.
            now = now_rfc3339()
            beat = {"status": {"conditions": [{"type": kind, "lastHeartbeatTime": now} for kind in
                                              ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")]}}
            try:
                await self.api.patch(path, beat, content_type=STRATEGIC_PATCH)
                failing = False
            except ApiError as exc:
                if not failing:
                    log.warning("node status heartbeat failed", node=node.name, error=str(exc))
                failing = True

    async def wait_schedulable(self, timeout: float = 60.0) -> None:
        with trio.move_on_after(timeout):
            while True:
                tainted = await self._tainted()
                if not tainted:
                    return
                await trio.sleep(0.3)
        raise TimeoutError(f"nodes {', '.join(await self._tainted())} still carry {NOT_READY_TAINT} after "
                           f"{timeout:g} s: is the controller manager's node-lifecycle controller running?")

    async def _tainted(self) -> list[str]:
        tainted = []
        for node in self.nodes:
            try:
                obj = await self.api.get(f"/api/v1/nodes/{node.name}") or {}
            except ApiError:
                tainted.append(node.name)
                continue
            if any(t.get("key") == NOT_READY_TAINT for t in (obj.get("spec") or {}).get("taints") or []):
                tainted.append(node.name)
        return tainted
