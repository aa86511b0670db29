"""The test bed is a real control plane: the built kubectl talks to it, simulated nodes are Ready and
keep their Lease, the real controllers and scheduler place DaemonSet and Deployment pods that the
kubelet stand-in makes Ready, TokenRequest/TokenReview work, and it stops without leftovers.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from runtime.testbed import build
from runtime.testbed.cluster import OWNER_FILE, PREFIX, Cluster, StartError, leftovers, remove_stale, start
from runtime.testbed.nodes import LEASE_NAMESPACE, Nodes

from .conftest import NODE_COUNT, wait_for


def test_built_kubectl_talks_to_the_built_api_server(cluster: Cluster) -> None:
    shown = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert shown["clientVersion"]["gitVersion"] == build.K8S_VERSION
    assert shown["serverVersion"]["gitVersion"] == build.K8S_VERSION


def test_components_listen_on_loopback_only(cluster: Cluster) -> None:
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":  # LISTEN
                listening.add((local.rsplit(":", 1)[0], int(local.rsplit(":", 1)[1], 16)))
    ports = cluster.ports
    ours = {ports.etcd_client, ports.etcd_peer, ports.apiserver, ports.controller_manager, ports.scheduler}
    for address, port in listening:
        if port in ours:
            assert address == "0100007F", "port %d listens on %s, not 127.0.0.1" % (port, address)
    assert ours <= {port for _, port in listening}


def test_nodes_are_registered_ready_and_schedulable(cluster: Cluster, nodes: Nodes) -> None:
    listed = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert sorted(node["metadata"]["name"] for node in listed) == sorted(nodes.names)
    for node in listed:
        conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert conditions["Ready"] == "True"
        assert conditions["MemoryPressure"] == conditions["DiskPressure"] == conditions["PIDPressure"] == "False"
        assert not node["spec"].get("taints"), node["spec"]["taints"]
        assert int(node["status"]["allocatable"]["pods"]) > 0
        assert any(a["type"] == "InternalIP" for a in node["status"]["addresses"])


def test_node_lease_is_renewed(cluster: Cluster, nodes: Nodes) -> None:
    path = "/apis/coordination.k8s.io/v1/namespaces/%s/leases/%s" % (LEASE_NAMESPACE, nodes.names[0])
    with cluster.client() as client:
        first = client.get(path).json()["spec"]["renewTime"]
        renewed = wait_for(lambda: client.get(path).json()["spec"]["renewTime"] != first,
                           "lease %s renewed" % nodes.names[0], timeout=3 * nodes.lease_interval)
        lease = client.get(path).json()
    assert renewed
    assert lease["spec"]["holderIdentity"] == nodes.names[0]
    assert lease["metadata"]["ownerReferences"][0]["kind"] == "Node"


def test_daemonset_gets_one_ready_pod_per_node(cluster: Cluster, nodes: Nodes, namespace: str) -> None:
    # Privileged and on the host network, as wisp's node agent will be: --allow-privileged is on.
    daemonset = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {
                    "hostNetwork": True,
                    "containers": [{"name": "agent", "image": "wisp:test",
                                    "securityContext": {"privileged": True}}],
                },
            },
        },
    }
    with cluster.client() as client:
        response = client.post("/apis/apps/v1/namespaces/%s/daemonsets" % namespace, json=daemonset)
        assert response.status_code == 201, response.text
        path = "/apis/apps/v1/namespaces/%s/daemonsets/agent" % namespace
        wait_for(lambda: client.get(path).json().get("status", {}).get("numberReady") == NODE_COUNT,
                 "%d ready DaemonSet pods" % NODE_COUNT)
        pods = client.get("/api/v1/namespaces/%s/pods" % namespace).json()["items"]
    assert sorted(pod["spec"]["nodeName"] for pod in pods) == sorted(nodes.names)
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert pod["status"]["podIP"] == pod["status"]["hostIP"]  # host network
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet"


def test_deployment_pods_become_ready_endpoints_of_their_service(cluster: Cluster, nodes: Nodes, namespace: str) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "web", "image": "wisp:test"}]}},
        },
    }
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": namespace},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}
    with cluster.client() as client:
        assert client.post("/apis/apps/v1/namespaces/%s/deployments" % namespace, json=deployment).status_code == 201
        assert client.post("/api/v1/namespaces/%s/services" % namespace, json=service).status_code == 201

        def ready_endpoints() -> list[str]:
            slices = client.get("/apis/discovery.k8s.io/v1/namespaces/%s/endpointslices" % namespace,
                                params={"labelSelector": "kubernetes.io/service-name=web"}).json()["items"]
            found = [address for piece in slices for endpoint in piece.get("endpoints") or []
                     if endpoint.get("conditions", {}).get("ready") for address in endpoint["addresses"]]
            return found if len(found) == 2 else []

        addresses = wait_for(ready_endpoints, "2 ready endpoints in the EndpointSlice of web")
        pods = client.get("/api/v1/namespaces/%s/pods" % namespace).json()["items"]
    assert sorted(addresses) == sorted(pod["status"]["podIP"] for pod in pods)
    for pod in pods:
        assert pod["status"]["podIP"].startswith("10.244.")


def test_deleted_pod_goes_away_and_is_replaced(cluster: Cluster, nodes: Nodes, namespace: str) -> None:
    # Without a kubelet a graceful deletion would hang forever; the stand-in confirms it.
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "one", "namespace": namespace},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "one"}},
                 "template": {"metadata": {"labels": {"app": "one"}},
                              "spec": {"containers": [{"name": "one", "image": "wisp:test"}]}}},
    }
    pods_path = "/api/v1/namespaces/%s/pods" % namespace
    with cluster.client() as client:
        assert client.post("/apis/apps/v1/namespaces/%s/deployments" % namespace, json=deployment).status_code == 201

        def running() -> list[dict]:
            return [p for p in client.get(pods_path).json()["items"] if p["status"].get("phase") == "Running"]

        first = wait_for(running, "the first pod running")[0]["metadata"]["name"]
        assert client.delete("%s/%s" % (pods_path, first)).status_code == 200
        wait_for(lambda: client.get("%s/%s" % (pods_path, first)).status_code == 404, "pod %s gone" % first)
        replacement = wait_for(running, "a replacement pod running")
    assert replacement[0]["metadata"]["name"] != first


def _token(cluster: Cluster, namespace: str, account: str, audience: str) -> str:
    with cluster.client() as client:
        response = client.post(
            "/api/v1/namespaces/%s/serviceaccounts/%s/token" % (namespace, account),
            json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                  "spec": {"audiences": [audience], "expirationSeconds": 600}},
        )
    assert response.status_code == 201, response.text
    return response.json()["status"]["token"]


def _review(cluster: Cluster, token: str, audience: str) -> dict:
    with cluster.client() as client:
        response = client.post(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                  "spec": {"token": token, "audiences": [audience]}},
        )
    assert response.status_code == 201, response.text
    return response.json()["status"]


def test_token_request_then_token_review_accepts_it(cluster: Cluster, namespace: str) -> None:
    with cluster.client() as client:
        created = client.post("/api/v1/namespaces/%s/serviceaccounts" % namespace,
                              json={"metadata": {"name": "ztunnel"}})
        assert created.status_code == 201, created.text
    status = _review(cluster, _token(cluster, namespace, "ztunnel", "istio-ca"), "istio-ca")
    assert status["authenticated"] is True
    assert status["user"]["username"] == "system:serviceaccount:%s:ztunnel" % namespace
    assert status["audiences"] == ["istio-ca"]


def test_token_for_another_audience_is_refused(cluster: Cluster, namespace: str) -> None:
    status = _review(cluster, _token(cluster, namespace, "default", "somebody-else"), "istio-ca")
    assert not status.get("authenticated")
    assert "audience" in status.get("error", "")


def test_a_cluster_stops_cleanly(testbed_binaries: build.Binaries) -> None:
    other = start(testbed_binaries, timeout=120)
    pids, workdir = other.pids(), other.workdir
    assert all(Path("/proc/%d" % pid).exists() for pid in pids)
    other.stop()
    assert not workdir.exists()
    assert not any(Path("/proc/%d" % pid).exists() for pid in pids)
    # Whatever still carries the prefix belongs to another cluster of this session, never to this one.
    assert not {pid for pid, _ in leftovers().processes} & set(pids)


def test_a_component_that_fails_to_start_stops_the_rest_and_says_why(tmp_path: Path,
                                                                       testbed_binaries: build.Binaries) -> None:
    broken = tmp_path / "bin"
    broken.mkdir()
    for name in ("etcd", "kube-controller-manager", "kube-scheduler", "kubectl"):
        os.symlink(testbed_binaries.path(name), broken / name)
    fake = broken / "kube-apiserver"
    fake.write_text("#!/bin/sh\necho 'no such flag --etcd-servers' >&2\nexit 3\n")
    fake.chmod(0o755)
    before = leftovers()
    started = time.monotonic()
    with pytest.raises(StartError, match="(?s)kube-apiserver exited with status 3.*no such flag"):
        start(build.Binaries(broken, "v0", "v0"), timeout=60)
    assert time.monotonic() - started < 30
    after = leftovers()
    assert {pid for pid, _ in after.processes} <= {pid for pid, _ in before.processes}
    assert set(after.directories) <= set(before.directories)
    assert all(name.startswith(PREFIX) for _, name in after.processes)


def test_directories_of_dead_owners_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait()
    stale, live, unowned = (tmp_path / (PREFIX + name) for name in ("stale", "live", "unowned"))
    for directory in (stale, live, unowned):
        directory.mkdir()
    (stale / OWNER_FILE).write_text("%d\n" % dead_pid.pid)
    (live / OWNER_FILE).write_text("%d\n" % os.getpid())
    assert remove_stale(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and unowned.exists()
