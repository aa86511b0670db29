"""Pod cgroups name the pod the way the node agent reads them (runtime/cgroups.py, cni/podnetns.py)."""

from __future__ import annotations

import os
import secrets
import subprocess
import uuid

import pytest

from cni.podnetns import pod_uid_from_cgroup
from runtime import cgroups

pytestmark = pytest.mark.root


def test_a_container_process_is_found_as_its_pod_and_everything_goes_after():
    if os.geteuid() != 0:
        pytest.fail("needs root to make cgroups (CI runs as root)")
    if not cgroups.hierarchies():
        pytest.fail("no writable cgroup hierarchy on this machine: the kubelet could not name pods")
    prefix, uid = f"wisp-c{secrets.token_hex(3)}", str(uuid.uuid4())
    try:
        dirs = cgroups.container_dirs(prefix, uid, "app")
        process = subprocess.Popen(["sleep", "30"])
        try:
            cgroups.join(dirs, process.pid)
            with open(f"/proc/{process.pid}/cgroup") as f:
                text = f.read()
            assert pod_uid_from_cgroup(text) == uid, text
            # A live process keeps its cgroup.
            assert cgroups.remove_pod(prefix, uid)
        finally:
            process.kill()
            process.wait()
        # Its children inherit it; gone, the pod's directories go too.
        assert cgroups.remove_pod(prefix, uid) == []
        assert cgroups.remove_all(prefix) == []
        assert not any((h / prefix).exists() for h in cgroups.hierarchies())
    finally:
        cgroups.remove_all(prefix)


def test_a_process_that_left_its_containers_session_is_killed_with_the_pod():
    if os.geteuid() != 0:
        pytest.fail("needs root to make cgroups (CI runs as root)")
    prefix, uid = f"wisp-c{secrets.token_hex(3)}", str(uuid.uuid4())
    try:
        dirs = cgroups.container_dirs(prefix, uid, "app")
        # A daemon: a new session, so a signal to the container's process group misses it.
        process = subprocess.Popen(["sleep", "30"], start_new_session=True)
        try:
            cgroups.join(dirs, process.pid)
            assert cgroups.pod_processes(prefix, uid) == {process.pid}
            assert cgroups.kill_pod(prefix, uid) == [process.pid]
            assert process.wait(5) == -9
            assert cgroups.pod_processes(prefix, uid) == set()
            assert cgroups.remove_pod(prefix, uid) == []
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    finally:
        cgroups.remove_all(prefix)
