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


def _start(tmp_path: Path, port: int) -> subprocess.Popen:
    manifests = tmp_path / "manifests"
    manifests.mkdir(exist_ok=True)
    return subprocess.Popen(
        [str(BIN / "wisp-operator"), "--manifests", str(manifests), "--state-dir", str(tmp_path / "state"),
         "--listen", f"127.0.0.1:{port}", "--advertise", "127.0.0.1", "--node", "node1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _ask_for_a_certificate(tmp_path: Path, port: int, token: str) -> int:
    """The CA's status for node1's ztunnel asking for an identity it has no pod of: 403 once the
    token is accepted (authenticated, then refused), 401 if the token is unknown."""
    deadline = time.monotonic() + 30
    while True:
        try:
            # The roots file appears, and the port opens, as the process starts.
            verify = httpx.create_ssl_context(verify=str(tmp_path / "state" / "root-cert.pem"))
            with httpx.Client(verify=verify, timeout=5) as client:
                return client.post(f"https://127.0.0.1:{port}/v1/certificates",
                                   headers={"authorization": f"Bearer {token}"},
                                   content=json.dumps({"csr": "x", "identity":
                                                       "spiffe://cluster.local/ns/shop/sa/web"})).status_code
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


@pytest.mark.parametrize("written", ["", "short", "x" * 43 + "\n" + "y", "é" * 43])
def test_a_token_file_without_a_fresh_tokens_strength_is_replaced(written):
    from wisp_operator.auth import LocalCredentials

    credentials = LocalCredentials()
    token = credentials.issue_ztunnel("node1", written.strip() or None)
    assert token != written.strip() and len(token) == 43
    assert credentials.authenticate(f"Bearer {token}").node == "node1"
