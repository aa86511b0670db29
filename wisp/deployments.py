"""Deployments to Pods, as Kubernetes' controllers name and own them.

Shared by the control plane's local source and the local runtime (which plays kubelet and the
ReplicaSet controller): both must agree on pod names, labels and owners. Pure.
"""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
from typing import Any

from wisp.kube import InvalidObject, non_string_entry

DEFAULT_NAMESPACE = "default"
POD_TEMPLATE_HASH_LABEL = "pod-template-hash"
# Kubernetes' "safe" alphabet for generated names (no vowels, no look-alikes).
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def pod_template_hash(template: dict[str, Any]) -> str:
    """A stable hash of a pod template, in Kubernetes' safe alphabet (10 characters)."""
    encoded = json.dumps(template, sort_keys=True, separators=(",", ":"), default=str).encode()
    return _safe_encode(hashlib.sha256(encoded).digest(), 10)


def _safe_encode(digest: bytes, length: int) -> str:
    value = int.from_bytes(digest, "big")
    out = []
    for _ in range(length):
        value, digit = divmod(value, len(SAFE_ALPHABET))
        out.append(SAFE_ALPHABET[digit])
    return "".join(out)


def pods_for_deployment(deployment: dict[str, Any], replicas: int | None = None) -> list[dict[str, Any]]:
    """The Pods of `deployment`'s current ReplicaSet, as its controllers would create them.

    Names are `<deployment>-<template hash>-<5 characters>`, deterministic per replica index, so
    an unchanged Deployment always yields the same pods and a changed template a new set. Each
    pod is owned by ReplicaSet `<deployment>-<template hash>` and labelled with the template's
    labels plus `pod-template-hash`. `replicas` overrides `spec.replicas` (default 1).
    """
    meta = _mapping(deployment, "metadata", deployment)
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise _invalid(deployment, "metadata.name is required")
    namespace = meta.get("namespace") or DEFAULT_NAMESPACE
    spec = _mapping(deployment, "spec", deployment)
    template = _mapping(spec, "template", deployment, "spec.template")
    if not template:
        raise _invalid(deployment, "spec.template is required")
    count = spec.get("replicas", 1) if replicas is None else replicas
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise _invalid(deployment, f"spec.replicas must be a non-negative integer, got {count!r}")
    template_meta = _mapping(template, "metadata", deployment, "spec.template.metadata")
    pod_spec = _mapping(template, "spec", deployment, "spec.template.spec")
    containers = pod_spec.get("containers")
    if not isinstance(containers, list) or not all(isinstance(c, dict) for c in containers):
        raise _invalid(deployment, "spec.template.spec.containers must be a list of objects")
    template_hash = pod_template_hash(template)
    replica_set = f"{name}-{template_hash}"
    labels = {**_strings(template_meta.get("labels"), deployment, "spec.template.metadata.labels"),
              POD_TEMPLATE_HASH_LABEL: template_hash}
    annotations = _strings(template_meta.get("annotations"), deployment, "spec.template.metadata.annotations")
    owner = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": replica_set,
        "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"wisp-local:ReplicaSet/{namespace}/{replica_set}")),
        "controller": True,
        "blockOwnerDeletion": True,
    }
    pods = []
    for suffix in _pod_suffixes(replica_set, count):
        metadata: dict[str, Any] = {
            "name": f"{replica_set}-{suffix}",
            "namespace": namespace,
            "labels": dict(labels),
            "ownerReferences": [dict(owner)],
        }
        if annotations:
            metadata["annotations"] = dict(annotations)
        pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": copy.deepcopy(pod_spec)})
    return pods


def _pod_suffixes(replica_set: str, count: int) -> list[str]:
    suffixes: list[str] = []
    for index in range(count):
        salt = 0
        while True:
            suffix = _safe_encode(hashlib.sha256(f"{replica_set}/{index}/{salt}".encode()).digest(), 5)
            if suffix not in suffixes:
                break
            salt += 1
        suffixes.append(suffix)
    return suffixes


def _invalid(deployment: Any, problem: str) -> InvalidObject:
    meta = deployment.get("metadata") if isinstance(deployment, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    ns, name = meta.get("namespace"), meta.get("name")
    return InvalidObject("Deployment", ns if isinstance(ns, str) else "", name if isinstance(name, str) else "", problem)


def _mapping(parent: Any, key: str, deployment: Any, where: str | None = None) -> dict[str, Any]:
    if not isinstance(parent, dict):
        raise _invalid(deployment, f"{where or key} must be an object")
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid(deployment, f"{where or key} must be an object, got {type(value).__name__}")
    return value


def _strings(value: Any, deployment: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or non_string_entry(value) is not None:
        raise _invalid(deployment, f"{where} must map strings to strings")
    return dict(value)
