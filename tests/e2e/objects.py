"""Builders for the Kubernetes objects the end-to-end modules apply to the shared mesh.

Each builder returns one object as a dict; `manifest(*objects)` joins them into the multi-document
text `Mesh.apply` takes (JSON is YAML, so no YAML writer is needed and nothing is indented by
hand). The defaults are the shape every module uses: a meshed namespace, a `sleep` client on node1,
the echo app on node2 listening on 8080 with its /healthz readiness probe, Services 80 → 8080.
"""

from __future__ import annotations

import json


def manifest(*objects: dict) -> str:
    return "\n---\n".join(json.dumps(o) for o in objects) + "\n"


def namespace(name: str, **labels: str) -> dict:
    """A namespace enrolled in the mesh (`istio.io/dataplane-mode: ambient`) plus `labels`."""
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"istio.io/dataplane-mode": "ambient", **labels}}}


def client(namespace: str, name: str = "client", node: str = "node1") -> dict:
    """A pod that only sleeps: tests run curl and friends in its network namespace."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "spec": {"serviceAccountName": name, "nodeName": node,
                     "containers": [{"name": "sleep", "command": ["sleep", "infinity"]}]}}


def _echo_spec(account: str, node: str, args: tuple[str, ...], probe: bool) -> dict:
    container = {"name": "echo", "command": ["wisp-echo", "--http", "8080", *args]}
    if probe:
        container["readinessProbe"] = {"httpGet": {"path": "/healthz", "port": 8080}}
    return {"serviceAccountName": account, "nodeName": node, "containers": [container]}


def echo_pod(namespace: str, name: str, *args: str, labels: dict[str, str], account: str,
             node: str = "node2", probe: bool = True) -> dict:
    """One echo pod; `args` go after `wisp-echo --http 8080` (its delay and failure switches)."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": _echo_spec(account, node, args, probe)}


def echo_deployment(namespace: str, name: str, *args: str, labels: dict[str, str] | None = None,
                    account: str | None = None, node: str = "node2") -> dict:
    """A one-replica echo Deployment; its pods carry `labels` (default `app: <name>`)."""
    labels = labels or {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": _echo_spec(account or name, node, args, True)}}}


def service(namespace: str, name: str, selector: dict[str, str] | None = None,
            ports: list[dict] | None = None) -> dict:
    """A Service selecting `selector` (default `app: <name>`), port 80 → 8080 unless `ports`."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": selector or {"app": name},
                     "ports": ports or [{"name": "http", "port": 80, "targetPort": 8080}]}}
