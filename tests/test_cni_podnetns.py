"""Finding a running pod's network namespace: local runtime names and Kubernetes cgroups."""

from __future__ import annotations

import os

from cni.podnetns import CgroupNetnsLocator, LocalNetnsLocator
from cni.testing import random_prefix, scratch_netns

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
