"""The waypoint benchmark's contenders: where each one's traffic goes and which processes it pays.

- `direct` (bench.mesh's): client pod → server pod, no proxy.
- `nginx`, the native L7 anchor: client pod → nginx → server pod. nginx runs as an unprivileged
  reverse proxy (uid 65534, its own prefix and config file) in the client node's network
  namespace, listening on the pod network's gateway address, with keep-alive connections to the
  server (`keepalive` upstream, HTTP/1.1, `Connection: ""`), one worker process — what a node-level
  L7 proxy in front of the server costs when written in C.
- `nginx-mtls`, the same crypto natively (a reference row, not the issue's anchor): client pod →
  node1's HAProxy (plain TCP in, mutual TLS out, as bench.mesh's HAProxy pair) → nginx
  terminating mutual TLS and proxying HTTP/1.1 over mutual TLS with keep-alive → node2's HAProxy
  (mutual TLS in, plain out) → server pod. Certificates from the mesh's CA (P-256, TLS 1.3); each
  HAProxy and nginx verify their peer's chain, except nginx upstream, which presents its
  certificate but cannot check a chain without also checking a DNS name (SPIFFE certificates
  carry only a URI). Keep-alive connections make handshakes rare, so per request this is the
  waypoint path's crypto and proxy count — two L4 proxies and an L7 one — in C.
- `ztunnel` (bench.mesh's): the L4 mesh alone, for the share of the waypoint path that is not
  the waypoint.
- `waypoint`: the honest mesh path, client pod → client node's ztunnel → waypoint → server node's
  ztunnel → server pod, all hops between nodes HBONE. The namespace `wp` is ambient and its
  Service `server` is bound (`istio.io/use-waypoint: waypoint`) to the Gateway `waypoint`
  (class istio-waypoint) that the control plane turns into the `wisp-waypoint` Deployment; the
  client dials the Service's VIP. Its proxies are both ztunnels and the waypoint's process tree,
  each measured apart, so the waypoint's own CPU per request is a figure of its own.
- `waypoint-resilient`: the same path in its own namespace `wpr` (its own waypoint, VIP
  10.96.250.20) with issue #12's traffic management switched on: an HTTPRoute with a retry policy
  (GEP-1731: 2 attempts on 502/503/504, 25 ms backoff) and a DestinationRule with the default
  peak-EWMA balancer over two nginx servers (`server` and `server-2`, both on node2), outlier
  detection and connection-pool limits far above the load (so every request passes the balancer's
  admission, lease and outlier bookkeeping without being limited). The servers never fail: this
  measures what the machinery costs on the path, not retries happening.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import ClassVar

from bench.mesh.contenders import (
    HAPROXY_GLOBAL,
    HAPROXY_ORIGINATE,
    HAPROXY_TERMINATE,
    PLAIN,
    Contender,
    Direct,
    Route,
    WispZtunnel,
)
from bench.mesh.mesh import (
    CLIENT_NODE,
    HTTP_PORT,
    IPERF_PORT,
    SERVER_NODE,
    BenchNamespace,
    Mesh,
    MeshError,
    nginx_conf,
    wait_for,
)

WAYPOINT_NS = BenchNamespace("wp", ambient=True)
# A fixed VIP, so the route is known before the runtime reports its Services (10.96.0.0/16 is the
# runtime's service network; the rest of it is handed out from the bottom).
WAYPOINT_VIP = "10.96.250.10"
WAYPOINT_GATEWAY = "waypoint"
NGINX_PORT = 8081
NOBODY = 65534

# What both nginx configurations share: one worker, no access log, keep-alive both ways, the
# upstream `server`; each adds its own listening server block.
_NGINX_MAIN = """\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 19000; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    client_header_timeout 600s;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream server {{
        server {upstream};
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 600s;
    }}
"""

NGINX_PROXY_CONF = """\
# The benchmark's native L7 anchor: an HTTP/1.1 reverse proxy with keep-alive upstream.
""" + _NGINX_MAIN + """\
    server {{
        listen {listen} backlog=4096;
        location / {{
            proxy_pass http://server;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }}
    }}
}}
"""


def nginx_proxy_conf(prefix: Path, listen: str, upstream: str) -> str:
    return NGINX_PROXY_CONF.format(prefix=prefix, listen=listen, upstream=upstream)


class NginxProxy(Contender):
    """nginx 1 worker, reverse proxy on node1 (see the module docstring)."""

    key, label, short, anchor, namespace = "nginx", "nginx reverse proxy", "nginx", True, PLAIN

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._prefix: Path | None = None

    def _gateway(self, mesh: Mesh) -> str:
        return str(ipaddress.ip_network(mesh.node(CLIENT_NODE)["pod_network"]).network_address + 1)

    def start(self, mesh: Mesh, log) -> None:
        server = mesh.pod(self.namespace.name, "server")
        # Its own prefix, writable by the unprivileged user it runs as (the mesh's work directory
        # is root's alone).
        self._prefix = Path(tempfile.mkdtemp(prefix=f"{mesh.prefix}-nginx-"))
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self._prefix / sub).mkdir()
        config = self._prefix / "nginx.conf"
        config.write_text(nginx_proxy_conf(self._prefix, f"{self._gateway(mesh)}:{NGINX_PORT}",
                                           f"{server.ip}:{HTTP_PORT}"))
        for path in [self._prefix, *self._prefix.iterdir()]:
            os.chown(path, NOBODY, NOBODY)
        netns = mesh.node(CLIENT_NODE)["netns"]
        log(f"nginx in {netns} as uid {NOBODY}: {config}")
        with open(self._prefix / "stderr.log", "ab") as out:
            self._process = subprocess.Popen(
                ["ip", "netns", "exec", netns, "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                 "--clear-groups", "nginx", "-p", str(self._prefix), "-e", "stderr", "-c", str(config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self._listening(netns), 10, "nginx listening")

    def _listening(self, netns: str) -> bool:
        if self._process is not None and self._process.poll() is not None:
            log_text = (self._prefix / "stderr.log").read_text(errors="replace") if self._prefix else ""
            raise MeshError(f"nginx exited with {self._process.returncode}: {log_text.strip()[-400:]}")
        out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Hltn", f"sport = :{NGINX_PORT}"],
                             capture_output=True, text=True).stdout
        return bool(out.strip())

    def stop(self) -> None:
        proc, self._process = self._process, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if self._prefix is not None:
            shutil.rmtree(self._prefix, ignore_errors=True)
            self._prefix = None

    def route(self, mesh: Mesh) -> Route:
        gateway = self._gateway(mesh)
        server = mesh.pod(self.namespace.name, "server")
        return Route(mesh.pod(self.namespace.name, "client").netns, (gateway, NGINX_PORT), (server.ip, IPERF_PORT))

    def proxies(self, mesh: Mesh) -> dict[str, int]:
        # `ip netns exec` and setpriv exec into nginx, so the Popen pid is nginx's master.
        return {"nginx": self._process.pid} if self._process is not None else {}


class WispWaypoint(Contender):
    """The mesh path through a waypoint (see the module docstring)."""

    key, label, short, namespace = "waypoint", "wisp waypoint path", "waypoint", WAYPOINT_NS
    profiled: ClassVar[bool] = False
    vip: ClassVar[str] = WAYPOINT_VIP

    def manifests(self) -> list[dict]:
        ns = self.namespace.name
        return [
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
             "metadata": {"name": WAYPOINT_GATEWAY, "namespace": ns,
                          "labels": {"istio.io/waypoint-for": "service"}},
             "spec": {"gatewayClassName": "istio-waypoint",
                      "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}},
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "server", "namespace": ns, "labels": {"istio.io/use-waypoint": WAYPOINT_GATEWAY}},
             "spec": {"clusterIP": self.vip, "selector": {"app": "server"},
                      "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": HTTP_PORT},
                                {"name": "iperf", "port": IPERF_PORT, "targetPort": IPERF_PORT}]}},
        ]

    def start(self, mesh: Mesh, log) -> None:
        wait_for(lambda: self._waypoint_pod(mesh) is not None, 120, "the waypoint pod running")
        pod = self._waypoint_pod(mesh)
        log(f"waypoint: pod {pod['name']} on {pod['node']} ({pod['ip']}), pid {self._waypoint_pid(mesh)}")

    def _waypoint_pod(self, mesh: Mesh) -> dict | None:
        mesh.refresh()
        for pod in mesh._status.get("pods", []):
            if pod["namespace"] == self.namespace.name and pod["name"].startswith(WAYPOINT_GATEWAY):
                if any(c.get("pid") for c in pod.get("containers", [])):
                    return pod
        return None

    def _waypoint_pid(self, mesh: Mesh) -> int | None:
        pod = self._waypoint_pod(mesh)
        return next(c["pid"] for c in pod["containers"] if c.get("pid")) if pod is not None else None

    def route(self, mesh: Mesh) -> Route:
        client = mesh.pod(self.namespace.name, "client")
        return Route(client.netns, (self.vip, HTTP_PORT), (self.vip, IPERF_PORT))

    def reuse(self, mesh: Mesh) -> dict[str, float]:
        """The waypoint's requests and upstream reuse counters since it started (its 15020
        metrics): whether keep-alive reuses the HTTP/1.1 connection and its HBONE stream."""
        pod = self._waypoint_pod(mesh)
        if pod is None:
            raise MeshError("the waypoint pod is not running")
        text = subprocess.run(["ip", "netns", "exec", pod["netns"], "curl", "-s", "-m", "5",
                               f"http://{pod['ip']}:15020/stats/prometheus"],
                              capture_output=True, text=True).stdout
        out = {"requests": 0.0}
        for line in text.splitlines():
            if line.startswith("istio_requests_total{"):
                out["requests"] += float(line.rsplit(" ", 1)[1])
            elif line.startswith("wisp_waypoint_"):
                name, value = line.split()
                out[name.removeprefix("wisp_waypoint_")] = float(value)
        return out

    def proxies(self, mesh: Mesh) -> dict[str, int]:
        pid = self._waypoint_pid(mesh)
        if pid is None:
            raise MeshError("the waypoint pod is not running")
        return {**WispZtunnel().proxies(mesh), "waypoint": pid}


RESILIENT_NS = BenchNamespace("wpr", ambient=True)
RESILIENT_VIP = "10.96.250.20"


class WispWaypointResilient(WispWaypoint):
    """The waypoint path with a retry policy, the peak-EWMA balancer over two servers, outlier
    detection and connection-pool limits (see the module docstring)."""

    key, label, short, namespace = "waypoint-resilient", "wisp waypoint, retries + EWMA", "waypoint+r", RESILIENT_NS
    vip: ClassVar[str] = RESILIENT_VIP

    def __init__(self) -> None:
        self._work: Path | None = None

    def prepare(self, work: Path) -> None:
        """Before `wisp up`: the second server's nginx configuration, beside the mesh's own."""
        self._work = work
        (work / "nginx-wpr-2.conf").write_text(nginx_conf(work, "wpr-2"))
        (work / "nginx-wpr-2-body").mkdir(exist_ok=True)

    def manifests(self) -> list[dict]:
        if self._work is None:
            raise MeshError("waypoint-resilient needs prepare(work) before its manifests")
        ns = self.namespace.name
        server_2 = {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "server-2", "namespace": ns, "labels": {"app": "server"}},
                    "spec": {"serviceAccountName": "server", "nodeName": SERVER_NODE, "containers": [
                        {"name": "nginx", "command": ["nginx", "-p", str(self._work), "-e", "stderr", "-c",
                                                      str(self._work / "nginx-wpr-2.conf")],
                         "ports": [{"name": "http", "containerPort": HTTP_PORT}],
                         "readinessProbe": {"httpGet": {"path": "/", "port": HTTP_PORT}}}]}}
        route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                 "metadata": {"name": "server", "namespace": ns},
                 "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "server", "port": HTTP_PORT}],
                          "rules": [{"backendRefs": [{"name": "server", "port": HTTP_PORT}],
                                     "retry": {"attempts": 2, "codes": [502, 503, 504], "backoff": "25ms"}}]}}
        rule = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": "server", "namespace": ns},
                "spec": {"host": "server", "trafficPolicy": {
                    "outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s"},
                    "connectionPool": {"tcp": {"maxConnections": 10000},
                                       "http": {"http1MaxPendingRequests": 10000, "http2MaxRequests": 10000}}}}}
        return [*super().manifests(), server_2, route, rule]


NGINX_MTLS_CONF = """\
# The same crypto as the waypoint path, natively: mutual TLS in, HTTP/1.1 over mutual TLS out.
""" + _NGINX_MAIN + """\
    server {{
        listen {listen} ssl backlog=4096;
        ssl_protocols TLSv1.3;
        ssl_certificate {pem};
        ssl_certificate_key {pem};
        ssl_client_certificate {roots};
        ssl_verify_client on;
        location / {{
            proxy_pass https://server;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
            proxy_ssl_protocols TLSv1.3;
            proxy_ssl_certificate {pem};
            proxy_ssl_certificate_key {pem};
            proxy_ssl_session_reuse on;
        }}
    }}
}}
"""
NGINX_TLS_PORT, HAPROXY_PLAIN_PORT, HAPROXY_TLS_PORT = 8443, 8082, 15445


class NginxMtls(Contender):
    """HAProxy → nginx → HAProxy, mutual TLS between each (see the module docstring)."""

    key, label, short, namespace = "nginx-mtls", "HAProxy + nginx + HAProxy, mTLS", "nginx-mtls", PLAIN

    def __init__(self) -> None:
        self._nginx: subprocess.Popen | None = None
        self._haproxy: dict[str, subprocess.Popen] = {}
        self._prefix: Path | None = None

    def _gateway(self, mesh: Mesh) -> str:
        return str(ipaddress.ip_network(mesh.node(CLIENT_NODE)["pod_network"]).network_address + 1)

    def start(self, mesh: Mesh, log) -> None:
        gateway, node2 = self._gateway(mesh), mesh.node(SERVER_NODE)["ip"]
        server = mesh.pod(self.namespace.name, "server")
        self._prefix = Path(tempfile.mkdtemp(prefix=f"{mesh.prefix}-nginx-mtls-"))
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self._prefix / sub).mkdir()
        pem, roots = mesh.issue("nginx-mtls", self._prefix)
        config = self._prefix / "nginx.conf"
        config.write_text(NGINX_MTLS_CONF.format(prefix=self._prefix, listen=f"{gateway}:{NGINX_TLS_PORT}",
                                                 upstream=f"{node2}:{HAPROXY_TLS_PORT}", pem=pem, roots=roots))
        for path in [self._prefix, *self._prefix.iterdir()]:
            os.chown(path, NOBODY, NOBODY)
        for node in (CLIENT_NODE, SERVER_NODE):
            node_pem, node_roots = mesh.issue(f"haproxy-{node}", self._prefix)
            if node == CLIENT_NODE:
                text = HAPROXY_GLOBAL.format(threads=1) + HAPROXY_ORIGINATE.format(
                    name="http", listen=f"{gateway}:{HAPROXY_PLAIN_PORT}", peer=f"{gateway}:{NGINX_TLS_PORT}",
                    pem=node_pem, roots=node_roots)
            else:
                text = HAPROXY_GLOBAL.format(threads=1) + HAPROXY_TERMINATE.format(
                    name="http", listen=f"{node2}:{HAPROXY_TLS_PORT}", app=f"{server.ip}:{HTTP_PORT}",
                    pem=node_pem, roots=node_roots)
            (self._prefix / f"haproxy-{node}.cfg").write_text(text)
        netns1 = mesh.node(CLIENT_NODE)["netns"]
        with open(self._prefix / "nginx.log", "ab") as out:
            self._nginx = subprocess.Popen(
                ["ip", "netns", "exec", netns1, "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                 "--clear-groups", "nginx", "-p", str(self._prefix), "-e", "stderr", "-c", str(config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        for node in (CLIENT_NODE, SERVER_NODE):
            with open(self._prefix / f"haproxy-{node}.log", "ab") as out:
                self._haproxy[node] = subprocess.Popen(
                    ["ip", "netns", "exec", mesh.node(node)["netns"], "haproxy", "-db", "-f",
                     str(self._prefix / f"haproxy-{node}.cfg")],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        log(f"nginx (mutual TLS) and two HAProxys: {self._prefix}")
        for netns, port in ((netns1, NGINX_TLS_PORT), (netns1, HAPROXY_PLAIN_PORT),
                            (mesh.node(SERVER_NODE)["netns"], HAPROXY_TLS_PORT)):
            wait_for(lambda: self._listening(netns, port), 10, f"port {port} listening in {netns}")

    def _listening(self, netns: str, port: int) -> bool:
        for name, proc in (("nginx", self._nginx), *self._haproxy.items()):
            if proc is not None and proc.poll() is not None:
                logs = "".join(p.read_text(errors="replace") for p in self._prefix.glob("*.log"))
                raise MeshError(f"{name} exited with {proc.returncode}: {logs.strip()[-600:]}")
        out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Hltn", f"sport = :{port}"],
                             capture_output=True, text=True).stdout
        return bool(out.strip())

    def stop(self) -> None:
        for proc in (self._nginx, *self._haproxy.values()):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
        self._nginx, self._haproxy = None, {}
        if self._prefix is not None:
            shutil.rmtree(self._prefix, ignore_errors=True)
            self._prefix = None

    def route(self, mesh: Mesh) -> Route:
        gateway = self._gateway(mesh)
        server = mesh.pod(self.namespace.name, "server")
        return Route(mesh.pod(self.namespace.name, "client").netns, (gateway, HAPROXY_PLAIN_PORT),
                     (server.ip, IPERF_PORT))

    def proxies(self, mesh: Mesh) -> dict[str, int]:
        out = {node: proc.pid for node, proc in self._haproxy.items()}
        if self._nginx is not None:
            out["nginx"] = self._nginx.pid
        return out


# In table order: anchors first.
CONTENDERS: dict[str, type[Contender]] = {"direct": Direct, "nginx": NginxProxy, "nginx-mtls": NginxMtls,
                                          "ztunnel": WispZtunnel, "waypoint": WispWaypoint,
                                          "waypoint-resilient": WispWaypointResilient}


def make(keys: tuple[str, ...]) -> list[Contender]:
    return [CONTENDERS[key]() for key in keys]
