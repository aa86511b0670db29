"""What is compared: one class per contender, each saying where its traffic goes and which
processes are its proxies.

Adding a contender (a waypoint; nginx as its L7 anchor) is one subclass of `Contender` added to
`CONTENDERS`: it names the namespace whose client and server pods it uses (and any extra
manifests), starts and stops whatever it runs besides the mesh, returns the address the load
generators dial from the client pod, and the root pids of its proxy processes, whose whole trees
are measured. The runner and the report need no change.
"""

from __future__ import annotations

import ipaddress
import os
import resource
import signal
import subprocess
from dataclasses import dataclass
from typing import ClassVar

from .mesh import CLIENT_NODE, HTTP_PORT, IPERF_PORT, SERVER_NODE, BenchNamespace, Mesh, MeshError, wait_for
from .procstat import all_parents, descendants

PLAIN = BenchNamespace("plain", ambient=False)
MESH = BenchNamespace("mesh", ambient=True)


@dataclass(slots=True, frozen=True)
class Route:
    """Where the load generators run and what they dial."""

    netns: str
    http: tuple[str, int]
    iperf: tuple[str, int]

    @property
    def url(self) -> str:
        return f"http://{self.http[0]}:{self.http[1]}/"


class Contender:
    # Class attributes, except for ztunnel whose engine names it per instance.
    key: str
    label: str
    short: str  # for ratio headings
    # Anchors are what the others are divided by; every contender is also compared with each anchor.
    anchor: ClassVar[bool] = False
    namespace: ClassVar[BenchNamespace]
    # Most idle connections its proxies can hold here, if fewer than asked for.
    idle_limit: ClassVar[int | None] = None
    # Profiled with py-spy under --profile (Python proxies only).
    profiled: ClassVar[bool] = False

    def mesh_env(self) -> dict[str, str]:
        """What `wisp up` must have in its environment for this contender's mesh."""
        return {}

    def manifests(self) -> list[dict]:
        """Objects this contender adds to the mesh besides its namespace's client and server."""
        return []

    def start(self, mesh: Mesh, log) -> None:
        """Start what runs besides the mesh (after `wisp up`)."""

    def stop(self) -> None:
        """Stop it again; called even when start failed half-way."""

    def route(self, mesh: Mesh) -> Route:
        client, server = mesh.pod(self.namespace.name, "client"), mesh.pod(self.namespace.name, "server")
        return Route(client.netns, (server.ip, HTTP_PORT), (server.ip, IPERF_PORT))

    def proxies(self, mesh: Mesh) -> dict[str, int]:
        """{name: root pid} of each proxy process tree on the path (none for direct)."""
        return {}

    def allow_open_files(self, mesh: Mesh, count: int) -> None:
        """Raise every proxy process's open-file limit to the hard limit (Python keeps the
        soft one it was started with), which must leave room for `count` connections."""
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard != resource.RLIM_INFINITY and hard < count + 1024:
            raise MeshError(f"{count} idle connections need more open files than the hard limit {hard}")
        for root in self.proxies(mesh).values():
            for pid in process_tree(root):
                subprocess.run(["prlimit", "--pid", str(pid), f"--nofile={hard}:{hard}"],
                               check=True, capture_output=True)


def process_tree(root: int) -> list[int]:
    return descendants(root, all_parents())


class Direct(Contender):
    """Client pod to server pod, no proxy: the limit."""

    key, label, short, anchor, namespace = "direct", "direct (no mesh)", "direct", True, PLAIN


ENGINE_VARIABLE = "WISP_ZTUNNEL_ENGINE"
ENGINES = ("trio", "trio-epoll", "epoll")


class WispZtunnel(Contender):
    """The mesh namespace's pods: in-pod redirection to node1's ztunnel, HBONE to node2's.

    With an engine named, it is `ztunnel[<engine>]` and runs in a mesh of its own, brought up
    with WISP_ZTUNNEL_ENGINE=<engine> (which `wisp up` hands down to every ztunnel process);
    without, ztunnel chooses its default and the contender is plain `ztunnel`.
    """

    namespace = MESH
    profiled = True

    def __init__(self, engine: str | None = None) -> None:
        if engine is not None and engine not in ENGINES:
            raise ValueError(f"unknown ztunnel engine {engine!r}; known: {', '.join(ENGINES)}")
        self.engine = engine
        self.key = "ztunnel" if engine is None else f"ztunnel[{engine}]"
        self.short = self.key
        self.label = "wisp ztunnel pair" if engine is None else f"wisp ztunnel[{engine}] pair"

    def mesh_env(self) -> dict[str, str]:
        return {} if self.engine is None else {ENGINE_VARIABLE: self.engine}

    def start(self, mesh: Mesh, log) -> None:
        # The label must say what ran: check the variable reached both ztunnels' environment.
        for node, pid in self.proxies(mesh).items():
            seen = process_environment(pid).get(ENGINE_VARIABLE)
            if self.engine is not None and seen != self.engine:
                raise MeshError(f"ztunnel on {node} (pid {pid}) runs with {ENGINE_VARIABLE}={seen!r}, "
                                f"not {self.engine!r}: the runtime did not pass it through")
            log(f"{self.key} on {node}: pid {pid}, {ENGINE_VARIABLE}={seen or '(unset: default engine)'}")

    def proxies(self, mesh: Mesh) -> dict[str, int]:
        return {node: mesh.component_pid(f"ztunnel-{node}") for node in (CLIENT_NODE, SERVER_NODE)}


def process_environment(pid: int) -> dict[str, str]:
    """A running process's environment, from /proc/<pid>/environ (NUL-separated KEY=value)."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        raw = f.read()
    return parse_environ(raw)


def parse_environ(raw: bytes) -> dict[str, str]:
    out = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


HAPROXY_GLOBAL = """\
global
    nbthread {threads}
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3
defaults
    mode tcp
    maxconn 20000
    timeout connect 5s
    timeout client 15m
    timeout server 15m
"""
# node1 takes plain TCP from its pods and originates mutual TLS; node2 terminates it.
HAPROXY_ORIGINATE = """
frontend {name}
    bind {listen}
    default_backend {name}
backend {name}
    server peer {peer} ssl crt {pem} ca-file {roots} verify required
"""
HAPROXY_TERMINATE = """
frontend {name}
    bind {listen} ssl crt {pem} ca-file {roots} verify required
    default_backend {name}
backend {name}
    server app {app}
"""
HTTP_TLS_PORT, IPERF_TLS_PORT = 15443, 15444


class HaproxyMtls(Contender):
    """The native L4 mutual-TLS pair: HAProxy in each node's namespace, where ztunnel runs.

    Client pod → node1's HAProxy (plain TCP, on the pod's gateway address) → TLS 1.3 with
    client certificates from the mesh's CA (P-256, like ztunnel's) → node2's HAProxy → server
    pod: "ztunnel without HTTP/2", one TLS connection per TCP connection.
    """

    key, label, short, anchor, namespace = "haproxy", "HAProxy mTLS pair", "HAProxy", True, PLAIN
    threads: ClassVar[int] = 1
    # HAProxy holds two descriptors per connection (client side and server side) and sizes its
    # maxconn from the open-file limit; without CAP_SYS_RESOURCE that stays at the hard limit
    # we inherit (20,000 on the benchmark machine), so it takes ~9,900 connections at most.
    idle_limit = 9_000

    def __init__(self) -> None:
        self._processes: dict[str, subprocess.Popen] = {}

    def _addresses(self, mesh: Mesh) -> tuple[str, str]:
        client_gateway = str(ipaddress.ip_network(mesh.node(CLIENT_NODE)["pod_network"]).network_address + 1)
        return client_gateway, mesh.node(SERVER_NODE)["ip"]

    def start(self, mesh: Mesh, log) -> None:
        gateway, peer = self._addresses(mesh)
        server = mesh.pod(self.namespace.name, "server")
        work = mesh.work / "haproxy"
        work.mkdir(exist_ok=True)
        configs = {}
        for node in (CLIENT_NODE, SERVER_NODE):
            pem, roots = mesh.issue(f"haproxy-{node}", work)
            text = HAPROXY_GLOBAL.format(threads=self.threads)
            for name, port, tls_port in (("http", HTTP_PORT, HTTP_TLS_PORT), ("iperf", IPERF_PORT, IPERF_TLS_PORT)):
                if node == CLIENT_NODE:
                    text += HAPROXY_ORIGINATE.format(name=name, listen=f"{gateway}:{port}",
                                                     peer=f"{peer}:{tls_port}", pem=pem, roots=roots)
                else:
                    text += HAPROXY_TERMINATE.format(name=name, listen=f"{peer}:{tls_port}",
                                                     app=f"{server.ip}:{port}", pem=pem, roots=roots)
            configs[node] = work / f"{node}.cfg"
            configs[node].write_text(text)
        for node, config in configs.items():
            netns = mesh.node(node)["netns"]
            log(f"haproxy in {netns}: {config}")
            with open(work / f"{node}.log", "ab") as out:
                self._processes[node] = subprocess.Popen(
                    ["ip", "netns", "exec", netns, "haproxy", "-db", "-f", str(config)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        for node, port in ((CLIENT_NODE, HTTP_PORT), (SERVER_NODE, HTTP_TLS_PORT)):
            wait_for(lambda: self._listening(mesh.node(node)["netns"], port), 10, f"haproxy on {node} listening")

    def _listening(self, netns: str, port: int) -> bool:
        for node, proc in self._processes.items():
            if proc.poll() is not None:
                raise MeshError(f"haproxy on {node} exited with {proc.returncode}")
        out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Hltn", f"sport = :{port}"],
                             capture_output=True, text=True).stdout
        return bool(out.strip())

    def stop(self) -> None:
        for proc in self._processes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
        self._processes.clear()

    def route(self, mesh: Mesh) -> Route:
        gateway, _ = self._addresses(mesh)
        return Route(mesh.pod(self.namespace.name, "client").netns, (gateway, HTTP_PORT), (gateway, IPERF_PORT))

    def proxies(self, mesh: Mesh) -> dict[str, int]:
        return {node: proc.pid for node, proc in self._processes.items()}

    def allow_open_files(self, mesh: Mesh, count: int) -> None:
        """HAProxy starts with room for its maxconn (40,000 connections, two descriptors each)."""


# In table order: anchors first.
CONTENDERS: dict[str, type[Contender]] = {"direct": Direct, "haproxy": HaproxyMtls, "ztunnel": WispZtunnel}


def make(keys: tuple[str, ...], engines: tuple[str | None, ...] = (None,)) -> list[Contender]:
    """The contenders in table order; "ztunnel" once per engine (None: ztunnel's default)."""
    out: list[Contender] = []
    for key in keys:
        if key == "ztunnel":
            out += [WispZtunnel(engine) for engine in engines]
        else:
            out.append(CONTENDERS[key]())
    return out
