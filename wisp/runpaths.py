"""Where a local mesh keeps its files, and what its network namespaces are called.

Shared by the runtime (`runtime/`, which makes them) and the node agent (`cni/`, which finds a
pod's namespace by name when it runs on a local mesh): one directory per prefix under /run/wisp.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

RUN_ROOT = Path(os.environ.get("WISP_RUN_DIR", "/run/wisp"))


@dataclass(slots=True, frozen=True)
class RuntimePaths:
    prefix: str

    @property
    def root(self) -> Path:
        return RUN_ROOT / self.prefix

    @property
    def state(self) -> Path:
        """The operator's state directory: CA, root certificate, credentials."""
        return self.root / "state"

    @property
    def manifests(self) -> Path:
        """What the operator follows; `wisp apply` writes here."""
        return self.root / "manifests"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def operator_socket(self) -> Path:
        return self.root / "operator.sock"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def pidfile(self) -> Path:
        return self.root / "daemon.pid"

    @property
    def root_cert(self) -> Path:
        return self.state / "root-cert.pem"

    def token(self, name: str) -> Path:
        return self.state / "tokens" / name

    def node_dir(self, node: str) -> Path:
        return self.root / node

    def zds_socket(self, node: str) -> Path:
        return self.node_dir(node) / "ztunnel.sock"

    def cni_socket(self, node: str) -> Path:
        return self.node_dir(node) / "cni.sock"


def pod_netns_name(prefix: str, namespace: str, name: str) -> str:
    """The network namespace of pod `namespace/name` in mesh `prefix` (the node agent finds it so)."""
    return f"{prefix}-{namespace}-{name}"
