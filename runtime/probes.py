"""Probes as kubelet runs them: readiness, liveness and startup checks of a pod's containers.

Contract:
- `open_in_netns`, `tcp_probe` and `http_get` make one connection from inside a namespace (the
  node's, as kubelet probes a pod from its node; the daemon also uses them for its own checks).
- `parse_probe(spec, container)` turns a container's probe object (`httpGet` with an int or a
  named port, path, scheme, host, httpHeaders; `tcpSocket`; `exec`) and its timings
  (initialDelaySeconds, periodSeconds, timeoutSeconds, successThreshold, failureThreshold, with
  Kubernetes' defaults 0/10/1/1/3) into a `Probe`; anything it cannot run raises `ProbeError`
  naming the field.
- `probe_request(path, host, headers)` is the request an httpGet probe sends (pure).
- `check(probe, target)` runs it once: HTTP is a success for a status in 200..399, TCP when the
  connection opens, exec when the command (in the container's network namespace and sandbox,
  with its environment) exits 0 within timeoutSeconds; a command still running then is killed.
- `Tracker` turns results into the probe's verdict with its thresholds: a readiness or startup
  probe starts failed, a liveness probe passed (as in kubelet's prober).
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
from dataclasses import dataclass, field
from typing import Any

import trio

from wisp import netns, sockets

from .sandbox import Sandbox

USER_AGENT = "kube-probe/1.37"


class ProbeError(ValueError):
    """A probe that cannot be run as written; the message names the field."""


async def open_in_netns(netns_name: str, address: tuple[str, int], timeout: float = 2.0):
    """A TCP connection from inside `netns_name` (socket made on a thread in that namespace)."""
    fd = netns.open_netns(netns.path_of(netns_name))
    try:
        sock = await netns.run_in_netns(fd, sockets.new_tcp_socket, address[0])
    finally:
        os.close(fd)
    try:
        with trio.fail_after(timeout):
            await sockets.connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


async def tcp_probe(netns_name: str, address: tuple[str, int], timeout: float = 2.0) -> bool:
    try:
        stream = await open_in_netns(netns_name, address, timeout)
    except (OSError, trio.TooSlowError):
        return False
    await stream.aclose()
    return True


async def http_get(netns_name: str, address: tuple[str, int], path: str, timeout: float = 2.0, *,
                   scheme: str = "HTTP", host: str = "",
                   headers: tuple[tuple[str, str], ...] = ()) -> tuple[int, bytes]:
    """(status, body) of a plain HTTP/1.0 GET; (0, reason) when the server cannot be reached."""
    request = probe_request(path, host or address[0], headers)
    try:
        with trio.fail_after(timeout):
            stream = await open_in_netns(netns_name, address, timeout)
            if scheme == "HTTPS":
                # kubelet does not verify a probe's certificate.
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                stream = trio.SSLStream(stream, context, server_hostname=host or None)
            async with stream:
                await stream.send_all(request)
                data = b""
                while chunk := await stream.receive_some(65536):
                    data += chunk
                    if len(data) > 1 << 20:
                        break
    except (OSError, trio.TooSlowError, trio.BrokenResourceError, ssl.SSLError) as exc:
        return 0, str(exc).encode()
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    try:
        return int(parts[1]), body
    except (IndexError, ValueError):
        return 0, data[:200]


def probe_request(path: str, host: str, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """The GET an httpGet probe sends: a Host or User-Agent among the probe's httpHeaders
    replaces the default one (as kubelet's prober does), never a second header of that name,
    which a strict server answers with 400."""
    given = {name.lower() for name, _ in headers}
    lines = [f"GET {path} HTTP/1.0"]
    if "host" not in given:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in headers]
    if "user-agent" not in given:
        lines.append(f"User-Agent: {USER_AGENT}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass(slots=True, frozen=True)
class Probe:
    kind: str  # "http", "tcp" or "exec"
    port: int = 0
    path: str = "/"
    scheme: str = "HTTP"
    host: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(slots=True, frozen=True)
class ProbeTarget:
    """Where a probe goes: the pod's address seen from the node, and for exec the container."""

    node_netns: str
    ip: str
    pod_netns: str
    sandbox: Sandbox | None = None
    env: dict[str, str] = field(default_factory=dict)


def parse_probe(spec: Any, container: dict[str, Any]) -> Probe:
    if not isinstance(spec, dict):
        raise ProbeError("a probe must be an object")
    timing = {
        "initial_delay": float(_number(spec, "initialDelaySeconds", 0, 0)),
        "period": float(_number(spec, "periodSeconds", 10, 1)),
        "timeout": float(_number(spec, "timeoutSeconds", 1, 1)),
        "success_threshold": _number(spec, "successThreshold", 1, 1),
        "failure_threshold": _number(spec, "failureThreshold", 3, 1),
    }
    if isinstance(spec.get("httpGet"), dict):
        http = spec["httpGet"]
        scheme = str(http.get("scheme") or "HTTP").upper()
        if scheme not in ("HTTP", "HTTPS"):
            raise ProbeError(f"httpGet.scheme {http.get('scheme')!r} is neither HTTP nor HTTPS")
        path = str(http.get("path") or "/")
        headers = []
        for item in http.get("httpHeaders") or []:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise ProbeError("httpGet.httpHeaders entries need a name and a value")
            headers.append((item["name"], str(item.get("value", ""))))
        host = str(http.get("host") or "")
        return Probe("http", port=resolve_port(http.get("port"), container, "httpGet.port"),
                     path=path if path.startswith("/") else "/" + path, scheme=scheme, host=host,
                     headers=tuple(headers), **timing)
    if isinstance(spec.get("tcpSocket"), dict):
        return Probe("tcp", port=resolve_port(spec["tcpSocket"].get("port"), container, "tcpSocket.port"), **timing)
    if isinstance(spec.get("exec"), dict):
        command = spec["exec"].get("command")
        if not isinstance(command, list) or not command:
            raise ProbeError("exec.command must be a non-empty list")
        return Probe("exec", command=tuple(str(a) for a in command), **timing)
    if "grpc" in spec:
        raise ProbeError("grpc probes are not supported by the wisp runtime; use httpGet, tcpSocket or exec")
    raise ProbeError("a probe needs one of httpGet, tcpSocket or exec")


def resolve_port(value: Any, container: dict[str, Any], what: str) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(value, int) and not isinstance(value, bool):
        port = value
    elif isinstance(value, str) and value.isdigit():
        port = int(value)
    elif isinstance(value, str):
        for item in container.get("ports") or []:
            if isinstance(item, dict) and item.get("name") == value and isinstance(item.get("containerPort"), int):
                return item["containerPort"]
        raise ProbeError(f"{what} {value!r} names no port of container {container.get('name')!r}")
    else:
        raise ProbeError(f"{what} must be a port number or name, not {value!r}")
    if not 0 < port < 65536:
        raise ProbeError(f"{what} {port} is outside 1..65535")
    return port


def _number(spec: dict[str, Any], name: str, default: int, low: int) -> int:
    value = spec.get(name, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ProbeError(f"{name} must be an integer >= {low}, not {value!r}")
    return value


async def check(probe: Probe, target: ProbeTarget) -> bool:
    """Run `probe` once against `target`."""
    if probe.kind == "tcp":
        return await tcp_probe(target.node_netns, (target.ip, probe.port), probe.timeout)
    if probe.kind == "http":
        status, _ = await http_get(target.node_netns, (target.ip, probe.port), probe.path, probe.timeout,
                                   scheme=probe.scheme, host=probe.host, headers=probe.headers)
        return 200 <= status < 400
    return await exec_probe(target, list(probe.command), probe.timeout)


async def exec_probe(target: ProbeTarget, command: list[str], timeout: float) -> bool:
    argv = target.sandbox.wrap(command) if target.sandbox is not None else command
    process = await trio.lowlevel.open_process(
        ["ip", "netns", "exec", target.pod_netns, *argv], stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=target.env or None, start_new_session=True)
    try:
        with trio.move_on_after(timeout):
            return await process.wait() == 0
        return False
    finally:
        if process.returncode is None:
            _kill_group(process.pid)
            with trio.CancelScope(shield=True):
                await process.wait()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass(slots=True)
class Tracker:
    """A probe's verdict from its consecutive results (successThreshold, failureThreshold)."""

    probe: Probe
    passed: bool
    successes: int = 0
    failures: int = 0
    runs: int = 0

    @classmethod
    def readiness(cls, probe: Probe) -> Tracker:
        return cls(probe, passed=False)

    @classmethod
    def liveness(cls, probe: Probe) -> Tracker:
        return cls(probe, passed=True)

    def record(self, ok: bool) -> bool:
        """Take one result; returns the verdict after it."""
        self.runs += 1
        if ok:
            self.successes += 1
            self.failures = 0
            if self.successes >= self.probe.success_threshold:
                self.passed = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= self.probe.failure_threshold:
                self.passed = False
        return self.passed

    def reset(self, passed: bool) -> None:
        """A restarted container starts over."""
        self.passed, self.successes, self.failures = passed, 0, 0
