"""The benchmark's mesh: `wisp up` with a client pod on node1 and a server pod on node2 per namespace.

Each contender names the namespace whose pods it drives (`plain`, outside the mesh, for direct
and the native mTLS pair; `mesh`, labelled ambient, for ztunnel). The server pod runs nginx
(1 KiB body, keep-alive) and an iperf3 server; the client pod only sleeps, and the load
generators run in its network namespace. Manifests, nginx and proxy configurations and
certificates live in a work directory that goes with the mesh.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from wisp.identity import CertificateAuthority, SpiffeId
from wisp.runpaths import RuntimePaths

HTTP_PORT = 8080
IPERF_PORT = 5201
BODY_BYTES = 1024
CLIENT_NODE, SERVER_NODE = "node1", "node2"
UP_TIMEOUT = 240.0
VENV_BIN = Path(sys.executable).parent


class MeshError(RuntimeError):
    """The mesh did not come up or a part of it is missing; the message says which."""


@dataclass(slots=True, frozen=True)
class BenchNamespace:
    name: str
    ambient: bool


@dataclass(slots=True, frozen=True)
class Pod:
    namespace: str
    name: str
    node: str
    ip: str
    netns: str


NGINX_CONF = """\
# The benchmark's backend: a 1 KiB body on every path, connections kept open.
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {work}/nginx-{namespace}.pid;
error_log stderr warn;
events {{ worker_connections 19000; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    # Idle connections (measure e) send nothing for minutes.
    client_header_timeout 600s;
    client_body_temp_path {work}/nginx-{namespace}-body;
    default_type application/octet-stream;
    server {{
        listen {port} backlog=4096;
        location / {{ return 200 "{body}"; }}
    }}
}}
"""


def manifests(namespaces: list[BenchNamespace], work: Path) -> list[dict]:
    """Kubernetes-shaped objects for `wisp up`: per namespace, a client and a server pod."""
    objects: list[dict] = []
    for ns in namespaces:
        labels = {"istio.io/dataplane-mode": "ambient"} if ns.ambient else {}
        objects.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns.name, "labels": labels}})
        for role in ("client", "server"):
            objects.append({"apiVersion": "v1", "kind": "ServiceAccount",
                            "metadata": {"name": role, "namespace": ns.name}})
        objects.append(_pod(ns.name, "client", CLIENT_NODE, [{"name": "sleep", "command": ["sleep", "infinity"]}]))
        conf = work / f"nginx-{ns.name}.conf"
        objects.append(_pod(ns.name, "server", SERVER_NODE, [
            {"name": "nginx", "command": ["nginx", "-p", str(work), "-e", "stderr", "-c", str(conf)],
             "ports": [{"name": "http", "containerPort": HTTP_PORT}],
             "readinessProbe": {"httpGet": {"path": "/", "port": HTTP_PORT}}},
            {"name": "iperf3", "command": ["iperf3", "-s", "-p", str(IPERF_PORT)]},
        ]))
    return objects


def _pod(namespace: str, name: str, node: str, containers: list[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "spec": {"serviceAccountName": name, "nodeName": node, "containers": containers}}


def nginx_conf(work: Path, namespace: str) -> str:
    return NGINX_CONF.format(work=work, namespace=namespace, port=HTTP_PORT, body="x" * BODY_BYTES)


class Mesh:
    """A running local mesh for the benchmark; `with Mesh(...)` brings it up and always down."""

    def __init__(self, namespaces: list[BenchNamespace], prefix: str, log, extra: list[dict] = (),
                 ztunnel_workers: int = 1, env: dict[str, str] | None = None,
                 restart_delay: float | None = None) -> None:
        self.namespaces = namespaces
        # `wisp up --restart-delay`: how long a crashed process stays down (bench/reliability
        # holds the control plane down for minutes with it).
        self.restart_delay = restart_delay
        # Set in `wisp up`'s environment, which the runtime hands down to every ztunnel process
        # (WISP_ZTUNNEL_ENGINE chooses ztunnel's data-path engine).
        self.env = dict(env or {})
        self.ztunnel_workers = ztunnel_workers
        self.extra = list(extra)
        self.prefix = prefix
        self.paths = RuntimePaths(prefix)
        self.log = log
        self.work = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
        # Pods run as their own unprivileged uid (runtime/sandbox.py): nginx reads its
        # configuration and writes its pid and body files here, as in /tmp itself.
        os.chmod(self.work, 0o1777)
        self._status: dict = {}

    def __enter__(self) -> Mesh:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> None:
        manifest_dir = self.work / "manifests"
        manifest_dir.mkdir()
        for ns in self.namespaces:
            (self.work / f"nginx-{ns.name}.conf").write_text(nginx_conf(self.work, ns.name))
            (self.work / f"nginx-{ns.name}-body").mkdir(mode=0o1777)
            os.chmod(self.work / f"nginx-{ns.name}-body", 0o1777)  # mkdir's mode is masked by the umask
        (manifest_dir / "bench.yaml").write_text(
            yaml.safe_dump_all(manifests(self.namespaces, self.work) + self.extra, sort_keys=False))
        settings = "".join(f"{k}={v} " for k, v in self.env.items())
        self.log(f"{settings}wisp up --prefix {self.prefix} (work directory {self.work})")
        done = subprocess.run([str(VENV_BIN / "wisp"), "up", str(manifest_dir), "--nodes", "2",
                               "--prefix", self.prefix, "--timeout", str(UP_TIMEOUT),
                               "--ztunnel-workers", str(self.ztunnel_workers),
                               *(["--restart-delay", str(self.restart_delay)] if self.restart_delay is not None else [])],
                              capture_output=True, text=True, env={**os.environ, **self.env})
        if done.returncode != 0:
            raise MeshError(f"wisp up failed: {(done.stderr or done.stdout).strip()}")
        self.refresh()

    def down(self) -> None:
        subprocess.run([str(VENV_BIN / "wisp"), "down", "--prefix", self.prefix], capture_output=True, text=True)
        shutil.rmtree(self.work, ignore_errors=True)

    def refresh(self) -> None:
        self._status = json.loads(self.paths.status.read_text())

    # -- what is where ------------------------------------------------------------------------------
    def pod(self, namespace: str, name: str) -> Pod:
        for p in self._status.get("pods", []):
            if p["namespace"] == namespace and p["name"] == name:
                return Pod(namespace, name, p["node"], p["ip"], p["netns"])
        raise MeshError(f"pod {namespace}/{name} is not in the mesh's status")

    def node(self, name: str) -> dict:
        for n in self._status.get("nodes", []):
            if n["name"] == name:
                return n
        raise MeshError(f"node {name} is not in the mesh's status")

    def component_pid(self, name: str) -> int:
        """The pid of a supervised component (`ztunnel-node1`), read afresh: it may have restarted."""
        self.refresh()
        pid = self._status.get("components", {}).get(name, {}).get("pid")
        if not pid:
            raise MeshError(f"{name} is not running")
        return pid

    def container_pids(self, namespace: str, name: str) -> list[int]:
        """The running containers' pids of a pod (the server's nginx and iperf3)."""
        for p in self._status.get("pods", []):
            if p["namespace"] == namespace and p["name"] == name:
                return [c["pid"] for c in p.get("containers", []) if c.get("pid")]
        raise MeshError(f"pod {namespace}/{name} is not in the mesh's status")

    def restarts(self) -> dict[str, int]:
        self.refresh()
        return {name: c["restarts"] for name, c in self._status.get("components", {}).items()}

    def issue(self, service_account: str, directory: Path) -> tuple[Path, Path]:
        """A P-256 workload certificate from the mesh's own CA, as HAProxy reads it:
        (leaf + chain + key in one PEM file, root bundle)."""
        ca = CertificateAuthority.load_cacerts(self.paths.state / "ca")
        bundle = ca.issue(SpiffeId(ca.trust_domain, "bench", service_account))
        pem, roots = directory / f"{service_account}.pem", directory / "roots.pem"
        pem.write_bytes(bundle.chain_pem + bundle.key_pem)
        os.chmod(pem, 0o600)
        roots.write_bytes(bundle.roots_pem)
        return pem, roots


def established(netns: str, port: int = HTTP_PORT) -> int:
    """Established TCP connections in `netns` with local port `port` (the server pod's app port)."""
    out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if line.strip())


def wait_for(check, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise MeshError(f"{what} not reached within {timeout:g} s")
        time.sleep(interval)
