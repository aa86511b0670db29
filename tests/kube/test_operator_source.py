"""The operator's Kubernetes source against the real API server: list, watch, 410 relist, CRDs.

Every test works in its own namespace (the ``namespace`` fixture deletes it) and stops its
operator in a ``with`` block, so nothing outlives it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from runtime.testbed.cluster import Cluster
from runtime.testbed.nodes import Nodes
from wisp_operator.kube.source import KINDS_BY_NAME, SOURCE_PREFIX

from .conftest import wait_for
from .operator_harness import RunningOperator

CRDS = Path(__file__).resolve().parents[2] / "deploy" / "crds"
AP_PATH = "/apis/security.istio.io/v1/namespaces/%s/authorizationpolicies"


def install_crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))


def pod(name: str, node: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "example.invalid/web"}]}}


def policy(name: str, principal: str = "cluster.local/ns/a/sa/b") -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "rules": [{"from": [{"source": {"principals": [principal]}}]}]}}


def workloads(op: RunningOperator, namespace: str) -> dict[str, Any]:
    snapshot = op.controller.distributor.snapshot
    if snapshot is None:
        return {}
    return {w.name: w for w in snapshot.workloads.values() if w.namespace == namespace}


def test_initial_list_then_watch_events_reach_store_and_model(cluster: Cluster, nodes: Nodes, namespace: str) -> None:
    with cluster.client() as client:
        created = client.post("/api/v1/namespaces/%s/pods" % namespace, json=pod("before", "node1"))
        assert created.status_code == 201, created.text
        wait_for(lambda: client.get("/api/v1/namespaces/%s/pods/before" % namespace).json()
                 .get("status", {}).get("podIP"), "the pod's IP from the kubelet stand-in")
        with RunningOperator(cluster) as op:
            wait_for(op.source.synced.is_set, "the operator's initial list")
            # Initial list: the pod, its namespace and the cluster's nodes are in the store, as listed.
            stored = op.on_loop(lambda: op.store.get("Pod", namespace, "before"))
            assert stored is not None and stored["apiVersion"] == "v1" and "managedFields" not in stored["metadata"]
            assert op.on_loop(lambda: op.store.get("Namespace", "", namespace)) is not None
            assert op.on_loop(lambda: op.store.get("Node", "", "node1")) is not None
            wait_for(lambda: "before" in workloads(op, namespace), "the listed pod's Workload")
            lists = op.source.lists

            # Watch: add, modify, delete each reach the store and the model, without a relist.
            assert client.post("/api/v1/namespaces/%s/pods" % namespace,
                               json=pod("after", "node2")).status_code == 201
            wait_for(lambda: "after" in workloads(op, namespace), "the added pod's Workload")
            assert workloads(op, namespace)["after"].node == "node2"
            patched = client.patch("/api/v1/namespaces/%s/pods/after" % namespace,
                                   content=json.dumps({"metadata": {"labels": {"version": "v2"}}}),
                                   headers={"content-type": "application/merge-patch+json"})
            assert patched.status_code == 200, patched.text
            wait_for(lambda: (op.on_loop(lambda: op.store.get("Pod", namespace, "after")) or {})
                     .get("metadata", {}).get("labels", {}).get("version") == "v2", "the label change in the store")
            wait_for(lambda: workloads(op, namespace)["after"].canonical_revision == "v2",
                     "the label change in the model")
            assert client.delete("/api/v1/namespaces/%s/pods/after" % namespace,
                                 params={"gracePeriodSeconds": "0"}).status_code == 200
            wait_for(lambda: "after" not in workloads(op, namespace), "the deleted pod's Workload to go")
            assert op.on_loop(lambda: op.store.get("Pod", namespace, "after")) is None
            assert op.source.lists == lists, "watch events must not need a relist"
            assert op.source.events >= 3


GATEWAY_CLASS_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    # A *.k8s.io group needs the approval annotation, as the real Gateway API CRDs carry.
    "metadata": {"name": "gatewayclasses.gateway.networking.k8s.io",
                 "annotations": {"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/2466"}},
    "spec": {"group": "gateway.networking.k8s.io", "scope": "Cluster",
             "names": {"plural": "gatewayclasses", "singular": "gatewayclass", "kind": "GatewayClass",
                       "listKind": "GatewayClassList"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {"type": "object",
                                                          "x-kubernetes-preserve-unknown-fields": True}}}]},
}


def test_missing_crd_is_skipped_then_followed_once_installed(cluster: Cluster) -> None:
    kind = KINDS_BY_NAME["GatewayClass"]  # deploy/crds bundles no GatewayClass CRD
    crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    with cluster.client() as client, RunningOperator(cluster, [KINDS_BY_NAME["Namespace"], kind]) as op:
        assert client.get(crd_path + "/" + GATEWAY_CLASS_CRD["metadata"]["name"]).status_code == 404
        wait_for(op.source.synced.is_set, "sync with one kind absent")
        assert "GatewayClass" in op.source.absent
        try:
            installed = client.post(crd_path, json=GATEWAY_CLASS_CRD)
            assert installed.status_code == 201, installed.text
            cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                            "crd/" + GATEWAY_CLASS_CRD["metadata"]["name"])
            created = client.post(kind.path(), json={"apiVersion": kind.api_version, "kind": "GatewayClass",
                                                     "metadata": {"name": "istio-waypoint"},
                                                     "spec": {"controllerName": "istio.io/mesh-controller"}})
            assert created.status_code == 201, created.text
            wait_for(lambda: op.on_loop(lambda: op.store.get("GatewayClass", "", "istio-waypoint")),
                     "the GatewayClass once its CRD is installed")
            assert "GatewayClass" not in op.source.absent
        finally:
            client.delete(crd_path + "/" + GATEWAY_CLASS_CRD["metadata"]["name"])


def _compact_etcd(cluster: Cluster) -> int:
    etcd = "http://127.0.0.1:%d" % cluster.ports.etcd_client
    revision = int(httpx.post(etcd + "/v3/maintenance/status", json={}).json()["header"]["revision"])
    response = httpx.post(etcd + "/v3/kv/compaction", json={"revision": revision, "physical": True})
    assert response.status_code == 200, response.text
    return revision


def _watch_first_event(client: httpx.Client, path: str, resource_version: str) -> dict[str, Any]:
    with client.stream("GET", path, params={"watch": "1", "resourceVersion": resource_version,
                                            "timeoutSeconds": "1"}) as stream:
        if stream.status_code != 200:
            stream.read()
            return {"type": "ERROR", "object": {"code": stream.status_code}}
        for line in stream.iter_lines():
            return json.loads(line)
    return {}


def test_watch_expired_by_compaction_relists_without_losing_an_event(cluster: Cluster, namespace: str) -> None:
    install_crds(cluster)
    ap = KINDS_BY_NAME["AuthorizationPolicy"]
    crd = "authorizationpolicies.security.istio.io"
    with cluster.client() as client, RunningOperator(cluster, [KINDS_BY_NAME["Namespace"], ap],
                                                     writer=False) as op:
        wait_for(op.source.synced.is_set, "the initial list")
        for name in ("keep", "gone"):
            assert client.post(AP_PATH % namespace, json=policy(name)).status_code == 201
        wait_for(lambda: op.on_loop(lambda: op.store.get("AuthorizationPolicy", namespace, "gone")),
                 "both policies in the store")
        op.on_loop(op.source.disconnect)
        held = op.source.resource_versions["AuthorizationPolicy"]

        # While the operator is cut off: one change, one delete, one add.
        changed = policy("keep", "cluster.local/ns/a/sa/changed")
        changed["metadata"]["resourceVersion"] = client.get((AP_PATH % namespace) + "/keep").json()[
            "metadata"]["resourceVersion"]
        assert client.put((AP_PATH % namespace) + "/keep", json=changed).status_code == 200
        assert client.delete((AP_PATH % namespace) + "/gone").status_code == 200
        assert client.post(AP_PATH % namespace, json=policy("new")).status_code == 201

        # etcd forgets the history behind the operator's resourceVersion. The API server's watch
        # cache would still serve it from memory; a CRD spec change rebuilds that resource's
        # cache from etcd at the current revision, as an API server restart would.
        _compact_etcd(cluster)
        patch = [{"op": "add", "path": "/spec/versions/0/additionalPrinterColumns/-",
                  "value": {"name": "Probe", "type": "string", "jsonPath": ".metadata.uid"}}]
        cluster.kubectl("patch", "crd", crd, "--type=json", "-p", json.dumps(patch))
        try:
            wait_for(lambda: _watch_first_event(client, ap.path(), held).get("object", {}).get("code") == 410,
                     "the API server to answer 410 Gone for the operator's resourceVersion")
            relists = op.source.relists_gone
            op.on_loop(op.source.reconnect)
            wait_for(lambda: op.source.relists_gone > relists, "the operator to relist after 410")

            def converged() -> bool:
                keep = op.store.get("AuthorizationPolicy", namespace, "keep")
                return (keep is not None and op.store.get("AuthorizationPolicy", namespace, "gone") is None
                        and op.store.get("AuthorizationPolicy", namespace, "new") is not None
                        and keep["spec"]["rules"][0]["from"][0]["source"]["principals"]
                        == ["cluster.local/ns/a/sa/changed"])

            wait_for(lambda: op.on_loop(converged), "the store to hold exactly the API's policies")
            # And the model agrees: the deleted policy's Authorization is gone, the new one is in.
            wait_for(lambda: {a.name for a in op.controller.distributor.snapshot.authorizations.values()
                              if a.namespace == namespace} == {"keep", "new"}, "the model to converge")
            # The watch goes on after the relist.
            assert client.post(AP_PATH % namespace, json=policy("later")).status_code == 201
            wait_for(lambda: op.on_loop(lambda: op.store.get("AuthorizationPolicy", namespace, "later")),
                     "a later event through the new watch")
        finally:
            cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f",
                            str(CRDS / "security.istio.io.yaml"))


def test_list_of_1000_pods_timed(cluster: Cluster, namespace: str, capsys: Any) -> None:
    pod_kind = KINDS_BY_NAME["Pod"]
    with cluster.client(timeout=30) as client:
        for start in range(0, 1000, 100):
            # "nowhere" is no node: the scheduler skips bound pods and no kubelet stand-in acts on them.
            items = [pod("p%04d" % i, "nowhere") for i in range(start, start + 100)]
            for item in items:
                response = client.post("/api/v1/namespaces/%s/pods" % namespace, json=item)
                assert response.status_code == 201, response.text
        try:
            with RunningOperator(cluster, [pod_kind], writer=False) as op:
                began = time.monotonic()
                wait_for(op.source.synced.is_set, "the list of pods", timeout=60, interval=0.02)
                seconds = time.monotonic() - began
                count = op.on_loop(lambda: sum(1 for key in op.store.snapshot().objects
                                               if key[0] == "Pod" and key[1] == namespace))
                assert count == 1000
                assert op.source.lists == 1
        finally:
            # No kubelet confirms these pods' deletion: delete them at once, or the namespace hangs.
            client.delete("/api/v1/namespaces/%s/pods" % namespace, params={"gracePeriodSeconds": "0"})
        assert SOURCE_PREFIX == "kube/"
        with capsys.disabled():
            print("\noperator listed 1000 pods (plus the cluster's others) into the store in %.2f s" % seconds)
