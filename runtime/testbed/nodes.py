"""Nodes without kubelets, the way kwok makes them, and a stand-in for the kubelet's pod updates.

Contract:
- `Nodes(cluster, count).start()` creates Nodes `node1..nodeN` with their status set on create
  (Ready=True, the pressure conditions False, `allocatable` with `pods`, an InternalIP
  10.250.0.(10+i) and pod CIDR 10.244.i.0/24 as in wisp's local runtime), a Lease per node in
  `kube-node-lease`, and then runs, in one background thread:
  - a Lease renewal per node every `lease_interval` seconds (the node-lifecycle controller marks a
    node NotReady after 50 s without one);
  - a kubelet stand-in per node: list+watch of the pods bound to it (field selector
    `spec.nodeName`, relist on 410 Gone); a pod that is not yet running gets `phase: Running`, a
    pod IP from the node's range (the node's IP for host-network pods), the PodScheduled,
    PodReadyToStartContainers, Initialized, ContainersReady and Ready conditions and a running
    `containerStatuses` entry per container; a pod with a deletion timestamp is deleted for good
    (grace period 0) as the kubelet would once its containers stopped.
  Nothing runs: there are no containers and pod IPs are bookkeeping only (never dial them).
- `stop()` cancels the thread and waits for it. Errors in the background are logged once per
  failure and retried with backoff; they never end the thread.
- The API server reaches "kubelets" only on loopback: each node also lists `InternalDNS:
  127.0.0.1` and the cluster starts the API server preferring that address type, so `kubectl
  logs/exec` fail fast on 127.0.0.1:10250 instead of sending packets to 10.250.0.x.

Why httpx and not kubernetes-asyncio: the test bed is the reference the operator's
kubernetes-asyncio code is checked against, so it speaks the API with a different, thin client
(plain JSON over HTTPS with the admin certificate) and shares no bug with the code under test. The
background work runs under trio in its own thread, so the synchronous fixtures and CLI can start and
stop it and cancellation is a cancel scope, not a flag.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import structlog
import trio

from .cluster import Cluster, TestbedError

LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_SECONDS = 40
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
SIMULATED_ANNOTATION = "wisp-testbed/simulated"

log = structlog.get_logger("runtime.testbed.nodes")


@dataclass(slots=True, frozen=True)
class SimulatedNode:
    index: int
    name: str
    ip: str
    pod_cidr: str


def simulated_node(index: int) -> SimulatedNode:
    """Node `index` (1-based) named and addressed as wisp's local runtime does."""
    if not 1 <= index <= 200:
        raise ValueError("node index %d is outside 1..200" % index)
    return SimulatedNode(index, "node%d" % index, "10.250.0.%d" % (10 + index), "10.244.%d.0/24" % index)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_object(node: SimulatedNode, kubelet_version: str, pods: int = 110, *,
                os_image: str = "wisp test bed (no kubelet)", runtime_version: str = "wisp-testbed://0",
                simulated: bool = True) -> dict[str, object]:
    """The Node as registered, status included; the runtime's real nodes (runtime/kube/nodes.py)
    pass their own `os_image` and `runtime_version` and `simulated=False`."""
    now = now_rfc3339()
    message = "simulated by the wisp test bed" if simulated else "kubelet is posting ready status"
    pressure = "simulated" if simulated else "kubelet has sufficient resources"

    def condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {"type": kind, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": now}

    resources = {"cpu": "8", "memory": "16Gi", "pods": str(pods), "ephemeral-storage": "100Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {
                "kubernetes.io/hostname": node.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
            "annotations": {SIMULATED_ANNOTATION: "true"} if simulated else {},
        },
        "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", pressure),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", pressure),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", pressure),
                condition("Ready", "True", "KubeletReady", message),
            ],
            "addresses": [
                {"type": "InternalIP", "address": node.ip},
                {"type": "Hostname", "address": node.name},
                {"type": "InternalDNS", "address": "127.0.0.1"},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": uuid.uuid4().hex,
                "systemUUID": str(uuid.uuid4()),
                "bootID": str(uuid.uuid4()),
                "kernelVersion": os.uname().release,
                "osImage": os_image,
                "containerRuntimeVersion": runtime_version,
                "kubeletVersion": kubelet_version,
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }


def lease_object(node: SimulatedNode, node_uid: str) -> dict[str, object]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": node.name,
            "namespace": LEASE_NAMESPACE,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node.name, "uid": node_uid}],
        },
        "spec": {
            "holderIdentity": node.name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": now_micro(),
        },
    }


def running_status(pod: dict, node: SimulatedNode, pod_ip: str) -> dict[str, object]:
    """The status a kubelet reports once every container of `pod` runs and is ready."""
    now = now_rfc3339()
    uid = pod["metadata"]["uid"]
    spec = pod.get("spec", {})
    # Conditions already True (the scheduler's PodScheduled) keep their transition time.
    existing = {c.get("type"): c for c in pod.get("status", {}).get("conditions") or []}
    conditions = []
    for kind in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready", "PodScheduled"):
        if existing.get(kind, {}).get("status") == "True":
            conditions.append(existing[kind])
        else:
            conditions.append({"type": kind, "status": "True", "lastProbeTime": None, "lastTransitionTime": now})
    conditions += [c for kind, c in existing.items() if kind not in {c["type"] for c in conditions}]

    def container(item: dict, init: bool) -> dict[str, object]:
        state: dict[str, object]
        if init:
            state = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}}
        else:
            state = {"running": {"startedAt": now}}
        return {
            "name": item["name"],
            "image": item.get("image", ""),
            "imageID": "",
            "containerID": "wisp-testbed://%s-%s" % (uid, item["name"]),
            "ready": not init,
            "started": not init,
            "restartCount": 0,
            "state": state,
        }

    status: dict[str, object] = {
        "phase": "Running",
        "conditions": conditions,
        "hostIP": node.ip,
        "hostIPs": [{"ip": node.ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": pod.get("status", {}).get("startTime") or now,
        "containerStatuses": [container(item, False) for item in spec.get("containers", [])],
    }
    if spec.get("initContainers"):
        status["initContainerStatuses"] = [container(item, True) for item in spec["initContainers"]]
    return status


def is_running(pod: dict) -> bool:
    status = pod.get("status", {})
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
    return status.get("phase") == "Running" and bool(status.get("podIP")) and ready


@dataclass(slots=True)
class _PodAddresses:
    """Pod IPs of one node: the range's hosts from .2 up (.1 is the node's bridge in wisp up)."""

    network: ipaddress.IPv4Network
    by_uid: dict[str, str] = field(default_factory=dict)

    def take(self, uid: str, current: str | None) -> str:
        if uid in self.by_uid:
            return self.by_uid[uid]
        used = set(self.by_uid.values())
        if current and current not in used:
            self.by_uid[uid] = current
            return current
        for host in self._hosts():
            if host not in used:
                self.by_uid[uid] = host
                return host
        raise TestbedError("node pod range %s is full" % self.network)

    def release(self, uid: str) -> None:
        self.by_uid.pop(uid, None)

    def _hosts(self) -> Iterator[str]:
        for index, host in enumerate(self.network.hosts()):
            if index >= 1:
                yield str(host)


class Nodes:
    """Simulated nodes with a kubelet stand-in; see the module docstring."""

    def __init__(self, cluster: Cluster, count: int = 2, lease_interval: float = 10.0) -> None:
        if count < 0:
            raise ValueError("node count must be 0 or more, not %d" % count)
        self.cluster = cluster
        self.nodes = [simulated_node(index) for index in range(1, count + 1)]
        self.lease_interval = lease_interval
        self.lease_renewals: dict[str, int] = {node.name: 0 for node in self.nodes}
        self.pods_started = 0
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def start(self) -> Nodes:
        with self.cluster.client() as client:
            version = client.get("/version").json().get("gitVersion", "unknown")
            for node in self.nodes:
                self._register(client, node, version)
        self._thread = threading.Thread(target=self._run, name="wisp-tb-kubelet", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TestbedError("the test bed's node thread did not start within 10 s")
        if self._failure is not None:
            raise TestbedError("the test bed's node thread failed: %s" % self._failure)
        return self

    def stop(self) -> None:
        thread, token, scope = self._thread, self._token, self._scope
        if thread is None:
            return
        self._thread = None
        if token is not None and scope is not None:
            try:
                trio.from_thread.run_sync(scope.cancel, trio_token=token)
            except trio.RunFinishedError:
                pass
        thread.join(10)

    def __enter__(self) -> Nodes:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_schedulable(self, timeout: float = 60.0) -> None:
        """Wait until the node-lifecycle controller has lifted the not-ready taint from every node."""
        deadline = time.monotonic() + timeout
        with self.cluster.client() as client:
            while True:
                tainted = []
                for node in self.nodes:
                    taints = client.get("/api/v1/nodes/%s" % node.name).json().get("spec", {}).get("taints", [])
                    if any(taint.get("key") == NOT_READY_TAINT for taint in taints):
                        tainted.append(node.name)
                if not tainted:
                    return
                if time.monotonic() > deadline:
                    raise TestbedError(
                        "nodes %s still carry %s after %.0f s: is the controller manager's "
                        "node-lifecycle controller running?" % (", ".join(tainted), NOT_READY_TAINT, timeout)
                    )
                time.sleep(0.5)

    # --- registration (synchronous, so errors reach the caller) ---------------------------------

    def _register(self, client: httpx.Client, node: SimulatedNode, version: str) -> None:
        response = client.post("/api/v1/nodes", json=node_object(node, version))
        if response.status_code == 409:
            raise TestbedError("node %s already exists in this cluster" % node.name)
        _check(response, "creating node %s" % node.name)
        created = response.json()
        if not any(c.get("type") == "Ready" for c in created.get("status", {}).get("conditions", [])):
            # Should the API server ever drop status on create, write it through the subresource.
            status = node_object(node, version)["status"]
            _check(client.patch("/api/v1/nodes/%s/status" % node.name, json={"status": status},
                                headers={"Content-Type": "application/merge-patch+json"}),
                   "setting the status of node %s" % node.name)
        lease = lease_object(node, created["metadata"]["uid"])
        _check(client.post("/apis/coordination.k8s.io/v1/namespaces/%s/leases" % LEASE_NAMESPACE, json=lease),
               "creating the lease of node %s" % node.name)

    # --- background (trio, in its own thread) ---------------------------------------------------

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as error:  # reported to start(); a later failure is only logged
            self._failure = error
            log.error("testbed_nodes_failed", error=repr(error))
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            self._scope = scope
            async with httpx.AsyncClient(
                base_url=self.cluster.server, verify=self.cluster.ssl_context(), timeout=30.0
            ) as client:
                async with trio.open_nursery() as nursery:
                    for node in self.nodes:
                        nursery.start_soon(self._renew_lease, client, node)
                        nursery.start_soon(self._kubelet, client, node)
                    self._ready.set()

    async def _renew_lease(self, client: httpx.AsyncClient, node: SimulatedNode) -> None:
        path = "/apis/coordination.k8s.io/v1/namespaces/%s/leases/%s" % (LEASE_NAMESPACE, node.name)
        failing = False
        while True:
            await trio.sleep(self.lease_interval)
            try:
                response = await client.patch(
                    path,
                    json={"spec": {"holderIdentity": node.name, "renewTime": now_micro()}},
                    headers={"Content-Type": "application/merge-patch+json"},
                )
                _check(response, "renewing the lease of %s" % node.name)
                self.lease_renewals[node.name] += 1
                failing = False
            except (httpx.HTTPError, TestbedError) as error:
                if not failing:
                    log.warning("testbed_lease_renewal_failed", node=node.name, error=str(error))
                failing = True

    async def _kubelet(self, client: httpx.AsyncClient, node: SimulatedNode) -> None:
        addresses = _PodAddresses(ipaddress.ip_network(node.pod_cidr))
        selector = "spec.nodeName=%s" % node.name
        backoff = 0.2
        while True:
            try:
                response = await client.get("/api/v1/pods", params={"fieldSelector": selector})
                _check(response, "listing the pods of %s" % node.name)
                listing = response.json()
                for pod in listing.get("items", []):
                    await self._sync_pod(client, node, addresses, pod)
                version = listing["metadata"]["resourceVersion"]
                await self._watch(client, node, addresses, selector, version)
                backoff = 0.2
            except (httpx.HTTPError, TestbedError, ValueError, KeyError) as error:
                log.warning("testbed_kubelet_retry", node=node.name, error=str(error), backoff=backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _watch(
        self,
        client: httpx.AsyncClient,
        node: SimulatedNode,
        addresses: _PodAddresses,
        selector: str,
        version: str,
    ) -> None:
        """Follow pod events until the server ends the watch; returns to relist (e.g. on 410)."""
        while True:
            params = {"watch": "1", "fieldSelector": selector, "resourceVersion": version,
                      "allowWatchBookmarks": "true", "timeoutSeconds": "300"}
            async with client.stream("GET", "/api/v1/pods", params=params,
                                     timeout=httpx.Timeout(30.0, read=None)) as response:
                _check(response, "watching the pods of %s" % node.name)
                async for line in response.aiter_lines():
                    if not line:
                        continue
                    event = json.loads(line)
                    kind, pod = event.get("type"), event.get("object", {})
                    if kind == "ERROR":
                        # 410 Gone: our resourceVersion was compacted away; relist.
                        return
                    version = pod.get("metadata", {}).get("resourceVersion", version)
                    if kind == "BOOKMARK":
                        continue
                    if kind == "DELETED":
                        addresses.release(pod["metadata"]["uid"])
                        continue
                    await self._sync_pod(client, node, addresses, pod)

    async def _sync_pod(
        self, client: httpx.AsyncClient, node: SimulatedNode, addresses: _PodAddresses, pod: dict
    ) -> None:
        metadata = pod["metadata"]
        path = "/api/v1/namespaces/%s/pods/%s" % (metadata["namespace"], metadata["name"])
        if metadata.get("deletionTimestamp"):
            # The kubelet confirms a graceful deletion once the containers stopped; ours never ran.
            response = await client.request(
                "DELETE", path,
                json={"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                      "preconditions": {"uid": metadata["uid"]}},
            )
            if response.status_code not in (200, 202, 404, 409):
                _check(response, "deleting pod %s/%s" % (metadata["namespace"], metadata["name"]))
            addresses.release(metadata["uid"])
            return
        status = pod.get("status", {})
        if status.get("phase") in ("Succeeded", "Failed") or is_running(pod):
            return
        if pod.get("spec", {}).get("hostNetwork"):
            pod_ip = node.ip
        else:
            pod_ip = addresses.take(metadata["uid"], status.get("podIP"))
        response = await client.patch(
            path + "/status",
            json={"status": running_status(pod, node, pod_ip)},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        if response.status_code == 404:
            addresses.release(metadata["uid"])
            return
        _check(response, "setting pod %s/%s running" % (metadata["namespace"], metadata["name"]))
        self.pods_started += 1


def _check(response: httpx.Response, what: str) -> None:
    if response.status_code >= 400:
        try:
            message = response.json().get("message", "")
        except ValueError:
            message = ""
        if not message:
            try:
                message = response.text[:300]
            except httpx.ResponseNotRead:
                message = "(streamed response)"
        raise TestbedError("%s: HTTP %d %s" % (what, response.status_code, message))
