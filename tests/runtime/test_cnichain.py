"""The standard CNI chain (runtime/cnichain.py): Debian's bridge and host-local, then chained
plugins, run in a real node namespace built by runtime/topology.py and seen through the node view."""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import json
import os
import secrets
import shutil
import socketserver
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cni import install as cni_install
from runtime.cnichain import (
    NETWORK_NAME,
    PRIMARY_CONFLIST,
    CniError,
    cni_add,
    cni_del,
    find_conflist,
    primary_conflist,
    write_primary_conflist,
)
from runtime.kube.nodeview import NodeView
from runtime.topology import Node, Topology

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and the sandbox need root")

AGENT_SOCKET = "/var/run/wisp-cni/cni.sock"  # where the node agent's conflist points, at its node path


@dataclass
class Bed:
    topology: Topology
    node: Node
    view: NodeView

    def pod(self, name: str) -> str:
        """A fresh pod netns (removed with the topology); returns its name."""
        netns = self.topology.pod_netns("default", name)
        subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True, capture_output=True)
        return netns

    async def add(self, netns: str, **kwargs) -> dict:
        return await cni_add(self.view, self.node.netns, container_id=f"cid-{netns}", netns_path=f"/run/netns/{netns}",
                             args={"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": netns.rsplit("-", 1)[-1]}, **kwargs)

    async def delete(self, netns: str) -> None:
        await cni_del(self.view, self.node.netns, container_id=f"cid-{netns}", netns_path=f"/run/netns/{netns}",
                      args={"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": netns.rsplit("-", 1)[-1]})

    def taken(self) -> set[str]:
        """The addresses host-local holds for the node's network."""
        store = self.view.ipam_dir / "networks" / NETWORK_NAME
        return {p.name for p in store.iterdir() if p.name[0].isdigit()} if store.is_dir() else set()

    def bridge_ports(self) -> list[str]:
        out = subprocess.run(["ip", "-n", self.node.netns, "-j", "link", "show", "master", "cni0"],
                             check=True, capture_output=True, text=True).stdout
        return [link["ifname"] for link in json.loads(out or "[]")]

    def use_plugins(self, *extra: dict) -> None:
        conflist = primary_conflist(self.node)
        conflist["plugins"] += list(extra)
        (self.view.cni_conf_dir / PRIMARY_CONFLIST).write_text(json.dumps(conflist))


@pytest.fixture
def bed() -> Iterator[Bed]:
    prefix = f"wisp-k{secrets.token_hex(3)}"
    topology = Topology(prefix)
    # Short: a unix socket path under it must fit in 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="wk", dir="/tmp"))
    try:
        node = topology.create(1)[0]
        view = NodeView(root / node.name)
        write_primary_conflist(view, node)
        yield Bed(topology, node, view)
    finally:
        topology.destroy()
        shutil.rmtree(root, ignore_errors=True)


def _ip(netns: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True)


def test_the_primary_conflist_is_what_libcni_loads_and_debians_plugins_are_linked(bed):
    conflist = find_conflist(bed.view)
    assert conflist == primary_conflist(bed.node)
    ipam = conflist["plugins"][0]["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.244.1.0/24", "rangeStart": "10.244.1.10", "gateway": "10.244.1.1"}]]
    assert os.readlink(bed.view.cni_bin_dir / "bridge") == "/usr/lib/cni/bridge"
    assert (bed.view.cni_bin_dir / "host-local").exists()
    # Writing it again (node setup after a restart) keeps a chained plugin in place.
    bed.use_plugins({"type": "wisp-cni", "agent_socket": AGENT_SOCKET})
    write_primary_conflist(bed.view, bed.node)
    assert [p["type"] for p in find_conflist(bed.view)["plugins"]] == ["bridge", "wisp-cni"]


async def test_add_gives_the_pod_eth0_in_the_nodes_range_routed_through_cni0(bed):
    netns = bed.pod("web")
    result = await bed.add(netns)
    address = ipaddress.ip_interface(result["ips"][0]["address"])
    assert address.network == bed.node.pod_network and int(address.ip) - int(bed.node.pod_network[0]) >= 10
    shown = json.loads(_ip(netns, "-j", "addr", "show", "eth0").stdout)
    assert f"{address.ip}/24" in [f"{a['local']}/{a['prefixlen']}" for a in shown[0]["addr_info"]]
    assert _ip(netns, "route", "show", "default").stdout.split()[:5] == ["default", "via", "10.244.1.1", "dev", "eth0"]
    assert len(bed.bridge_ports()) == 1
    # The pod reaches its gateway, the node's cni0: a closed port answers with a reset at once.
    probe = ("import socket\ntry:\n    socket.create_connection(('10.244.1.1', 9), timeout=3)\n"
             "except ConnectionRefusedError:\n    print('refused')")
    reached = subprocess.run(["ip", "netns", "exec", netns, "python3", "-c", probe], capture_output=True, text=True)
    assert reached.stdout.strip() == "refused", reached.stderr
    second = await bed.add(bed.pod("api"))
    assert second["ips"][0]["address"] != result["ips"][0]["address"]
    assert bed.taken() == {str(address.ip), second["ips"][0]["address"].split("/")[0]}


async def test_del_removes_the_veth_and_frees_the_address(bed):
    netns = bed.pod("web")
    address = (await bed.add(netns))["ips"][0]["address"].split("/")[0]
    assert address in bed.taken()
    await bed.delete(netns)
    assert _ip(netns, "link", "show", "eth0").returncode != 0
    assert bed.bridge_ports() == [] and bed.taken() == set()
    assert list((bed.view.ipam_dir / "results").iterdir()) == []
    await bed.delete(netns)  # again: nothing left to do, no error


async def test_a_chained_plugin_that_fails_gives_its_cni_error_and_the_address_is_freed(bed):
    plugin = bed.view.cni_bin_dir / "refuse"
    # Runs in the node view: /var/lib/cni is the node's, so what it was given is kept there.
    plugin.write_text("#!/bin/sh\ncat > /var/lib/cni/refuse-$CNI_COMMAND.json\n"
                      """printf '{"cniVersion":"1.0.0","code":111,"msg":"told to refuse","details":"by the test"}'\n"""
                      "exit 1\n")
    plugin.chmod(0o755)
    bed.use_plugins({"type": "refuse", "mode": "strict"})
    netns = bed.pod("web")
    with pytest.raises(CniError) as caught:
        await bed.add(netns)
    assert (caught.value.plugin, caught.value.code, caught.value.msg, caught.value.details) == \
        ("refuse", 111, "told to refuse", "by the test")
    given = json.loads((bed.view.ipam_dir / "refuse-ADD.json").read_text())
    assert (given["name"], given["cniVersion"], given["mode"]) == (NETWORK_NAME, "1.0.0", "strict")
    assert given["prevResult"]["ips"][0]["address"].startswith("10.244.1.")
    # The failed ADD was deleted, in reverse order, so nothing is held.
    assert (bed.view.ipam_dir / "refuse-DEL.json").exists()
    assert bed.taken() == set() and bed.bridge_ports() == []


async def test_an_unknown_plugin_type_is_named(bed):
    bed.use_plugins({"type": "no-such-plugin"})
    with pytest.raises(CniError) as caught:
        await bed.add(bed.pod("web"))
    assert 'failed to find plugin "no-such-plugin" in path [/opt/cni/bin]' in str(caught.value)
    assert bed.taken() == set()


async def test_no_network_configuration_is_a_clear_error(bed):
    (bed.view.cni_conf_dir / PRIMARY_CONFLIST).unlink()
    (bed.view.cni_conf_dir / "00-broken.conflist").write_text("{not json")
    with pytest.raises(CniError, match="no CNI network configuration in"):
        await bed.add(bed.pod("web"))


async def test_wisp_cni_chained_by_the_node_agent_finds_its_socket_at_the_node_path(bed):
    cni_install.install(cni_install.HostPaths(str(bed.view.cni_conf_dir), str(bed.view.cni_bin_dir)), AGENT_SOCKET)
    assert [p["type"] for p in find_conflist(bed.view)["plugins"]] == ["bridge", "wisp-cni"]
    with pytest.raises(CniError) as caught:
        await bed.add(bed.pod("web"))
    assert (caught.value.plugin, caught.value.msg) == ("wisp-cni", "node agent unreachable")
    assert caught.value.details.startswith(AGENT_SOCKET)
    assert bed.taken() == set()


class _Agent(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    requests: list[dict]


class _AgentHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append({"path": self.path, **json.loads(body)})
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:  # the peer of a unix socket has no address to log
        pass


@contextlib.contextmanager
def _agent(path: Path) -> Iterator[_Agent]:
    """The node agent's CNI endpoint as wisp-cni sees it: answers every ADD, keeps what it was told."""
    path.parent.mkdir(parents=True, exist_ok=True)
    server = _Agent(str(path), _AgentHandler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        path.unlink(missing_ok=True)


async def test_wisp_cni_is_given_the_bridges_result_and_the_pod(bed):
    cni_install.install(cni_install.HostPaths(str(bed.view.cni_conf_dir), str(bed.view.cni_bin_dir)), AGENT_SOCKET)
    netns = bed.pod("web")
    with _agent(bed.view.host_path(AGENT_SOCKET)) as agent:
        result = await bed.add(netns)
    address = result["ips"][0]["address"].split("/")[0]
    assert address.startswith("10.244.1.")
    assert agent.requests == [{"path": "/v1/cni/add", "netns": f"/run/netns/{netns}", "pod_name": "web",
                               "pod_namespace": "default", "pod_ips": [address], "container_id": f"cid-{netns}"}]
    # DEL runs wisp-cni (which has nothing to undo) and then the bridge.
    await bed.delete(netns)
    assert bed.taken() == set() and bed.bridge_ports() == []
