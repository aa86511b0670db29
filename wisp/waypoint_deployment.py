"""The objects a waypoint Gateway stands for: its ServiceAccount, Service and Deployment.

Made as istiod's gateway deployment controller makes them for ``gatewayClassName:
istio-waypoint``, but small: named after the Gateway, owned by it (``ownerReferences`` with its
uid), labelled ``gateway.networking.k8s.io/gateway-name``, ``istio.io/gateway-name`` and
``gateway.istio.io/managed: istio.io-mesh-controller``; the Service has ports 15021
``status-port`` and 15008 ``mesh``; the pods carry ``istio.io/dataplane-mode: none`` so ztunnel
never captures them (a waypoint terminates HBONE itself) and a readiness probe on 15021
``/healthz/ready``.

Shared by the control plane's two modes, so both make the same objects: the Kubernetes writer
applies them (operator/kube/writer.py), local mode writes them into the manifest directory,
which the local runtime runs like any Deployment (operator/local_waypoints.py). Pure.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

WAYPOINT_GATEWAY_CLASS = "istio-waypoint"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
ISTIO_GATEWAY_NAME_LABEL = "istio.io/gateway-name"
MANAGED_GATEWAY_LABEL = "gateway.istio.io/managed"
MANAGED_BY_MESH = "istio.io-mesh-controller"
DATAPLANE_MODE_LABEL = "istio.io/dataplane-mode"
STATUS_PORT = 15021
MESH_PORT = 15008
READINESS_PATH = "/healthz/ready"
DEFAULT_WAYPOINT_IMAGE = "wisp:latest"
GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"
CONTAINER_NAME = "istio-proxy"


def is_waypoint_gateway(obj: Any) -> bool:
    """A Gateway of class istio-waypoint that is not being deleted."""
    if not isinstance(obj, Mapping) or obj.get("kind") != "Gateway":
        return False
    spec, meta = obj.get("spec"), obj.get("metadata")
    return (isinstance(spec, Mapping) and spec.get("gatewayClassName") == WAYPOINT_GATEWAY_CLASS
            and isinstance(meta, Mapping) and isinstance(meta.get("name"), str) and not meta.get("deletionTimestamp"))


def gateway_uid(gateway: Mapping[str, Any]) -> str:
    """The Gateway's uid; without an API server (local mode) a stable one from its name."""
    meta = gateway["metadata"]
    uid = meta.get("uid")
    if isinstance(uid, str) and uid:
        return uid
    namespace = meta.get("namespace") or "default"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"wisp-local:Gateway/{namespace}/{meta['name']}"))


def waypoint_objects(
    gateway: Mapping[str, Any],
    image: str = DEFAULT_WAYPOINT_IMAGE,
    *,
    command: Sequence[str] | None = None,
    args: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    cluster_ip: str | None = None,
) -> list[dict[str, Any]]:
    """The ServiceAccount, Service and Deployment of a waypoint Gateway, owned by it.

    ``command``/``args``/``env`` are the container's (by default ``args: ["waypoint"]``, the
    image's entry point choosing the program); ``cluster_ip`` is set where nothing else
    allocates one (local mode).
    """
    meta = gateway["metadata"]
    name, namespace = meta["name"], meta.get("namespace") or "default"
    labels = {GATEWAY_NAME_LABEL: name, ISTIO_GATEWAY_NAME_LABEL: name, MANAGED_GATEWAY_LABEL: MANAGED_BY_MESH}
    owner = {
        "apiVersion": gateway.get("apiVersion") or GATEWAY_API_VERSION,
        "kind": "Gateway",
        "name": name,
        "uid": gateway_uid(gateway),
    }

    def metadata() -> dict[str, Any]:
        return {"name": name, "namespace": namespace, "labels": dict(labels), "ownerReferences": [dict(owner)]}

    probe = {"httpGet": {"path": READINESS_PATH, "port": STATUS_PORT}, "periodSeconds": 15}
    container: dict[str, Any] = {"name": CONTAINER_NAME, "image": image}
    if command is not None:
        container["command"] = list(command)
    container["args"] = list(args) if args is not None else (["waypoint"] if command is None else [])
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    container.update({
        "ports": [
            {"name": "status-port", "containerPort": STATUS_PORT, "protocol": "TCP"},
            {"name": "mesh", "containerPort": MESH_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": probe,
        "livenessProbe": probe,
    })
    service_spec: dict[str, Any] = {
        "type": "ClusterIP",
        "selector": {GATEWAY_NAME_LABEL: name},
        "ports": [
            {"name": "status-port", "port": STATUS_PORT, "protocol": "TCP", "targetPort": STATUS_PORT},
            {"name": "mesh", "port": MESH_PORT, "protocol": "TCP", "targetPort": MESH_PORT},
        ],
    }
    if cluster_ip:
        service_spec["clusterIP"] = cluster_ip
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata()},
        {"apiVersion": "v1", "kind": "Service", "metadata": metadata(), "spec": service_spec},
        {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata(),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {GATEWAY_NAME_LABEL: name}},
                "template": {
                    "metadata": {"labels": {**labels, DATAPLANE_MODE_LABEL: "none"}},
                    "spec": {"serviceAccountName": name, "containers": [container]},
                },
            },
        },
    ]
