"""Scale guard: the full build stays well inside its budget.

Target (DESIGN benchmark): 10,000 pods, 1,000 services, 500 policies in <= 1 s on one
core. The assertion is looser so a slow CI machine does not flake; it still catches an
accidental O(pods x services) or O(pods x policies) loop, which would take minutes.
"""

from __future__ import annotations

import time
from typing import Any

from wisp_operator.cluster import ClusterState
from wisp_operator.reconcile import reconcile


def cluster(n_pods: int = 10_000, n_services: int = 1_000, n_policies: int = 500, n_ns: int = 50) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    for i in range(n_ns):
        labels = {"istio.io/dataplane-mode": "ambient"}
        if i % 10 == 0:
            labels["istio.io/use-waypoint"] = "waypoint"
        objs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns{i}", "labels": labels}})
        if i % 10 == 0:
            objs += [
                {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                 "metadata": {"name": "waypoint", "namespace": f"ns{i}"},
                 "spec": {"gatewayClassName": "istio-waypoint",
                          "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}},
                {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "waypoint", "namespace": f"ns{i}"},
                 "spec": {"clusterIP": f"10.97.0.{i}", "ports": [{"name": "mesh", "port": 15008}]}},
                {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "waypoint", "namespace": f"ns{i}"},
                 "status": {"readyReplicas": 1}},
            ]
    apps = n_services // n_ns
    for s in range(n_services):
        ns, app = f"ns{s % n_ns}", f"app{s // n_ns}"
        objs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": app, "namespace": ns},
                     "spec": {"clusterIP": f"10.96.{s // 250}.{s % 250}", "selector": {"app": app},
                              "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                                        {"name": "grpc", "port": 9090, "targetPort": 9090}]}})
    for p in range(n_pods):
        ns, app = f"ns{p % n_ns}", f"app{(p // n_ns) % apps}"
        ip = f"10.{244 + p // 62500}.{(p // 250) % 250}.{p % 250}"
        objs.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{app}-7d4b9c8f6d-{p:05d}", "namespace": ns,
                         "labels": {"app": app, "version": "v1", "pod-template-hash": "7d4b9c8f6d"},
                         "annotations": {"ambient.istio.io/redirection": "enabled"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": f"{app}-7d4b9c8f6d", "controller": True}]},
            "spec": {"nodeName": f"node{p % 20}", "serviceAccountName": app,
                     "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]},
        })
    for a in range(n_policies):
        ns = f"ns{a % n_ns}"
        spec: dict[str, Any] = {
            "action": "DENY" if a % 3 == 0 else "ALLOW",
            "rules": [{"from": [{"source": {"principals": [f"cluster.local/ns/{ns}/sa/app{a % 7}"],
                                            "namespaces": ["ns1", "ns2*"]}}],
                       "to": [{"operation": {"ports": ["8080"], **({"methods": ["GET"]} if a % 5 == 0 else {})}}],
                       "when": [{"key": "source.ip", "values": ["10.0.0.0/8"]}]}],
        }
        if a % 2:
            spec["selector"] = {"matchLabels": {"app": f"app{a % apps}"}}
        objs.append({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                     "metadata": {"name": f"policy{a}", "namespace": ns, "generation": 1}, "spec": spec})
    objs.append({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                 "metadata": {"name": "default", "namespace": "istio-system"}, "spec": {"mtls": {"mode": "STRICT"}}})
    return objs


def test_full_build_of_ten_thousand_pods_stays_within_budget() -> None:
    state = ClusterState.of(cluster())
    start = time.perf_counter()
    result = reconcile(state)
    elapsed = time.perf_counter() - start
    assert result.errors == ()
    assert len(result.model.workloads) == 10_000
    assert len(result.model.services) == 1_000 + 5
    assert len(result.model.authorizations) == 500 + 1
    assert sum(1 for w in result.model.workloads.values() if w.services) == 10_000
    assert elapsed < 3.0, f"full build took {elapsed:.2f}s (budget 1 s on one core)"
