"""The parts every reliability scenario uses: a mesh of its own, load, a prober, and what to read.

`ScenarioMesh` brings up bench/mesh's two-node mesh (client pod on node1, nginx server pod on
node2, namespace `mesh` labelled ambient) under a unique prefix `wisp-r<hex>` and always takes it
down. `Load` is h2load at a fixed rate through the mesh (bench/mesh/loadgen.py's command line),
run in the background; `Prober` is bench/reliability/probe.py in the client pod, one new
connection every 50 ms. The rest reads the mesh: ztunnel's certificates from its admin
/config_dump, component pids and restart counters from the runtime's status, a pod's redirection
rules (iptables-save and ip rule, counters left out).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.mesh import loadgen
from bench.mesh.mesh import CLIENT_NODE, HTTP_PORT, SERVER_NODE, BenchNamespace, Mesh, Pod

from .probe import MARKER, now

NAMESPACE = "mesh"
RATE = 1000
CONNECTIONS = 4
ROOT = Path(__file__).resolve().parents[2]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class ScenarioMesh(Mesh):
    """bench/mesh's mesh with one ambient namespace; `with ScenarioMesh(...)` always ends it."""

    def __init__(self, *, env: dict[str, str] | None = None, restart_delay: float | None = None,
                 ztunnel_workers: int = 1) -> None:
        super().__init__([BenchNamespace(NAMESPACE, True)], f"wisp-r{secrets.token_hex(2)}", log,
                         ztunnel_workers=ztunnel_workers, env=env, restart_delay=restart_delay)

    @property
    def client(self) -> Pod:
        return self.pod(NAMESPACE, "client")

    @property
    def server(self) -> Pod:
        return self.pod(NAMESPACE, "server")

    @property
    def url(self) -> str:
        return f"http://{self.server.ip}:{HTTP_PORT}/{MARKER}"

    @property
    def switch(self) -> str:
        """The namespace of the bridge between the nodes (docs/architecture.md, local runtime)."""
        return f"{self.prefix}-net"

    def node_netns(self, node: str) -> str:
        return self.node(node)["netns"]

    # -- reading the mesh -------------------------------------------------------------------------
    def components(self) -> dict[str, dict]:
        self.refresh()
        return dict(self._status.get("components", {}))

    def config_dump(self, node: str) -> dict:
        done = subprocess.run(["ip", "netns", "exec", self.node_netns(node), "curl", "-s", "-m", "5",
                               "http://127.0.0.1:15000/config_dump"], capture_output=True, text=True, timeout=15)
        return json.loads(done.stdout) if done.returncode == 0 and done.stdout else {}

    def certificates(self, node: str) -> list[dict]:
        """ztunnel's certificates on `node` (identity, state, serial, not_before, expiration, rotation)."""
        return self.config_dump(node).get("certificates", [])

    def redirection(self, pod: Pod) -> list[str]:
        """The pod's in-pod rules and ip rules, as meaning (counters and comments left out)."""
        rules = subprocess.run(["ip", "netns", "exec", pod.netns, "iptables-save"], capture_output=True,
                               text=True, timeout=15).stdout
        meaning, table = [], ""
        for line in rules.splitlines():
            if line.startswith("*"):
                table = line
            elif line.startswith("-A") or (line.startswith(":") and line.split()[1] != "ACCEPT"):
                meaning.append(f"{table} {line.split(' [')[0]}")
        routing = subprocess.run(["ip", "netns", "exec", pod.netns, "ip", "rule"], capture_output=True, text=True,
                                 timeout=15).stdout
        return sorted(meaning) + [f"rule {line.strip()}" for line in routing.splitlines()]


def process_start(pid: int) -> float | None:
    """When `pid` started, on CLOCK_BOOTTIME seconds (the prober's clock); None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


# -- load ---------------------------------------------------------------------------------------------
class Load:
    """h2load at `rate` req/s over `connections` connections for `seconds`, in the background."""

    def __init__(self, mesh: ScenarioMesh, seconds: float, scratch: Path, *, rate: int = RATE,
                 connections: int = CONNECTIONS, name: str = "h2load") -> None:
        self.log_file = scratch / f"{name}.log"
        self.seconds = seconds
        self.argv = loadgen.h2load_argv(mesh.url, rate=rate, connections=connections, seconds=seconds,
                                        log_file=self.log_file)
        self.netns = mesh.client.netns
        self.started = now()
        self.process = subprocess.Popen(["ip", "netns", "exec", self.netns, *self.argv], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)

    def wait(self, timeout: float | None = None) -> dict:
        """h2load's counts once it ends, plus the non-2xx responses its log shows."""
        stdout, _ = self.process.communicate(timeout=timeout if timeout is not None else self.seconds + 120)
        try:
            result = loadgen.parse_h2load(stdout)
        except loadgen.LoadError:
            # h2load gives up without a summary when every connection failed (a killed ztunnel).
            return {"requests": 0, "done": 0, "failed": 0, "non_2xx": 0, "statuses": {}, "exit": self.process.returncode,
                    "error": stdout.strip()[-400:]}
        statuses: dict[str, int] = {}
        text = self.log_file.read_text() if self.log_file.exists() else ""
        for line in text.splitlines():
            fields = line.split("\t")
            if len(fields) >= 2:
                statuses[fields[1]] = statuses.get(fields[1], 0) + 1
        result["statuses"] = statuses
        result["non_2xx"] = sum(n for code, n in statuses.items() if not code.startswith("2"))
        result["exit"] = self.process.returncode
        return result

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- prober -----------------------------------------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class Attempt:
    t: float
    ms: float
    outcome: str


@dataclass
class Prober:
    """probe.py in the client pod; `attempts` grows as its lines arrive."""

    mesh: ScenarioMesh
    interval: float = 0.05
    timeout: float = 2.0
    attempts: list[Attempt] = field(default_factory=list)

    def __enter__(self) -> Prober:
        target = f"{self.mesh.server.ip}:{HTTP_PORT}"
        self._process = subprocess.Popen(
            ["ip", "netns", "exec", self.mesh.client.netns, sys.executable, "-m", "bench.reliability.probe", target,
             "--interval", str(self.interval), "--timeout", str(self.timeout)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._process.stdout:
            try:
                item = json.loads(line)
                self.attempts.append(Attempt(item["t"], item["ms"], item["outcome"]))
            except (ValueError, KeyError):
                continue

    def __exit__(self, *exc) -> None:
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(5)

    def between(self, start: float, end: float) -> list[Attempt]:
        return [a for a in list(self.attempts) if start <= a.t < end]

    def first_ok_after(self, t: float) -> Attempt | None:
        return next((a for a in list(self.attempts) if a.t >= t and a.outcome == "ok"), None)


def outcomes(attempts: list[Attempt]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for a in attempts:
        counts[a.outcome] = counts.get(a.outcome, 0) + 1
    return dict(sorted(counts.items()))


def wait_until(check, timeout: float, interval: float = 0.05):
    """`check()`'s first truthy value within `timeout` seconds, else None."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)


__all__ = ["CLIENT_NODE", "SERVER_NODE", "Attempt", "Load", "Prober", "ScenarioMesh", "log", "now", "outcomes",
           "process_start", "wait_until"]
