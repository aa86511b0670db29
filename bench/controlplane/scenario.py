"""The benchmark's cluster: 10,000 pods, 1,000 services, 500 policies over 50 namespaces.

The shape tests/operator/test_reconcile_scale.py checks: every pod is selected by one Service, a tenth of the namespaces
use a waypoint, half the policies select workloads, and one mesh-wide STRICT
PeerAuthentication applies everywhere. Pods spread over ``n_nodes`` nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Scale:
    pods: int = 10_000
    services: int = 1_000
    policies: int = 500
    namespaces: int = 50
    nodes: int = 20


def pod_ip(p: int) -> str:
    return f"10.{244 + p // 62500}.{(p // 250) % 250}.{p % 250}"


def pod_name(p: int, scale: Scale = Scale()) -> tuple[str, str]:
    """(namespace, name) of pod number ``p``."""
    apps = scale.services // scale.namespaces
    return f"ns{p % scale.namespaces}", f"app{(p // scale.namespaces) % apps}-7d4b9c8f6d-{p:05d}"


def pod_node(p: int, scale: Scale = Scale()) -> str:
    return f"node{p % scale.nodes}"


def cluster(scale: Scale = Scale()) -> list[dict[str, Any]]:
    n_ns = scale.namespaces
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
    apps = scale.services // n_ns
    for s in range(scale.services):
        ns, app = f"ns{s % n_ns}", f"app{s // n_ns}"
        objs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": app, "namespace": ns},
                     "spec": {"clusterIP": f"10.96.{s // 250}.{s % 250}", "selector": {"app": app},
                              "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                                        {"name": "grpc", "port": 9090, "targetPort": 9090}]}})
    for p in range(scale.pods):
        ns, name = pod_name(p, scale)
        app = f"app{(p // n_ns) % apps}"
        ip = pod_ip(p)
        objs.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns,
                         "labels": {"app": app, "version": "v1", "pod-template-hash": "7d4b9c8f6d"},
                         "annotations": {"ambient.istio.io/redirection": "enabled"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": f"{app}-7d4b9c8f6d", "controller": True}]},
            "spec": {"nodeName": pod_node(p, scale), "serviceAccountName": app,
                     "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]},
        })
    for a in range(scale.policies):
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
