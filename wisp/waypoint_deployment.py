"""The objects a waypoint Gateway stands for: its ServiceAccount, Service and Deployment.

Made as istiod's gateway deployment controller makes them for ``gatewayClassName:
istio-waypoint`` (istio/istio manifests/charts/istio-control/istio-discovery/files/waypoint.yaml),
adapted to wisp's one image (deploy/Dockerfile), whose waypoint entry point is ``wisp-waypoint``
(waypoint/main.py):

- named after the Gateway, owned by it (``ownerReferences`` with its uid), labelled
  ``gateway.networking.k8s.io/gateway-name``, ``gateway.networking.k8s.io/gateway-class-name``,
  ``istio.io/gateway-name`` and ``gateway.istio.io/managed: istio.io-mesh-controller`` (the label
  the CA reads to treat the pod's token as a waypoint's, operator/kube_auth.py);
- the pods carry Istio's labels (``istio.io/dataplane-mode: none`` so ztunnel never captures them,
  ``sidecar.istio.io/inject: "false"``, ``service.istio.io/canonical-name``/``-revision``) and
  annotations (``istio.io/rev``, ``prometheus.io/*`` for 15020 ``/stats/prometheus``);
- the container ``istio-proxy`` runs ``wisp-waypoint`` configured by its environment, under the
  names Istio's template uses and wisp-waypoint reads: ``POD_NAMESPACE``/``SERVICE_ACCOUNT`` (and
  ``POD_NAME``, ``INSTANCE_IP``, ``HOST_IP``) from the downward API, ``GATEWAY_NAME``,
  ``XDS_ADDRESS``/``CA_ADDR`` (the operator's 15012), ``TRUST_DOMAIN``, ``AUTH_TOKEN`` (a projected
  service-account token for audience ``istio-ca``, 12 h, the token the operator's TokenReview
  expects) and ``CA_ROOT_CA`` (``root-cert.pem`` of the ``istio-ca-root-cert`` ConfigMap the
  operator publishes in every namespace);
- ports 15008 ``mesh``, 15020 ``metrics``, 15021 ``status-port``; startup and readiness probes on
  15021 ``/healthz/ready`` with Istio's timings; Istio's restricted security context (uid 1337,
  read-only root, no capabilities) with an emptyDir ``/tmp`` for the key files it hands to ssl;
- the Service: ports 15021 ``status-port`` (appProtocol tcp) and 15008 ``mesh`` (appProtocol
  hbone), Istio's ``networking.istio.io/traffic-distribution: PreferClose``.

Shared by the control plane's two modes, so both make the same objects: the Kubernetes writer
applies them (operator/kube/writer.py), local mode writes them into the manifest directory,
which the local runtime runs like any Deployment (operator/local_waypoints.py). The local runtime
has no downward API or projected volumes, so local mode replaces the container's command, flags
and some environment values (``env``: its own token file and root certificate); everything else
is the same. Pure.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from wisp.model import DEFAULT_TRUST_DOMAIN

WAYPOINT_GATEWAY_CLASS = "istio-waypoint"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
GATEWAY_CLASS_LABEL = "gateway.networking.k8s.io/gateway-class-name"
ISTIO_GATEWAY_NAME_LABEL = "istio.io/gateway-name"
MANAGED_GATEWAY_LABEL = "gateway.istio.io/managed"
MANAGED_BY_MESH = "istio.io-mesh-controller"
DATAPLANE_MODE_LABEL = "istio.io/dataplane-mode"
STATUS_PORT = 15021
MESH_PORT = 15008
METRICS_PORT = 15020
READINESS_PATH = "/healthz/ready"
METRICS_PATH = "/stats/prometheus"
DEFAULT_WAYPOINT_IMAGE = "wisp:latest"
DEFAULT_WAYPOINT_COMMAND = ("wisp-waypoint",)
# Where ztunnels and waypoints reach the operator (deploy/operator.yaml's Service).
DEFAULT_CONTROL_PLANE = "wisp-operator.istio-system.svc:15012"
GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"
CONTAINER_NAME = "istio-proxy"
PROXY_UID = 1337  # Istio's proxy user and group
# The projected token the operator's CA reviews (operator/kube_auth.py DEFAULT_AUDIENCE).
TOKEN_AUDIENCE = "istio-ca"
TOKEN_EXPIRATION_SECONDS = 43200
TOKEN_PATH = "/var/run/secrets/tokens/istio-token"
# The mesh roots, published by the operator in every namespace as istiod publishes them.
ROOT_CERT_CONFIGMAP = "istio-ca-root-cert"
ROOT_CERT_KEY = "root-cert.pem"
ROOT_CERT_PATH = "/var/run/secrets/istio/root-cert.pem"


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
    control_plane: str = DEFAULT_CONTROL_PLANE,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    command: Sequence[str] = DEFAULT_WAYPOINT_COMMAND,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cluster_ip: str | None = None,
) -> list[dict[str, Any]]:
    """The ServiceAccount, Service and Deployment of a waypoint Gateway, owned by it.

    ``control_plane`` is the operator's host:port the waypoint dials for its config and
    certificate; ``env`` replaces the value of the variables it names (a ``valueFrom`` included)
    and adds the others; ``cluster_ip`` is set where nothing else allocates one (local mode).
    """
    meta = gateway["metadata"]
    name, namespace = meta["name"], meta.get("namespace") or "default"
    spec = gateway.get("spec")
    gateway_class = spec.get("gatewayClassName") if isinstance(spec, Mapping) else None
    object_labels = {GATEWAY_NAME_LABEL: name, GATEWAY_CLASS_LABEL: gateway_class or WAYPOINT_GATEWAY_CLASS,
                     ISTIO_GATEWAY_NAME_LABEL: name, MANAGED_GATEWAY_LABEL: MANAGED_BY_MESH}
    owner = {
        "apiVersion": gateway.get("apiVersion") or GATEWAY_API_VERSION,
        "kind": "Gateway",
        "name": name,
        "uid": gateway_uid(gateway),
    }

    def metadata(annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(object_labels)}
        if annotations:
            out["annotations"] = dict(annotations)
        out["ownerReferences"] = [dict(owner)]
        return out

    pod_labels = {
        "sidecar.istio.io/inject": "false",
        DATAPLANE_MODE_LABEL: "none",
        "service.istio.io/canonical-name": name,
        "service.istio.io/canonical-revision": "latest",
        **object_labels,
    }
    pod_annotations = {
        "istio.io/rev": "default",
        "prometheus.io/path": METRICS_PATH,
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/scrape": "true",
    }
    service_spec: dict[str, Any] = {
        "type": "ClusterIP",
        "selector": {GATEWAY_NAME_LABEL: name},
        "ports": [
            {"name": "status-port", "port": STATUS_PORT, "protocol": "TCP", "targetPort": STATUS_PORT,
             "appProtocol": "tcp"},
            {"name": "mesh", "port": MESH_PORT, "protocol": "TCP", "targetPort": MESH_PORT, "appProtocol": "hbone"},
        ],
    }
    if cluster_ip:
        service_spec["clusterIP"] = cluster_ip
    container = _container(name, namespace, image, control_plane, trust_domain, command, args, env or {})
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata()},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": metadata({"networking.istio.io/traffic-distribution": "PreferClose"}), "spec": service_spec},
        {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata(),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {GATEWAY_NAME_LABEL: name}},
                "template": {
                    "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                    "spec": {"serviceAccountName": name, "containers": [container], "volumes": _volumes()},
                },
            },
        },
    ]


def _field(path: str) -> dict[str, Any]:
    return {"valueFrom": {"fieldRef": {"fieldPath": path}}}


def _container(name: str, namespace: str, image: str, control_plane: str, trust_domain: str,
               command: Sequence[str], args: Sequence[str], overrides: Mapping[str, str]) -> dict[str, Any]:
    env: list[tuple[str, dict[str, Any]]] = [
        # What wisp-waypoint reads (waypoint/main.py); flags would win over them.
        ("POD_NAME", _field("metadata.name")),
        ("POD_NAMESPACE", _field("metadata.namespace")),
        ("INSTANCE_IP", _field("status.podIP")),
        ("HOST_IP", _field("status.hostIP")),
        ("SERVICE_ACCOUNT", _field("spec.serviceAccountName")),
        ("GATEWAY_NAME", {"value": name}),
        ("XDS_ADDRESS", {"value": control_plane}),
        ("CA_ADDR", {"value": control_plane}),
        ("AUTH_TOKEN", {"value": TOKEN_PATH}),
        ("CA_ROOT_CA", {"value": ROOT_CERT_PATH}),
        ("TRUST_DOMAIN", {"value": trust_domain}),
        # Istio's proxy metadata, for Istio's tooling; wisp does not read them.
        ("ISTIO_META_SERVICE_ACCOUNT", _field("spec.serviceAccountName")),
        ("ISTIO_META_NODE_NAME", _field("spec.nodeName")),
        ("ISTIO_META_CLUSTER_ID", {"value": "Kubernetes"}),
        ("ISTIO_META_WORKLOAD_NAME", {"value": name}),
        ("ISTIO_META_OWNER", {"value": f"kubernetes://apis/apps/v1/namespaces/{namespace}/deployments/{name}"}),
        ("ISTIO_META_MESH_ID", {"value": trust_domain}),
    ]
    names = {n for n, _ in env}
    merged = [{"name": n, "value": overrides[n]} if n in overrides else {"name": n, **source} for n, source in env]
    merged += [{"name": n, "value": v} for n, v in overrides.items() if n not in names]
    probe = {"httpGet": {"path": READINESS_PATH, "port": STATUS_PORT, "scheme": "HTTP"}, "successThreshold": 1,
             "timeoutSeconds": 1}
    return {
        "name": CONTAINER_NAME,
        "image": image,
        "command": list(command),
        "args": list(args),
        "env": merged,
        "ports": [
            {"name": "mesh", "containerPort": MESH_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
            {"name": "status-port", "containerPort": STATUS_PORT, "protocol": "TCP"},
        ],
        # Istio's timings: up to 30 s to start, then unready after four failed 15 s probes.
        "startupProbe": {**probe, "failureThreshold": 30, "initialDelaySeconds": 1, "periodSeconds": 1},
        "readinessProbe": {**probe, "failureThreshold": 4, "initialDelaySeconds": 0, "periodSeconds": 15},
        "securityContext": {
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "istiod-ca-cert", "mountPath": ROOT_CERT_PATH.rsplit("/", 1)[0], "readOnly": True},
            {"name": "istio-token", "mountPath": TOKEN_PATH.rsplit("/", 1)[0], "readOnly": True},
            {"name": "istio-podinfo", "mountPath": "/etc/istio/pod"},
            # The root file system is read-only; the key files handed to ssl go here.
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def _volumes() -> list[dict[str, Any]]:
    return [
        {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
            "path": TOKEN_PATH.rsplit("/", 1)[1], "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
            "audience": TOKEN_AUDIENCE}}]}},
        {"name": "istiod-ca-cert", "configMap": {"name": ROOT_CERT_CONFIGMAP}},
        {"name": "istio-podinfo", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
        ]}},
        {"name": "tmp", "emptyDir": {}},
    ]
