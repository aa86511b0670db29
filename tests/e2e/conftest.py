"""One running local mesh shared by the end-to-end tests (real namespaces, rules and processes).

It is started with the real CLI (`wisp up`) under a unique prefix and always taken down with
`wisp down`, whose result is checked: no namespace, process or file of the run may remain.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.capture import capture
from tests.support.wait import wait_for
from wisp.runpaths import RuntimePaths

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent


def run(args, *, timeout: float = 30, check: bool = False, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=check, input=input)


class Mesh:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.paths = RuntimePaths(prefix)

    # -- the CLI -----------------------------------------------------------------------------------
    def wisp(self, *args: str, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess:
        return run([str(BIN / "wisp"), *args[:1], "--prefix", self.prefix, *args[1:]], timeout=timeout, input=input)

    def apply(self, text: str, name: str) -> None:
        path = Path(tempfile.mkdtemp(prefix="wisp-e2e-")) / f"{name}.yaml"
        path.write_text(text)
        result = self.wisp("apply", "-f", str(path))
        shutil.rmtree(path.parent)
        assert result.returncode == 0, result.stderr

    def delete(self, text: str, name: str) -> None:
        path = Path(tempfile.mkdtemp(prefix="wisp-e2e-")) / f"{name}.yaml"
        path.write_text(text)
        result = self.wisp("delete", "-f", str(path))
        shutil.rmtree(path.parent)
        assert result.returncode == 0, result.stderr

    def label(self, kind: str, name: str, *labels: str, namespace: str = "default") -> None:
        result = self.wisp("label", kind, name, *labels, "-n", namespace)
        assert result.returncode == 0, result.stderr

    # -- looking inside ----------------------------------------------------------------------------
    def status(self) -> dict:
        return json.loads(self.paths.status.read_text())

    def pod(self, namespace: str, name: str) -> dict:
        for pod in self.status()["pods"]:
            if pod["namespace"] == namespace and pod["name"] == name:
                return pod
        raise KeyError(f"{namespace}/{name}")

    def node(self, name: str) -> dict:
        return next(n for n in self.status()["nodes"] if n["name"] == name)

    def component(self, name: str) -> dict:
        return self.status()["components"][name]

    def in_pod(self, namespace: str, pod: str, *command: str, timeout: float = 15) -> subprocess.CompletedProcess:
        netns = self.pod(namespace, pod)["netns"]
        return run(["ip", "netns", "exec", netns, *command], timeout=timeout)

    def in_node(self, node: str, *command: str, timeout: float = 15) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", self.node(node)["netns"], *command], timeout=timeout)

    def curl(self, namespace: str, pod: str, url: str, *extra: str, timeout: float = 5) -> tuple[int, str]:
        """(HTTP status or 0 when the connection failed, body) of a request made inside a pod."""
        result = self.in_pod(namespace, pod, "curl", "-s", "-m", str(timeout), "-o", "-", "-w", "\n%{http_code}",
                             *extra, url, timeout=timeout + 5)
        body, _, code = result.stdout.rpartition("\n")
        return int(code or 0), body

    def metrics(self, node: str) -> str:
        ip = self.node(node)["ip"]
        result = self.in_node(node, "curl", "-s", "-m", "5", f"http://{ip}:15020/metrics")
        return result.stdout

    def iptables(self, namespace: str, pod: str) -> str:
        return self.in_pod(namespace, pod, "iptables-save").stdout

    def annotation(self, namespace: str, pod: str) -> str | None:
        listing = json.loads(self.wisp("get", "pods", "-n", namespace, "-o", "json").stdout)
        for item in listing["items"]:
            if item["metadata"]["name"] == pod:
                return (item["metadata"].get("annotations") or {}).get("ambient.istio.io/redirection")
        return None

    def wait_for(self, predicate, timeout: float = 20, interval: float = 0.2, what: str = "condition"):
        return wait_for(predicate, timeout, what=what, interval=interval)

    def capture(self, netns: str, interface: str, bpf: str = "tcp"):
        """Packets seen on `interface` inside `netns` while the block runs (tests/support/capture.py)."""
        return capture(netns, interface, bpf)


def leftovers(prefix: str) -> list[str]:
    found = []
    netns = run(["ip", "netns", "list"]).stdout
    found += [line.split()[0] for line in netns.splitlines() if line.startswith(prefix)]
    procs = run(["pgrep", "-af", prefix]).stdout
    found += [line for line in procs.splitlines() if "pgrep" not in line]
    if RuntimePaths(prefix).root.exists():
        found.append(str(RuntimePaths(prefix).root))
    return found


@pytest.fixture(scope="package")
def mesh():
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests build network namespaces and need root (CI runs them as root)")
    prefix = f"wisp-t{secrets.token_hex(2)}"
    up = run([str(BIN / "wisp"), "up", "--prefix", prefix, "--nodes", "2", "--restart-delay", "2", "--ztunnel-workers", "2",
              str(HERE / "manifests")], timeout=240)
    try:
        if up.returncode != 0:
            logs = RuntimePaths(prefix).logs
            tails = ""
            for log in sorted(logs.glob("*.log")) if logs.exists() else []:
                tails += f"\n--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            pytest.fail(f"wisp up failed:\n{up.stdout}\n{up.stderr}{tails}")
        yield Mesh(prefix)
    finally:
        down = run([str(BIN / "wisp"), "down", "--prefix", prefix], timeout=120)
        assert down.returncode == 0, down.stderr
        assert leftovers(prefix) == [], f"wisp down left behind: {leftovers(prefix)}"
