"""The local runtime's network: a switch namespace, one namespace per node and per pod.

Everything is created inside namespaces whose names start with the runtime's prefix; veth pairs
are made inside a namespace with their peer moved straight into another, so the machine's own
namespace never gets a link, address, route or rule. Commands are iproute2's, batched per
namespace (`ip -n NS -batch -`), so the result can be inspected with the same standard tools.

Layout (docs/architecture.md): switch `<prefix>-net` with bridge `br0` at 10.250.0.1/24; node N
in `<prefix>-node<N>` at 10.250.0.(10+N) with bridge `cni0` at 10.244.N.1/24 for its pods and a
route to every other node's pod range; pods in `<prefix>-<namespace>-<pod>` with `eth0` on the
node's `cni0`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from wisp import netns as wnetns

from wisp import runpaths as paths
from wisp.runpaths import pod_netns_name

NODE_NETWORK = ipaddress.ip_network("10.250.0.0/24")
CONTROL_PLANE_IP = "10.250.0.1"
SERVICE_NETWORK = ipaddress.ip_network("10.96.0.0/16")
NETNS_ETC = "/etc/netns"


class TopologyError(RuntimeError):
    """An iproute2/iptables command failed; the message carries its output."""


@dataclass(slots=True, frozen=True)
class Node:
    index: int
    name: str
    netns: str
    ip: str
    pod_network: ipaddress.IPv4Network

    @property
    def gateway(self) -> str:
        return str(self.pod_network.network_address + 1)


@dataclass(slots=True, frozen=True)
class PodNet:
    namespace: str
    name: str
    node: Node
    netns: str
    ip: str
    host_veth: str

    @property
    def netns_path(self) -> str:
        return wnetns.path_of(self.netns)


def run(args: list[str], *, stdin: str | None = None, check: bool = True) -> str:
    """Run a command, returning stdout; TopologyError with its stderr when it fails."""
    result = subprocess.run(args, input=stdin, capture_output=True, text=True)
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise TopologyError(f"{' '.join(args[:6])}{' …' if len(args) > 6 else ''} failed: {detail}")
    return result.stdout


def ip_batch(netns: str | None, commands: Iterable[str]) -> None:
    """Several `ip` commands in one process, in `netns` (or the namespace they name)."""
    text = "\n".join(commands) + "\n"
    args = ["ip", "-n", netns, "-batch", "-"] if netns else ["ip", "-batch", "-"]
    run(args, stdin=text)


def netns_exec(netns: str, args: list[str], **kwargs) -> str:
    return run(["ip", "netns", "exec", netns, *args], **kwargs)


def list_netns(prefix: str) -> list[str]:
    out = run(["ip", "netns", "list"], check=False)
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if owns(prefix, n)]


def owns(prefix: str, name: str, others: Iterable[str] | None = None) -> bool:
    """Is `name` one of mesh `prefix`'s namespaces? All are `<prefix>-…`, but so are those of a
    mesh whose prefix extends ours ("wisp" and "wisp-demo"): those, for any mesh with a run
    directory (`others`, default: every one under RUN_ROOT), are not ours. A name that fits
    both (our namespace "demo") goes to the longer prefix while that mesh runs."""
    if not name.startswith(f"{prefix}-"):
        return False
    if others is None:
        others = os.listdir(paths.RUN_ROOT) if os.path.isdir(paths.RUN_ROOT) else ()
    return not any(other != prefix and other.startswith(f"{prefix}-") and name.startswith(f"{other}-")
                   for other in others)


class Topology:
    def __init__(self, prefix: str = "wisp") -> None:
        self.prefix = prefix
        self.switch = f"{prefix}-net"

    # -- naming ---------------------------------------------------------------------------------
    def node(self, index: int) -> Node:
        if not 1 <= index <= 200:
            raise ValueError(f"node index {index} is outside 1..200")
        return Node(
            index=index, name=f"node{index}", netns=f"{self.prefix}-node{index}",
            ip=str(NODE_NETWORK.network_address + 10 + index),
            pod_network=ipaddress.ip_network(f"10.244.{index}.0/24"),
        )

    def pod_netns(self, namespace: str, name: str) -> str:
        return pod_netns_name(self.prefix, namespace, name)

    def _host_veth(self, netns: str) -> str:
        # Interface names are limited to 15 bytes; a hash of the pod netns keeps them unique.
        return "veth" + hashlib.sha256(netns.encode()).hexdigest()[:8]

    # -- building -------------------------------------------------------------------------------
    def create(self, node_count: int) -> list[Node]:
        """The switch and `node_count` nodes, fully routed. Fails if any already exists."""
        nodes = [self.node(i) for i in range(1, node_count + 1)]
        run(["ip", "netns", "add", self.switch])
        ip_batch(self.switch, [
            "link set lo up",
            "link add br0 type bridge",
            f"addr add {CONTROL_PLANE_IP}/{NODE_NETWORK.prefixlen} dev br0",
            "link set br0 up",
        ])
        for node in nodes:
            run(["ip", "netns", "add", node.netns])
            ip_batch(self.switch, [
                f"link add n{node.index} type veth peer name eth0 netns {node.netns}",
                f"link set n{node.index} master br0",
                f"link set n{node.index} up",
            ])
            ip_batch(node.netns, [
                "link set lo up",
                f"addr add {node.ip}/{NODE_NETWORK.prefixlen} dev eth0",
                "link set eth0 up",
                "link add cni0 type bridge",
                f"addr add {node.gateway}/{node.pod_network.prefixlen} dev cni0",
                "link set cni0 up",
                *(f"route add {other.pod_network} via {other.ip}" for other in nodes if other != node),
            ])
            netns_exec(node.netns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        # The switch reaches pods too, so tools run there (and the control plane) can.
        ip_batch(self.switch, [f"route add {node.pod_network} via {node.ip}" for node in nodes])
        return nodes

    def add_pod(self, node: Node, namespace: str, name: str, ip: str) -> PodNet:
        netns = self.pod_netns(namespace, name)
        pod = PodNet(namespace, name, node, netns, ip, self._host_veth(netns))
        run(["ip", "netns", "add", netns])
        try:
            ip_batch(node.netns, [
                f"link add {pod.host_veth} type veth peer name eth0 netns {netns}",
                f"link set {pod.host_veth} master cni0",
                f"link set {pod.host_veth} up",
            ])
            ip_batch(netns, [
                "link set lo up",
                f"addr add {ip}/{node.pod_network.prefixlen} dev eth0",
                "link set eth0 up",
                f"route add default via {node.gateway}",
            ])
        except TopologyError:
            self.remove_pod(pod)
            raise
        return pod

    def remove_pod(self, pod: PodNet) -> None:
        # Deleting the namespace deletes eth0, and with it the veth peer in the node.
        run(["ip", "netns", "delete", pod.netns], check=False)
        run(["ip", "-n", pod.node.netns, "link", "delete", pod.host_veth], check=False)
        # The node forgets the pod's MAC; its neighbours' caches are why addresses are handed
        # out round-robin rather than reused at once (see the runtime's allocator).
        run(["ip", "-n", pod.node.netns, "neigh", "flush", "to", pod.ip], check=False)
        shutil.rmtree(os.path.join(NETNS_ETC, pod.netns), ignore_errors=True)

    def write_hosts(self, netns: str, entries: list[tuple[str, list[str]]]) -> None:
        """/etc/netns/<netns>/hosts: `ip netns exec` mounts it over /etc/hosts for the pod."""
        directory = os.path.join(NETNS_ETC, netns)
        os.makedirs(directory, exist_ok=True)
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost"]
        lines += [f"{ip} {' '.join(names)}" for ip, names in entries]
        data = ("\n".join(lines) + "\n").encode()
        # In place, not by rename: `ip netns exec` bound this file (its inode) over a running
        # pod's /etc/hosts, so a new file would never reach it. One write of the whole text,
        # then the excess cut: a reader sees the old or the new entries, at worst both.
        fd = os.open(os.path.join(directory, "hosts"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)
        # Names come from the hosts file only. A pod cannot reach the machine's resolver, so
        # point it at its own loopback, where nothing listens: a lookup the file cannot answer
        # (glibc asks for IPv6 first) fails at once instead of waiting out a timeout.
        resolv = os.path.join(directory, "resolv.conf")
        if not os.path.exists(resolv):
            with open(resolv, "w") as f:
                f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")

    def set_service_rules(self, node: Node, rules: str) -> None:
        """Replace the node's kube-proxy-like DNAT chain (iptables-restore input for WISP-SERVICES)."""
        run(["ip", "netns", "exec", node.netns, "iptables-restore", "--noflush"], stdin=rules)

    # -- tearing down -----------------------------------------------------------------------------
    def destroy(self) -> list[str]:
        """Delete every namespace with our prefix and its /etc/netns files; returns what went."""
        gone = []
        for netns in list_netns(self.prefix):
            run(["ip", "netns", "delete", netns], check=False)
            shutil.rmtree(os.path.join(NETNS_ETC, netns), ignore_errors=True)
            gone.append(netns)
        if os.path.isdir(NETNS_ETC):
            for entry in os.listdir(NETNS_ETC):
                if owns(self.prefix, entry):
                    shutil.rmtree(os.path.join(NETNS_ETC, entry), ignore_errors=True)
        return gone


def service_rules(services: list[tuple[str, int, list[tuple[str, int]]]]) -> str:
    """iptables-restore input for a kube-proxy-like chain: VIP:port → a random endpoint.

    `services` is [(vip, port, [(endpoint ip, target port), …])]. A service without endpoints
    gets a REJECT so clients fail fast, as kube-proxy does.
    """
    lines = ["*nat", ":WISP-SERVICES - [0:0]"]
    for vip, port, endpoints in services:
        match = f"-A WISP-SERVICES -d {vip}/32 -p tcp -m tcp --dport {port}"
        if not endpoints:
            continue
        for i, (ip, target) in enumerate(endpoints):
            remaining = len(endpoints) - i
            chance = "" if remaining == 1 else f" -m statistic --mode random --probability {1 / remaining:.10f}"
            lines.append(f"{match}{chance} -j DNAT --to-destination {ip}:{target}")
    lines.append("COMMIT")
    filter_lines = ["*filter", ":WISP-SERVICES-REJECT - [0:0]"]
    for vip, port, endpoints in services:
        if not endpoints:
            filter_lines.append(f"-A WISP-SERVICES-REJECT -d {vip}/32 -p tcp -m tcp --dport {port} -j REJECT --reject-with tcp-reset")
    filter_lines.append("COMMIT")
    return "\n".join(lines + filter_lines) + "\n"


SERVICE_HOOKS = """*nat
:WISP-SERVICES - [0:0]
-A PREROUTING -j WISP-SERVICES
-A OUTPUT -j WISP-SERVICES
COMMIT
*filter
:WISP-SERVICES-REJECT - [0:0]
-A FORWARD -j WISP-SERVICES-REJECT
-A OUTPUT -j WISP-SERVICES-REJECT
COMMIT
"""
