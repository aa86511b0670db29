"""The runtime's view of the manifests: which pods should run, which services exist.

The runtime plays the API server's defaulting (a Service without a clusterIP gets one from
10.96.0.0/16 when applied), the ReplicaSet controller (Deployment → Pods, via wisp.deployments)
and kube-proxy (service endpoints). Validation proper is the control plane's: a file the
runtime cannot read is skipped here and reported there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import yaml

from wisp.deployments import pods_for_deployment
from wisp.kube import InvalidObject

from .topology import SERVICE_NETWORK

log = structlog.get_logger("runtime.manifests")

MANIFEST_SUFFIXES = (".yaml", ".yml")


class ManifestProblem(ValueError):
    """A manifest the runtime cannot use, with the file it came from."""


@dataclass(slots=True, frozen=True)
class ServicePort:
    port: int
    target: int | str
    name: str = ""


@dataclass(slots=True)
class ServiceSpec:
    namespace: str
    name: str
    cluster_ip: str | None
    selector: dict[str, str]
    ports: list[ServicePort] = field(default_factory=list)

    @property
    def hostnames(self) -> list[str]:
        return [f"{self.name}.{self.namespace}.svc.cluster.local", f"{self.name}.{self.namespace}.svc",
                f"{self.name}.{self.namespace}"]


def parse_documents(text: str, source: str) -> list[dict[str, Any]]:
    """Objects of a multi-document YAML text (Lists expanded); ManifestProblem if unreadable."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ManifestProblem(f"{source}: not valid YAML: {exc}") from None
    objects = []
    for index, doc in enumerate(documents, 1):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ManifestProblem(f"{source}: document {index} is not an object")
        if doc.get("kind") == "List":
            items = doc.get("items") or []
            if not isinstance(items, list):
                raise ManifestProblem(f"{source}: document {index}: List items must be a list")
            objects.extend(item for item in items if isinstance(item, dict))
        else:
            objects.append(doc)
    for obj in objects:
        meta = obj.get("metadata")
        if not isinstance(obj.get("kind"), str) or not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            raise ManifestProblem(f"{source}: every object needs a kind and metadata.name")
    return objects


def load_directory(directory: Path) -> list[dict[str, Any]]:
    """Every object in the directory's YAML files (sorted by path); unreadable files are skipped."""
    objects: list[dict[str, Any]] = []
    if not directory.is_dir():
        return objects
    for path in sorted(p for p in directory.rglob("*") if p.suffix in MANIFEST_SUFFIXES and p.is_file()):
        try:
            objects.extend(parse_documents(path.read_text(), str(path)))
        except (ManifestProblem, OSError, UnicodeDecodeError) as exc:
            log.warning("manifest skipped by the runtime", file=str(path), problem=str(exc))
    return objects


def namespace_of(obj: dict[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("namespace") or "default"


def desired_pods(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods that should run: bare Pods and the pods of each Deployment."""
    pods = []
    for obj in objects:
        kind = obj.get("kind")
        try:
            if kind == "Pod":
                pod = dict(obj)
                pod["metadata"] = dict(obj["metadata"], namespace=namespace_of(obj))
                pods.append(pod)
            elif kind == "Deployment":
                pods.extend(pods_for_deployment(obj))
        except (InvalidObject, KeyError, TypeError) as exc:
            log.warning("workload skipped by the runtime", kind=kind, name=obj["metadata"].get("name"), problem=str(exc))
    return pods


def services(objects: list[dict[str, Any]]) -> list[ServiceSpec]:
    result = []
    for obj in objects:
        if obj.get("kind") != "Service":
            continue
        spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
        selector = spec.get("selector") if isinstance(spec.get("selector"), dict) else {}
        ports = []
        for port in spec.get("ports") or []:
            if isinstance(port, dict) and isinstance(port.get("port"), int):
                ports.append(ServicePort(port["port"], port.get("targetPort", port["port"]), str(port.get("name", ""))))
        cluster_ip = spec.get("clusterIP")
        result.append(ServiceSpec(namespace_of(obj), obj["metadata"]["name"],
                                  cluster_ip if cluster_ip not in (None, "", "None") else None,
                                  {str(k): str(v) for k, v in selector.items()}, ports))
    return result


def allocate_cluster_ips(objects: list[dict[str, Any]], taken: set[str]) -> list[dict[str, Any]]:
    """Give each Service without a clusterIP a stable free address (API-server defaulting)."""
    out = []
    for obj in objects:
        spec = obj.get("spec")
        if obj.get("kind") == "Service" and isinstance(spec, dict) and not spec.get("clusterIP"):
            ip = _stable_ip(f"{namespace_of(obj)}/{obj['metadata']['name']}", taken)
            taken.add(ip)
            obj = dict(obj, spec=dict(spec, clusterIP=ip))
        out.append(obj)
    return out


def _stable_ip(key: str, taken: set[str]) -> str:
    size = SERVICE_NETWORK.num_addresses
    start = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")
    for step in range(size):
        offset = (start + step) % size
        # Keep .0.0-.0.9 for well-known addresses, as clusters keep 10.96.0.1 and 10.96.0.10.
        if offset < 10:
            continue
        ip = str(SERVICE_NETWORK.network_address + offset)
        if ip not in taken and not ip.endswith(".255"):
            return ip
    raise ManifestProblem("the service network 10.96.0.0/16 is full")


def taken_cluster_ips(objects: list[dict[str, Any]]) -> set[str]:
    return {s.cluster_ip for s in services(objects) if s.cluster_ip}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def resolve_target_port(pod: dict[str, Any], target: int | str) -> int | None:
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == target and isinstance(port.get("containerPort"), int):
                return port["containerPort"]
    return None

