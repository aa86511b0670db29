"""A restarted local-mode control plane still accepts the proxies that were already running.

ztunnels and node agents read their bearer token once, at their own start. The operator used to
issue new random tokens at every start, so after a restart (a crash, or the control-plane outage
of bench/reliability's `controlplane_down`) every running ztunnel was refused (401) by the CA and
the config stream for good: certificates due after the restart were never renewed and expired.
The real operator process runs here twice on loopback with one state directory.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SHOP = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {serviceAccountName: web, nodeName: node1, containers: [{name: web, command: [sleep, infinity]}]}
"""


def _start(tmp_path: Path, port: int) -> subprocess.Popen:
    manifests = tmp_path / "manifests"
    if not manifests.exists():
        manifests.mkdir()
        (manifests / "shop.yaml").write_text(SHOP)
    return subprocess.Popen(
        [str(BIN / "wisp-operator"), "--manifests", str(manifests), "--state-dir", str(tmp_path / "state"),
         "--listen", f"127.0.0.1:{port}", "--advertise", "127.0.0.1", "--node", "node1",
         "--local-socket", str(tmp_path / "operator.sock")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _report_running(tmp_path: Path) -> None:
    """What the runtime (kubelet) says of shop/web-1: running on node1 with its address."""
    token = (tmp_path / "state" / "tokens" / "runtime").read_text().strip()
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(tmp_path / "operator.sock")), base_url="http://operator",
                      headers={"authorization": f"Bearer {token}"}, timeout=5) as client:
        response = client.put("/v1/local/pods/shop/web-1/runtime",
                              json={"node": "node1", "pod_ip": "10.244.1.10", "phase": "Running", "ready": True})
    assert response.status_code == 204, response.text


def _ask_for_a_certificate(tmp_path: Path, port: int, token: str,
                           identity: str = "spiffe://cluster.local/ns/shop/sa/db") -> int:
    """The CA's status for node1's ztunnel asking for `identity` with a CSR that is no CSR: 403
    when the caller may not hold it (no such pod on its node), 400 when it may (then the CSR is
    refused), 401 if the token is unknown."""
    deadline = time.monotonic() + 30
    while True:
        try:
            # The roots file appears, and the port opens, as the process starts.
            verify = httpx.create_ssl_context(verify=str(tmp_path / "state" / "root-cert.pem"))
            with httpx.Client(verify=verify, timeout=5) as client:
                return client.post(f"https://127.0.0.1:{port}/v1/certificates",
                                   headers={"authorization": f"Bearer {token}"},
                                   content=json.dumps({"csr": "x", "identity": identity})).status_code
        except (httpx.TransportError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_a_restarted_operator_keeps_the_tokens_its_running_proxies_hold(tmp_path):
    port = _free_port()
    first = _start(tmp_path, port)
    try:
        token_file = tmp_path / "state" / "tokens" / "ztunnel-node1"
        assert _ask_for_a_certificate(tmp_path, port, "not-a-token") == 401
        held = token_file.read_text().strip()
        assert _ask_for_a_certificate(tmp_path, port, held) == 403
    finally:
        _stop(first)
    second = _start(tmp_path, port)
    try:
        assert _ask_for_a_certificate(tmp_path, port, held) == 403
        assert token_file.read_text().strip() == held
        assert (token_file.stat().st_mode & 0o777) == 0o600
    finally:
        _stop(second)


def _workload_addresses(tmp_path: Path, port: int, token: str) -> list:
    """The addresses of shop/web-1's workload in the first snapshot node1's ztunnel is served."""
    verify = httpx.create_ssl_context(verify=str(tmp_path / "state" / "root-cert.pem"))
    with httpx.Client(verify=verify, http2=True, timeout=10) as client:
        with client.stream("GET", f"https://127.0.0.1:{port}/v1/config?subscriber=ztunnel-node1",
                           headers={"authorization": f"Bearer {token}"}) as response:
            first = json.loads(next(response.iter_lines()))
    text = json.dumps(first)
    return ["10.244.1.10"] if "10.244.1.10" in text else []


def test_a_restarted_operator_remembers_what_the_runtime_reported_of_its_pods(tmp_path):
    """It used to forget until the runtime's next report (up to 10 s): ztunnels were served a
    snapshot without the pods' addresses, so their pooled connections to them closed and traffic
    to those addresses was not sent over HBONE."""
    port = _free_port()
    web = "spiffe://cluster.local/ns/shop/sa/web"
    first = _start(tmp_path, port)
    try:
        assert _ask_for_a_certificate(tmp_path, port, "not-a-token") == 401
        token = (tmp_path / "state" / "tokens" / "ztunnel-node1").read_text().strip()
        assert _workload_addresses(tmp_path, port, token) == []  # not running yet
        _report_running(tmp_path)
        assert _ask_for_a_certificate(tmp_path, port, token, web) == 400
        assert _workload_addresses(tmp_path, port, token) == ["10.244.1.10"]
    finally:
        _stop(first)
    second = _start(tmp_path, port)
    try:
        # No report from the runtime since the restart.
        assert _ask_for_a_certificate(tmp_path, port, token, web) == 400
        assert _workload_addresses(tmp_path, port, token) == ["10.244.1.10"]
    finally:
        _stop(second)


@pytest.mark.parametrize("written", ["", "short", "x" * 43 + "\n" + "y", "é" * 43])
def test_a_token_file_without_a_fresh_tokens_strength_is_replaced(written):
    from wisp_operator.auth import LocalCredentials

    credentials = LocalCredentials()
    token = credentials.issue_ztunnel("node1", written.strip() or None)
    assert token != written.strip() and len(token) == 43
    assert credentials.authenticate(f"Bearer {token}").node == "node1"


def test_overlays_come_back_on_the_objects_that_still_exist_and_bad_entries_are_skipped(tmp_path):
    from wisp_operator.local_source import LocalSource
    from wisp_operator.store import ObjectStore

    (tmp_path / "shop.yaml").write_text(SHOP)
    before = ObjectStore()
    LocalSource(tmp_path, before).load()
    before.set_pod_runtime("shop", "web-1", node="node1", pod_ip="10.244.1.10", phase="Running", ready=True)
    before.set_labels("Namespace", "", "shop", {"team": "a"})
    saved = json.loads(json.dumps(before.overlays()))
    saved["runtime"] += [["Pod", "shop", "gone-1", saved["runtime"][0][3]],          # no such pod
                         ["Pod", "shop", "web-1", {"node": "n", "pod_ip": "x", "phase": "Running", "ready": True}],
                         "garbage"]
    after = ObjectStore()
    LocalSource(tmp_path, after).load()
    assert after.restore_overlays(saved) == 2
    assert after.get("Pod", "shop", "web-1") == before.get("Pod", "shop", "web-1")
    assert after.get("Namespace", "", "shop")["metadata"]["labels"]["team"] == "a"
    assert after.restore_overlays(["not", "a", "dict"]) == 0
