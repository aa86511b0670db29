"""Finding a running pod's network namespace: local runtime names and Kubernetes cgroups."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from cni.podnetns import CgroupNetnsLocator, LocalNetnsLocator, pod_uid_from_cgroup
from tests.support.netns import random_prefix, scratch_netns

POD = {"metadata": {"name": "web", "namespace": "shop", "uid": "0b5d7c1e-1111-2222-3333-444455556666"}}


def test_local_runtime_pod_netns_is_found_by_name():
    prefix = random_prefix()
    locator = LocalNetnsLocator(prefix)
    assert locator.find(POD) is None
    with scratch_netns(f"{prefix}-shop-web") as path:
        assert locator.find(POD) == path == f"/var/run/netns/{prefix}-shop-web"


def _proc(root, pid: str, cgroup: str, netns: str) -> None:
    os.makedirs(root / pid / "ns")
    (root / pid / "cgroup").write_text(cgroup)
    os.symlink(netns, root / pid / "ns" / "net")


def test_kubernetes_pod_netns_is_found_through_the_cgroup_of_a_pod_process(tmp_path):
    os.makedirs(tmp_path / "self" / "ns")
    os.symlink("/proc/self/ns/net", tmp_path / "self" / "ns" / "net")
    with scratch_netns(f"{random_prefix()}-pod") as pod_netns:
        _proc(tmp_path, "10", "0::/system.slice/sshd.service\n", "/proc/self/ns/net")
        _proc(tmp_path, "42", "0::/kubepods.slice/kubepods-besteffort-pod0b5d7c1e_1111_2222_3333_444455556666"
                              ".slice/cri-containerd-abc.scope\n", pod_netns)
        assert CgroupNetnsLocator(str(tmp_path)).find(POD) == str(tmp_path / "42" / "ns" / "net")


def test_host_network_pod_has_no_netns_of_its_own(tmp_path):
    os.makedirs(tmp_path / "self" / "ns")
    os.symlink("/proc/self/ns/net", tmp_path / "self" / "ns" / "net")
    _proc(tmp_path, "42", "0::/kubepods/pod0b5d7c1e-1111-2222-3333-444455556666/abc\n", "/proc/self/ns/net")
    assert CgroupNetnsLocator(str(tmp_path)).find(POD) is None


# -- which pod a cgroup file names (recorded /proc/<pid>/cgroup contents) -------------------------
UID = "863b91d4-4b68-4efa-917f-4b560e3e86aa"
CGROUPS = [
    # kind in Docker (Istio's testdata cgroupns/0): systemd slices nested in a container, cgroup v2.
    ("kind, cgroup v2 systemd driver",
     "0::/system.slice/docker-8445c3ca20fac1d8e74854d84a7e6a57297ffb22809098b2816b31a428f2b777.scope/kubelet.slice/"
     "kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-"
     "pod863b91d4_4b68_4efa_917f_4b560e3e86aa.slice/cri-containerd-"
     "75c7fe7ad0df679971e755bd97b84dd68a32e1eba8e8f99b01ab3c07196a3e4a.scope\n", UID),
    ("containerd, cgroup v1 cgroupfs driver, one line per controller",
     "".join(f"{i}:{c}:/kubepods/burstable/pod863b91d4-4b68-4efa-917f-4b560e3e86aa/"
             "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961\n"
             for i, c in enumerate(["cpu,cpuacct", "memory", "pids", "name=systemd"], 1)) + "0::/\n", UID),
    ("systemd driver with the containerd colon form",
     "0::/kubepods-besteffort-pod863b91d4_4b68_4efa_917f_4b560e3e86aa.slice:cri-containerd:"
     "b2a102854b4969b2ce98dc329c86b4fb2b06e4ad2cc8da9d8a7578c9cd2004a2\n", UID),
    ("cgroup namespace: the path starts with ..",
     "0::/../../pod863b91d4-4b68-4efa-917f-4b560e3e86aa/9bca8d63d5fa6107\n", UID),
    ("CRI-O scope",
     "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod863b91d4_4b68_4efa_917f_4b560e3e86aa.slice/"
     "crio-45490e76e0878aaa4d9808f7d2eefba37f093c3efbba9838b6d8ab804d9bd814.scope\n", UID),
    ("a host process", "0::/system.slice/containerd.service\n", None),
    ("the root cgroup", "0::/\n", None),
    ("a pod-level cgroup without a container", "4:memory:/kubepods/burstable/pod863b91d4-4b68-4efa-917f-4b560e3e86aa\n", None),
    ("a UID that is not one", "0::/kubepods/podnot-a-uid/abc\n", None),
    ("two different pods",
     "4:memory:/kubepods/pod863b91d4-4b68-4efa-917f-4b560e3e86aa/abc\n"
     "3:pids:/kubepods/pod0b5d7c1e-1111-2222-3333-444455556666/abc\n", None),
    ("garbage lines", "no colons here\n\n::\n", None),
]


@pytest.mark.parametrize(("name", "text", "uid"), CGROUPS, ids=[c[0] for c in CGROUPS])
def test_the_pod_a_cgroup_file_names(name, text, uid):
    assert pod_uid_from_cgroup(text) == uid


def test_the_oldest_process_of_a_pod_wins(tmp_path):
    os.makedirs(tmp_path / "self" / "ns")
    os.symlink("/proc/self/ns/net", tmp_path / "self" / "ns" / "net")
    cgroup = "0::/kubepods/pod0b5d7c1e-1111-2222-3333-444455556666/abc\n"
    with scratch_netns(f"{random_prefix()}-a") as first, scratch_netns(f"{random_prefix()}-b") as second:
        _proc(tmp_path, "300", cgroup, second)
        _proc(tmp_path, "200", cgroup, first)
        for pid, started in (("300", 5000), ("200", 7000)):
            # comm with a space and a parenthesis, as /proc shows it.
            (tmp_path / pid / "stat").write_text(f"{pid} (odd) name) S 1 " + "0 " * 17 + f"{started} 0 0\n")
        assert CgroupNetnsLocator(str(tmp_path)).find(POD) == str(tmp_path / "300" / "ns" / "net")


# -- the real /proc: a process started in a scratch netns and a scratch pod-shaped cgroup ------------
def _writable_cgroup_root() -> str | None:
    for root in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if os.path.isfile(os.path.join(root, "cgroup.procs")) and os.access(root, os.W_OK):
            return root
    return None


@pytest.fixture
def pod_process():
    """A `sleep` in a fresh netns and in a fresh cgroup laid out as the kubelet's cgroupfs driver
    lays out a container of POD; everything removed on exit, even on failure."""
    root = _writable_cgroup_root()
    if root is None:
        pytest.skip("no writable cgroup hierarchy on this machine to place a process in a pod-shaped cgroup")
    prefix = random_prefix()
    top = os.path.join(root, prefix)
    leaf = os.path.join(top, "kubepods", "besteffort", "pod" + POD["metadata"]["uid"], "c0ffee")
    with scratch_netns(f"{prefix}-pod") as netns:
        process = subprocess.Popen(["nsenter", f"--net={netns}", "sleep", "60"])
        try:
            os.makedirs(leaf)
            deadline = time.monotonic() + 5
            # nsenter execs sleep in place, so the pid is the sleeping process once it runs in the netns.
            while os.stat(f"/proc/{process.pid}/ns/net").st_ino != os.stat(netns).st_ino:
                assert time.monotonic() < deadline, "the process never entered the scratch netns"
                time.sleep(0.01)
            with open(os.path.join(leaf, "cgroup.procs"), "w") as f:
                f.write(str(process.pid))
            yield process.pid, netns
        finally:
            process.kill()
            process.wait()
            for directory in sorted((d for d, _, _ in os.walk(top)), key=len, reverse=True):
                for _ in range(50):  # a killed task leaves its cgroup a moment later
                    try:
                        os.rmdir(directory)
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.02)


def test_a_running_pod_process_is_found_in_the_real_proc(pod_process):
    pid, netns = pod_process
    found = CgroupNetnsLocator().find(POD)
    assert found == f"/proc/{pid}/ns/net"
    assert os.stat(found).st_ino == os.stat(netns).st_ino
    other = {"metadata": {"uid": "0b5d7c1e-1111-2222-3333-000000000000"}}
    assert CgroupNetnsLocator().find(other) is None
