"""`wisp-operator --kubeconfig` as a process: its CA and config stream on its real HTTPS endpoint
take projected service-account tokens checked with the test bed's TokenReview, and SIGTERM ends
open config streams, releases the Lease and exits 0.

The ztunnel pods, workloads and tokens are real objects of the test bed (tests/kube/conftest.py);
the operator learns the pods from its own watch, as in a cluster. Each case is decided as istiod's
CA decides it (operator/kube_auth.py): a node proxy's token bound to its pod obtains identities that
run on its node, any other account only its own, a token the API server refuses nothing.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from tests.kube.conftest import wait_for
from wisp.controlplane.protocol import CERTIFICATE_PATH, STREAM_PATH
from wisp.identity import SpiffeId, make_csr
from wisp.identity.certs import generate_key
from runtime.testbed.cluster import Cluster, free_ports
from runtime.testbed.nodes import Nodes

from .test_operator_leader import holder

TRUST_DOMAIN = "cluster.local"


def _pod(name: str, account: str, node: str) -> dict[str, Any]:
    return {"metadata": {"name": name},
            "spec": {"serviceAccountName": account, "nodeName": node,
                     "containers": [{"name": "main", "image": "registry.invalid/wisp-test:1"}]}}


@dataclass(slots=True)
class Accounts:
    """`system` holds the trusted ztunnel account and its pod on node1; `apps` two workloads."""

    cluster: Cluster
    system: str
    apps: str
    pods: dict[str, dict[str, Any]]

    def token(self, pod: str, namespace: str, account: str, audience: str = "istio-ca") -> str:
        """A token bound to `pod`, as the kubelet projects it into the pod."""
        spec = {"audiences": [audience], "expirationSeconds": 600,
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod,
                                   "uid": self.pods[pod]["metadata"]["uid"]}}
        with self.cluster.client() as client:
            response = client.post("/api/v1/namespaces/%s/serviceaccounts/%s/token" % (namespace, account),
                                   json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                         "spec": spec})
        assert response.status_code == 201, response.text
        return response.json()["status"]["token"]

    def identity(self, account: str) -> SpiffeId:
        return SpiffeId(TRUST_DOMAIN, self.apps, account)


@pytest.fixture(scope="module")
def accounts(cluster: Cluster, nodes: Nodes) -> Iterator[Accounts]:
    suffix = uuid.uuid4().hex[:6]
    system, apps = "cae-sys-" + suffix, "cae-apps-" + suffix
    layout = {system: [("ztunnel", "ztunnel-node1", "node1")],
              apps: [("reviews", "reviews-node1", "node1"), ("ratings", "ratings-node2", "node2")]}
    pods: dict[str, dict[str, Any]] = {}
    try:
        with cluster.client() as client:
            for namespace, entries in layout.items():
                created = client.post("/api/v1/namespaces", json={"metadata": {"name": namespace}})
                assert created.status_code == 201, created.text
                for account, pod, node in entries:
                    created = client.post("/api/v1/namespaces/%s/serviceaccounts" % namespace,
                                          json={"metadata": {"name": account}})
                    assert created.status_code == 201, created.text
                    created = client.post("/api/v1/namespaces/%s/pods" % namespace, json=_pod(pod, account, node))
                    assert created.status_code == 201, created.text
                    pods[pod] = created.json()
        yield Accounts(cluster, system, apps, pods)
    finally:
        with cluster.client() as client:
            for namespace in layout:
                client.delete("/api/v1/namespaces/%s" % namespace)


@dataclass(slots=True)
class Operator:
    process: subprocess.Popen[str]
    url: str
    lease_namespace: str
    verify: ssl.SSLContext

    def client(self, **options: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.verify, **{"timeout": 10, **options})


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _start(cluster: Cluster, accounts: Accounts, state: Path) -> Operator:
    listen, health = free_ports(2)
    # The Lease goes in the test's own namespace so other operator tests are not disturbed.
    command = [str(Path(sys.executable).parent / "wisp-operator"), "--kubeconfig", str(cluster.kubeconfig),
               "--state-dir", str(state), "--listen", "127.0.0.1:%d" % listen,
               "--health-listen", "127.0.0.1:%d" % health, "--lease-namespace", accounts.system,
               "--identity", "ca-endpoint-under-test", "--trusted-node-accounts", "%s/ztunnel" % accounts.system]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for(lambda: process.poll() is not None or _ready("http://127.0.0.1:%d/readyz" % health),
                 "the operator to list everything and publish", timeout=60)
        assert process.poll() is None, process.communicate(timeout=5)[0][-3000:]
    except BaseException:
        _stop(process)
        raise
    verify = ssl.create_default_context(cafile=str(state / "root-cert.pem"))
    return Operator(process, "https://127.0.0.1:%d" % listen, accounts.system, verify)


def _stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.kill()
    return process.communicate(timeout=10)[0]


@pytest.fixture(scope="module")
def operator(cluster: Cluster, accounts: Accounts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    running = _start(cluster, accounts, tmp_path_factory.mktemp("ca-endpoint"))
    try:
        yield running
    finally:
        _stop(running.process)


def _sign(operator: Operator, token: str | None, identity: SpiffeId) -> tuple[int, dict]:
    body = {"csr": make_csr(generate_key(), identity).decode(), "identity": str(identity)}
    headers = {"authorization": "Bearer " + token} if token is not None else {}
    with operator.client() as client:
        response = client.post(CERTIFICATE_PATH, content=json.dumps(body), headers=headers)
    return response.status_code, response.json()


def _leaf_identity(body: dict) -> str:
    leaf = x509.load_pem_x509_certificate(body["cert_chain"][0].encode())
    return leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)[0]


def test_node_proxy_token_obtains_an_identity_running_on_its_node(operator: Operator, accounts: Accounts) -> None:
    token = accounts.token("ztunnel-node1", accounts.system, "ztunnel")
    status, body = _sign(operator, token, accounts.identity("reviews"))
    assert status == 200, body
    assert _leaf_identity(body) == str(accounts.identity("reviews"))


def test_node_proxy_token_is_refused_an_identity_only_on_another_node(operator: Operator,
                                                                      accounts: Accounts) -> None:
    token = accounts.token("ztunnel-node1", accounts.system, "ztunnel")
    status, body = _sign(operator, token, accounts.identity("ratings"))
    assert status == 403, body
    assert "is on node 'node1'" in body["error"], body


def test_untrusted_account_is_refused_another_identity(operator: Operator, accounts: Accounts) -> None:
    token = accounts.token("reviews-node1", accounts.apps, "reviews")
    status, body = _sign(operator, token, accounts.identity("ratings"))
    assert status == 403, body
    assert "is not a trusted node proxy account (%s/ztunnel)" % accounts.system in body["error"], body
    # ... while its own identity is its to have.
    status, body = _sign(operator, token, accounts.identity("reviews"))
    assert status == 200, body


@pytest.mark.parametrize("case", ["other-audience", "forged", "none"])
def test_token_the_api_server_does_not_vouch_for_is_unauthenticated(operator: Operator, accounts: Accounts,
                                                                     case: str) -> None:
    token = {"other-audience": lambda: accounts.token("ztunnel-node1", accounts.system, "ztunnel", "other"),
             "forged": lambda: "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
             "none": lambda: None}[case]()
    status, body = _sign(operator, token, accounts.identity("reviews"))
    assert status == 401, body


def test_workload_token_may_not_subscribe_to_config(operator: Operator, accounts: Accounts) -> None:
    token = accounts.token("reviews-node1", accounts.apps, "reviews")
    with operator.client() as client:
        response = client.get(STREAM_PATH, headers={"authorization": "Bearer " + token})
    assert response.status_code == 403, response.text


def test_sigterm_ends_open_config_streams_releases_the_lease_and_exits(cluster: Cluster, accounts: Accounts,
                                                                      tmp_path: Path) -> None:
    running = _start(cluster, accounts, tmp_path / "state")
    try:
        wait_for(lambda: holder(cluster, accounts.system) == "ca-endpoint-under-test", "the Lease taken")
        token = accounts.token("ztunnel-node1", accounts.system, "ztunnel")
        first_line = threading.Event()
        ended: list[float] = []

        def follow() -> None:
            # HTTP/1.1: httpcore fails every open HTTP/2 stream on GOAWAY, even one the server
            # then ends properly, so only HTTP/1.1 shows whether the stream was ended or cut.
            with running.client(timeout=httpx.Timeout(10, read=60)) as client:
                with client.stream("GET", STREAM_PATH, headers={"authorization": "Bearer " + token}) as response:
                    assert response.status_code == 200
                    for _ in response.iter_lines():
                        first_line.set()
            ended.append(time.monotonic())

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        assert first_line.wait(30), "the ztunnel's config stream sent nothing"
        stopped = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(30) == 0
        reader.join(15)
        assert ended, "the config stream was still open after the operator stopped"
        assert ended[0] - stopped < 15
        assert holder(cluster, accounts.system) == "", "the Lease must be released on shutdown"
    finally:
        output = _stop(running.process)
    assert "lease released" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]


def test_malformed_trusted_node_accounts_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run([str(Path(sys.executable).parent / "wisp-operator"), "--kubeconfig", str(tmp_path / "none"),
                             "--state-dir", str(tmp_path / "state"), "--trusted-node-accounts", "ztunnel"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr + result.stdout
    output = result.stdout + result.stderr
    assert "trusted node account 'ztunnel' is not <namespace>/<service-account>" in output
    assert "Traceback" not in output
