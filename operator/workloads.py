"""Pods -> model Workloads.

A pod becomes a workload once it has an IP and until it ends (Succeeded/Failed);
host-network pods never do (they share the node's address, as in Istio). Identity
comes from the service account, telemetry names from the canonical labels and the
owning controller, membership from the Services selecting the pod, and the L4
policies to apply from selector AuthorizationPolicies and PeerAuthentications.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Any

from wisp.deployments import POD_TEMPLATE_HASH_LABEL, SAFE_ALPHABET
from wisp.model import DEFAULT_SERVICE_ACCOUNT, Locality, PortMapping, Workload
from wisp_operator import pods
from wisp_operator.cluster import MeshSettings
from wisp.kube import ObjectId, annotations, boolean, dicts, get, labels, string
from wisp_operator.errors import object_id
from wisp_operator.peer_authentication import PeerAuthIndex
from wisp_operator.policy import SelectorPolicyIndex
from wisp_operator.services import ServiceIndex, resolve_ports
from wisp_operator.waypoints import TRAFFIC_WORKLOAD, WaypointBinding, WaypointIndex

REDIRECTION_ANNOTATION = "ambient.istio.io/redirection"
NETWORK_LABEL = "topology.istio.io/network"

_CANONICAL_NAME_LABELS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
_CANONICAL_REVISION_LABELS = ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")
# Jobs created by a CronJob are named "<cronjob>-<scheduled time in minutes>".
_CRONJOB_JOB = re.compile(r"^(.+)-\d{8,10}$")
_SAFE_ALPHABET = frozenset(SAFE_ALPHABET)


@dataclass(frozen=True, slots=True)
class WorkloadResult:
    workload: Workload
    binding: WaypointBinding


@dataclass(frozen=True, slots=True)
class WorkloadContext:
    """Everything a pod's workload depends on beyond the pod, indexed once per build."""

    settings: MeshSettings
    services: ServiceIndex
    policies: SelectorPolicyIndex
    peer_auth: PeerAuthIndex
    waypoints: WaypointIndex
    localities: dict[str, Locality]


def workload_uid(cluster_id: str, namespace: str, name: str) -> str:
    return f"{cluster_id}//Pod/{namespace}/{name}"


def pod_addresses(pod: dict[str, Any], oid: ObjectId) -> tuple[str, ...]:
    """status.podIPs in order, else status.podIP; every entry must be an IP."""
    found = [
        string(entry, "ip", oid, at=where) for where, entry in dicts(pod, "status.podIPs", oid)
    ] or [string(pod, "status.podIP", oid)]
    out = []
    for ip in found:
        if not ip:
            continue
        if not _is_ip(ip):
            raise oid.invalid(f"status.podIP(s) must hold IP addresses, got {ip!r}")
        out.append(ip)
    return tuple(out)


def _is_ip(value: str) -> bool:
    # inet_pton is C and an order of magnitude cheaper than ipaddress on this hot path.
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, value)
            return True
        except OSError:
            continue
    return False


def canonical_service(pod_labels: dict[str, str], workload_name: str) -> tuple[str, str]:
    name = next((pod_labels[k] for k in _CANONICAL_NAME_LABELS if pod_labels.get(k)), workload_name)
    revision = next((pod_labels[k] for k in _CANONICAL_REVISION_LABELS if pod_labels.get(k)), "latest")
    return name, revision


def workload_name_and_type(pod: dict[str, Any], oid: ObjectId, pod_labels: dict[str, str]) -> tuple[str, str]:
    """The owning controller's name and Istio's workload type for telemetry.

    Prefers the ownerReference marked ``controller: true`` (else the first). A ReplicaSet
    named ``<deployment>-<pod-template-hash>`` stands for its Deployment; a Job named
    ``<cronjob>-<digits>`` for its CronJob. StatefulSets, DaemonSets and bare ReplicaSets
    give their own name with type "pod" (Istio's WorkloadType has no other values).
    """
    owners = dicts(pod, "metadata.ownerReferences", oid)
    owner = next((o for _, o in owners if o.get("controller") is True), owners[0][1] if owners else None)
    if owner is None:
        return oid.name, "pod"
    kind = owner.get("kind")
    name = owner.get("name")
    if not isinstance(kind, str) or not isinstance(name, str) or not name:
        raise oid.invalid("metadata.ownerReferences entries need string kind and name")
    if kind == "ReplicaSet":
        pod_hash = pod_labels.get(POD_TEMPLATE_HASH_LABEL)
        if pod_hash and name.endswith(f"-{pod_hash}"):
            return name[: -len(pod_hash) - 1], "deployment"
        base, sep, suffix = name.rpartition("-")
        if not pod_hash and sep and base and _looks_like_pod_template_hash(suffix):
            return base, "deployment"
        return name, "pod"
    if kind == "Job":
        m = _CRONJOB_JOB.match(name)
        return (m.group(1), "cronjob") if m else (name, "job")
    if kind in ("StatefulSet", "DaemonSet"):
        return name, "pod"
    return oid.name, "pod"


def _looks_like_pod_template_hash(suffix: str) -> bool:
    # Kubernetes renders the hash with its "safe" alphabet (no vowels, no 0/1/3).
    return 5 <= len(suffix) <= 10 and all(c in _SAFE_ALPHABET for c in suffix)


def container_ports(pod: dict[str, Any], oid: ObjectId) -> dict[str, int]:
    """Named container ports (the targets of named Service targetPorts)."""
    named: dict[str, int] = {}
    for where, container in dicts(pod, "spec.containers", oid):
        for pwhere, port in dicts(container, "ports", oid, at=where):
            pname = string(port, "name", oid, at=pwhere)
            if pname:
                number = get(port, "containerPort", oid, int, None, at=pwhere)
                if number is None:
                    raise oid.invalid(f"{pwhere}.containerPort is required")
                named.setdefault(pname, number)
    return named


def workload_addresses(pod: dict[str, Any], oid: ObjectId) -> tuple[str, ...]:
    """The pod's addresses if it is represented in the model at all, else ()."""
    if boolean(pod, "spec.hostNetwork", oid):
        return ()
    if pods.phase(pod, oid) in pods.TERMINAL_PHASES:
        return ()
    return pod_addresses(pod, oid)


def convert_pod(
    pod: dict[str, Any], oid: ObjectId, namespace_obj: dict[str, Any] | None, ctx: WorkloadContext
) -> WorkloadResult | None:
    """The Workload for ``pod``, or None if it has none (no IP, finished, host network)."""
    addresses = workload_addresses(pod, oid)
    if not addresses:
        return None
    settings = ctx.settings
    pod_labels = labels(pod, oid)
    pod_annotations = annotations(pod, oid)

    wl_name, wl_type = workload_name_and_type(pod, oid, pod_labels)
    canonical_name, canonical_revision = canonical_service(pod_labels, wl_name)

    services: dict[str, tuple[PortMapping, ...]] = {}
    selecting = ctx.services.selecting(oid.namespace, pod_labels)
    if selecting:
        named = container_ports(pod, oid)
        for info in sorted(selecting, key=lambda i: i.key):
            services[info.key] = resolve_ports(info, named)

    policy_keys = ctx.policies.keys_for(oid.namespace, pod_labels)
    policy_keys.extend(ctx.peer_auth.keys_for(oid.namespace, pod_labels))

    binding = ctx.waypoints.bind(TRAFFIC_WORKLOAD, pod_labels, oid.namespace, namespace_obj)

    network = pod_labels.get(NETWORK_LABEL, "")
    if not network and namespace_obj is not None:
        network = labels(namespace_obj, object_id(namespace_obj, "Namespace")).get(NETWORK_LABEL, "")
    node = string(pod, "spec.nodeName", oid)

    workload = Workload(
        uid=workload_uid(settings.cluster_id, oid.namespace, oid.name),
        name=oid.name,
        namespace=oid.namespace,
        addresses=addresses,
        network=network or settings.network,
        tunnel_protocol="HBONE" if pod_annotations.get(REDIRECTION_ANNOTATION) == "enabled" else "NONE",
        trust_domain=settings.trust_domain,
        service_account=string(pod, "spec.serviceAccountName", oid) or DEFAULT_SERVICE_ACCOUNT,
        waypoint=binding.address,
        node=node,
        canonical_name=canonical_name,
        canonical_revision=canonical_revision,
        workload_type=wl_type,
        workload_name=wl_name,
        services=services,
        authorization_policies=tuple(policy_keys),
        status="HEALTHY" if pods.is_ready(pod, oid) else "UNHEALTHY",
        cluster_id=settings.cluster_id,
        locality=ctx.localities.get(node) if node else None,
        labels=dict(sorted(pod_labels.items())),
    )
    return WorkloadResult(workload, binding)


def node_locality(node: dict[str, Any], oid: ObjectId) -> Locality | None:
    node_labels = labels(node, oid)
    region = node_labels.get("topology.kubernetes.io/region", "")
    zone = node_labels.get("topology.kubernetes.io/zone", "")
    subzone = node_labels.get("topology.istio.io/subzone", "")
    if not (region or zone or subzone):
        return None
    return Locality(region, zone, subzone)


__all__ = [
    "WorkloadContext",
    "WorkloadResult",
    "canonical_service",
    "container_ports",
    "convert_pod",
    "workload_addresses",
    "node_locality",
    "pod_addresses",
    "workload_name_and_type",
    "workload_uid",
]
