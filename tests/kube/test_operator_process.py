"""`wisp-operator --kubeconfig` as a process against the test bed: readiness once synced, the
Lease taken, status written, and SIGTERM releasing the Lease and exiting 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from runtime.testbed.cluster import Cluster, free_ports

from .conftest import wait_for
from .test_operator_leader import holder
from .test_operator_source import AP_PATH, install_crds, policy
from .test_operator_writer import kubectl_condition


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_operator_process_in_kubernetes_mode(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    install_crds(cluster)
    listen, health = free_ports(2)
    # The installed entry point, as a deployment runs it.
    command = [str(Path(sys.executable).parent / "wisp-operator"), "--kubeconfig", str(cluster.kubeconfig),
               "--state-dir", str(tmp_path / "state"), "--listen", "127.0.0.1:%d" % listen,
               "--health-listen", "127.0.0.1:%d" % health, "--lease-namespace", namespace,
               "--identity", "process-under-test"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        base = "http://127.0.0.1:%d" % health
        wait_for(lambda: _status(base + "/healthz") == 200, "/healthz")
        wait_for(lambda: _status(base + "/readyz") == 200, "/readyz once synced")
        assert _status(base + "/nope") == 404
        wait_for(lambda: holder(cluster, namespace) == "process-under-test", "the process to take the Lease")
        with cluster.client() as client:
            assert client.post(AP_PATH % namespace, json=policy("proc")).status_code == 201
        wait_for(lambda: kubectl_condition(cluster, "authorizationpolicy", namespace, "proc", "ZtunnelAccepted"),
                 "the process's status write")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert holder(cluster, namespace) == "", "the Lease must be released on shutdown"
    finally:
        if process.poll() is None:
            process.kill()
        output = process.communicate(timeout=10)[0]
    assert "lease released" in output, output[-3000:]
