"""VirtualService and DestinationRule on the real API server: watched at v1 whatever version they were
created at, and their status conditions written through the CRDs' status subresource (accepted by
the schema, with lastTransitionTime), as `kubectl get` shows them.
"""

from __future__ import annotations

from runtime.testbed.cluster import Cluster
from runtime.testbed.nodes import Nodes

from .conftest import wait_for
from .operator_harness import RunningOperator
from .test_gateway_status import by_type, kubectl_status
from .test_operator_source import install_crds


def test_virtualservice_and_destinationrule_status_is_written(cluster: Cluster, nodes: Nodes, namespace: str) -> None:
    install_crds(cluster)
    service = {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}
    vs = {"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService", "metadata": {"name": "canary"},
          "spec": {"hosts": ["web"], "tcp": [{"route": [{"destination": {"host": "web"}}]}],
                   "http": [{"route": [{"destination": {"host": "web", "subset": "v1"}, "weight": 80},
                                       {"destination": {"host": "web", "subset": "v2"}, "weight": 20}]}]}}
    dr = {"apiVersion": "networking.istio.io/v1alpha3", "kind": "DestinationRule", "metadata": {"name": "web"},
          "spec": {"host": "web.%s.svc.cluster.local" % namespace,
                   "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}}
    with cluster.client() as client, RunningOperator(cluster):
        assert client.post("/api/v1/namespaces/%s/services" % namespace, json=service).status_code == 201
        for plural, obj in (("virtualservices", vs), ("destinationrules", dr)):
            response = client.post("/apis/%s/namespaces/%s/%s" % (obj["apiVersion"], namespace, plural), json=obj)
            assert response.status_code == 201, response.text
        status = wait_for(lambda: (s := kubectl_status(cluster, "virtualservice", namespace, "canary"))
                          and len(s.get("conditions") or []) == 3 and s, "the VirtualService's conditions")
        assert by_type(status["conditions"]) == {"Accepted": ("True", "Accepted"),
                                                 "ResolvedRefs": ("False", "BackendNotFound"),
                                                 "UnsupportedFields": ("True", "FieldIgnored")}
        assert all(c["lastTransitionTime"] and c["observedGeneration"] == 1 for c in status["conditions"])
        ignored = next(c["message"] for c in status["conditions"] if c["type"] == "UnsupportedFields")
        assert ignored == "spec.tcp: tcp routes are not supported on a waypoint; ignored"
        rule = wait_for(lambda: (s := kubectl_status(cluster, "destinationrule", namespace, "web"))
                        and len(s.get("conditions") or []) == 2 and s, "the DestinationRule's conditions")
        assert by_type(rule["conditions"]) == {"Accepted": ("True", "Accepted"),
                                               "UnsupportedFields": ("False", "AllFieldsSupported")}
