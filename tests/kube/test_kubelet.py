"""The kubelet of a network-namespace node (runtime/kube/kubelet.py) against the real test bed.

Each test builds a node netns of its own (runtime/topology.py under a unique `wisp-k<hex>` prefix)
with the primary CNI conflist (runtime/cnichain.py), registers a Node for it under a unique name
(without the `kubernetes.io/os` label the project's DaemonSets select, and tainted NoSchedule, so
no other test's workload lands on it; the test's pods name it in spec.nodeName), runs a
NodeKubelet for it and drives it through the API only. Everything (pods, Node, Lease, network
namespaces, run directory, processes) is removed even when a test fails, and what the kubelet
leaves behind is asserted.

The pure parts (status building) are tested at the end without the cluster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from cni.podnetns import pod_uid_from_cgroup
from runtime import cgroups
from runtime.cnichain import write_primary_conflist
from runtime.kube.api import ApiError, KubeApi
from runtime.kube.kubelet import (
    ContainerView,
    NodeKubelet,
    PodView,
    _KubePods,
    build_status,
    container_view,
    transition,
)
from runtime.kubelet import ContainerState, PodRecord, pod_phase
from runtime.processes import Exit, Supervised
from runtime.kube.nodeview import NODE_DIRS, NodeView
from runtime.testbed.cluster import Cluster
from runtime.testbed.nodes import LEASE_NAMESPACE, SimulatedNode, lease_object, node_object, now_micro
from runtime.topology import Node, Topology, list_netns
from tests.support.wait import wait_until
from wisp.runpaths import RUN_ROOT

BIN_DIR = Path(sys.executable).parent


@dataclass(slots=True)
class Bed:
    api: KubeApi
    cluster: Cluster
    topology: Topology
    node: Node
    kubelet: NodeKubelet
    namespace: str
    pids: set[int]

    def pod_path(self, name: str) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods/{name}"

    async def create(self, name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
                "spec": {"nodeName": self.node.name, "automountServiceAccountToken": False,
                         "terminationGracePeriodSeconds": 5, "containers": containers, **spec}}
        return await self.api.create(f"/api/v1/namespaces/{self.namespace}/pods", body)

    async def pod(self, name: str) -> dict[str, Any] | None:
        return await self.api.get(self.pod_path(name), missing_ok=True)

    async def until(self, name: str, check, what: str, timeout: float = 30.0) -> dict[str, Any]:
        """The pod once `check(pod)` holds (polled through the API)."""
        with trio.move_on_after(timeout):
            while True:
                pod = await self.pod(name)
                if pod is not None and check(pod):
                    return pod
                self.note_pids()
                await trio.sleep(0.2)
        raise AssertionError(f"pod {name}: {what} not reached within {timeout:g} s; last: "
                             f"{(pod or {}).get('status')}; kubelet: {self.kubelet.status()}")

    def note_pids(self) -> None:
        for entry in self.kubelet.status():
            self.pids.update(c["pid"] for c in entry["containers"] if c["pid"])


def condition(pod: dict[str, Any], kind: str) -> str | None:
    for item in (pod.get("status") or {}).get("conditions") or []:
        if item.get("type") == kind:
            return item.get("status")
    return None


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    for item in (pod.get("status") or {}).get("containerStatuses") or []:
        if item.get("name") == name:
            return item
    return {}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@contextlib.asynccontextmanager
async def node_bed(cluster: Cluster, namespace: str) -> AsyncIterator[Bed]:
    prefix = f"wisp-k{secrets.token_hex(3)}"
    name = f"kubelet-{secrets.token_hex(3)}"
    topology = Topology(prefix)
    root = RUN_ROOT / prefix
    api = KubeApi.for_cluster(cluster)
    registered = False
    try:
        created = await trio.to_thread.run_sync(topology.create, 1)
        node = dataclasses.replace(created[0], name=name)
        view = NodeView(root / "nodes" / name)
        for path in NODE_DIRS:
            view.host_path(path).mkdir(parents=True, exist_ok=True)
        await trio.to_thread.run_sync(write_primary_conflist, view, node)
        version = (await api.get("/version") or {}).get("gitVersion", "v0")
        manifest = node_object(SimulatedNode(node.index, name, node.ip, str(node.pod_network)), version)
        del manifest["metadata"]["labels"]["kubernetes.io/os"]
        manifest["spec"]["taints"] = [{"key": "wisp-test/kubelet", "value": "only", "effect": "NoSchedule"}]
        created_node = await api.create("/api/v1/nodes", manifest)
        registered = True
        await api.create(f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases",
                         lease_object(SimulatedNode(node.index, name, node.ip, str(node.pod_network)),
                                      created_node["metadata"]["uid"]))
        kubelet = NodeKubelet(api, node, view, topology=topology, bin_dir=BIN_DIR, logs=root / "logs",
                              pods_dir=view.root / "pods", hosts=lambda ns: [("10.96.0.1", ["kubernetes"])],
                              restart_delay=0.5)
        bed = Bed(api, cluster, topology, node, kubelet, namespace, set())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_renew, api, name)
            await nursery.start(kubelet.run)
            try:
                yield bed
            finally:
                bed.note_pids()
                nursery.cancel_scope.cancel()
        # Cancelling the kubelet tore every pod down.
        assert kubelet.status() == []
        left = [p for p in bed.pids if alive(p)]
        assert not left, f"container processes left: {left}"
        netns = [n for n in list_netns(prefix) if n not in (topology.switch, node.netns)]
        assert not netns, f"pod namespaces left: {netns}"
        assert not list((view.root / "pods").iterdir()), "volume directories left"
        assert not [h for h in cgroups.hierarchies() if (h / prefix).exists()], "cgroup directories left"
    finally:
        if registered:
            with contextlib.suppress(ApiError):
                await api.delete(f"/api/v1/nodes/{name}")
                await api.delete(f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{name}")
        await trio.to_thread.run_sync(topology.destroy)
        cgroups.remove_all(prefix)
        shutil.rmtree(root, ignore_errors=True)
        await api.aclose()


async def _renew(api: KubeApi, name: str) -> None:
    while True:
        await trio.sleep(5)
        with contextlib.suppress(ApiError):
            await api.patch(f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{name}",
                            {"spec": {"renewTime": now_micro()}})


def echo(port: int = 8080, **extra: Any) -> dict[str, Any]:
    return {"name": "echo", "image": "wisp:0.1.0", "command": ["wisp-echo"], "args": ["--http", "$(PORT)"],
            "env": [{"name": "PORT", "value": str(port)}],
            "ports": [{"name": "http", "containerPort": port}], **extra}


def veths(node: Node) -> list[str]:
    """The pods' veths on the node (its own eth0 to the switch is one too)."""
    out = subprocess.run(["ip", "-n", node.netns, "-o", "link", "show", "type", "veth"],
                         capture_output=True, text=True, check=False).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip()]
    return [name for name in names if name != "eth0"]


pytestmark = pytest.mark.root


async def test_a_pod_runs_ready_behind_its_http_probe_and_kubectl_delete_leaves_nothing(
        cluster: Cluster, namespace: str) -> None:
    async with node_bed(cluster, namespace) as bed:
        await bed.create("web", [echo(readinessProbe={"httpGet": {"path": "/healthz", "port": "http"},
                                                       "periodSeconds": 1})])
        pod = await bed.until("web", lambda p: condition(p, "Ready") == "True", "Ready")
        status = pod["status"]
        assert status["phase"] == "Running"
        assert status["podIP"].startswith(f"10.244.{bed.node.index}.") and status["podIP"] != bed.node.gateway
        assert status["hostIP"] == bed.node.ip
        assert {c["type"]: c["status"] for c in status["conditions"]} == {
            "PodScheduled": "True", "PodReadyToStartContainers": "True", "Initialized": "True",
            "ContainersReady": "True", "Ready": "True"}
        echo_status = container(pod, "echo")
        assert echo_status["ready"] and echo_status["started"] and echo_status["restartCount"] == 0
        assert "running" in echo_status["state"]
        entry = next(p for p in bed.kubelet.status() if p["name"] == "web")
        assert entry["uid"] == pod["metadata"]["uid"] and entry["sandbox"] and entry["netns"]
        # The echo app answers on the pod's address from the node, as the probe did.
        answer = subprocess.run(["ip", "netns", "exec", bed.node.netns, "curl", "-s", "-m", "5",
                                 f"http://{status['podIP']}:8080/"], capture_output=True, text=True)
        assert "web" in answer.stdout
        # Its loopback is up, as a container runtime leaves it.
        local = subprocess.run(["ip", "netns", "exec", entry["netns"], "curl", "-s", "-m", "5",
                                "http://127.0.0.1:8080/"], capture_output=True, text=True)
        assert "web" in local.stdout
        bed.note_pids()
        pids = set(bed.pids)
        netns = entry["netns"]
        assert veths(bed.node)
        # Where the node agent looks for a running pod (Istio's /proc cgroup scan, cni/podnetns.py).
        echo_pid = next(c["pid"] for c in entry["containers"] if c["name"] == "echo")
        assert pod_uid_from_cgroup(Path(f"/proc/{echo_pid}/cgroup").read_text()) == pod["metadata"]["uid"]
        # kubectl as a user types it; it waits until the pod is gone.
        done = await trio.run_process(
            [str(bed.cluster.binaries.kubectl), "--kubeconfig", str(bed.cluster.kubeconfig), "-n", bed.namespace,
             "delete", "pod", "web", "--timeout=30s"], capture_stdout=True, capture_stderr=True, check=False)
        assert done.returncode == 0, done.stderr.decode()
        assert await bed.pod("web") is None
        await wait_until(lambda: not bed.kubelet.status(), timeout=10, what="the kubelet to forget the pod")
        assert not [p for p in pids if alive(p)]
        assert netns not in list_netns(bed.topology.prefix)
        assert not os.path.exists(f"/etc/netns/{netns}")
        assert veths(bed.node) == []
        assert not any(cgroups.pod_dirs(bed.topology.prefix, pod["metadata"]["uid"])[0].parent.glob("pod*"))


async def test_a_container_that_exits_is_restarted_and_counted(cluster: Cluster, namespace: str) -> None:
    async with node_bed(cluster, namespace) as bed:
        await bed.create("crash", [{"name": "once", "image": "busybox", "command": ["sh", "-c", "sleep 1; exit 3"]}])
        pod = await bed.until("crash", lambda p: container(p, "once").get("restartCount", 0) >= 1, "a restart")
        status = container(pod, "once")
        assert status["lastState"]["terminated"]["exitCode"] == 3
        assert status["lastState"]["terminated"]["reason"] == "Error"
        assert pod["status"]["phase"] == "Running"


async def test_a_pod_with_restart_policy_never_succeeds_with_its_exit_code(cluster: Cluster, namespace: str) -> None:
    async with node_bed(cluster, namespace) as bed:
        await bed.create("job", [{"name": "work", "image": "busybox", "command": ["sh", "-c", "exit 0"]}],
                         restartPolicy="Never")
        pod = await bed.until("job", lambda p: p["status"].get("phase") == "Succeeded", "Succeeded")
        state = container(pod, "work")["state"]["terminated"]
        assert state["exitCode"] == 0 and state["reason"] == "Completed"
        assert container(pod, "work")["restartCount"] == 0


async def test_an_unknown_image_leaves_the_pod_pending_with_err_image_pull(cluster: Cluster, namespace: str) -> None:
    async with node_bed(cluster, namespace) as bed:
        await bed.create("nope", [{"name": "app", "image": "example.com/no/such:1"}])
        pod = await bed.until("nope", lambda p: container(p, "app").get("state", {}).get("waiting", {}).get("reason")
                              == "ErrImagePull", "ErrImagePull")
        waiting = container(pod, "app")["state"]["waiting"]
        assert "no such image in the wisp runtime" in waiting["message"] and "busybox" in waiting["message"]
        assert pod["status"]["phase"] == "Pending"
        assert condition(pod, "Ready") == "False"


async def test_env_from_the_api_and_fields_reaches_the_container(cluster: Cluster, namespace: str) -> None:
    async with node_bed(cluster, namespace) as bed:
        await bed.api.create(f"/api/v1/namespaces/{namespace}/configmaps",
                             {"metadata": {"name": "settings"}, "data": {"greeting": "hello"}})
        await bed.api.create(f"/api/v1/namespaces/{namespace}/secrets",
                             {"metadata": {"name": "keys"}, "stringData": {"token": "s3cret"}})
        script = 'echo "$GREETING $TOKEN $POD $NS $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT $(id -u)"'
        await bed.create("env", [{
            "name": "show", "image": "busybox", "command": ["sh", "-c", script + "; sleep 30"],
            "env": [
                {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "token"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            ],
            "securityContext": {"runAsUser": 4321},
        }])
        await bed.until("env", lambda p: p["status"].get("phase") == "Running", "Running")
        log = bed.kubelet.logs / f"{namespace}_env_show.log"
        await wait_until(lambda: log.exists() and log.read_text().strip(), timeout=10, what="the container's output")
        assert log.read_text().split("\n")[0] == f"hello s3cret env {namespace} 10.96.0.1:443 4321"


async def test_an_env_source_created_later_lets_the_waiting_container_start(cluster: Cluster, namespace: str) -> None:
    async with node_bed(cluster, namespace) as bed:
        await bed.create("later", [{"name": "app", "image": "busybox", "command": ["sleep", "300"],
                                    "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "late",
                                                                                          "key": "x"}}}]}])
        pod = await bed.until("later", lambda p: container(p, "app").get("state", {}).get("waiting", {}).get("reason")
                              == "CreateContainerConfigError", "CreateContainerConfigError")
        assert container(pod, "app")["state"]["waiting"]["message"] == 'configmap "late" not found'
        await bed.api.create(f"/api/v1/namespaces/{namespace}/configmaps",
                             {"metadata": {"name": "late"}, "data": {"x": "1"}})
        await bed.until("later", lambda p: condition(p, "Ready") == "True", "Ready once the ConfigMap exists")


async def test_a_host_network_pod_runs_in_the_node_namespace(cluster: Cluster, namespace: str) -> None:
    async with node_bed(cluster, namespace) as bed:
        await bed.create("host", [echo(port=18080, readinessProbe={"tcpSocket": {"port": 18080}, "periodSeconds": 1})],
                         hostNetwork=True)
        pod = await bed.until("host", lambda p: condition(p, "Ready") == "True", "Ready")
        assert pod["status"]["podIP"] == bed.node.ip
        entry = next(p for p in bed.kubelet.status() if p["name"] == "host")
        assert entry["netns"] == bed.node.netns


async def test_a_failing_liveness_probe_restarts_the_container(cluster: Cluster, namespace: str) -> None:
    async with node_bed(cluster, namespace) as bed:
        await bed.create("sick", [{"name": "app", "image": "busybox", "command": ["sleep", "300"],
                                   "livenessProbe": {"exec": {"command": ["sh", "-c", "exit 1"]},
                                                     "periodSeconds": 1, "failureThreshold": 2}}])
        pod = await bed.until("sick", lambda p: container(p, "app").get("restartCount", 0) >= 1, "a liveness restart")
        assert container(pod, "app")["lastState"]["terminated"]["exitCode"] == 143  # SIGTERM


async def test_an_exec_readiness_probe_runs_in_the_containers_sandbox(cluster: Cluster, namespace: str) -> None:
    async with node_bed(cluster, namespace) as bed:
        await bed.create("marker", [{"name": "app", "image": "busybox", "command": ["sleep", "300"],
                                     "securityContext": {"runAsUser": 4242},
                                     "readinessProbe": {"exec": {"command": ["sh", "-c", "test $(id -u) = 4242"]},
                                                        "periodSeconds": 1}}])
        await bed.until("marker", lambda p: condition(p, "Ready") == "True", "Ready")


async def test_deletion_sends_sigterm_first_and_sigkill_after_the_grace_period(cluster: Cluster, namespace: str) -> None:
    async with node_bed(cluster, namespace) as bed:
        polite = ["sh", "-c", "trap 'echo got TERM; exit 0' TERM; echo up; sleep 300 & wait"]
        stubborn = ["sh", "-c", "trap 'echo ignoring TERM' TERM; echo up; while true; do sleep 0.1; done"]
        await bed.create("slow", [{"name": "polite", "image": "busybox", "command": polite},
                                  {"name": "stubborn", "image": "busybox", "command": stubborn}],
                         terminationGracePeriodSeconds=2)
        await bed.until("slow", lambda p: condition(p, "Ready") == "True", "Ready")
        logs = {name: bed.kubelet.logs / f"{namespace}_slow_{name}.log" for name in ("polite", "stubborn")}
        await wait_until(lambda: all(log.exists() and "up" in log.read_text() for log in logs.values()),
                         timeout=10, what="both containers to start")
        bed.note_pids()
        pids = set(bed.pids)
        started = trio.current_time()
        await bed.api.delete(bed.pod_path("slow"))
        with trio.fail_after(20):
            while await bed.pod("slow") is not None:
                await trio.sleep(0.1)
        took = trio.current_time() - started
        assert "got TERM" in logs["polite"].read_text()
        assert "ignoring TERM" in logs["stubborn"].read_text()
        assert 2 <= took < 10, took  # the stubborn one was killed once the 2 s were up
        assert not [p for p in pids if alive(p)]


async def test_a_pod_force_deleted_from_the_api_is_torn_down(cluster: Cluster, namespace: str) -> None:
    async with node_bed(cluster, namespace) as bed:
        await bed.create("gone", [{"name": "app", "image": "busybox", "command": ["sleep", "300"]}])
        await bed.until("gone", lambda p: p["status"].get("phase") == "Running", "Running")
        bed.note_pids()
        pids = set(bed.pids)
        netns = next(p["netns"] for p in bed.kubelet.status() if p["name"] == "gone")
        await bed.api.delete(bed.pod_path("gone"), body={"apiVersion": "v1", "kind": "DeleteOptions",
                                                         "gracePeriodSeconds": 0})
        await wait_until(lambda: not bed.kubelet.status(), timeout=15, what="the pod's teardown")
        assert not [p for p in pids if alive(p)]
        assert netns not in list_netns(bed.topology.prefix)


async def test_init_containers_run_to_completion_in_order_before_the_containers(cluster: Cluster, namespace: str) -> None:
    async with node_bed(cluster, namespace) as bed:
        await bed.create("init", [{"name": "app", "image": "busybox", "command": ["sh", "-c", "echo app; sleep 300"]}],
                         initContainers=[
                             {"name": "first", "image": "busybox", "command": ["sh", "-c", "echo first"]},
                             {"name": "second", "image": "busybox", "command": ["sh", "-c", "echo second"]}])
        pod = await bed.until("init", lambda p: condition(p, "Ready") == "True", "Ready")
        assert condition(pod, "Initialized") == "True"
        inits = {c["name"]: c for c in pod["status"]["initContainerStatuses"]}
        assert inits["first"]["state"]["terminated"]["reason"] == "Completed"
        assert inits["second"]["state"]["terminated"]["exitCode"] == 0
        first = bed.kubelet.logs / f"{namespace}_init_first.log"
        assert first.read_text() == "first\n"


async def test_a_failing_init_container_under_restart_policy_never_fails_the_pod(cluster: Cluster, namespace: str) -> None:
    async with node_bed(cluster, namespace) as bed:
        await bed.create("broken", [{"name": "app", "image": "busybox", "command": ["sleep", "300"]}],
                         restartPolicy="Never",
                         initContainers=[{"name": "check", "image": "busybox", "command": ["sh", "-c", "exit 4"]}])
        pod = await bed.until("broken", lambda p: p["status"].get("phase") == "Failed", "Failed")
        assert condition(pod, "Initialized") == "False"
        assert "app" not in [s["name"] for s in bed.kubelet.status()[0]["containers"]]


async def test_volumes_and_the_service_account_token_are_mounted_where_the_spec_says(
        cluster: Cluster, namespace: str) -> None:
    async with node_bed(cluster, namespace) as bed:
        await bed.api.create(f"/api/v1/namespaces/{namespace}/configmaps",
                             {"metadata": {"name": "settings"}, "data": {"greeting": "hello"}})
        script = ("cat /etc/config/greeting; echo; cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; "
                  "test -s /var/run/secrets/kubernetes.io/serviceaccount/token && echo token; "
                  "echo scratch > /scratch/file && cat /scratch/file; sleep 300")
        await bed.create("files", [{"name": "app", "image": "busybox", "command": ["sh", "-c", script],
                                    "volumeMounts": [{"name": "config", "mountPath": "/etc/config"},
                                                     {"name": "scratch", "mountPath": "/scratch"}]}],
                         automountServiceAccountToken=True,
                         volumes=[{"name": "config", "configMap": {"name": "settings"}},
                                  {"name": "scratch", "emptyDir": {}}])
        await bed.until("files", lambda p: p["status"].get("phase") == "Running", "Running")
        log = bed.kubelet.logs / f"{namespace}_files_app.log"
        await wait_until(lambda: log.exists() and "scratch" in log.read_text(), timeout=15,
                         what="the container's output")
        assert log.read_text().split() == ["hello", namespace, "token", "scratch"]
        assert not Path("/scratch").exists() and not Path("/etc/config").exists()


async def test_a_volume_over_the_directory_holding_the_programs_does_not_hide_them(
        cluster: Cluster, namespace: str) -> None:
    # CI checks the project out under /tmp, where deploy/'s operator and ztunnel mount an emptyDir.
    holder = str(Path(sys.prefix).resolve().parent.parent)
    async with node_bed(cluster, namespace) as bed:
        await bed.create("covered", [echo(volumeMounts=[{"name": "scratch", "mountPath": holder}],
                                          readinessProbe={"httpGet": {"path": "/healthz", "port": "http"}})],
                         volumes=[{"name": "scratch", "emptyDir": {}}])
        await bed.until("covered", lambda p: any(c.get("type") == "Ready" and c.get("status") == "True"
                                                 for c in p["status"].get("conditions") or []), "Ready")


async def test_a_mount_of_a_missing_config_map_waits_with_the_reason(cluster: Cluster, namespace: str) -> None:
    async with node_bed(cluster, namespace) as bed:
        await bed.create("waits", [{"name": "app", "image": "busybox", "command": ["sleep", "300"],
                                    "volumeMounts": [{"name": "config", "mountPath": "/etc/config"}]}],
                         volumes=[{"name": "config", "configMap": {"name": "absent"}}])
        pod = await bed.until("waits", lambda p: container(p, "app").get("state", {}).get("waiting", {}).get("reason")
                              == "CreateContainerConfigError", "CreateContainerConfigError")
        assert "absent" in container(pod, "app")["state"]["waiting"]["message"]
        assert pod["status"]["phase"] == "Pending"
        # Created later, it is picked up by the retry.
        await bed.api.create(f"/api/v1/namespaces/{namespace}/configmaps",
                             {"metadata": {"name": "absent"}, "data": {"k": "v"}})
        await bed.until("waits", lambda p: p["status"].get("phase") == "Running", "Running after the retry")


async def test_the_kubelet_outlives_an_api_server_it_cannot_reach_and_stops_when_cancelled(tmp_path: Path) -> None:
    import ssl

    dead = KubeApi("https://127.0.0.1:1", ssl.create_default_context())
    topology = Topology(f"wisp-k{secrets.token_hex(3)}")
    node = topology.node(1)
    kubelet = NodeKubelet(dead, node, NodeView(tmp_path / "node"), topology=topology, bin_dir=BIN_DIR,
                          logs=tmp_path / "logs", pods_dir=tmp_path / "pods", hosts=lambda ns: [])
    try:
        with trio.move_on_after(1.5) as waited:
            await kubelet.run()
        assert waited.cancelled_caught, "run() returned on its own"
        assert kubelet.status() == []
    finally:
        await dead.aclose()


# -- pure: status building ---------------------------------------------------------------------------
def test_a_condition_keeps_its_transition_time_until_its_status_flips() -> None:
    first = transition({}, {"Ready": False}, "t1")
    assert transition(first, {"Ready": False}, "t2") == {"Ready": (False, "t1")}
    assert transition(first, {"Ready": True}, "t3") == {"Ready": (True, "t3")}


def test_build_status_keeps_the_schedulers_condition_and_names_unready_containers() -> None:
    pod = {"status": {"conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "t0"}]}}
    conditions = {"PodReadyToStartContainers": (True, "t1"), "Initialized": (True, "t1"),
                  "ContainersReady": (False, "t1"), "Ready": (False, "t1")}
    waiting = ContainerView("app", "busybox", False, False, 0, {"waiting": {"reason": "ErrImagePull"}}, {})
    status = build_status(pod, PodView("Pending", "10.250.0.11", "10.244.1.10", "t1", conditions, (waiting,)))
    assert status["conditions"][0] == {"type": "PodScheduled", "status": "True", "lastTransitionTime": "t0"}
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["message"] == "containers with unready status: [app]"
    assert status["podIPs"] == [{"ip": "10.244.1.10"}] and status["hostIPs"] == [{"ip": "10.250.0.11"}]
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "ErrImagePull"}}


def test_build_status_names_the_init_containers_not_done_yet() -> None:
    conditions = {"PodReadyToStartContainers": (True, "t1"), "Initialized": (False, "t1"),
                  "ContainersReady": (False, "t1"), "Ready": (False, "t1")}
    done = ContainerView("first", "busybox", False, False, 0, {"terminated": {"exitCode": 0}}, {})
    running = ContainerView("second", "busybox", False, True, 0, {"running": {"startedAt": "t1"}}, {})
    status = build_status({}, PodView("Pending", "10.250.0.11", "10.244.1.10", "t1", conditions, (), (done, running)))
    initialized = next(c for c in status["conditions"] if c["type"] == "Initialized")
    assert initialized["reason"] == "ContainersNotInitialized"
    assert initialized["message"] == "containers with incomplete status: [second]"


def test_a_succeeded_pod_is_not_ready_because_it_completed() -> None:
    conditions = {"PodReadyToStartContainers": (True, "t1"), "Initialized": (True, "t1"),
                  "ContainersReady": (False, "t2"), "Ready": (False, "t2")}
    ended = ContainerView("app", "busybox", False, False, 0, {"terminated": {"exitCode": 0}}, {})
    status = build_status({}, PodView("Succeeded", "10.250.0.11", "10.244.1.10", "t1", conditions, (ended,)))
    for kind in ("ContainersReady", "Ready"):
        condition = next(c for c in status["conditions"] if c["type"] == kind)
        assert condition["reason"] == "PodCompleted" and "message" not in condition


def test_a_pod_without_init_containers_is_initialized_while_its_network_is_made() -> None:
    import ipaddress
    from types import SimpleNamespace

    node = Node(1, "node1", "x-node1", "10.250.0.11", ipaddress.ip_network("10.244.1.0/24"))
    owner = SimpleNamespace(bin_dir=Path("/nonexistent"), logs=Path("/nonexistent"), restart_delay=1.0)
    plain = PodRecord("ns", "plain", node, "", {"containers": [{"name": "app"}]}, {}, uid="u1")
    staged = PodRecord("ns", "staged", node, "", {"initContainers": [{"name": "init"}], "containers": [{"name": "app"}]},
                       {}, uid="u2")
    lifecycle = _KubePods(owner)  # type: ignore[arg-type]

    def condition(record: PodRecord) -> str:
        return next(c for c in lifecycle.status_of(record)["conditions"] if c["type"] == "Initialized")["status"]
    assert condition(plain) == "True" and condition(staged) == "False"


def test_build_status_without_an_address_leaves_pod_ip_out() -> None:
    conditions = {k: (False, "t") for k in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")}
    status = build_status({}, PodView("Pending", "10.250.0.11", "", None, conditions, ()))
    assert "podIP" not in status and "startTime" not in status


def _supervised(**fields: Any) -> Supervised:
    supervised = Supervised("ns/pod/app", "netns", ["true"], Path("/nonexistent.log"))
    for key, value in fields.items():
        setattr(supervised, key, value)
    return supervised


def test_a_container_not_reached_yet_is_creating() -> None:
    view = container_view(None, {"name": "app", "image": "busybox"}, "u1")
    assert view.state == {"waiting": {"reason": "ContainerCreating"}} and view.restart_count == 0


def test_a_container_that_cannot_start_waits_with_its_reason_and_message() -> None:
    state = ContainerState("app", "nope", reason="ErrImagePull", message="no such image")
    view = container_view(state, {"name": "app", "image": "nope"}, "u1")
    assert view.state == {"waiting": {"reason": "ErrImagePull", "message": "no such image"}}


def test_a_crash_looping_container_waits_in_back_off_with_its_last_exit() -> None:
    state = ContainerState("app", "busybox", supervised=_supervised(
        restarts=2, waiting=True, started_at=10.0, last_exit=Exit(1, 10.0, 11.0)))
    view = container_view(state, {"name": "app", "image": "busybox"}, "u1")
    assert view.state["waiting"]["reason"] == "CrashLoopBackOff"
    assert view.last_state["terminated"]["exitCode"] == 1 and view.restart_count == 2
    assert view.container_id == "wisp://u1-app"


def test_a_container_ended_for_good_is_terminated_with_its_exit() -> None:
    ended = Exit(137, 10.0, 12.0, signal=9)
    state = ContainerState("app", "busybox", supervised=_supervised(started_at=10.0, last_exit=ended, terminated=ended))
    view = container_view(state, {"name": "app"}, "u1")
    assert view.state == {"terminated": {"exitCode": 137, "reason": "Error", "signal": 9,
                                         "startedAt": "1970-01-01T00:00:10Z", "finishedAt": "1970-01-01T00:00:12Z"}}
    assert not view.ready and view.last_state == {}


def test_the_pods_phase_follows_its_containers() -> None:
    def app(**fields: Any) -> ContainerState:
        return ContainerState("app", "busybox", supervised=_supervised(**fields))
    up = {"network_ready": True, "initialized": True}
    assert pod_phase([ContainerState("app", "x", reason="ErrImagePull")], **up) == "Pending"
    assert pod_phase([app(started_at=1.0)], network_ready=False, initialized=False) == "Pending"
    assert pod_phase([app(started_at=1.0)], **up) == "Running"
    assert pod_phase([app(started_at=1.0, terminated=Exit(0, 1, 2))], **up) == "Succeeded"
    assert pod_phase([app(started_at=1.0, terminated=Exit(0, 1, 2)), app(started_at=1.0, terminated=Exit(2, 1, 2))],
                     **up) == "Failed"
    # Restarting (restartPolicy Always): still Running.
    assert pod_phase([app(started_at=1.0, waiting=True, last_exit=Exit(1, 1, 2))], **up) == "Running"
    failed_init = ContainerState("init", "busybox", init=True, supervised=_supervised(terminated=Exit(1, 1, 2)))
    assert pod_phase([failed_init], network_ready=True, initialized=False) == "Failed"
