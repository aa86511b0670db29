"""The resource types wisp serves: Kubernetes' built-in kinds and the CRDs in ``deploy/crds``.

The CRD files are the single schema source: a real API server is given the same files, and
``load_resources`` reads them for the local store. A CRD kind is served at exactly the versions
its CRD marks ``served``; its schema is the version's ``openAPIV3Schema``. Built-in kinds carry no
schema here (the local source checks the fields the control plane reads).

Names resolve as kubectl resolves them through discovery: kind, plural, singular, short names,
``plural.group``, case-insensitively (``ap``, ``authorizationpolicies``,
``AuthorizationPolicy``, ``authorizationpolicies.security.istio.io``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

CRD_DIRECTORY = Path(__file__).resolve().parents[2] / "deploy" / "crds"


class ResourceError(ValueError):
    """A CRD file cannot be read or is not a CustomResourceDefinition we can use."""


@dataclass(frozen=True, slots=True)
class ResourceType:
    group: str  # "" for the core group
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...] = ()
    namespaced: bool = True
    versions: tuple[str, ...] = ("v1",)
    # version -> openAPIV3Schema (CRDs only)
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False, hash=False)

    @property
    def qualified(self) -> str:
        """``plural.group`` as in error messages (``authorizationpolicies.security.istio.io``)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def display(self) -> str:
        """``singular.group`` as ``kubectl apply`` prints it (``authorizationpolicy.security.istio.io``)."""
        return f"{self.singular}.{self.group}" if self.group else self.singular

    def api_versions(self) -> tuple[str, ...]:
        return tuple(f"{self.group}/{v}" if self.group else v for v in self.versions)

    def schema(self, api_version: str) -> dict[str, Any] | None:
        return self.schemas.get(api_version.rpartition("/")[2])

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.group, "kind": self.kind, "plural": self.plural, "singular": self.singular,
                "shortNames": list(self.short_names), "namespaced": self.namespaced,
                "versions": list(self.versions)}


_GATEWAY = "gateway.networking.k8s.io"
BUILTIN = (
    ResourceType("", "Namespace", "namespaces", "namespace", ("ns",), namespaced=False),
    ResourceType("", "Node", "nodes", "node", ("no",), namespaced=False),
    ResourceType("", "Pod", "pods", "pod", ("po",)),
    ResourceType("", "Service", "services", "service", ("svc",)),
    ResourceType("", "ServiceAccount", "serviceaccounts", "serviceaccount", ("sa",)),
    ResourceType("discovery.k8s.io", "EndpointSlice", "endpointslices", "endpointslice"),
    ResourceType("apps", "Deployment", "deployments", "deployment", ("deploy",)),
    # Gateway API kinds (names and served versions as its CRDs declare them). The CRDs in
    # deploy/crds replace Gateway, HTTPRoute and GRPCRoute (with their schemas); these entries
    # serve only a CRD directory without them. GatewayClass has no CRD there: names only.
    ResourceType(_GATEWAY, "GatewayClass", "gatewayclasses", "gatewayclass", ("gc",), namespaced=False,
                 versions=("v1", "v1beta1")),
    ResourceType(_GATEWAY, "Gateway", "gateways", "gateway", ("gtw",), versions=("v1", "v1beta1")),
    ResourceType(_GATEWAY, "HTTPRoute", "httproutes", "httproute", versions=("v1", "v1beta1")),
    ResourceType(_GATEWAY, "GRPCRoute", "grpcroutes", "grpcroute", versions=("v1",)),
)


class Resources:
    """Every served type, by (group, kind) and by the names users type."""

    def __init__(self, types: list[ResourceType]) -> None:
        self.types = list(types)
        self._by_kind: dict[str, ResourceType] = {}
        self._by_name: dict[str, ResourceType] = {}
        for rt in self.types:
            # A CRD replaces a built-in entry of the same kind (it knows more: its schema).
            self._by_kind[rt.kind] = rt
        self.types = list(self._by_kind.values())
        for rt in self.types:
            for name in (rt.kind, rt.plural, rt.singular, *rt.short_names, rt.qualified,
                         f"{rt.singular}.{rt.group}" if rt.group else rt.singular):
                self._by_name.setdefault(name.lower(), rt)

    def for_kind(self, kind: str) -> ResourceType | None:
        return self._by_kind.get(kind)

    def served(self, api_version: str, kind: str) -> ResourceType | None:
        """The type if ``kind`` is served at ``api_version``, else None."""
        rt = self._by_kind.get(kind)
        if rt is None or api_version not in rt.api_versions():
            return None
        return rt

    def resolve(self, name: str) -> ResourceType | None:
        return self._by_name.get(name.lower())

    def as_list(self) -> list[dict[str, Any]]:
        return [rt.as_dict() for rt in self.types]


def parse_crd(doc: dict[str, Any], source: str) -> ResourceType:
    try:
        spec = doc["spec"]
        names = spec["names"]
        versions = [v for v in spec["versions"] if v.get("served", True)]
        schemas = {v["name"]: v["schema"]["openAPIV3Schema"] for v in versions}
        return ResourceType(
            group=spec["group"], kind=names["kind"], plural=names["plural"],
            singular=names.get("singular") or names["kind"].lower(),
            short_names=tuple(names.get("shortNames") or ()),
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            versions=tuple(v["name"] for v in versions), schemas=schemas,
        )
    except (KeyError, TypeError) as exc:
        raise ResourceError(f"{source}: not a usable CustomResourceDefinition (missing {exc})") from None


def read_crds(directory: Path) -> list[ResourceType]:
    types = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except (OSError, yaml.YAMLError) as exc:
            raise ResourceError(f"cannot read CRDs from {path}: {exc}") from None
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                types.append(parse_crd(doc, str(path)))
    return types


@lru_cache(maxsize=4)
def load_resources(directory: str | None = None) -> Resources:
    """Built-in types plus the CRDs of ``directory`` (default: ``$WISP_CRD_DIR`` or deploy/crds)."""
    where = Path(directory or os.environ.get("WISP_CRD_DIR") or CRD_DIRECTORY)
    if not where.is_dir():
        raise ResourceError(f"CRD directory {where} does not exist")
    return Resources([*BUILTIN, *read_crds(where)])
