"""Run etcd, kube-apiserver, kube-controller-manager and kube-scheduler on 127.0.0.1.

Contract:
- `start()` makes a temporary directory named `wisp-tb-*`, writes a throwaway PKI (`pki.py`), the
  kubeconfigs and the scheduler's configuration there, picks free loopback ports, starts the four
  components (each in its own process group, argv[0] `wisp-tb-<component>`, output to
  `<dir>/logs/<component>.log`) and returns a `Cluster` once the API server answers `/readyz`, the
  controller manager and scheduler answer `/healthz` and the `default` ServiceAccount exists (so
  pods can be created at once). A component that exits or a wait that times out raises
  `StartError` with the tail of the component's log, after everything started so far is stopped.
- `Cluster.stop()` (also on `with` exit and at interpreter exit) terminates every process group,
  SIGKILLs what is still there after a grace period, and removes the directory (kept when
  `WISP_TESTBED_KEEP=1`, for debugging). Children also get SIGKILL if the thread that started them
  dies (PR_SET_PDEATHSIG), so a killed test run leaves no control plane behind.
- Nothing listens anywhere but 127.0.0.1. The API server runs with RBAC (`Node,RBAC`), privileged
  pods allowed, `--endpoint-reconciler-type=none` (a loopback address is invalid in Endpoints),
  service-account issuing and review keys, services from `SERVICE_CIDR`.
- `leftovers()` lists processes and directories carrying the prefix, for clean-up checks. Each
  directory names its owner in `owner.pid`; `start()` first removes directories whose owner is
  gone (a run killed with SIGKILL cannot remove its own), never one whose owner still runs.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import structlog
import yaml

from . import build, pki

PREFIX = "wisp-tb-"
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
KEEP_ENV = "WISP_TESTBED_KEEP"
OWNER_FILE = "owner.pid"
STOP_GRACE_SECONDS = 5.0

log = structlog.get_logger("runtime.testbed")


class TestbedError(Exception):
    """Base of the test bed's errors."""


class StartError(TestbedError):
    """A component did not start or did not become ready; the message carries its log's tail."""


@dataclass(slots=True)
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass(slots=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int


@dataclass(slots=True)
class Cluster:
    """A running control plane; `stop()` ends it. Use as a context manager."""

    binaries: build.Binaries
    workdir: Path
    pki: pki.Pki
    ports: Ports
    components: list[Component] = field(default_factory=list)
    start_seconds: float = 0.0
    _stopped: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def server(self) -> str:
        return "https://127.0.0.1:%d" % self.ports.apiserver

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    def ssl_context(self) -> ssl.SSLContext:
        """TLS for the API server as the admin (group system:masters)."""
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.client_cert("admin")), str(self.pki.client_key("admin")))
        return context

    def client(self, timeout: float = 10.0) -> httpx.Client:
        """An httpx client for the API server, authenticated as the admin."""
        return httpx.Client(base_url=self.server, verify=self.ssl_context(), timeout=timeout)

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster; raises TestbedError on failure if `check`."""
        command = [str(self.binaries.kubectl), "--kubeconfig", str(self.kubeconfig), *args]
        done = subprocess.run(
            command, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise TestbedError(
                "kubectl %s failed (exit %d): %s" % (" ".join(args), done.returncode, done.stderr.strip())
            )
        return done

    def pids(self) -> list[int]:
        return [component.process.pid for component in self.components]

    def running(self) -> bool:
        return not self._stopped and all(c.process.poll() is None for c in self.components)

    def stop(self) -> None:
        """Stop every component (TERM, then KILL after a grace period) and remove the directory."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        atexit.unregister(self.stop)
        # The API server and its clients first, etcd last, so nobody logs a storm of etcd errors.
        clients = [c for c in self.components if c.name != "etcd"]
        _terminate(clients)
        _terminate([c for c in self.components if c.name == "etcd"])
        if os.environ.get(KEEP_ENV) == "1":
            log.info("testbed_kept", workdir=str(self.workdir))
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _terminate(components: Sequence[Component]) -> None:
    for component in components:
        _signal_group(component.process, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for component in components:
        try:
            component.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("testbed_kill", component=component.name, pid=component.process.pid)
        # Kill the whole group even after a clean exit: nothing the component spawned may linger.
        _signal_group(component.process, signal.SIGKILL)
        component.process.wait()


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG = 1: the child gets SIGKILL when the thread that forked it ends, so a
    # killed pytest or `up` cannot leave a control plane behind.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (held together while chosen, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "wisp-testbed", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "wisp-testbed", "context": {"cluster": "wisp-testbed", "user": user}}],
        "current-context": "wisp-testbed",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _spawn(cluster: Cluster, name: str, binary: Path, args: Sequence[str]) -> Component:
    log_path = cluster.workdir / "logs" / ("%s.log" % name)
    with open(log_path, "wb") as output:
        process = subprocess.Popen(
            [PREFIX + name, *args],
            executable=str(binary),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=cluster.workdir,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    component = Component(name, process, log_path)
    cluster.components.append(component)
    log.debug("testbed_spawned", component=name, pid=process.pid)
    return component


def _wait(
    cluster: Cluster,
    what: str,
    component: Component,
    check: Callable[[], bool],
    deadline: float,
) -> None:
    while True:
        for running in cluster.components:
            if running.process.poll() is not None:
                raise StartError(
                    "%s exited with status %s while waiting for %s; its log ends:\n%s"
                    % (running.name, running.process.returncode, what, running.tail())
                )
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        if time.monotonic() > deadline:
            raise StartError(
                "timed out waiting for %s; the %s log ends:\n%s" % (what, component.name, component.tail())
            )
        time.sleep(0.2)


def _healthy(url: str, context: ssl.SSLContext | bool) -> Callable[[], bool]:
    def check() -> bool:
        response = httpx.get(url, verify=context, timeout=2.0)
        return response.status_code == 200

    return check


def start(binaries: build.Binaries | None = None, timeout: float = 90.0) -> Cluster:
    """Start a control plane from the cached binaries; see the module docstring."""
    binaries = binaries or build.installed()
    started = time.monotonic()
    deadline = started + timeout
    remove_stale()
    workdir = Path(tempfile.mkdtemp(prefix=PREFIX))
    cluster: Cluster | None = None
    try:
        (workdir / OWNER_FILE).write_text("%d\n" % os.getpid())
        (workdir / "logs").mkdir()
        (workdir / "pki").mkdir()
        keys = pki.write(workdir / "pki", SERVICE_IP)
        ports = Ports(*free_ports(5))
        cluster = Cluster(binaries=binaries, workdir=workdir, pki=keys, ports=ports)
        atexit.register(cluster.stop)
        _start_components(cluster, deadline)
        cluster.start_seconds = round(time.monotonic() - started, 2)
        log.info("testbed_ready", server=cluster.server, seconds=cluster.start_seconds,
                 workdir=str(workdir))
        return cluster
    except BaseException:
        if cluster is not None:
            cluster.stop()
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def _start_components(cluster: Cluster, deadline: float) -> None:
    workdir, keys, ports, bins = cluster.workdir, cluster.pki, cluster.ports, cluster.binaries
    for stem in ("admin", "controller-manager", "scheduler"):
        _kubeconfig(
            workdir / ("%s.kubeconfig" % stem), cluster.server, keys.ca_cert,
            keys.client_cert(stem), keys.client_key(stem), stem,
        )

    etcd_url = "http://127.0.0.1:%d" % ports.etcd_client
    peer_url = "http://127.0.0.1:%d" % ports.etcd_peer
    etcd = _spawn(cluster, "etcd", bins.etcd, [
        "--name=wisp-tb",
        "--data-dir=%s" % (workdir / "etcd"),
        "--listen-client-urls=%s" % etcd_url,
        "--advertise-client-urls=%s" % etcd_url,
        "--listen-peer-urls=%s" % peer_url,
        "--initial-advertise-peer-urls=%s" % peer_url,
        "--initial-cluster=wisp-tb=%s" % peer_url,
        "--unsafe-no-fsync",
        "--log-level=warn",
    ])
    _wait(cluster, "etcd /health", etcd, _healthy(etcd_url + "/health", False), deadline)

    apiserver = _spawn(cluster, "kube-apiserver", bins.kube_apiserver, [
        "--etcd-servers=%s" % etcd_url,
        "--bind-address=127.0.0.1",
        "--secure-port=%d" % ports.apiserver,
        "--advertise-address=127.0.0.1",
        "--endpoint-reconciler-type=none",
        "--cert-dir=%s" % (workdir / "apiserver"),
        "--tls-cert-file=%s" % keys.serving_cert,
        "--tls-private-key-file=%s" % keys.serving_key,
        "--client-ca-file=%s" % keys.ca_cert,
        "--authorization-mode=Node,RBAC",
        "--allow-privileged=true",
        "--service-account-issuer=%s" % SERVICE_ACCOUNT_ISSUER,
        "--service-account-key-file=%s" % keys.service_account_public_key,
        "--service-account-signing-key-file=%s" % keys.service_account_key,
        "--service-cluster-ip-range=%s" % SERVICE_CIDR,
        # Simulated nodes list InternalDNS 127.0.0.1 (nodes.py): logs/exec/port-forward then fail
        # on loopback instead of sending packets towards their 10.250.0.x InternalIPs.
        "--kubelet-preferred-address-types=InternalDNS",
        "--profiling=false",
    ])
    context = cluster.ssl_context()
    _wait(cluster, "kube-apiserver /readyz", apiserver,
          _healthy("%s/readyz" % cluster.server, context), deadline)

    def delegated(stem: str, port: int) -> list[str]:
        kubeconfig = workdir / ("%s.kubeconfig" % stem)
        return [
            "--kubeconfig=%s" % kubeconfig,
            "--authentication-kubeconfig=%s" % kubeconfig,
            "--authorization-kubeconfig=%s" % kubeconfig,
            "--bind-address=127.0.0.1",
            "--secure-port=%d" % port,
            "--cert-dir=%s" % (workdir / stem),
            "--profiling=false",
        ]

    controller_manager = _spawn(cluster, "kube-controller-manager", bins.kube_controller_manager, [
        *delegated("controller-manager", ports.controller_manager),
        "--leader-elect=false",
        "--controllers=*",
        "--use-service-account-credentials=true",
        "--service-account-private-key-file=%s" % keys.service_account_key,
        "--root-ca-file=%s" % keys.ca_cert,
        "--cluster-signing-cert-file=%s" % keys.ca_cert,
        "--cluster-signing-key-file=%s" % keys.ca_key,
        "--service-cluster-ip-range=%s" % SERVICE_CIDR,
    ])
    scheduler_config = workdir / "scheduler.yaml"
    scheduler_config.write_text(yaml.safe_dump({
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(workdir / "scheduler.kubeconfig")},
        "leaderElection": {"leaderElect": False},
    }))
    scheduler_args = delegated("scheduler", ports.scheduler)
    scheduler_args.remove("--kubeconfig=%s" % (workdir / "scheduler.kubeconfig"))
    scheduler = _spawn(cluster, "kube-scheduler", bins.kube_scheduler,
                       ["--config=%s" % scheduler_config, *scheduler_args])

    # Their serving certificates are self-signed into --cert-dir; only loopback is dialled.
    _wait(cluster, "kube-controller-manager /healthz", controller_manager,
          _healthy("https://127.0.0.1:%d/healthz" % ports.controller_manager, False), deadline)
    _wait(cluster, "kube-scheduler /readyz", scheduler,
          _healthy("https://127.0.0.1:%d/readyz" % ports.scheduler, False), deadline)
    with cluster.client() as client:
        _wait(cluster, "the default ServiceAccount (controller manager's serviceaccount controller)",
              controller_manager,
              lambda: client.get("/api/v1/namespaces/default/serviceaccounts/default").status_code == 200,
              deadline)


@dataclass(slots=True, frozen=True)
class Leftovers:
    processes: list[tuple[int, str]]
    directories: list[Path]


def leftovers(directory: Path | None = None) -> Leftovers:
    """Processes whose argv[0] starts with the prefix, and `wisp-tb-*` directories in the temp dir."""
    processes: list[tuple[int, str]] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry.name, "rb") as handle:
                argv0 = handle.read().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:
            continue
        if argv0.startswith(PREFIX):
            processes.append((int(entry.name), argv0))
    root = directory or Path(tempfile.gettempdir())
    directories = sorted(path for path in root.glob(PREFIX + "*") if path.is_dir())
    return Leftovers(processes, directories)


def owner_alive(directory: Path) -> bool:
    """Whether the process that made test-bed directory `directory` still runs."""
    try:
        pid = int((directory / OWNER_FILE).read_text())
    except (OSError, ValueError):
        # No owner file yet: being created right now, or not ours to judge.
        return True
    return Path("/proc/%d" % pid).exists()


def remove_stale(directory: Path | None = None) -> list[Path]:
    """Remove `wisp-tb-*` directories whose owner process is gone; returns what was removed."""
    removed = []
    for path in leftovers(directory).directories:
        if (path / OWNER_FILE).exists() and not owner_alive(path):
            shutil.rmtree(path, ignore_errors=True)
            log.info("testbed_stale_removed", workdir=str(path))
            removed.append(path)
    return removed
