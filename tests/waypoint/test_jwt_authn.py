"""The authn decision (waypoint/authn/authenticate.py) over RequestAuthentications compiled as a
waypoint compiles them (policy.py): where tokens are found, Istio's results, what reaches the backend."""

from __future__ import annotations

import base64
import json
import time

from tests.waypoint.jwt_keys import AUDIENCE, ISSUER, Signer, jwks
from waypoint.authn import Authenticated, Rejected, authenticate, compile_authn, parse_jwks
from waypoint.authn.token import Status
from waypoint.authz import ServiceRef, WaypointRef

WAYPOINT = WaypointRef("shop", "waypoint")
ECHO = ServiceRef("shop", "echo")
GATEWAY = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}
RSA = Signer.rsa("rsa-1")
EC = Signer.ec("ec-1")


def authn(*rules, name="jwt", namespace="shop", target=GATEWAY, **spec):
    spec = {"jwtRules": list(rules), **spec}
    if target is not None:
        spec["targetRefs"] = [target]
    return {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def rule(**fields):
    return {"issuer": ISSUER, "jwks": jwks(RSA, EC), **fields}


def run(objects, headers=(), target=b"/", method=b"GET", keys=None, service=ECHO):
    rules = compile_authn(objects, WAYPOINT).for_service(service)
    return authenticate_with(rules, headers, target, method, keys)


def authenticate_with(rules, headers=(), target=b"/", method=b"GET", keys=None):
    return authenticate(rules, method, target, b"echo.shop", [(n.encode(), v.encode()) for n, v in headers],
                        keys, time.time())


def bearer(token: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {token}")


# --- Istio's results ---------------------------------------------------------------------------


def test_a_request_without_a_token_passes_with_no_principal():
    outcome = run([authn(rule())])
    assert outcome == Authenticated(None)


def test_a_valid_rs256_or_es256_token_gives_the_iss_sub_principal_and_is_not_forwarded():
    for signer in (RSA, EC):
        outcome = run([authn(rule())], [bearer(signer.token(sub="bob", aud=AUDIENCE, azp="web")), ("x-a", "1")])
        assert isinstance(outcome, Authenticated)
        assert outcome.auth.principal == f"{ISSUER}/bob"
        assert (outcome.auth.audiences, outcome.auth.presenter) == ((AUDIENCE,), "web")
        assert outcome.headers == [(b"x-a", b"1")]


def test_forward_original_token_keeps_the_authorization_header():
    token = RSA.token()
    outcome = run([authn(rule(forwardOriginalToken=True))], [bearer(token)])
    assert outcome.headers == [(b"authorization", f"Bearer {token}".encode())]


def test_an_expired_token_is_401_with_envoys_body_header_and_detail():
    outcome = run([authn(rule())], [bearer(RSA.token(exp=int(time.time()) - 3600))], target=b"/api/x?y=1")
    assert isinstance(outcome, Rejected)
    assert (outcome.status, outcome.body) == (401, b"Jwt is expired")
    assert outcome.www_authenticate == b'Bearer realm="http://echo.shop/api/x", error="invalid_token"'
    assert outcome.detail == "jwt_authn_access_denied{Jwt_is_expired}"


def test_a_token_of_another_issuer_is_401_issuer_not_configured():
    outcome = run([authn(rule())], [bearer(RSA.token(iss="https://evil.example"))])
    assert (outcome.status, outcome.message) == (401, Status.UNKNOWN_ISSUER)


def test_a_token_for_another_audience_is_403_as_envoy_answers_it():
    outcome = run([authn(rule(audiences=[AUDIENCE]))], [bearer(RSA.token(aud="other-api"))])
    assert (outcome.status, outcome.message) == (403, Status.AUDIENCE_NOT_ALLOWED)
    assert isinstance(run([authn(rule(audiences=[f"https://{AUDIENCE}/"]))], [bearer(RSA.token(aud=AUDIENCE))]),
                      Authenticated)  # Envoy compares audiences without scheme and trailing slash


def test_a_forged_signature_garbage_and_alg_none_are_401():
    header, payload, _ = RSA.token().split(".")
    other = Signer.rsa("rsa-1").token()  # same kid, another key
    for token, status in ((f"{header}.{payload}.AAAA", Status.VERIFICATION_FAILS),
                          (other, Status.VERIFICATION_FAILS),
                          ("garbage", Status.BAD_FORMAT),
                          ("e30.e30.", Status.HEADER_BAD_ALG)):
        outcome = run([authn(rule())], [bearer(token)])
        assert (outcome.status, outcome.message) == (401, status), token


def test_a_header_without_the_bearer_prefix_holds_no_token():
    assert run([authn(rule())], [("authorization", "Basic dXNlcjpwdw==")]) == Authenticated(None)


# --- where tokens are looked for ---------------------------------------------------------------


def test_the_access_token_query_parameter_is_a_default_location_and_is_removed():
    outcome = run([authn(rule())], target=f"/x?a=1&access_token={RSA.token()}&b=2".encode())
    assert outcome.auth is not None and outcome.target == b"/x?a=1&b=2"


def test_from_headers_with_a_prefix_replace_the_default_locations():
    rules = [authn(rule(fromHeaders=[{"name": "X-Jwt-Assertion", "prefix": "Token "}]))]
    token = RSA.token()
    assert run(rules, [("x-jwt-assertion", f"Token {token}")]).auth.principal == f"{ISSUER}/alice"
    assert run(rules, [bearer(token)]) == Authenticated(None)  # Authorization is not read any more
    assert run(rules, [("x-jwt-assertion", token)]) == Authenticated(None)  # prefix missing: no token


def test_from_params_and_from_cookies():
    token = RSA.token()
    params = [authn(rule(fromParams=["jwt"]))]
    assert run(params, target=f"/?jwt={token}".encode()).auth is not None
    cookies = [authn(rule(fromCookies=["session"]))]
    outcome = run(cookies, [("cookie", f"theme=dark; session={token}")])
    assert outcome.auth is not None
    assert outcome.headers == [(b"cookie", f"theme=dark; session={token}".encode())]  # Envoy keeps cookies


def test_every_token_found_must_be_valid():
    rules = [authn(rule(fromHeaders=[{"name": "x-a"}, {"name": "x-b"}]))]
    good, bad = RSA.token(), RSA.token(exp=int(time.time()) - 3600)
    assert run(rules, [("x-a", good), ("x-b", good)]).auth is not None
    assert run(rules, [("x-a", good), ("x-b", bad)]).message == Status.EXPIRED


def test_two_issuers_each_verify_their_own_tokens_at_a_shared_location():
    other_issuer = Signer.ec("other")
    rules = [authn(rule(), {"issuer": "issuer-bar", "jwks": jwks(other_issuer)})]
    assert run(rules, [bearer(other_issuer.token(iss="issuer-bar", sub="x"))]).auth.principal == "issuer-bar/x"
    assert run(rules, [bearer(RSA.token())]).auth.principal == f"{ISSUER}/alice"
    # issuer-bar's token signed by the first issuer's key: verified with issuer-bar's keys, refused
    assert run(rules, [bearer(RSA.token(iss="issuer-bar"))]).status == 401


def test_a_token_at_a_location_its_issuer_does_not_read_is_an_unknown_issuer():
    rules = [authn(rule(), {"issuer": "issuer-bar", "jwks": jwks(EC), "fromHeaders": [{"name": "x-bar"}]})]
    assert run(rules, [bearer(EC.token(iss="issuer-bar"))]).message == Status.UNKNOWN_ISSUER


def test_a_cors_preflight_passes_without_looking_at_tokens():
    preflight = [("origin", "https://web.example"), ("access-control-request-method", "POST"), bearer("junk")]
    assert run([authn(rule())], preflight, method=b"OPTIONS") == Authenticated(None)
    assert run([authn(rule())], [bearer("junk")], method=b"OPTIONS").status == 401


# --- what the backend receives -------------------------------------------------------------------


def test_output_payload_to_header_carries_the_payload_section_and_a_forged_one_is_dropped():
    rules = [authn(rule(outputPayloadToHeader="x-jwt-payload"))]
    token = RSA.token(groups=["dev"])
    outcome = run(rules, [bearer(token), ("x-jwt-payload", "forged")])
    (value,) = [v for n, v in outcome.headers if n == b"x-jwt-payload"]
    assert value == token.split(".")[1].encode()
    assert json.loads(base64.urlsafe_b64decode(value + b"=" * (-len(value) % 4)))["groups"] == ["dev"]
    assert run(rules, [("x-jwt-payload", "forged")]).headers == []  # without a token too


def test_output_claim_to_headers_copies_strings_numbers_booleans_and_nested_claims():
    rules = [authn(rule(outputClaimToHeaders=[
        {"header": "x-group", "claim": "group"}, {"header": "x-level", "claim": "level"},
        {"header": "x-admin", "claim": "admin"}, {"header": "x-team", "claim": "org.team"},
        {"header": "x-list", "claim": "roles"}, {"header": "x-missing", "claim": "nope"}]))]
    token = RSA.token(group="dev", level=3, admin=True, org={"team": "blue"}, roles=["a"])
    outcome = run(rules, [bearer(token), ("x-group", "forged"), ("x-missing", "forged")])
    assert sorted(outcome.headers) == [(b"x-admin", b"true"), (b"x-group", b"dev"), (b"x-level", b"3"),
                                       (b"x-team", b"blue")]


def test_space_delimited_scope_becomes_a_list_of_claims():
    outcome = run([authn(rule())], [bearer(RSA.token(scope="read write"))])
    assert outcome.auth.claims["scope"] == ["read", "write"]


# --- which rules apply ----------------------------------------------------------------------------


def test_only_target_refs_attach_a_request_authentication_to_a_waypoint():
    token_from_nowhere = [bearer(Signer.rsa("x").token())]
    selector = authn(rule(), target=None, selector={"matchLabels": {"app": "echo"}})
    namespace_wide = authn(rule(), target=None)
    root = authn(rule(), target=None, namespace="istio-system")
    assert run([selector, namespace_wide, root], token_from_nowhere) == Authenticated(None)
    on_service = authn(rule(), target={"group": "", "kind": "Service", "name": "echo"})
    assert run([on_service], token_from_nowhere).status == 401
    assert run([on_service], token_from_nowhere, service=ServiceRef("shop", "other")) == Authenticated(None)
    mesh_wide = authn(rule(), namespace="istio-system",
                      target={"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "istio-waypoint"})
    assert run([mesh_wide], token_from_nowhere, service=None).status == 401


def test_an_unreadable_inline_jwks_refuses_tokens_but_not_requests_without_one():
    compiled = compile_authn([authn(rule(jwks="{not json"))], WAYPOINT)
    assert any("jwks" in note for note in compiled.notes)
    assert run([authn(rule(jwks="{not json"))]) == Authenticated(None)
    assert run([authn(rule(jwks="{not json"))], [bearer(RSA.token())]).message == Status.NO_VALID_KEYS


# --- keys from jwksUri ----------------------------------------------------------------------------


class Keys:
    def __init__(self, text=None):
        self.sets = {"http://jwks.auth/keys": parse_jwks(text)} if text else {}
        self.refetches = []

    def keys(self, uri):
        return self.sets.get(uri)

    def unknown_kid(self, uri):
        self.refetches.append(uri)


def test_remote_keys_not_fetched_yet_refuse_tokens_with_fetch_failed():
    rules = [authn(rule(jwks=None, jwksUri="http://jwks.auth/keys"))]
    assert compile_authn(rules, WAYPOINT).remote == {"http://jwks.auth/keys"}
    assert run(rules, [bearer(RSA.token())], keys=Keys()).message == Status.FETCH_FAILED
    assert run(rules, keys=Keys()) == Authenticated(None)


def test_an_unknown_kid_asks_for_a_refetch_and_the_rotated_set_then_verifies():
    rules = [authn(rule(jwks=None, jwksUri="http://jwks.auth/keys"))]
    rotated = Signer.rsa("rsa-2")
    keys = Keys(jwks(RSA))
    assert run(rules, [bearer(rotated.token())], keys=keys).message == Status.KID_ALG_MISMATCH
    assert keys.refetches == ["http://jwks.auth/keys"]
    keys.sets["http://jwks.auth/keys"] = parse_jwks(jwks(rotated))
    assert run(rules, [bearer(rotated.token())], keys=keys).auth is not None
