"""JWT attributes in L7 AuthorizationPolicy (requestPrincipals, request.auth.*), and Istio's four
results through the whole pipeline: a RequestAuthentication and a policy requiring a principal on
one Service — valid allowed 200 (a Proxy), bad token 401, no token 403, valid but not allowed 403."""

from __future__ import annotations

import random
import time

import pytest

from tests.support.balancer import FunctionBalancer
from tests.waypoint.jwt_keys import ISSUER, Signer, jwks
from waypoint.authn import RequestAuth
from waypoint.authz import RequestAttributes, ServiceRef, WaypointRef, authorize, compile_policies
from waypoint.config import Endpoint, compile_config
from waypoint.pipeline import ClientContext, Pipeline, Proxy, RequestHead, Respond
from wisp.identity import SpiffeId
from wisp.model import ModelSnapshot, PortMapping, Service, Workload, config_object

WAYPOINT = WaypointRef("shop", "waypoint")
ECHO_REF = ServiceRef("shop", "echo")
ECHO_TARGET = {"group": "", "kind": "Service", "name": "echo"}
CLIENT = SpiffeId("cluster.local", "shop", "client")


def policy(rules, action="ALLOW", name="jwt"):
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"targetRefs": [ECHO_TARGET], "action": action, "rules": rules}}


def attrs(auth: RequestAuth | None = None, path="/"):
    return RequestAttributes(CLIENT, "10.244.0.9", "10.96.0.10", 80, "echo.shop", "GET", path, (),
                             request_auth=auth)


def allowed(rules, auth, action="ALLOW", tcp=False) -> bool:
    compiled = compile_policies([policy(rules, action)], WAYPOINT)
    return authorize(compiled.for_service(ECHO_REF, tcp=tcp), attrs(auth)).allowed


ALICE = RequestAuth(f"{ISSUER}/alice", ("shop-api", "other"), "web",
                    {"sub": "alice", "groups": ["dev", "admin"], "org": {"team": "blue", "size": 3},
                     "scope": ["read", "write"], "admin": True})


@pytest.mark.parametrize(("values", "expected"), [
    (["*"], True), ([f"{ISSUER}/alice"], True), ([f"{ISSUER}/*"], True), (["*/alice"], True),
    ([f"{ISSUER}/bob"], False), (["other-issuer/*"], False),
])
def test_request_principals_use_istios_string_forms_on_iss_slash_sub(values, expected):
    rules = [{"from": [{"source": {"requestPrincipals": values}}]}]
    assert allowed(rules, ALICE) is expected
    assert allowed(rules, None) is False


def test_not_request_principals_star_allows_only_requests_without_a_token():
    rules = [{"from": [{"source": {"notRequestPrincipals": ["*"]}}]}]
    assert allowed(rules, None) and not allowed(rules, ALICE)


@pytest.mark.parametrize(("key", "values", "expected"), [
    ("request.auth.principal", [f"{ISSUER}/alice"], True),
    ("request.auth.audiences", ["other"], True),
    ("request.auth.audiences", ["nope"], False),
    ("request.auth.presenter", ["web"], True),
    ("request.auth.presenter", ["*"], True),
    ("request.auth.claims[groups]", ["admin"], True),
    ("request.auth.claims[groups]", ["ops"], False),
    ("request.auth.claims[groups]", ["adm*"], True),
    ("request.auth.claims[org][team]", ["blue"], True),
    ("request.auth.claims[org][size]", ["3"], False),  # a number is no string claim
    ("request.auth.claims[admin]", ["true"], False),
    ("request.auth.claims[scope]", ["write"], True),
    ("request.auth.claims[missing]", ["*"], False),
])
def test_request_auth_conditions(key, values, expected):
    assert allowed([{"when": [{"key": key, "values": values}]}], ALICE) is expected
    assert allowed([{"when": [{"key": key, "values": values}]}], None) is False


def test_not_values_of_a_claim_pass_without_a_token_and_block_a_matching_claim():
    rules = [{"when": [{"key": "request.auth.claims[groups]", "notValues": ["admin"]}]}]
    assert allowed(rules, None) and not allowed(rules, ALICE)


def test_a_malformed_claim_key_drops_the_allow_rule():
    compiled = compile_policies([policy([{"when": [{"key": "request.auth.claims[a", "values": ["x"]}]}])], WAYPOINT)
    assert compiled.notes and not authorize(compiled.for_service(ECHO_REF), attrs(ALICE)).allowed


def test_on_tcp_a_request_principal_cannot_be_read_so_an_allow_rule_is_dropped():
    assert not allowed([{"from": [{"source": {"requestPrincipals": ["*"]}}]}], ALICE, tcp=True)


# --- the whole pipeline -------------------------------------------------------------------------

HOST = "echo.shop.svc.cluster.local"
ECHO = Service("echo", "shop", HOST, ("10.96.0.10",), (PortMapping(80, 8080),))
POD = Workload("u1", "echo-1", "shop", ("10.244.1.5",), tunnel_protocol="HBONE", service_account="echo",
               services={f"shop/{HOST}": (PortMapping(80, 8080),)})
RSA, EC = Signer.rsa("rsa-1"), Signer.ec("ec-1")


def pipeline() -> Pipeline:
    authn = {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
             "metadata": {"name": "jwt", "namespace": "shop"},
             "spec": {"targetRefs": [ECHO_TARGET], "jwtRules": [{"issuer": ISSUER, "jwks": jwks(RSA, EC)}]}}
    require = policy([{"from": [{"source": {"requestPrincipals": [f"{ISSUER}/alice"]}}]}], name="require-alice")
    snapshot = ModelSnapshot.of([POD, ECHO, config_object(authn), config_object(require)])
    config = compile_config(snapshot, WAYPOINT, "v1")
    assert config.notes == ()
    endpoint = Endpoint("10.244.1.5", 8080, SpiffeId("cluster.local", "shop", "echo"), True, POD)
    return Pipeline(lambda: config, FunctionBalancer(lambda c, s, p, *a, **k: endpoint), lambda e, cb: None, random.Random(1))


def decide(token: str | None, path=b"/"):
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    ctx = ClientContext(CLIENT, "10.244.2.9", 40000, "10.96.0.10", 80)
    return pipeline().decide(ctx, RequestHead(b"GET", path, b"echo.shop", headers))


@pytest.mark.parametrize("signer", [RSA, EC], ids=["RS256", "ES256"])
def test_istios_four_results_through_the_pipeline(signer):
    valid = decide(signer.token(sub="alice"))
    assert isinstance(valid, Proxy)
    assert all(name != b"authorization" for name, _ in valid.head.headers)  # not forwarded
    expired = decide(signer.token(sub="alice", exp=int(time.time()) - 3600))
    assert isinstance(expired, Respond) and (expired.status, expired.body) == (401, b"Jwt is expired")
    assert (b"www-authenticate", b'Bearer realm="http://echo.shop/", error="invalid_token"') in expired.headers
    missing = decide(None)
    assert (missing.status, missing.body) == (403, b"RBAC: access denied")
    not_allowed = decide(signer.token(sub="mallory"))
    assert (not_allowed.status, not_allowed.body) == (403, b"RBAC: access denied")
