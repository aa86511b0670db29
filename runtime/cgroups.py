"""Pod cgroups, as a kubelet makes them: every container process in a cgroup whose path names its pod.

Why: on Kubernetes the node agent finds a running pod's network namespace through
/proc/<pid>/cgroup (a path holding `pod<uid>`, Istio's method: cni/podnetns.py), which is how a
pod that was running before its namespace was enrolled gets its redirection without a restart.
The runtime's pods are plain processes, so the kubelet puts them where a kubelet with the
cgroupfs driver would: `<hierarchy>/<prefix>/kubepods/pod<uid>/<container>`.

Contract:
- `hierarchies()` lists the writable cgroup hierarchies that may hold processes: the cgroup v2
  root (`/sys/fs/cgroup` or `/sys/fs/cgroup/unified`) and the v1 `pids` hierarchy, whichever
  exist. One is enough for /proc/<pid>/cgroup to name the pod; each found is used.
- `container_dirs(prefix, pod_uid, container)` makes the directories (mode 0755) and returns them;
  `join(dirs, pid)` moves process `pid` (0: the caller) into each. The supervisor
  (runtime/processes.py) moves a container's process in as soon as it exists, while `ip netns
  exec` and the sandbox step still run (milliseconds before the command; the pid is the
  command's own after exec), so what the command starts inherits the cgroup.
- `kill_pod(prefix, pod_uid)` SIGKILLs whatever still runs in the pod's cgroups once its
  containers were stopped (a process that left its container's process group, such as a daemon
  that called setsid, is out of reach of the group signal but never of its cgroup) and waits up
  to `timeout` s for them to go; it returns the pids it killed.
- `remove_pod(prefix, pod_uid)` removes the pod's directories once its processes are gone (a
  cgroup with a live process cannot be removed; such a directory is left and reported), and
  `remove_all(prefix)` everything of a mesh (`wisp down`, and the clean-up of a crashed run).
- Nothing here limits resources: the cgroups name pods, they do not enforce requests or limits.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

CGROUP_ROOT = Path(os.environ.get("WISP_CGROUP_ROOT", "/sys/fs/cgroup"))


def hierarchies(root: Path = CGROUP_ROOT) -> list[Path]:
    found = []
    for candidate in (root, root / "unified", root / "pids"):
        if (candidate / "cgroup.procs").is_file() and os.access(candidate, os.W_OK):
            found.append(candidate)
    return found


def pod_dirs(prefix: str, pod_uid: str, root: Path = CGROUP_ROOT) -> list[Path]:
    return [h / prefix / "kubepods" / f"pod{pod_uid}" for h in hierarchies(root)]


def container_dirs(prefix: str, pod_uid: str, container: str, root: Path = CGROUP_ROOT) -> list[Path]:
    dirs = []
    for pod in pod_dirs(prefix, pod_uid, root):
        target = pod / container
        target.mkdir(mode=0o755, parents=True, exist_ok=True)
        dirs.append(target)
    return dirs


def join(dirs: list[str] | list[Path], pid: int = 0) -> None:
    """Move process `pid` (0: the caller) into each cgroup directory."""
    for directory in dirs:
        with open(os.path.join(directory, "cgroup.procs"), "w") as f:
            f.write(str(pid or os.getpid()))


def _remove_tree(top: Path) -> list[str]:
    """rmdir every directory below and at `top`, deepest first; returns those that would not go."""
    left = []
    if not top.is_dir():
        return left
    for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) + [top]:
        try:
            path.rmdir()
        except OSError:
            left.append(str(path))
    return left


def pod_processes(prefix: str, pod_uid: str, root: Path = CGROUP_ROOT) -> set[int]:
    found: set[int] = set()
    for pod in pod_dirs(prefix, pod_uid, root):
        for procs in pod.rglob("cgroup.procs") if pod.is_dir() else ():
            try:
                found.update(int(line) for line in procs.read_text().split())
            except (OSError, ValueError):
                continue
    return found


def kill_pod(prefix: str, pod_uid: str, root: Path = CGROUP_ROOT, timeout: float = 2.0) -> list[int]:
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while (pids := pod_processes(prefix, pod_uid, root)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    return sorted(killed)


def remove_pod(prefix: str, pod_uid: str, root: Path = CGROUP_ROOT) -> list[str]:
    left = []
    for pod in pod_dirs(prefix, pod_uid, root):
        left += _remove_tree(pod)
    return left


def remove_all(prefix: str, root: Path = CGROUP_ROOT) -> list[str]:
    left = []
    for hierarchy in hierarchies(root):
        left += _remove_tree(hierarchy / prefix)
    return left
