"""The Kubernetes source drops Pod fields nothing in the operator reads (operator/kube/source.py):
what it keeps reconciles to the very model the whole object does, and the CA's pod lookups
still find what they check."""

from __future__ import annotations

import copy
from typing import Any

from wisp_operator.cluster import ClusterState
from wisp_operator.kube.source import KINDS_BY_NAME, KubeSource
from wisp_operator.kube_auth import state_pod_lookups
from wisp_operator.reconcile import reconcile


def api_pod() -> dict[str, Any]:
    """A pod as kube-apiserver 1.37 returns it once its kubelet reported it running."""
    return {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": "web-1", "namespace": "shop", "uid": "5b0c", "resourceVersion": "812",
                     "labels": {"app": "web", "version": "v1"},
                     "annotations": {"ambient.istio.io/redirection": "enabled"},
                     "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
        "spec": {
            "nodeName": "node1", "serviceAccountName": "web",
            "volumes": [{"name": "kube-api-access-x", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
            "containers": [{"name": "app", "image": "example/web:1",
                            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                            "resources": {}, "terminationMessagePath": "/dev/termination-log",
                            "terminationMessagePolicy": "File",
                            "volumeMounts": [{"name": "kube-api-access-x", "mountPath": "/var/run/secrets"}]}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                             "effect": "NoExecute", "tolerationSeconds": 300}],
        },
        "status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}],
                   "hostIP": "10.250.0.11",
                   "conditions": [{"type": "Ready", "status": "True"}],
                   "containerStatuses": [{"name": "app", "ready": True, "restartCount": 0,
                                          "state": {"running": {"startedAt": "2026-12-04T21:00:00Z"}}}]},
    }


def cluster(pod: dict[str, Any]) -> ClusterState:
    return ClusterState.of([
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
         "spec": {"clusterIP": "10.96.0.9", "selector": {"app": "web"},
                  "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}},
        pod,
    ])


def test_pod_without_unread_fields_reconciles_to_the_same_model() -> None:
    whole = api_pod()
    kept = KubeSource._prepared(KINDS_BY_NAME["Pod"], copy.deepcopy(whole))
    assert "volumes" not in kept["spec"] and "containerStatuses" not in kept["status"]
    assert "volumeMounts" not in kept["spec"]["containers"][0]
    full, pruned = reconcile(cluster(whole)).model, reconcile(cluster(kept)).model
    assert len(full.workloads) == 1
    assert pruned == full


def test_ca_pod_lookups_still_find_the_pruned_pod() -> None:
    state = cluster(KubeSource._prepared(KINDS_BY_NAME["Pod"], api_pod()))
    pod_by_name, pod_on_node = state_pod_lookups(lambda: state)
    assert pod_by_name("shop", "web-1")["metadata"]["uid"] == "5b0c"
    assert pod_on_node("shop", "web", "node1")
