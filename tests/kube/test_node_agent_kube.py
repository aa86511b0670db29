"""The node agent's Kubernetes pod source against the real API server of the test bed: this node's
pods only, namespace labels, the redirection annotation as kubectl shows it, least-privilege
service-account credentials, a relist after a real 410, and the whole node agent enrolling a pod
that the API server holds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from cni import main as cni_main
from cni.agent import AgentConfig, NodeAgent
from cni.errors import PodSourceError
from cni.kube import KubeConfigError, KubePodSource, in_cluster, load_kubeconfig, make_client
from cni.podnetns import LocalNetnsLocator
from cni.podsource import PodView
from tests.support.fake_ztunnel import FakeZtunnel
from tests.support.netns import random_prefix, scratch_netns
from runtime.testbed.cluster import Cluster
from runtime.testbed.nodes import Nodes
from wisp.zds.protocol import Add, Del

ANNOTATION = "ambient.istio.io/redirection"
MERGE = {"Content-Type": "application/merge-patch+json"}


def pod_object(name: str, node: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    # spec.nodeName set at creation binds the pod as the scheduler would; the test bed's kubelet
    # stand-in then reports it Running with an address from the node's range.
    return {"metadata": {"name": name, "labels": labels or {}},
            "spec": {"nodeName": node, "serviceAccountName": "default",
                     "containers": [{"name": "app", "image": "registry.invalid/app:1"}]}}


class Views:
    """Every view the source published, and a way to wait for one that satisfies a predicate."""

    def __init__(self) -> None:
        self.all: list[PodView] = []
        self._changed = trio.Event()

    def publish(self, view: PodView) -> None:
        self.all.append(view)
        self._changed.set()
        self._changed = trio.Event()

    @property
    def last(self) -> PodView:
        return self.all[-1]

    async def until(self, predicate: Callable[[PodView], bool], what: str, timeout: float = 30.0) -> PodView:
        with trio.move_on_after(timeout):
            while not (self.all and predicate(self.last)):
                await self._changed.wait()
            return self.last
        pytest.fail("timed out after %.0f s waiting for a view where %s" % (timeout, what))


@asynccontextmanager
async def running(source: KubePodSource) -> AsyncIterator[Views]:
    views = Views()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.run, views.publish)
        try:
            yield views
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def admin_source(cluster: Cluster, node: str, **options: Any) -> AsyncIterator[KubePodSource]:
    async with make_client(load_kubeconfig(str(cluster.kubeconfig))) as client:
        yield KubePodSource(client, node, backoff_min=0.05, backoff_max=0.5, **options)


@asynccontextmanager
async def api(cluster: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=cluster.server, verify=cluster.ssl_context(), timeout=10) as client:
        yield client


async def create_pod(client: httpx.AsyncClient, namespace: str, name: str, node: str,
                     labels: dict[str, str] | None = None) -> dict[str, Any]:
    response = await client.post("/api/v1/namespaces/%s/pods" % namespace, json=pod_object(name, node, labels))
    assert response.status_code == 201, response.text
    return response.json()


def kubectl_annotation(cluster: Cluster, namespace: str, name: str) -> str:
    return cluster.kubectl("get", "pod", name, "-n", namespace, "-o",
                           "jsonpath={.metadata.annotations.ambient\\.istio\\.io/redirection}").stdout


async def test_the_source_sees_this_nodes_pods_only(cluster: Cluster, nodes: Nodes, namespace: str) -> None:
    async with api(cluster) as client:
        await create_pod(client, namespace, "here", "node1")
        await create_pod(client, namespace, "there", "node2")
        async with admin_source(cluster, "node1") as source, running(source) as views:
            await views.until(lambda v: (namespace, "here") in v.pods, "pod `here` of node1 is listed")
            await create_pod(client, namespace, "later", "node1")
            await create_pod(client, namespace, "elsewhere", "node3")
            view = await views.until(lambda v: (namespace, "later") in v.pods, "a new node1 pod arrives by watch")
            assert not {(namespace, "there"), (namespace, "elsewhere")} & set(view.pods)
            assert all(pod["spec"]["nodeName"] == "node1" for view in views.all for pod in view.pods.values())
            # The kubelet stand-in's status write comes through the watch as well.
            await views.until(lambda v: v.pods[(namespace, "later")].get("status", {}).get("podIP"),
                              "the pod's address reported by the kubelet")
            await client.delete("/api/v1/namespaces/%s/pods/here" % namespace)
            await views.until(lambda v: (namespace, "here") not in v.pods, "the deleted pod leaves the view")


async def test_namespace_label_changes_reach_the_view(cluster: Cluster, nodes: Nodes, namespace: str) -> None:
    def mode(view: PodView) -> str | None:
        return ((view.namespaces.get(namespace) or {}).get("metadata", {}).get("labels") or {}).get(
            "istio.io/dataplane-mode")

    async with admin_source(cluster, "node1") as source, running(source) as views:
        await views.until(lambda v: namespace in v.namespaces and mode(v) is None, "the namespace is listed")
        await trio.to_thread.run_sync(cluster.kubectl, "label", "namespace", namespace, "istio.io/dataplane-mode=ambient")
        await views.until(lambda v: mode(v) == "ambient", "the ambient label arrives")
        await trio.to_thread.run_sync(cluster.kubectl, "label", "namespace", namespace, "istio.io/dataplane-mode-")
        await views.until(lambda v: mode(v) is None, "the label removal arrives")


async def test_the_redirection_annotation_is_patched_and_visible_with_kubectl(
        cluster: Cluster, nodes: Nodes, namespace: str) -> None:
    async with api(cluster) as client:
        await create_pod(client, namespace, "web", "node1")
        # Someone else's annotation must survive ours: a merge patch, not a replace.
        await client.patch("/api/v1/namespaces/%s/pods/web" % namespace, headers=MERGE,
                           content=json.dumps({"metadata": {"annotations": {"team": "shop"}}}))
    async with admin_source(cluster, "node1") as source, running(source) as views:
        await source.set_redirection(namespace, "web", "enabled")
        assert await trio.to_thread.run_sync(kubectl_annotation, cluster, namespace, "web") == "enabled"
        view = await views.until(
            lambda v: (v.pods.get((namespace, "web")) or {}).get("metadata", {}).get("annotations", {}).get(ANNOTATION)
            == "enabled", "the annotation comes back through the watch")
        assert view.pods[(namespace, "web")]["metadata"]["annotations"]["team"] == "shop"
        await source.set_redirection(namespace, "web", None)
        assert await trio.to_thread.run_sync(kubectl_annotation, cluster, namespace, "web") == ""
        shown = json.loads((await trio.to_thread.run_sync(
            cluster.kubectl, "get", "pod", "web", "-n", namespace, "-o", "json")).stdout)
        assert shown["metadata"]["annotations"] == {"team": "shop"}
        await source.set_redirection(namespace, "gone", "enabled")  # a deleted pod: nothing to do


async def test_least_privilege_service_account_reads_and_annotates_but_nothing_more(
        cluster: Cluster, nodes: Nodes, namespace: str, tmp_path) -> None:
    rules = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]},
             {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}]
    role = "wisp-node-agent-" + namespace
    async with api(cluster) as client:
        for path, body in (
            ("/api/v1/namespaces/%s/serviceaccounts" % namespace, {"metadata": {"name": "node-agent"}}),
            ("/apis/rbac.authorization.k8s.io/v1/clusterroles", {"metadata": {"name": role}, "rules": rules}),
            ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
                "metadata": {"name": role},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": "node-agent", "namespace": namespace}]}),
        ):
            response = await client.post(path, json=body)
            assert response.status_code == 201, response.text
        try:
            response = await client.post(
                "/api/v1/namespaces/%s/serviceaccounts/node-agent/token" % namespace,
                json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}})
            assert response.status_code == 201, response.text
            (tmp_path / "token").write_text(response.json()["status"]["token"])
            shutil.copy(cluster.pki.ca_cert, tmp_path / "ca.crt")
            await create_pod(client, namespace, "web", "node1")
            config = in_cluster({"KUBERNETES_SERVICE_HOST": "127.0.0.1",
                                 "KUBERNETES_SERVICE_PORT": str(cluster.ports.apiserver)}, str(tmp_path))
            async with make_client(config) as agent_client:
                source = KubePodSource(agent_client, "node1", backoff_min=0.05)
                async with running(source) as views:
                    await views.until(lambda v: (namespace, "web") in v.pods, "the pod, read with the token")
                    await source.set_redirection(namespace, "web", "enabled")
                    assert await trio.to_thread.run_sync(kubectl_annotation, cluster, namespace, "web") == "enabled"
                # The same token may not write anything else, and the refusal is an error, not a crash.
                denied = await agent_client.delete("/api/v1/namespaces/%s/pods/web" % namespace)
                assert denied.status_code == 403
        finally:
            await client.delete("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/" + role)
            await client.delete("/apis/rbac.authorization.k8s.io/v1/clusterroles/" + role)


async def test_an_annotation_write_the_api_refuses_is_a_pod_source_error(
        cluster: Cluster, nodes: Nodes, namespace: str, tmp_path) -> None:
    async with api(cluster) as client:
        await create_pod(client, namespace, "web", "node1")
        response = await client.post("/api/v1/namespaces/%s/serviceaccounts/default/token" % namespace,
                                     json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                           "spec": {}})
        (tmp_path / "token").write_text(response.json()["status"]["token"])
    shutil.copy(cluster.pki.ca_cert, tmp_path / "ca.crt")
    config = in_cluster({"KUBERNETES_SERVICE_HOST": "127.0.0.1",
                         "KUBERNETES_SERVICE_PORT": str(cluster.ports.apiserver)}, str(tmp_path))
    async with make_client(config) as unprivileged:
        with pytest.raises(PodSourceError, match="annotating pod .*/web: the API server answered 403"):
            await KubePodSource(unprivileged, "node1").set_redirection(namespace, "web", "enabled")


def test_kubeconfig_and_in_cluster_errors_name_what_is_missing(cluster: Cluster, tmp_path) -> None:
    with pytest.raises(KubeConfigError, match="cannot read kubeconfig"):
        load_kubeconfig(str(tmp_path / "none"))
    (tmp_path / "bad").write_text("apiVersion: v1\ncurrent-context: nowhere\ncontexts: []\n")
    with pytest.raises(KubeConfigError, match="no context named 'nowhere'"):
        load_kubeconfig(str(tmp_path / "bad"))
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST"):
        in_cluster({}, str(tmp_path))
    with pytest.raises(KubeConfigError, match="unreadable"):
        in_cluster({"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"}, str(tmp_path))
    assert load_kubeconfig(str(cluster.kubeconfig)).server == cluster.server


# The API server's watch cache keeps events for at least 75 s (k8s.io/apiserver's
# eventFreshDuration) and grows rather than drop fresher ones, so a resourceVersion is "too old"
# (410) only once it is older than that and newer events have pushed it out.
WATCH_CACHE_FRESH_SECONDS = 75


async def test_a_watch_resumed_after_its_resource_version_expired_relists_without_losing_changes(
        cluster: Cluster, nodes: Nodes, namespace: str) -> None:
    async with api(cluster) as client, admin_source(cluster, "node1", watch_timeout=2) as source:
        await create_pod(client, namespace, "stays", "node1")
        await create_pod(client, namespace, "goes", "node1")
        async with running(source) as views:
            await views.until(lambda v: {(namespace, "stays"), (namespace, "goes")} <= set(v.pods), "both pods")
        # The agent is cut off from here on (as during a partition); its caches and resourceVersions stay.
        stale = source.pods.resource_version
        cut_off = time.monotonic()
        await client.delete("/api/v1/namespaces/%s/pods/goes" % namespace)
        await create_pod(client, namespace, "new", "node1")
        await create_pod(client, namespace, "churn", "node2")
        await trio.sleep(WATCH_CACHE_FRESH_SECONDS + 2 - (time.monotonic() - cut_off))
        expired = False
        for round_ in range(40):  # bounded: 40 x 50 writes of another node's pod
            for i in range(50):
                await client.patch("/api/v1/namespaces/%s/pods/churn" % namespace, headers=MERGE,
                                   content=json.dumps({"metadata": {"annotations": {"n": "%d-%d" % (round_, i)}}}))
            async with client.stream("GET", "/api/v1/pods", params={
                    "watch": "1", "resourceVersion": stale, "timeoutSeconds": "1",
                    "fieldSelector": "spec.nodeName=node1"}) as response:
                first = ""
                async for line in response.aiter_lines():
                    first = line
                    break
            if response.status_code == 410 or '"code":410' in first:
                expired = True
                break
        assert expired, "the API server never expired resourceVersion %s" % stale
        assert source.pods.relists == 0
        async with running(source) as views:
            view = await views.until(lambda v: (namespace, "new") in v.pods, "the relisted view")
            assert source.pods.relists == 1
            assert (namespace, "goes") not in view.pods and (namespace, "stays") in view.pods
            assert (namespace, "churn") not in view.pods
            # And the resumed watch follows changes again.
            await create_pod(client, namespace, "after", "node1")
            await views.until(lambda v: (namespace, "after") in v.pods, "a change after the relist")


async def test_the_node_agent_enrols_a_pod_of_the_api_server_and_kubectl_shows_the_annotation(
        cluster: Cluster, nodes: Nodes, namespace: str) -> None:
    prefix = random_prefix()
    sockdir = tempfile.mkdtemp(prefix="wisp-tcni")
    try:
        with scratch_netns("%s-%s-web" % (prefix, namespace)), scratch_netns(prefix + "-node1") as node_netns:
            async with api(cluster) as client:
                created = await create_pod(client, namespace, "web", "node1")
            uid = created["metadata"]["uid"]
            config = AgentConfig(node="node1", zds_socket=os.path.join(sockdir, "ztunnel.sock"),
                                 cni_socket=os.path.join(sockdir, "cni.sock"), host_netns=node_netns,
                                 ack_timeout=2.0, retry_interval=0.2, resync_interval=1.0)
            async with admin_source(cluster, "node1") as source, trio.open_nursery() as nursery:
                agent = NodeAgent(config, source, LocalNetnsLocator(prefix))
                fake = FakeZtunnel(config.zds_socket)
                await nursery.start(fake.serve)
                with trio.fail_after(30):
                    await nursery.start(agent.run)
                    await trio.to_thread.run_sync(cluster.kubectl, "label", "namespace", namespace,
                                                  "istio.io/dataplane-mode=ambient")
                    while await trio.to_thread.run_sync(kubectl_annotation, cluster, namespace, "web") != "enabled":
                        await trio.sleep(0.2)
                    assert any(isinstance(m, Add) and m.uid == uid for m in fake.messages())
                    await trio.to_thread.run_sync(cluster.kubectl, "label", "namespace", namespace,
                                                  "istio.io/dataplane-mode-")
                    while await trio.to_thread.run_sync(kubectl_annotation, cluster, namespace, "web") != "":
                        await trio.sleep(0.2)
                    await fake.wait_for(lambda r: r[-1].message == Del(uid))
                fake.close()
                nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def test_the_node_agent_process_in_kubernetes_mode_chains_the_plugin_while_it_runs(
        cluster: Cluster, nodes: Nodes, tmp_path) -> None:
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    conf_dir.mkdir()
    bin_dir.mkdir()
    primary = (b'{"cniVersion": "1.0.0", "name": "cbr0", "plugins": [{"type": "bridge", "bridge": "cni0",'
               b' "ipam": {"type": "host-local", "subnet": "10.244.1.0/24"}}]}\n')
    (conf_dir / "10-cbr0.conflist").write_bytes(primary)
    root = os.path.dirname(os.path.dirname(os.path.abspath(cni_main.__file__)))
    code = "import sys; sys.path.append(%r); from cni.main import main; main()" % root
    with scratch_netns(random_prefix() + "-node1") as node_netns:
        process = subprocess.Popen(
            [sys.executable, "-P", "-c", code, "--kubeconfig", str(cluster.kubeconfig),
             "--zds-socket", str(tmp_path / "zds" / "ztunnel.sock"), "--cni-socket", str(tmp_path / "cni" / "cni.sock"),
             "--host-netns", node_netns, "--install-cni", "--cni-conf-dir", str(conf_dir), "--cni-bin-dir", str(bin_dir)],
            env={**os.environ, "NODE_NAME": "node1"}, cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while b"wisp-cni" not in (conf_dir / "10-cbr0.conflist").read_bytes():
                assert process.poll() is None, process.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the agent never chained the plugin"
                time.sleep(0.1)
            chained = json.loads((conf_dir / "10-cbr0.conflist").read_bytes())
            assert chained["plugins"][-1] == {"type": "wisp-cni", "agent_socket": str(tmp_path / "cni" / "cni.sock")}
            assert os.access(bin_dir / "wisp-cni", os.X_OK)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert (conf_dir / "10-cbr0.conflist").read_bytes() == primary
    assert os.listdir(bin_dir) == []


def test_the_node_agent_refuses_kubernetes_mode_without_a_node_name(tmp_path) -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(cni_main.__file__)))
    code = "import sys; sys.path.append(%r); from cni.main import main; main()" % root
    env = {k: v for k, v in os.environ.items() if k != "NODE_NAME"}
    done = subprocess.run([sys.executable, "-P", "-c", code, "--in-cluster"], env=env, cwd="/",
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "NODE_NAME" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-P", "-c", code, "--node", "n1", "--kubeconfig", str(tmp_path / "none")],
                          env=env, cwd="/", capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "cannot read kubeconfig" in done.stderr and "Traceback" not in done.stderr


def test_the_node_agent_stops_with_the_reason_when_the_host_cni_configuration_is_unusable(
        cluster: Cluster, nodes: Nodes, tmp_path) -> None:
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    conf_dir.mkdir()
    bin_dir.mkdir()
    (conf_dir / "10-cbr0.conflist").write_bytes(b'{"cniVersion": "1.0.0", "name": ')
    root = os.path.dirname(os.path.dirname(os.path.abspath(cni_main.__file__)))
    code = "import sys; sys.path.append(%r); from cni.main import main; main()" % root
    with scratch_netns(random_prefix() + "-node1") as node_netns:
        done = subprocess.run(
            [sys.executable, "-P", "-c", code, "--kubeconfig", str(cluster.kubeconfig), "--node", "node1",
             "--zds-socket", str(tmp_path / "zds.sock"), "--cni-socket", str(tmp_path / "cni.sock"),
             "--host-netns", node_netns, "--install-cni", "--cni-conf-dir", str(conf_dir), "--cni-bin-dir", str(bin_dir)],
            cwd="/", capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "is not JSON" in done.stderr.splitlines()[-1] and "Traceback" not in done.stderr
    assert (conf_dir / "10-cbr0.conflist").read_bytes() == b'{"cniVersion": "1.0.0", "name": '
    assert os.listdir(bin_dir) == []


async def test_a_refused_list_is_retried_until_the_permissions_arrive(
        cluster: Cluster, nodes: Nodes, namespace: str, tmp_path) -> None:
    role = "wisp-late-" + namespace
    async with api(cluster) as client:
        response = await client.post("/api/v1/namespaces/%s/serviceaccounts" % namespace,
                                     json={"metadata": {"name": "late"}})
        assert response.status_code == 201, response.text
        response = await client.post("/api/v1/namespaces/%s/serviceaccounts/late/token" % namespace,
                                     json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}})
        (tmp_path / "token").write_text(response.json()["status"]["token"])
        shutil.copy(cluster.pki.ca_cert, tmp_path / "ca.crt")
        config = in_cluster({"KUBERNETES_SERVICE_HOST": "127.0.0.1",
                             "KUBERNETES_SERVICE_PORT": str(cluster.ports.apiserver)}, str(tmp_path))
        try:
            async with make_client(config) as agent_client:
                source = KubePodSource(agent_client, "node1", backoff_min=0.05, backoff_max=0.2)
                async with running(source) as views:
                    await trio.sleep(1.0)
                    assert views.all == [] and not source.pods.listed  # 403s, retried, nothing published
                    rules = [{"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["list", "watch"]}]
                    for path, body in (
                        ("/apis/rbac.authorization.k8s.io/v1/clusterroles", {"metadata": {"name": role}, "rules": rules}),
                        ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
                            "metadata": {"name": role},
                            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                            "subjects": [{"kind": "ServiceAccount", "name": "late", "namespace": namespace}]}),
                    ):
                        response = await client.post(path, json=body)
                        assert response.status_code == 201, response.text
                    await views.until(lambda v: namespace in v.namespaces, "the first view once allowed")
        finally:
            await client.delete("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/" + role)
            await client.delete("/apis/rbac.authorization.k8s.io/v1/clusterroles/" + role)
