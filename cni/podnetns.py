"""Finding a running pod's network namespace (for pods the agent did not see through CNI ADD).

Local mode: the runtime names pod namespaces `<prefix>-<namespace>-<pod>` under /var/run/netns.
Kubernetes: a process of the pod sits in a cgroup whose path holds the pod UID (with `-` or `_`);
its /proc/<pid>/ns/net is the pod's namespace (Istio's method, cni/pkg/nodeagent/podcgroupns_linux.go:
each line of /proc/<pid>/cgroup is `id:controllers:path`; a path ending `…pod<uid>…/<container>`
names the pod, in the cgroupfs (`/kubepods/burstable/pod<uid>/<id>`) and systemd
(`kubepods-besteffort-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`) layouts; a file
naming two different pods is ignored). The host's own namespace is never a pod's (host-network
pods); when several processes of a pod are in different namespaces the oldest process wins, as
in Istio. The CRI's netns path (`/var/run/netns/cni-…`) is not used: it needs a CRI client.
"""

from __future__ import annotations

import os
import re
from typing import Any, Protocol

from wisp import netns as wnetns
from wisp.runpaths import pod_netns_name


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
        host = _netns_id(os.path.join(self.proc, "self/ns/net"))
        best: tuple[int, str] | None = None
        for pid in (p for p in os.listdir(self.proc) if p.isdigit()):
            try:
                with open(os.path.join(self.proc, pid, "cgroup"), encoding="utf-8", errors="replace") as f:
                    cgroup = f.read()
            except OSError:
                continue  # the process ended, or is not ours to read
            if pod_uid_from_cgroup(cgroup) != uid:
                continue
            path = os.path.join(self.proc, pid, "ns/net")
            ident = _netns_id(path)
            # A host-network container shares our namespace: that is not a pod netns to enrol.
            if ident is None or ident == host:
                continue
            started = _start_time(os.path.join(self.proc, pid, "stat"))
            if best is None or started < best[0]:
                best = (started, path)
        return best[1] if best is not None else None


# ASCII punctuation, as Go's [[:punct:]] in Istio's expression.
_P = r"""[!-/:-@\[-`{-~]"""
_NP = r"""[^!-/:-@\[-`{-~]"""
_HEX = "[0-9a-fA-F]"
_POD_IN_PATH = re.compile(
    _P + "pod(" + _HEX + "{8}" + _P + "?" + _HEX + "{4}" + _P + "?" + _HEX + "{4}" + _P + "?" + _HEX + "{4}"
    + _P + "?" + _HEX + "{12})" + _P + "(?:" + _NP + "+" + _P + ")*" + _NP + "+$")


def pod_uid_from_cgroup(text: str) -> str | None:
    """The pod UID named by a /proc/<pid>/cgroup file, or None (no pod, or two different pods)."""
    found: str | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        path = parts[2].strip()
        path = path[: -len(".scope")] if path.endswith(".scope") else path
        match = _POD_IN_PATH.search(path)
        if match is None:
            continue
        uid = re.sub(_P, "-", match.group(1))
        if found is not None and uid != found:
            return None
        found = uid
    return found


def _start_time(stat_path: str) -> int:
    """Clock ticks since boot when the process started (field 22 of /proc/<pid>/stat)."""
    try:
        with open(stat_path, "rb") as f:
            stat = f.read()
        # Fields after the command name (which may hold spaces and parentheses) start after the last ')'.
        return int(stat[stat.rfind(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return 2**63  # unknown: any process with a known start time is preferred


def _netns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
