"""ClusterState: an immutable snapshot of the cluster objects the reconciler reads.

It does not know where objects come from (Kubernetes watches or the local
runtime's store). Objects are plain dicts, indexed by (kind, namespace, name)
and by kind and namespace, so the reconciler never scans the whole cluster for
one namespace's objects. Cluster-scoped objects have namespace "".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from wisp_operator.errors import object_id

KIND_NAMESPACE = "Namespace"
KIND_POD = "Pod"
KIND_SERVICE = "Service"
KIND_NODE = "Node"
KIND_DEPLOYMENT = "Deployment"
KIND_GATEWAY = "Gateway"
KIND_GATEWAY_CLASS = "GatewayClass"
KIND_AUTHORIZATION_POLICY = "AuthorizationPolicy"
KIND_PEER_AUTHENTICATION = "PeerAuthentication"

Key = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class MeshSettings:
    """Mesh-wide settings (Istio's cluster id, trust domain, root namespace, domain suffix)."""

    cluster_id: str = "Kubernetes"
    trust_domain: str = "cluster.local"
    root_namespace: str = "istio-system"
    domain_suffix: str = "cluster.local"
    network: str = ""


@dataclass(frozen=True, slots=True)
class ClusterState:
    """Objects by (kind, namespace, name); build with ``ClusterState.of(objects)``.

    Treat it as immutable: ``with_objects``/``without`` return new states.
    """

    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    settings: MeshSettings = field(default_factory=MeshSettings)
    _by_kind: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.objects and not self._by_kind:
            # Built directly from a table rather than through of(): index it now.
            object.__setattr__(self, "_by_kind", type(self)._from_table(self.objects, self.settings)._by_kind)

    @classmethod
    def of(cls, objects: Iterable[dict[str, Any]], settings: MeshSettings | None = None) -> ClusterState:
        """Index ``objects``; a later object with the same key replaces an earlier one."""
        table: dict[Key, dict[str, Any]] = {}
        for obj in objects:
            oid = object_id(obj)
            table[(oid.kind, oid.namespace, oid.name)] = obj
        return cls._from_table(table, settings or MeshSettings())

    @classmethod
    def _from_table(cls, table: dict[Key, dict[str, Any]], settings: MeshSettings) -> ClusterState:
        by_kind: dict[str, dict[str, list[dict[str, Any]]]] = {}
        # Sorted so every derived list (and so the model and status writes) is deterministic.
        for key in sorted(table):
            kind, ns, _ = key
            by_kind.setdefault(kind, {}).setdefault(ns, []).append(table[key])
        return cls(table, settings, by_kind)

    def with_objects(self, objects: Iterable[dict[str, Any]]) -> ClusterState:
        table = dict(self.objects)
        for obj in objects:
            oid = object_id(obj)
            table[(oid.kind, oid.namespace, oid.name)] = obj
        return self._from_table(table, self.settings)

    def without(self, keys: Iterable[Key]) -> ClusterState:
        table = dict(self.objects)
        for key in keys:
            table.pop(key, None)
        return self._from_table(table, self.settings)

    # --- lookups -------------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, namespace, name))

    def of_kind(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Objects of ``kind`` (in ``namespace`` if given), sorted by namespace then name."""
        per_ns = self._by_kind.get(kind)
        if not per_ns:
            return []
        if namespace is not None:
            return per_ns.get(namespace, [])
        return [obj for ns in sorted(per_ns) for obj in per_ns[ns]]

    def namespaces_with(self, kind: str) -> Iterator[str]:
        return iter(sorted(self._by_kind.get(kind, {})))

    def namespace(self, name: str) -> dict[str, Any] | None:
        return self.get(KIND_NAMESPACE, "", name)

    def namespaces(self) -> list[dict[str, Any]]:
        return self.of_kind(KIND_NAMESPACE, "")

    def pods(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.of_kind(KIND_POD, namespace)

    def services(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.of_kind(KIND_SERVICE, namespace)

    def nodes(self) -> list[dict[str, Any]]:
        return self.of_kind(KIND_NODE, "")

    def gateways(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.of_kind(KIND_GATEWAY, namespace)

    def authorization_policies(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.of_kind(KIND_AUTHORIZATION_POLICY, namespace)

    def peer_authentications(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.of_kind(KIND_PEER_AUTHENTICATION, namespace)

    def __len__(self) -> int:
        return len(self.objects)
