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
