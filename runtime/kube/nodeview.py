"""A node's own view of the machine's files, for nodes that are network namespaces of one machine.

On a cluster every node has its own disk: `/etc/cni/net.d`, `/opt/cni/bin`, `/var/run/ztunnel`, …
Here all nodes share one filesystem, so each node's copies of those directories live under its
run directory, `<mesh>/nodes/<node>/host/<path>`, and whatever runs "on the node" (the CNI
plugins the kubelet executes, a pod's hostPath volumes) sees them at their usual paths through
bind mounts in a mount namespace of its own.

Contract:
- `NodeView(root)`: `root` is the node's directory; `host_path("/etc/cni/net.d")` is where that
  node-local path lives on the machine (created on demand by callers).
- Paths under `MACHINE_PATHS` are the machine's own on every node (network namespaces are
  bind-mounted files of the one kernel; /proc and /sys describe it; /dev is shared), so
  `host_path` returns them unchanged.
- `binds()` lists `(machine path, node path)` for the node-local directories a plugin run needs
  (`NODE_DIRS`), in the order they must be mounted.
- `cni_conf_dir`, `cni_bin_dir` and `ipam_dir` are the node's CNI configuration, plugin and
  host-local IPAM state directories, at the node paths `/etc/cni/net.d`, `/opt/cni/bin` and
  `/var/lib/cni`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MACHINE_PATHS = ("/proc", "/sys", "/dev", "/run/netns", "/var/run/netns")
# What a node keeps of its own and a CNI plugin or the node agent touches.
NODE_DIRS = ("/etc/cni/net.d", "/opt/cni/bin", "/var/lib/cni", "/var/run/ztunnel", "/var/run/wisp-cni")
CNI_CONF_DIR = "/etc/cni/net.d"
CNI_BIN_DIR = "/opt/cni/bin"
IPAM_DIR = "/var/lib/cni"


@dataclass(slots=True, frozen=True)
class NodeView:
    root: Path

    def host_path(self, path: str) -> Path:
        """Where the node-local `path` (absolute) lives on the machine."""
        if not path.startswith("/"):
            raise ValueError(f"a host path must be absolute, not {path!r}")
        normal = os.path.normpath(path)
        for shared in MACHINE_PATHS:
            if normal == shared or normal.startswith(shared + "/"):
                return Path(normal)
        return self.root / "host" / normal.lstrip("/")

    def binds(self) -> list[tuple[str, str]]:
        return [(str(self.host_path(p)), p) for p in NODE_DIRS]

    @property
    def cni_conf_dir(self) -> Path:
        return self.host_path(CNI_CONF_DIR)

    @property
    def cni_bin_dir(self) -> Path:
        return self.host_path(CNI_BIN_DIR)

    @property
    def ipam_dir(self) -> Path:
        return self.host_path(IPAM_DIR)
