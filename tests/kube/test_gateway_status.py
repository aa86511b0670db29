"""Gateway API status written by the operator to the real API server: a waypoint Gateway's
conditions, listeners and addresses, and a mesh HTTPRoute's parents — accepted by the CRDs'
schemas (every condition with its lastTransitionTime), written once, and what kubectl shows.
"""

from __future__ import annotations

import json
from typing import Any

from runtime.testbed.cluster import Cluster
from runtime.testbed.nodes import Nodes

from .conftest import wait_for
from .operator_harness import RunningOperator
from .test_operator_source import install_crds, pod

GATEWAY_PATH = "/apis/gateway.networking.k8s.io/v1/namespaces/%s/gateways"
ROUTE_PATH = "/apis/gateway.networking.k8s.io/v1/namespaces/%s/httproutes"


def by_type(conditions: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in conditions}


def message(parent: dict[str, Any], condition: str) -> str:
    return next(c["message"] for c in parent["conditions"] if c["type"] == condition)


def kubectl_status(cluster: Cluster, resource: str, namespace: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", resource, "-n", namespace, name, "-o", "json").stdout
    return json.loads(out).get("status") or {}


def test_waypoint_gateway_status_is_written_and_programmed_once_ready(cluster: Cluster, nodes: Nodes,
                                                                    namespace: str) -> None:
    install_crds(cluster)
    gateway = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "waypoint"},
               "spec": {"gatewayClassName": "istio-waypoint",
                        "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"},
                                      {"name": "web", "port": 80, "protocol": "HTTP"}]}}
    with cluster.client() as client, RunningOperator(cluster):
        assert client.post(GATEWAY_PATH % namespace, json=gateway).status_code == 201
        status = wait_for(lambda: (s := kubectl_status(cluster, "gateway", namespace, "waypoint"))
                          and by_type(s.get("conditions") or []).get("Programmed") == ("True", "Programmed") and s,
                          "the Gateway programmed", timeout=90)
        assert by_type(status["conditions"])["Accepted"] == ("True", "ListenersNotValid")
        assert all(c["lastTransitionTime"] and c["observedGeneration"] == 1 for c in status["conditions"])
        service = client.get("/api/v1/namespaces/%s/services/waypoint" % namespace).json()
        assert status["addresses"] == [{"type": "IPAddress", "value": service["spec"]["clusterIP"]}]
        mesh, web = status["listeners"]
        assert by_type(mesh["conditions"])["Accepted"] == ("True", "Accepted")
        assert by_type(web["conditions"])["Accepted"] == ("False", "UnsupportedProtocol")
        assert all(c["lastTransitionTime"] for c in web["conditions"])


def test_mesh_route_parents_status_names_a_missing_backend(cluster: Cluster, nodes: Nodes, namespace: str) -> None:
    install_crds(cluster)
    service = {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "canary"},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                      "rules": [{"backendRefs": [{"name": "web-v2", "port": 80}]}]}}
    with cluster.client() as client, RunningOperator(cluster) as op:
        assert client.post("/api/v1/namespaces/%s/services" % namespace, json=service).status_code == 201
        assert client.post(ROUTE_PATH % namespace, json=route).status_code == 201
        # The Service and the route arrive on different watches: a status written while the route
        # was known and its Service not yet says NoMatchingParent, until the next reconciliation.
        status = wait_for(lambda: (parents := kubectl_status(cluster, "httproute", namespace, "canary").get("parents"))
                          and by_type(parents[0]["conditions"]).get("Accepted") == ("True", "Accepted") and parents,
                          "the route's parents status, Accepted once the Service is known")
        (parent,) = status
        assert parent["controllerName"] == "istio.io/mesh-controller"
        assert parent["parentRef"]["name"] == "web" and parent["parentRef"]["port"] == 80
        # As istiod reports a mesh route whose Service has no waypoint: valid, so Accepted; its
        # ResolvedWaypoints says nothing carries it out.
        assert by_type(parent["conditions"]) == {"Accepted": ("True", "Accepted"),
                                                 "ResolvedRefs": ("False", "BackendNotFound"),
                                                 "ResolvedWaypoints": ("True", "ResolvedWaypoints")}
        assert message(parent, "ResolvedWaypoints") == (
            "istio.io/use-waypoint label missing from parent and parent namespace; "
            "in ambient mode, route will not be respected")

        # The backend appears: ResolvedRefs turns True; Accepted keeps its transition time.
        accepted_at = next(c for c in parent["conditions"] if c["type"] == "Accepted")["lastTransitionTime"]
        backend = {"metadata": {"name": "web-v2"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}
        assert client.post("/api/v1/namespaces/%s/services" % namespace, json=backend).status_code == 201
        resolved = wait_for(lambda: (p := kubectl_status(cluster, "httproute", namespace, "canary")["parents"][0])
                            and by_type(p["conditions"])["ResolvedRefs"] == ("True", "ResolvedRefs") and p,
                            "ResolvedRefs True")
        assert next(c for c in resolved["conditions"] if c["type"] == "Accepted")["lastTransitionTime"] == accepted_at
        writes = op.writer.status_writes
        seen = op.controller.reconciliations
        # An unrelated change makes the core reconcile again.
        assert client.post("/api/v1/namespaces/%s/pods" % namespace,
                           json=pod("other", "node1", {"app": "other"})).status_code == 201
        wait_for(lambda: op.controller.reconciliations > seen, "another reconciliation")
        wait_for(lambda: op.on_loop(lambda: op.store.get("Pod", namespace, "other")), "the pod in the store")
        assert op.writer.status_writes == writes, "an unchanged status must not be written again"

        # The Service's namespace enrolls in a waypoint: the message turns to resolved.
        labelled = client.patch("/api/v1/namespaces/%s" % namespace,
                                content=json.dumps({"metadata": {"labels": {"istio.io/use-waypoint": "waypoint"}}}),
                                headers={"content-type": "application/merge-patch+json"})
        assert labelled.status_code == 200, labelled.text
        wait_for(lambda: message(kubectl_status(cluster, "httproute", namespace, "canary")["parents"][0],
                                 "ResolvedWaypoints") == "All waypoints resolved", "ResolvedWaypoints resolved")
