"""Finding a test's processes through /proc, to assert that nothing it started outlives it.

    processes_in("/tmp/wisp-tb-x")   # pids whose working directory is that (the test bed's components)
    processes_in_netns(inode)        # pids in the network namespace with that inode (a pod's)

A process that exits between the listing and the read is skipped, not an error.
"""

from __future__ import annotations

import os


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def processes_in(directory: str) -> list[int]:
    """Processes whose working directory is `directory` (the test bed starts each component there)."""
    found = []
    for pid in _pids():
        try:
            if os.readlink(f"/proc/{pid}/cwd") == directory:
                found.append(pid)
        except OSError:
            continue
    return found


def processes_in_netns(inode: int) -> list[int]:
    """Processes whose network namespace has inode `inode` (os.stat of /run/netns/<name>)."""
    found = []
    for pid in _pids():
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == inode:
                found.append(pid)
        except OSError:
            continue
    return found
