"""RequestAuthentication at a waypoint, end to end on the shared local mesh (issue 12's JWT items).

The module's fixture adds a namespace `jwt`: a client, the echo app behind Service `echo`, and a
JWKS server — a meshed pod running Python's http.server over a directory the test writes — behind
Service `jwks`; it enrols the namespace with a waypoint. A RequestAuthentication on Service `echo`
names `http://jwks.jwt.svc.cluster.local/jwks.json`, so the waypoint fetches the key set over HBONE
with its own identity, and an AuthorizationPolicy requires the principal `<issuer>/alice`.
Istio's four results are checked with RS256 and ES256 tokens signed here; then the key set is
rotated on disk and a token of the new key is accepted (the waypoint refetches on the unknown
`kid`) while one of the removed key is refused.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.waypoint.jwt_keys import ISSUER, Signer, jwks

from .objects import client, echo_deployment, manifest, namespace, service

NS = "jwt"
APP = manifest(
    namespace(NS),
    client(NS),
    echo_deployment(NS, "echo"),
    # The key set's server: PYTHON and DIRECTORY are filled in when the fixture applies it.
    {"apiVersion": "v1", "kind": "Pod",
     "metadata": {"name": "jwks", "namespace": NS, "labels": {"app": "jwks"}},
     "spec": {"serviceAccountName": "jwks", "nodeName": "node2",
              "containers": [{"name": "files",
                              "command": ["PYTHON", "-m", "http.server", "8080", "--bind", "0.0.0.0",
                                          "--directory", "DIRECTORY"],
                              "readinessProbe": {"httpGet": {"path": "/jwks.json", "port": 8080}}}]}},
    service(NS, "echo"),
    service(NS, "jwks"),
)

POLICIES = f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: echo-jwt, namespace: jwt}}
spec:
  targetRefs: [{{group: "", kind: Service, name: echo}}]
  jwtRules:
    - issuer: {ISSUER}
      jwksUri: http://jwks.jwt.svc.cluster.local/jwks.json
      outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-alice, namespace: jwt}}
spec:
  targetRefs: [{{group: "", kind: Service, name: echo}}]
  rules:
    - from: [{{source: {{requestPrincipals: ["{ISSUER}/alice"]}}}}]
"""

URL = "http://echo.jwt/hello"
RSA, EC = Signer.rsa("rsa-1"), Signer.ec("ec-1")


def call(mesh, token: str | None) -> tuple[int, str]:
    extra = ("-H", f"Authorization: Bearer {token}") if token else ()
    return mesh.curl("jwt", "client", URL, *extra)


def serve_keys(directory: Path, *signers: Signer) -> None:
    # Written whole then renamed, so the server never hands out half a document.
    partial = directory / "jwks.json.partial"
    partial.write_text(jwks(*signers))
    partial.replace(directory / "jwks.json")


@pytest.fixture(scope="module")
def keys_dir():
    directory = Path(tempfile.mkdtemp(prefix="wisp-e2e-jwks-"))
    directory.chmod(0o755)
    serve_keys(directory, RSA, EC)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def jwt_namespace(mesh, keys_dir):
    app = APP.replace("PYTHON", sys.executable).replace("DIRECTORY", str(keys_dir))
    mesh.apply(app, "jwt-app")
    try:
        mesh.wait_for(lambda: sum(1 for p in mesh.status()["pods"] if p["namespace"] == "jwt" and p["ready"]) == 3,
                      timeout=60, what="jwt's pods ready")
        enrolled = mesh.wisp("waypoint", "apply", "-n", "jwt", "--enroll-namespace", "--wait",
                             "--waypoint-timeout", "90s", timeout=120)
        assert enrolled.returncode == 0, enrolled.stderr
        mesh.apply(POLICIES, "jwt-policies")
        # The waypoint fetches the key set once the RequestAuthentication reaches it.
        mesh.wait_for(lambda: call(mesh, RSA.token())[0] == 200, timeout=30, interval=0.5,
                      what="a valid token accepted (key set fetched)")
        yield
    finally:
        mesh.delete(POLICIES, "jwt-policies")
        mesh.wisp("waypoint", "delete", "-n", "jwt", "--all")
        mesh.delete(APP.replace("PYTHON", sys.executable).replace("DIRECTORY", str(keys_dir)), "jwt-app")


@pytest.mark.parametrize("signer", [RSA, EC], ids=["RS256", "ES256"])
def test_a_valid_token_of_an_allowed_principal_is_200_and_the_token_is_not_forwarded(mesh, jwt_namespace, signer):
    code, body = call(mesh, signer.token(sub="alice"))
    assert code == 200, body
    assert "header x-jwt-sub=alice" in body
    assert "header authorization=" not in body.lower()


@pytest.mark.parametrize("signer", [RSA, EC], ids=["RS256", "ES256"])
def test_an_expired_token_is_401_from_the_waypoint(mesh, jwt_namespace, signer):
    code, body = call(mesh, signer.token(sub="alice", exp=int(time.time()) - 3600))
    assert (code, body) == (401, "Jwt is expired")


@pytest.mark.parametrize("signer", [RSA, EC], ids=["RS256", "ES256"])
def test_a_token_signed_by_an_unknown_key_or_issuer_is_401(mesh, jwt_namespace, signer):
    stranger = Signer.rsa(signer.kid) if signer is RSA else Signer.ec(signer.kid)
    assert call(mesh, stranger.token(sub="alice")) == (401, "Jwt verification fails")
    assert call(mesh, signer.token(sub="alice", iss="https://evil.example")) == (401, "Jwt issuer is not configured")


def test_no_token_is_403_from_the_policy_requiring_a_principal(mesh, jwt_namespace):
    assert call(mesh, None) == (403, "RBAC: access denied")


@pytest.mark.parametrize("signer", [RSA, EC], ids=["RS256", "ES256"])
def test_a_valid_token_of_another_principal_is_403(mesh, jwt_namespace, signer):
    assert call(mesh, signer.token(sub="mallory")) == (403, "RBAC: access denied")


def test_a_rotated_key_set_is_picked_up(mesh, jwt_namespace, keys_dir):
    rotated = Signer.rsa("rsa-2")
    new_token = rotated.token(sub="alice")
    assert call(mesh, new_token)[0] == 401  # the waypoint's set does not have rsa-2 yet
    serve_keys(keys_dir, rotated, EC)
    started = time.monotonic()
    # The unknown kid makes the waypoint refetch (at most every 5 s): accepted within seconds.
    mesh.wait_for(lambda: call(mesh, new_token)[0] == 200, timeout=30, interval=0.5, what="the rotated key accepted")
    picked_up = time.monotonic() - started
    assert picked_up < 15, picked_up
    assert call(mesh, RSA.token(sub="alice")) == (401, "Jwks doesn't have key to match kid or alg from Jwt")
    assert call(mesh, EC.token(sub="alice"))[0] == 200
    served = json.loads((keys_dir / "jwks.json").read_text())
    assert [k["kid"] for k in served["keys"]] == ["rsa-2", "ec-1"]
