"""Finding a running pod's network namespace (for pods the agent did not see through CNI ADD).

Local mode: the runtime names pod namespaces `<prefix>-<namespace>-<pod>` under /var/run/netns.
Kubernetes: a process of the pod sits in a cgroup whose path holds the pod UID (with `-` or `_`);
its /proc/<pid>/ns/net is the pod's namespace (Istio's method).
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from wisp import netns as wnetns
from wisp.runtime.topology import pod_netns_name


class NetnsLocator(Protocol):
    def find(self, pod: dict[str, Any]) -> str | None:
        """A path naming the pod's network namespace, or None if it has none (any more)."""


class LocalNetnsLocator:
    def __init__(self, prefix: str, run_dir: str = wnetns.NETNS_RUN_DIR) -> None:
        self.prefix = prefix
        self.run_dir = run_dir

    def path(self, namespace: str, name: str) -> str:
        return os.path.join(self.run_dir, pod_netns_name(self.prefix, namespace, name))

    def find(self, pod: dict[str, Any]) -> str | None:
        meta = pod.get("metadata") or {}
        path = self.path(str(meta.get("namespace", "")), str(meta.get("name", "")))
        return path if os.path.exists(path) else None


class CgroupNetnsLocator:
    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc

    def find(self, pod: dict[str, Any]) -> str | None:
        uid = (pod.get("metadata") or {}).get("uid")
        if not isinstance(uid, str) or not uid:
            return None
        needles = (uid, uid.replace("-", "_"))
        host = _netns_id(os.path.join(self.proc, "self/ns/net"))
        for pid in (p for p in os.listdir(self.proc) if p.isdigit()):
            try:
                with open(os.path.join(self.proc, pid, "cgroup"), encoding="utf-8", errors="replace") as f:
                    cgroup = f.read()
            except OSError:
                continue  # the process ended, or is not ours to read
            if any(n in cgroup for n in needles):
                path = os.path.join(self.proc, pid, "ns/net")
                ident = _netns_id(path)
                # A host-network container shares our namespace: that is not a pod netns to enrol.
                if ident is not None and ident != host:
                    return path
        return None


def _netns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
