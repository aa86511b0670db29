"""Which namespaces a local mesh owns: never those of another mesh whose prefix extends its own."""

from __future__ import annotations

from wisp import runpaths as paths
from runtime.topology import Topology, owns


def test_a_mesh_owns_its_switch_nodes_and_pods():
    topology = Topology("wisp")
    for name in (topology.switch, topology.node(1).netns, topology.pod_netns("shop", "web-1")):
        assert owns("wisp", name, others=["wisp"])
    assert not owns("wisp", "wispy-node1", others=[])
    assert not owns("wisp", "other-node1", others=[])


def test_a_mesh_leaves_the_namespaces_of_a_mesh_whose_prefix_extends_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RUN_ROOT", tmp_path)
    (tmp_path / "wisp").mkdir()
    (tmp_path / "wisp-demo").mkdir()
    demo = Topology("wisp-demo")
    for name in (demo.switch, demo.node(1).netns, demo.pod_netns("shop", "web-1")):
        assert owns("wisp-demo", name)
        assert not owns("wisp", name)
    # Once the other mesh is gone (no run directory), its leftovers are ours to sweep too.
    (tmp_path / "wisp-demo").rmdir()
    assert owns("wisp", demo.node(1).netns)


def test_a_pods_hosts_file_is_rewritten_in_place_so_a_running_pod_sees_new_services(tmp_path, monkeypatch):
    # `ip netns exec` binds the file's inode over a running pod's /etc/hosts: a rename would
    # leave the pod reading the first version for ever.
    from runtime import topology

    monkeypatch.setattr(topology, "NETNS_ETC", str(tmp_path))
    mesh = Topology("wisp-t")
    mesh.write_hosts("wisp-t-shop-a", [("10.244.1.10", ["a"]), ("10.96.0.20", ["frontend", "frontend.shop.svc"])])
    hosts = tmp_path / "wisp-t-shop-a" / "hosts"
    inode, first = hosts.stat().st_ino, hosts.read_text()
    assert "10.96.0.20 frontend frontend.shop.svc\n" in first
    mesh.write_hosts("wisp-t-shop-a", [("10.244.1.10", ["a"])])
    assert hosts.stat().st_ino == inode
    assert hosts.read_text() == "127.0.0.1 localhost\n::1 localhost ip6-localhost\n10.244.1.10 a\n"
