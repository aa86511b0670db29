"""A waypoint on the real API server: the Deployment the operator applies is accepted, its pods
(made by the real ReplicaSet controller) carry the projected istio-ca token, the environment
wisp-waypoint reads and the root certificate ConfigMap, and that token makes a waypoint caller
of the operator's CA; the ``istio-ca-root-cert`` ConfigMap is published in every namespace,
follows new ones and is put back when deleted or edited.
"""

from __future__ import annotations

import uuid
from typing import Any

from wisp.identity import SpiffeId
from runtime.testbed.cluster import Cluster
from runtime.testbed.nodes import Nodes
from wisp_operator.auth import Caller
from wisp_operator.distributor import ROLE_WAYPOINT
from wisp_operator.kube.writer import FIELD_MANAGER
from wisp_operator.kube_auth import KubeAuthenticator

from .conftest import wait_for
from .operator_harness import RunningOperator
from .test_operator_source import install_crds
from .test_operator_writer import GATEWAY_PATH, waypoint_gateway

CONTROL_PLANE = "wisp-operator.istio-system.svc:15012"
ROOTS = "-----BEGIN CERTIFICATE-----\nMIIBroot\n-----END CERTIFICATE-----\n"


def _pods(client: Any, namespace: str, gateway: str) -> list[dict[str, Any]]:
    response = client.get("/api/v1/namespaces/%s/pods" % namespace,
                          params={"labelSelector": "gateway.networking.k8s.io/gateway-name=" + gateway})
    assert response.status_code == 200, response.text
    return response.json()["items"]


def test_waypoint_pods_get_the_token_projection_environment_and_roots(cluster: Cluster, nodes: Nodes,
                                                                      namespace: str) -> None:
    install_crds(cluster)
    options = {"waypoint_image": "wisp:0.1.0", "control_plane": CONTROL_PLANE, "root_cert": ROOTS}
    with cluster.client() as client, RunningOperator(cluster, writer_options=options) as op:
        assert client.post(GATEWAY_PATH % namespace, json=waypoint_gateway("waypoint")).status_code == 201
        path = "/apis/apps/v1/namespaces/%s/deployments/waypoint" % namespace
        wait_for(lambda: client.get(path).status_code == 200, "the waypoint Deployment")
        # The real API server took it as applied (defaults filled in, nothing dropped).
        template = client.get(path).json()["spec"]["template"]
        assert template["metadata"]["labels"]["gateway.istio.io/managed"] == "istio.io-mesh-controller"
        (pod,) = wait_for(lambda: _pods(client, namespace, "waypoint"), "the waypoint's pod from its ReplicaSet",
                          timeout=60)
        (container,) = pod["spec"]["containers"]
        assert container["command"] == ["wisp-waypoint"] and container["image"] == "wisp:0.1.0"
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
        assert env["POD_NAMESPACE"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}
        assert env["SERVICE_ACCOUNT"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.serviceAccountName"}}
        assert (env["GATEWAY_NAME"], env["XDS_ADDRESS"]) == ("waypoint", CONTROL_PLANE)
        assert env["AUTH_TOKEN"] == "/var/run/secrets/tokens/istio-token"
        assert env["CA_ROOT_CA"] == "/var/run/secrets/istio/root-cert.pem"
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        (source,) = volumes["istio-token"]["projected"]["sources"]
        assert source["serviceAccountToken"] == {"audience": "istio-ca", "expirationSeconds": 43200,
                                                 "path": "istio-token"}
        assert volumes["istiod-ca-cert"]["configMap"]["name"] == "istio-ca-root-cert"
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["istio-token"] == "/var/run/secrets/tokens"
        assert mounts["istiod-ca-cert"] == "/var/run/secrets/istio"
        assert pod["spec"]["serviceAccountName"] == "waypoint"
        assert container["readinessProbe"]["httpGet"]["port"] == 15021
        assert {p["containerPort"] for p in container["ports"]} == {15008, 15020, 15021}
        # The ConfigMap the pod mounts exists in its namespace.
        configmap = wait_for(lambda: (r := client.get("/api/v1/namespaces/%s/configmaps/istio-ca-root-cert"
                                                      % namespace)).status_code == 200 and r.json(),
                             "the root certificate in the waypoint's namespace")
        assert configmap["data"] == {"root-cert.pem": ROOTS}

        # The token the kubelet would project for this pod (same audience, bound to it) makes a
        # waypoint caller of the operator's CA, holding the Gateway's identity.
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"audiences": [source["serviceAccountToken"]["audience"]], "expirationSeconds": 600,
                            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod["metadata"]["name"],
                                               "uid": pod["metadata"]["uid"]}}}
        response = client.post("/api/v1/namespaces/%s/serviceaccounts/waypoint/token" % namespace, json=request)
        assert response.status_code == 201, response.text
        token = response.json()["status"]["token"]
        wait_for(lambda: op.on_loop(lambda: op.controller.state.get("Pod", namespace, pod["metadata"]["name"])),
                 "the waypoint pod in the operator's store")
        authenticator = KubeAuthenticator.for_operator(op.api.api_client, lambda: op.controller.state)
        caller = op.call(authenticator.check("Bearer " + token))
        assert caller == Caller(ROLE_WAYPOINT, identity=SpiffeId("cluster.local", namespace, "waypoint"))


def _root_cert(client: Any, namespace: str) -> dict[str, Any] | None:
    response = client.get("/api/v1/namespaces/%s/configmaps/istio-ca-root-cert" % namespace)
    return response.json() if response.status_code == 200 else None


def test_root_cert_configmap_in_every_namespace_follows_new_ones_and_is_put_back(cluster: Cluster,
                                                                                namespace: str) -> None:
    with cluster.client() as client, RunningOperator(cluster, writer_options={"root_cert": ROOTS}) as op:
        for ns in (namespace, "default", "kube-system"):
            configmap = wait_for(lambda ns=ns: _root_cert(client, ns), "istio-ca-root-cert in %s" % ns)
            assert configmap["data"] == {"root-cert.pem": ROOTS}
            assert configmap["metadata"]["labels"] == {"istio.io/config": "true"}
            assert any(m["manager"] == FIELD_MANAGER and m["operation"] == "Apply"
                       for m in configmap["metadata"]["managedFields"])
        # Istio's ignored namespaces get none.
        assert _root_cert(client, "kube-public") is None and _root_cert(client, "kube-node-lease") is None

        # A new namespace gets it.
        fresh = "t-" + uuid.uuid4().hex[:8]
        assert client.post("/api/v1/namespaces", json={"metadata": {"name": fresh}}).status_code == 201
        try:
            wait_for(lambda: _root_cert(client, fresh), "istio-ca-root-cert in the new namespace %s" % fresh)

            # Deleted: put back. Edited: put back.
            path = "/api/v1/namespaces/%s/configmaps/istio-ca-root-cert" % fresh
            assert client.delete(path).status_code == 200
            wait_for(lambda: _root_cert(client, fresh), "istio-ca-root-cert put back after a delete")
            edited = client.patch(path, content='{"data": {"root-cert.pem": "stale"}}',
                                  headers={"content-type": "application/merge-patch+json"})
            assert edited.status_code == 200, edited.text
            wait_for(lambda: (_root_cert(client, fresh) or {}).get("data") == {"root-cert.pem": ROOTS},
                     "istio-ca-root-cert's roots restored after an edit")

            # Settled: another reconciliation applies nothing again.
            applies = op.writer.root_cert_applies
            seen = op.controller.reconciliations
            assert client.post("/api/v1/namespaces/%s/serviceaccounts" % namespace,
                               json={"metadata": {"name": "nudge"}}).status_code == 201
            wait_for(lambda: op.controller.reconciliations > seen, "another reconciliation")
            assert op.writer.root_cert_applies == applies, "an unchanged ConfigMap must not be applied again"
        finally:
            client.delete("/api/v1/namespaces/%s" % fresh)
