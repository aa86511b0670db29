"""Whether a pod is enrolled in the ambient mesh.

Shared by the control plane (which reports it) and the node agent (which
installs redirection), so both always agree. Rules are Istio's: the pod's
``istio.io/dataplane-mode`` label beats its namespace's, ``ambient`` enrols and
``none`` opts out; host-network pods and pods that already carry a sidecar
(annotation ``sidecar.istio.io/status``) are never enrolled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wisp.kube import InvalidObject, non_string_entry

DATAPLANE_MODE_LABEL = "istio.io/dataplane-mode"
DATAPLANE_MODE_AMBIENT = "ambient"
DATAPLANE_MODE_NONE = "none"
SIDECAR_STATUS_ANNOTATION = "sidecar.istio.io/status"


@dataclass(frozen=True, slots=True)
class Enrolment:
    enrolled: bool
    reason: str


def enrolment(pod: dict[str, Any], namespace: dict[str, Any] | None) -> Enrolment:
    """Decide whether ``pod`` is captured, given its Namespace object (None if unknown)."""
    meta = _mapping(pod, "metadata", "Pod", pod)
    pod_labels = _string_map(meta, "labels", "Pod", pod)
    annotations = _string_map(meta, "annotations", "Pod", pod)
    spec = _mapping(pod, "spec", "Pod", pod)
    host_network = spec.get("hostNetwork", False)
    if not isinstance(host_network, bool):
        raise _invalid("Pod", pod, f"spec.hostNetwork must be a boolean, got {host_network!r}")

    if host_network:
        return Enrolment(False, "pod uses the host network")
    if SIDECAR_STATUS_ANNOTATION in annotations:
        return Enrolment(False, "pod has a sidecar")

    pod_mode = pod_labels.get(DATAPLANE_MODE_LABEL)
    if pod_mode == DATAPLANE_MODE_AMBIENT:
        return Enrolment(True, "pod labelled ambient")
    if pod_mode == DATAPLANE_MODE_NONE:
        return Enrolment(False, "pod labelled none")

    ns_mode = None
    if namespace is not None:
        ns_meta = _mapping(namespace, "metadata", "Namespace", namespace)
        ns_mode = _string_map(ns_meta, "labels", "Namespace", namespace).get(DATAPLANE_MODE_LABEL)
    if ns_mode == DATAPLANE_MODE_AMBIENT:
        return Enrolment(True, "namespace labelled ambient")
    if ns_mode == DATAPLANE_MODE_NONE:
        return Enrolment(False, "namespace labelled none")
    return Enrolment(False, "not labelled for ambient")


def _invalid(kind: str, obj: Any, problem: str) -> InvalidObject:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    ns, name = meta.get("namespace", ""), meta.get("name", "")
    return InvalidObject(kind, ns if isinstance(ns, str) else "", name if isinstance(name, str) else "", problem)


def _mapping(parent: Any, key: str, kind: str, obj: Any) -> dict[str, Any]:
    if not isinstance(parent, dict):
        raise InvalidObject(kind, "", "", f"expected an object (dict), got {type(parent).__name__}")
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid(kind, obj, f"{key} must be an object, got {type(value).__name__}")
    return value


def _string_map(meta: dict[str, Any], key: str, kind: str, obj: Any) -> dict[str, str]:
    value = meta.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or non_string_entry(value) is not None:
        raise _invalid(kind, obj, f"metadata.{key} must map strings to strings")
    return value
