"""RequestAuthentication in the wisp-waypoint process on loopback (tests/waypoint/process_harness.py):
the waypoint fetches its JWKS from a Service of the mesh over HBONE with its own identity, answers
Istio's four results, and picks up a rotated key set.

The JWKS server is Python's http.server over a directory this test writes, behind an HBONE server
of its own address (identity shop/jwks), like the harness's echo workloads.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.waypoint.jwt_keys import ISSUER, Signer, jwks
from tests.waypoint.process_harness import Harness, free_port, get, spiffe, wait_for
from wisp.engine.hbone import ConnectRequest
from wisp.engine.server import HboneServer
from wisp.engine.splice import Splice, TcpEnd
from wisp.model import PortMapping, Service, Workload

ECHO_VIP, JWKS_VIP = "10.96.78.10", "10.96.78.20"
ECHO_HOST = "echo.shop.svc.cluster.local"
RSA, EC = Signer.rsa("rsa-1"), Signer.ec("ec-1")
ECHO_TARGET = {"group": "", "kind": "Service", "name": "echo"}
OBJECTS = [
    {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
     "metadata": {"name": "echo-jwt", "namespace": "shop"},
     "spec": {"targetRefs": [ECHO_TARGET], "jwtRules": [
         {"issuer": ISSUER, "jwksUri": "http://jwks.shop.svc.cluster.local/jwks.json"}]}},
    {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
     "metadata": {"name": "require-alice", "namespace": "shop"},
     "spec": {"targetRefs": [ECHO_TARGET], "rules": [{"from": [{"source": {"requestPrincipals": [f"{ISSUER}/alice"]}}]}]}},
]


def serve_keys(directory: Path, *signers: Signer) -> None:
    partial = directory / "jwks.json.partial"
    partial.write_text(jwks(*signers))
    partial.replace(directory / "jwks.json")


def add_jwks_server(harness: Harness, directory: Path) -> tuple[Workload, int, subprocess.Popen]:
    ip = harness.ip(4)
    port = free_port(ip)
    process = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", ip, "--directory",
                                str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: _connectable(ip, port), what="the JWKS server listening")
    bundle = harness.ca.issue(spiffe("shop", "jwks"))
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((ip, 15008))
    listener.listen(16)
    listener.setblocking(False)
    loop = harness.loop
    fetchers = harness.jwks_fetchers = []

    def on_request(request: ConnectRequest) -> None:
        fetchers.append(str(request.peer_identity))
        upstream = socket.create_connection((request.authority.ip, request.authority.port))
        upstream.setblocking(False)
        Splice(request.accept(), TcpEnd(loop, upstream, upstream=False)).start()

    harness.servers.append(HboneServer(loop, listener, lambda: harness.contexts.get(bundle, server_side=True),
                                       on_request=on_request, trust_domain="cluster.local"))
    key = "shop/jwks.shop.svc.cluster.local"
    workload = Workload("uid-jwks", "jwks", "shop", (ip,), tunnel_protocol="HBONE", service_account="jwks",
                        workload_name="jwks", canonical_name="jwks", services={key: (PortMapping(80, port),)})
    return workload, port, process


def _connectable(ip: str, port: int) -> bool:
    try:
        socket.create_connection((ip, port), timeout=0.5).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def wp(ca):
    keys = Path(tempfile.mkdtemp(prefix="wisp-jwks-"))
    serve_keys(keys, RSA, EC)
    harness = Harness(ca)
    server = None
    try:
        echo = harness.add_echo("echo-v1", harness.ip(2))
        harness.service_map = {"echo-v1": {f"shop/{ECHO_HOST}": (PortMapping(80, echo.port),)}}
        jwks_workload, jwks_port, server = add_jwks_server(harness, keys)
        services = [Service("echo", "shop", ECHO_HOST, (ECHO_VIP,), (PortMapping(80, echo.port),)),
                    Service("jwks", "shop", "jwks.shop.svc.cluster.local", (JWKS_VIP,), (PortMapping(80, jwks_port),))]
        harness.start()
        harness.start_waypoint(services, OBJECTS, extra_workloads=[jwks_workload])
        harness.echo_port = harness.client_port(f"{ECHO_VIP}:80")
        harness.keys = keys
        yield harness
    finally:
        harness.close()
        if server is not None:
            server.terminate()
            server.wait(5)
        shutil.rmtree(keys, ignore_errors=True)


def call(wp, token: str | None) -> tuple[int, bytes]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    status, _, body = get(wp.echo_port, "/hello", headers)
    return status, body


def test_the_waypoint_fetches_the_key_set_over_hbone_with_its_own_identity(wp):
    wait_for(lambda: call(wp, RSA.token())[0] == 200, what="the key set fetched")
    assert "spiffe://cluster.local/ns/shop/sa/waypoint" in wp.jwks_fetchers


@pytest.mark.parametrize("signer", [RSA, EC], ids=["RS256", "ES256"])
def test_istios_four_results(wp, signer):
    wait_for(lambda: call(wp, signer.token())[0] == 200, what="the key set fetched")
    assert call(wp, signer.token(exp=int(time.time()) - 3600)) == (401, b"Jwt is expired")
    assert call(wp, None) == (403, b"RBAC: access denied")
    assert call(wp, signer.token(sub="mallory")) == (403, b"RBAC: access denied")


def test_a_rotated_key_set_is_picked_up_on_the_unknown_kid(wp):
    wait_for(lambda: call(wp, RSA.token())[0] == 200, what="the key set fetched")
    rotated = Signer.rsa("rsa-2")
    assert call(wp, rotated.token())[0] == 401
    serve_keys(wp.keys, rotated, EC)
    started = time.monotonic()
    wait_for(lambda: call(wp, rotated.token())[0] == 200, timeout=15, what="the rotated key accepted")
    assert time.monotonic() - started < 10
    assert call(wp, RSA.token()) == (401, b"Jwks doesn't have key to match kid or alg from Jwt")
    assert "jwks fetched" in wp.log() and os.path.exists(wp.keys / "jwks.json")
