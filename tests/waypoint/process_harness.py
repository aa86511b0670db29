"""A waypoint process on loopback between a real HBONE client and real echo apps behind HBONE.

    test (plain TCP) → client side: a loop thread splicing each TCP connection to a CONNECT
      (client identity, authority = the Service VIP:port the test names) ⇒ HBONE ⇒
    wisp-waypoint (a subprocess: --static-config, --certificate-dir) ⇒ HBONE (the waypoint's
      identity) ⇒ destination side: an HboneServer per workload address, splicing each CONNECT
      to the wisp-echo process at the authority it names.

Addresses are in a /24 of 127.0.0.0/8 drawn per harness (loopback; nothing leaves the machine;
two runs of these tests at once do not collide on the fixed port 15008): the waypoint on .1,
workloads on `ip(2)` and up. Service VIPs are never dialled, only named in
CONNECT authorities. Everything is stopped and removed by `close`, also when a test fails.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field

from wisp.engine.hbone import ConnectRequest, StreamEnd
from wisp.engine.loop import Loop
from wisp.engine.pool import Pool, PoolKey
from wisp.engine.server import HboneServer
from wisp.engine.splice import Splice, TcpEnd
from wisp.hbone import connect_headers
from wisp.hbone.tls import ContextCache
from wisp.identity import SpiffeId
from wisp.model import Service, Workload, to_json

TRUST_DOMAIN = "cluster.local"
VENV_BIN = os.path.dirname(sys.executable)


def spiffe(ns: str, sa: str) -> SpiffeId:
    return SpiffeId(TRUST_DOMAIN, ns, sa)


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout} s")


@dataclass
class EchoWorkload:
    name: str
    ip: str
    port: int
    identity: SpiffeId
    tcp_port: int = 0
    process: subprocess.Popen | None = None


@dataclass
class Harness:
    ca: object
    tmp: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="wisp-wp-test-"))
    loop: Loop = field(default_factory=Loop)
    contexts: ContextCache = field(default_factory=ContextCache)
    workloads: list[EchoWorkload] = field(default_factory=list)
    servers: list[HboneServer] = field(default_factory=list)
    listeners: list[socket.socket] = field(default_factory=list)
    waypoint: subprocess.Popen | None = None
    service_map: dict = field(default_factory=dict)
    seen_identities: list = field(default_factory=list)
    net: str = field(default_factory=lambda: _free_net())
    ports: dict = field(default_factory=dict)
    _stop: bool = False
    _thread: threading.Thread | None = None

    def ip(self, host: int) -> str:
        return f"{self.net}.{host}"

    @property
    def waypoint_ip(self) -> str:
        return self.ip(1)

    # -- destination side -------------------------------------------------------------------------
    def add_echo(self, name: str, ip: str, sa: str = "echo", args: tuple[str, ...] = ()) -> EchoWorkload:
        """A wisp-echo (HTTP/1.1 on `port`, raw TCP echo on `tcp_port`) behind an HBONE server on ip:15008;
        `args` go to wisp-echo too (its failure and delay switches, for instance)."""
        port, tcp_port = free_port(ip), free_port(ip)
        workload = EchoWorkload(name, ip, port, spiffe("shop", sa), tcp_port)
        workload.process = subprocess.Popen(
            [os.path.join(VENV_BIN, "wisp-echo"), "--http", str(port), "--tcp", str(tcp_port), "--bind", ip,
             "--name", name, *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.workloads.append(workload)
        wait_for(lambda: _connectable(ip, port), what=f"echo {name} listening")
        bundle = self.ca.issue(workload.identity)
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((ip, 15008))
        listener.listen(128)
        listener.setblocking(False)
        loop = self.loop

        def on_request(request: ConnectRequest) -> None:
            self.seen_identities.append(str(request.peer_identity))
            upstream = socket.create_connection((request.authority.ip, request.authority.port))
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upstream.setblocking(False)
            Splice(request.accept(), TcpEnd(loop, upstream, upstream=False)).start()

        self.servers.append(HboneServer(loop, listener, lambda b=bundle: self.contexts.get(b, server_side=True),
                                        on_request=on_request, trust_domain=TRUST_DOMAIN))
        return workload

    # -- client side ------------------------------------------------------------------------------
    def client_port(self, authority: str, identity: SpiffeId | None = None) -> int:
        """A local TCP port whose connections reach the waypoint as CONNECT `authority`."""
        key_name = (authority, identity)
        if key_name in self.ports:
            return self.ports[key_name]
        identity = identity or spiffe("shop", "client")
        bundle = self.ca.issue(identity)
        pool = Pool(self.loop, lambda _id, b=bundle: self.contexts.get(b, server_side=False), _nonblocking_socket)
        key = PoolKey(identity, frozenset([spiffe("shop", "waypoint")]), (self.waypoint_ip, 15008))
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        listener.setblocking(False)
        self.listeners.append(listener)
        loop = self.loop

        class Accepting:
            def on_readable(self_inner) -> None:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    return
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

                def on_stream(stream: StreamEnd | None, error: str | None) -> None:
                    if stream is None:
                        conn.close()
                        return
                    Splice(TcpEnd(loop, conn, upstream=True), stream).start()

                pool.connect(key, connect_headers(authority), on_stream)

            def on_writable(self_inner) -> None:
                pass

            def abort(self_inner, reason: str) -> None:
                pass

        loop.register(listener.fileno(), Accepting(), 1)
        port = listener.getsockname()[1]
        self.ports[key_name] = port
        return port

    # -- the waypoint -----------------------------------------------------------------------------
    def start_waypoint(self, services: list[Service], objects: list[dict], extra_workloads=()) -> None:
        certs = os.path.join(self.tmp, "certs")
        os.makedirs(certs, exist_ok=True)
        bundle = self.ca.issue(spiffe("shop", "waypoint"))
        for name, data in (("key.pem", bundle.key_pem), ("cert-chain.pem", bundle.chain_pem),
                           ("root-cert.pem", bundle.roots_pem)):
            with open(os.path.join(certs, name), "wb") as f:
                f.write(data)
        workloads = [Workload(f"uid-{w.name}", w.name, "shop", (w.ip,), tunnel_protocol="HBONE",
                              service_account=w.identity.service_account, workload_name=w.name,
                              canonical_name=w.name.rsplit("-", 1)[0],
                              services=self.service_map.get(w.name, {}))
                     for w in self.workloads]
        workloads += list(extra_workloads)
        config = {"workloads": [to_json(w) for w in workloads], "services": [to_json(s) for s in services],
                  "objects": objects}
        path = os.path.join(self.tmp, "config.json")
        with open(path, "w") as f:
            json.dump(config, f)
        self.log_path = os.path.join(self.tmp, "waypoint.log")
        self.waypoint = subprocess.Popen(
            [os.path.join(VENV_BIN, "wisp-waypoint"), "--namespace", "shop", "--name", "waypoint",
             "--static-config", path, "--certificate-dir", certs,
             "--mesh-address", f"{self.waypoint_ip}:15008", "--metrics-address", f"{self.waypoint_ip}:15020",
             "--readiness-address", f"{self.waypoint_ip}:15021", "--log-json"],
            stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT)
        wait_for(self.ready, what="waypoint ready")

    def ready(self) -> bool:
        if self.waypoint is not None and self.waypoint.poll() is not None:
            raise AssertionError(f"the waypoint exited with {self.waypoint.returncode}: {self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://{self.waypoint_ip}:15021/healthz/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.waypoint_ip}:15020/stats/prometheus", timeout=5) as r:
            return r.read().decode()

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except (OSError, AttributeError):
            return ""

    # -- the loop thread --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            self.loop.run_once(0.05)

    def close(self) -> None:
        if self.waypoint is not None and self.waypoint.poll() is None:
            self.waypoint.send_signal(signal.SIGTERM)
            try:
                self.waypoint.wait(10)
            except subprocess.TimeoutExpired:
                self.waypoint.kill()
                self.waypoint.wait()
        self._stop = True
        if self._thread is not None:
            self._thread.join(5)
        for server in self.servers:
            server.close()
        for listener in self.listeners:
            listener.close()
        for workload in self.workloads:
            if workload.process is not None and workload.process.poll() is None:
                workload.process.terminate()
                try:
                    workload.process.wait(5)
                except subprocess.TimeoutExpired:
                    workload.process.kill()
                    workload.process.wait()
        self.loop.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _free_net() -> str:
    """A 127.x.y /24 where nothing listens on 15008 (another run of these tests may hold one)."""
    for _ in range(50):
        net = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}"
        if not any(_connectable(f"{net}.{host}", 15008) for host in (1, 2, 3)):
            return net
    raise AssertionError("no free loopback /24 found for the waypoint harness")


def _connectable(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.5):
            return True
    except OSError:
        return False


def _nonblocking_socket(address, source_ip):
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


# -- a tiny blocking HTTP/1.1 client that shows exactly what came back ----------------------------------
def exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send `request` on a new connection, read until the server closes it (send `connection: close`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def get(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET", body: bytes = b"",
        host: str = "echo.shop.svc.cluster.local") -> tuple[int, dict[str, str], bytes]:
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}", "connection: close"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT"):
        lines.append(f"content-length: {len(body)}")
    raw = exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return parse_response(raw)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head:
        raise AssertionError(f"no response: {raw!r}")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return status, headers, body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        line, _, rest = data.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out
