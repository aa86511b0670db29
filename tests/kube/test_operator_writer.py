"""The operator's writer against the real API server: status conditions (seen with kubectl),
a 409 Conflict retried with a fresh read, waypoint objects owned by their Gateway and removed by
the real garbage collector.
"""

from __future__ import annotations

import json
from typing import Any

from runtime.testbed.cluster import Cluster
from runtime.testbed.nodes import Nodes
from wisp_operator.kube.writer import FIELD_MANAGER
from wisp_operator.reconcile import StatusWrite

from .conftest import wait_for
from .operator_harness import RunningOperator
from .test_operator_source import AP_PATH, install_crds, pod, policy

GATEWAY_PATH = "/apis/gateway.networking.k8s.io/v1/namespaces/%s/gateways"


def kubectl_condition(cluster: Cluster, resource: str, namespace: str, name: str, condition: str) -> dict[str, Any]:
    out = cluster.kubectl("get", resource, "-n", namespace, name, "-o", "json").stdout
    for cond in json.loads(out).get("status", {}).get("conditions") or []:
        if cond.get("type") == condition:
            return cond
    return {}


def test_status_conditions_written_once_and_visible_with_kubectl(cluster: Cluster, nodes: Nodes,
                                                                   namespace: str) -> None:
    install_crds(cluster)
    with cluster.client() as client, RunningOperator(cluster) as op:
        assert client.post(AP_PATH % namespace, json=policy("allow-a")).status_code == 201
        bad = policy("bad")
        bad["spec"]["rules"][0]["from"][0]["source"] = {"principals": ["cluster.local/ns/a/sa/b"],
                                                       "requestPrincipals": ["*"]}
        assert client.post(AP_PATH % namespace, json=bad).status_code == 201
        service = {"metadata": {"name": "web", "labels": {"istio.io/use-waypoint": "none-such"}},
                   "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}
        assert client.post("/api/v1/namespaces/%s/services" % namespace, json=service).status_code == 201

        accepted = wait_for(lambda: kubectl_condition(cluster, "authorizationpolicy", namespace, "allow-a",
                                                      "ZtunnelAccepted"), "ZtunnelAccepted on allow-a")
        assert accepted["status"] == "True" and accepted["reason"] == "Accepted"
        assert accepted["observedGeneration"] == 1 and accepted["lastTransitionTime"]
        refused = wait_for(lambda: kubectl_condition(cluster, "authorizationpolicy", namespace, "bad",
                                                     "ZtunnelAccepted"), "ZtunnelAccepted on bad")
        assert refused["reason"] == "UnsupportedValue"
        bound = wait_for(lambda: kubectl_condition(cluster, "service", namespace, "web", "istio.io/WaypointBound"),
                         "WaypointBound on the Service")
        assert bound["status"] == "False" and "none-such" in bound["message"]
        # Written as field manager wisp.
        managed = client.get((AP_PATH % namespace) + "/allow-a").json()["metadata"]["managedFields"]
        assert any(m["manager"] == FIELD_MANAGER and m.get("subresource") == "status" for m in managed)

        # Unrelated changes reconcile again but write nothing that is already there.
        writes = op.writer.status_writes
        for i in range(3):
            assert client.post("/api/v1/namespaces/%s/pods" % namespace,
                               json=pod("p%d" % i, "node1", {"app": "other"})).status_code == 201
        seen = op.controller.reconciliations
        wait_for(lambda: op.controller.reconciliations > seen + 1, "more reconciliations")
        wait_for(lambda: op.on_loop(lambda: op.store.get("Pod", namespace, "p2")), "the pods in the store")
        assert op.writer.status_writes == writes

        # A spec change moves observedGeneration; the condition follows.
        current = client.get((AP_PATH % namespace) + "/allow-a").json()
        current["spec"]["rules"][0]["from"][0]["source"]["principals"] = ["cluster.local/ns/a/sa/c"]
        assert client.put((AP_PATH % namespace) + "/allow-a", json=current).status_code == 200
        wait_for(lambda: kubectl_condition(cluster, "authorizationpolicy", namespace, "allow-a",
                                           "ZtunnelAccepted").get("observedGeneration") == 2,
                 "the condition for generation 2")


def test_conflict_on_status_write_is_retried_with_a_fresh_read(cluster: Cluster, namespace: str) -> None:
    install_crds(cluster)
    with cluster.client() as client, RunningOperator(cluster, writer=False) as op:
        assert client.post(AP_PATH % namespace, json=policy("raced")).status_code == 201
        stale = client.get((AP_PATH % namespace) + "/raced").json()
        # Someone else writes after we read: our write carries a resourceVersion that is now old.
        raced = client.patch((AP_PATH % namespace) + "/raced",
                             content=json.dumps({"metadata": {"labels": {"touched": "yes"}}}),
                             headers={"content-type": "application/merge-patch+json"})
        assert raced.status_code == 200
        assert raced.json()["metadata"]["resourceVersion"] != stale["metadata"]["resourceVersion"]
        condition = {"type": "wisp.test/Probe", "status": "True", "reason": "Probe", "message": "conflict test"}
        write = StatusWrite("security.istio.io/v1", "AuthorizationPolicy", namespace, "raced",
                            "wisp.test/Probe", condition)
        assert op.call(op.writer.write_status(write, stale)) is True
        assert op.writer.conflicts == 1
        stored = client.get((AP_PATH % namespace) + "/raced").json()
        assert stored["metadata"]["labels"] == {"touched": "yes"}  # the other write survived
        probe = [c for c in stored["status"]["conditions"] if c["type"] == "wisp.test/Probe"]
        assert len(probe) == 1 and probe[0]["reason"] == "Probe"
        # The same write again changes nothing and is not sent.
        assert op.call(op.writer.write_status(write, stored)) is False
        # Removing it keeps everything else in status.
        assert op.call(op.writer.write_status(
            StatusWrite("security.istio.io/v1", "AuthorizationPolicy", namespace, "raced", "wisp.test/Probe",
                        None))) is True
        conditions = client.get((AP_PATH % namespace) + "/raced").json().get("status", {}).get("conditions", [])
        assert all(c["type"] != "wisp.test/Probe" for c in conditions)


def waypoint_gateway(name: str) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "labels": {"istio.io/waypoint-for": "service"}},
            "spec": {"gatewayClassName": "istio-waypoint",
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}


def test_waypoint_objects_owned_by_gateway_and_garbage_collected(cluster: Cluster, nodes: Nodes,
                                                                   namespace: str) -> None:
    install_crds(cluster)
    paths = {
        "ServiceAccount": "/api/v1/namespaces/%s/serviceaccounts/waypoint" % namespace,
        "Service": "/api/v1/namespaces/%s/services/waypoint" % namespace,
        "Deployment": "/apis/apps/v1/namespaces/%s/deployments/waypoint" % namespace,
    }
    with cluster.client() as client, RunningOperator(cluster) as op:
        created = client.post(GATEWAY_PATH % namespace, json=waypoint_gateway("waypoint"))
        assert created.status_code == 201, created.text
        uid = created.json()["metadata"]["uid"]
        for kind, path in paths.items():
            obj = wait_for(lambda path=path: client.get(path).status_code == 200 and client.get(path).json(),
                           "the waypoint %s" % kind)
            assert obj["metadata"]["ownerReferences"] == [{"apiVersion": "gateway.networking.k8s.io/v1",
                                                           "kind": "Gateway", "name": "waypoint", "uid": uid}]
            assert obj["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] == "waypoint"
            assert obj["metadata"]["labels"]["istio.io/gateway-name"] == "waypoint"
            assert any(m["manager"] == FIELD_MANAGER and m["operation"] == "Apply"
                       for m in obj["metadata"]["managedFields"])
        service = client.get(paths["Service"]).json()
        assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {("status-port", 15021),
                                                                             ("mesh", 15008)}
        container = client.get(paths["Deployment"]).json()["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["port"] == 15021
        # The real controllers roll it out onto a simulated node.
        wait_for(lambda: client.get(paths["Deployment"]).json().get("status", {}).get("readyReplicas") == 1,
                 "the waypoint Deployment's pod ready", timeout=60)
        applies = op.writer.applies
        seen = op.controller.reconciliations
        wait_for(lambda: op.controller.reconciliations > seen, "another reconciliation")
        assert op.writer.applies == applies, "unchanged waypoint objects must not be applied again"

        assert client.delete(GATEWAY_PATH % namespace + "/waypoint").status_code == 200
        for kind, path in paths.items():
            wait_for(lambda path=path: client.get(path).status_code == 404,
                     "the garbage collector to delete the waypoint %s" % kind, timeout=90)
