"""wisp-cni as a container runtime runs it: chained after the real `bridge` + `host-local` plugins
(Debian's containernetworking-plugins) in a conflist written by `cni.install`, executed by
`cnitool` (the CNI project's reference runtime, libcni) for a pod in a scratch netns, talking to a
real node agent.

Everything lives in namespaces this test creates: cnitool runs inside a scratch "node" netns, so
the bridge, its gateway address and the veth's host end are made there, never in the machine's
own namespace; the bridge name and the /24 are random per run. host-local keeps its leases in a
temporary directory; libcni's result cache (/var/lib/cni/results) is cleaned up after the run.
"""

from __future__ import annotations

import glob
import ipaddress
import json
import os
import random
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio

from cni.agent import AgentConfig, NodeAgent
from cni.install import HostPaths, install, uninstall
from tests.support.fake_ztunnel import FakeZtunnel
from tests.support.netns import netns_run, random_prefix, scratch_netns
from tests.support.pod_source import MemoryPodSource
from runtime.testbed import build, cnitool
from wisp.zds.protocol import Add, WorkloadInfo

pytestmark = pytest.mark.root

CNI_PLUGIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
LIBCNI_DIR = "/var/lib/cni"  # libcni's cache; cnitool cannot move it
LIBCNI_CACHE = LIBCNI_DIR + "/results"
UID = "3f1c2a4e-0000-4000-8000-00000000c0de"


@pytest.fixture(scope="session")
def cnitool_path() -> Path:
    """cnitool from the test bed's cache, built on first use (Go and the module proxy needed)."""
    try:
        path, _ = cnitool.build_cnitool()
    except build.BuildError as error:
        pytest.fail("cannot build cnitool: %s" % error, pytrace=False)
    return path


@pytest.fixture(scope="session")
def bridge_plugin() -> str:
    path = os.path.join(CNI_PLUGIN_DIR, "bridge")
    if not (os.access(path, os.X_OK) and os.access(os.path.join(CNI_PLUGIN_DIR, "host-local"), os.X_OK)):
        pytest.fail("the bridge and host-local CNI plugins are not in %s: "
                    "apt-get install containernetworking-plugins (./run installs it)" % CNI_PLUGIN_DIR, pytrace=False)
    return path


class NotRunningYet:
    """A netns locator that finds nothing: the pod exists in the API but its sandbox does not yet,
    so only the runtime's CNI ADD can enrol it (as on a node, where /proc shows no process yet)."""

    def find(self, pod: dict[str, Any]) -> str | None:
        return None


def namespace() -> dict[str, Any]:
    return {"metadata": {"name": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}}}


def pod() -> dict[str, Any]:
    return {"metadata": {"name": "web", "namespace": "shop", "uid": UID},
            "spec": {"nodeName": "node1", "serviceAccountName": "web-sa"},
            "status": {"phase": "Pending"}}


class Host:
    """A scratch node: its netns, a pod netns, a host root with the primary bridge conflist."""

    def __init__(self, root: Path, prefix: str, node_netns: str, pod_netns: str) -> None:
        self.prefix = prefix
        self.node_netns = node_netns
        self.pod_netns = pod_netns
        self.paths = HostPaths(str(root / "etc/cni/net.d"), str(root / "opt/cni/bin"))
        self.sockets = root / "run"
        self.network = "wisp-t" + secrets.token_hex(4)
        self.bridge = "wb" + secrets.token_hex(4)
        self.subnet = "10.%d.%d.0/24" % (random.randint(200, 254), random.randint(0, 255))
        self.primary = {
            "cniVersion": "1.0.0",
            "name": self.network,
            "plugins": [{
                "type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False,
                "ipam": {"type": "host-local", "subnet": self.subnet, "dataDir": str(root / "ipam")},
            }],
        }
        self.conflist = Path(self.paths.conf_dir) / "10-bridge.conflist"

    async def cnitool(self, tool: Path, command: str) -> tuple[int, str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "NETCONFPATH": self.paths.conf_dir,
            "CNI_PATH": "%s:%s" % (self.paths.bin_dir, CNI_PLUGIN_DIR),
            "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web",
            "CNI_IFNAME": "eth0",
        }
        # In the node's netns: the bridge plugin makes the bridge and the host end of the veth where
        # it runs, and that must not be the machine's own namespace.
        done = await trio.run_process(
            ["nsenter", "--net=%s" % self.node_netns, str(tool), command, self.network, self.pod_netns],
            env=env, capture_stdout=True, capture_stderr=True, check=False, cwd="/")
        return done.returncode, done.stdout.decode(), done.stderr.decode()


@pytest.fixture
def host(tmp_path: Path):
    prefix = random_prefix()
    root = Path(tempfile.mkdtemp(prefix="wisp-tcni", dir=tmp_path))
    for directory in ("etc/cni/net.d", "opt/cni/bin", "run", "ipam"):
        (root / directory).mkdir(parents=True)
    scratch = None
    made = [d for d in (LIBCNI_DIR, LIBCNI_CACHE) if not os.path.exists(d)]
    try:
        with scratch_netns(prefix + "-node1") as node_ns, scratch_netns(prefix + "-shop-web") as pod_ns:
            scratch = Host(root, prefix, node_ns, pod_ns)
            yield scratch
    finally:
        if scratch is not None:
            for cached in glob.glob(os.path.join(LIBCNI_CACHE, scratch.network + "-*")):
                os.unlink(cached)
        for directory in reversed(made):  # the cache directories libcni made for this run, if empty
            try:
                os.rmdir(directory)
            except OSError:
                pass
        shutil.rmtree(root, ignore_errors=True)


def addresses(netns: str, device: str) -> list[str]:
    shown = json.loads(netns_run(netns, "ip", "-j", "addr", "show", "dev", device))
    return ["%s/%d" % (a["local"], a["prefixlen"]) for entry in shown for a in entry.get("addr_info", [])
            if a.get("family") == "inet"]


def links(netns: str) -> list[str]:
    return [link["ifname"] for link in json.loads(netns_run(netns, "ip", "-j", "link", "show"))]


async def test_bridge_then_wisp_cni_set_up_a_pod_and_tear_it_down(host: Host, cnitool_path, bridge_plugin):
    original = json.dumps(host.primary, indent=1).encode()
    host.conflist.write_bytes(original)
    cni_socket = str(host.sockets / "cni.sock")
    install(host.paths, cni_socket)

    source = MemoryPodSource()
    source.show([namespace()], [pod()])
    config = AgentConfig(node="node1", zds_socket=str(host.sockets / "ztunnel.sock"), cni_socket=cni_socket,
                         host_netns=host.node_netns, ack_timeout=2.0, retry_interval=0.2, pod_wait=2.0)
    agent = NodeAgent(config, source, NotRunningYet())
    async with trio.open_nursery() as nursery:
        fake = FakeZtunnel(config.zds_socket)
        await nursery.start(fake.serve)
        with trio.fail_after(10):
            await nursery.start(agent.run)

        code, out, err = await host.cnitool(cnitool_path, "add")
        assert code == 0, err or out
        result = json.loads(out)
        # The chain's result is the bridge's, passed through by wisp-cni: the pod's address on eth0.
        pod_address = result["ips"][0]["address"]
        pod_ip = pod_address.split("/")[0]
        assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(host.subnet)
        assert any(i.get("name") == "eth0" and i.get("sandbox") == host.pod_netns for i in result["interfaces"])
        assert addresses(host.pod_netns, "eth0") == [pod_address]
        assert host.bridge in links(host.node_netns)
        # And wisp's half: redirection in the pod, ztunnel told with the netns, the annotation written.
        assert "-A PREROUTING -j ISTIO_PRERT" in netns_run(host.pod_netns, "iptables-save")
        adds = [r for r in fake.received if isinstance(r.message, Add)]
        assert [r.message for r in adds] == [Add(UID, WorkloadInfo("web", "shop", "web-sa"))]
        st = os.stat(host.pod_netns)
        assert (adds[0].netns.dev, adds[0].netns.ino) == (st.st_dev, st.st_ino)
        assert source.annotation("shop", "web") == "enabled"
        assert pod_ip in netns_run(host.node_netns, "ipset", "list", "istio-inpod-probes-v4")

        code, out, err = await host.cnitool(cnitool_path, "check")
        assert code == 0, err or out
        code, out, err = await host.cnitool(cnitool_path, "del")
        assert code == 0, err or out
        assert "eth0" not in links(host.pod_netns)
        fake.close()
        nursery.cancel_scope.cancel()

    assert uninstall(host.paths) is True
    assert host.conflist.read_bytes() == original
    assert os.listdir(host.paths.bin_dir) == []


async def test_a_pod_start_fails_while_the_node_agent_is_down(host: Host, cnitool_path, bridge_plugin):
    host.conflist.write_bytes(json.dumps(host.primary).encode())
    install(host.paths, str(host.sockets / "cni.sock"))  # nobody listens there
    code, out, err = await host.cnitool(cnitool_path, "add")
    assert code != 0
    assert "node agent unreachable" in (err + out)
    assert "ISTIO" not in netns_run(host.pod_netns, "iptables-save")
    # The runtime cleans up a failed ADD with DEL; wisp-cni's DEL needs no agent.
    code, out, err = await host.cnitool(cnitool_path, "del")
    assert code == 0, err or out
