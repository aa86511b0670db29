"""The waypoint's authorization decision: actions, their order, dry-run, and what a denial says."""

from __future__ import annotations

from waypoint.authn import RequestAuth
from waypoint.authz import (
    DENIED_BODY,
    DENIED_STATUS,
    Decision,
    RequestAttributes,
    ServiceRef,
    WaypointRef,
    authorize,
    compile_policies,
)
from wisp.identity import SpiffeId

WAYPOINT = WaypointRef("shop", "waypoint")
ECHO = ServiceRef("shop", "echo")
GATEWAY = {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}
FRONTEND = SpiffeId("cluster.local", "shop", "frontend")
BACKEND = SpiffeId("cluster.local", "shop", "backend")


def policy(name, action=None, rules=None, namespace="shop", dry_run=None, target=GATEWAY, **spec):
    spec = {"targetRefs": [target], **spec}
    if action is not None:
        spec["action"] = action
    if rules is not None:
        spec["rules"] = rules
    meta = {"name": name, "namespace": namespace}
    if dry_run is not None:
        meta["annotations"] = {"istio.io/dry-run": dry_run}
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": meta, "spec": spec}


def request(method="GET", path="/", identity=FRONTEND, headers=()):
    return RequestAttributes(identity, "10.0.0.5", "10.96.0.10", 80, "echo.shop", method, path, headers)


def decide(objects, req=None, service=ECHO) -> Decision:
    return authorize(compile_policies(objects, WAYPOINT).for_service(service), req or request())


METHODS_GET = [{"to": [{"operation": {"methods": ["GET"]}}]}]


# --- the cases ---------------------------------------------------------------------------


def test_get_is_allowed_and_post_is_denied_with_403_rbac_access_denied():
    objects = [policy("get-only", "ALLOW", METHODS_GET)]
    get = decide(objects, request("GET"))
    assert (get.allowed, get.policy, get.status) == (True, "shop/get-only", 0)
    post = decide(objects, request("POST"))
    assert (post.allowed, post.status, post.body) == (False, DENIED_STATUS, b"RBAC: access denied")
    assert post.body == DENIED_BODY
    assert post.details == "rbac_access_denied_matched_policy[none]"


def test_a_deny_on_a_path():
    objects = [policy("no-admin", "DENY", [{"to": [{"operation": {"paths": ["/admin", "/admin/*"]}}]}])]
    denied = decide(objects, request(path="/admin/users"))
    assert (denied.allowed, denied.policy, denied.action, denied.status) == (False, "shop/no-admin", "DENY", 403)
    assert denied.details == "rbac_access_denied_matched_policy[ns[shop]-policy[no-admin]-rule[0]]"
    assert decide(objects, request(path="/public")).allowed


def test_a_deny_on_a_path_is_not_bypassed_by_dot_segments_or_escapes():
    objects = [policy("no-admin", "DENY", [{"to": [{"operation": {"paths": ["/admin", "/admin/*"]}}]}])]
    for path in ("/public/../admin", "/./admin/x", "/%61dmin/x", "/%2e%2e/admin", "\\admin\\x", "/admin?debug=1"):
        assert not decide(objects, request(path=path)).allowed, path


def test_the_decision_uses_the_clients_spiffe_identity():
    objects = [policy("frontend-only", "ALLOW", [{"from": [{"source": {
        "principals": ["cluster.local/ns/shop/sa/frontend"]}}]}])]
    assert decide(objects, request(identity=FRONTEND)).allowed
    assert not decide(objects, request(identity=BACKEND)).allowed
    assert not decide(objects, request(identity=None)).allowed


# --- order of actions ---------------------------------------------------------------------------


def test_without_policies_everything_is_allowed():
    assert decide([]) == Decision(True)


def test_deny_wins_over_allow():
    objects = [policy("allow-all", "ALLOW", [{}]), policy("deny-post", "DENY", [{"to": [{"operation": {"methods": ["POST"]}}]}])]
    assert decide(objects, request("GET")).allowed
    denied = decide(objects, request("POST"))
    assert (denied.allowed, denied.policy) == (False, "shop/deny-post")


def test_with_an_allow_policy_a_request_that_matches_none_is_denied():
    decision = decide([policy("get-only", "ALLOW", METHODS_GET)], request("PUT"))
    assert (decision.allowed, decision.policy, decision.reason) == (False, None, "no ALLOW policy matched")


def test_any_matching_allow_policy_allows():
    objects = [policy("a-get", "ALLOW", METHODS_GET),
               policy("b-put", "ALLOW", [{"to": [{"operation": {"methods": ["PUT"]}}]}])]
    decision = decide(objects, request("PUT"))
    assert (decision.allowed, decision.policy) == (True, "shop/b-put")


def test_a_deny_that_does_not_match_leaves_the_request_allowed():
    assert decide([policy("deny-post", "DENY", [{"to": [{"operation": {"methods": ["POST"]}}]}])]).allowed


def test_the_first_deny_by_envoys_policy_order_is_reported():
    objects = [policy("zz", "DENY", [{}]), policy("aa", "DENY", [{}])]
    assert decide(objects).policy == "shop/aa"


def test_root_namespace_denies_are_evaluated_first():
    class_ref = {"kind": "GatewayClass", "group": "gateway.networking.k8s.io", "name": "istio-waypoint"}
    objects = [policy("aa", "DENY", [{}]), policy("zz", "DENY", [{}], namespace="istio-system", target=class_ref)]
    assert decide(objects).policy == "istio-system/zz"


def test_audit_marks_and_does_not_decide():
    objects = [policy("audit-get", "AUDIT", METHODS_GET)]
    decision = decide(objects, request("GET"))
    assert (decision.allowed, decision.audit_policy) == (True, "shop/audit-get")
    assert decide(objects, request("POST")) == Decision(True)


def test_audit_marks_a_request_that_is_then_denied():
    objects = [policy("audit-all", "AUDIT", [{}]), policy("deny-all", "DENY", [{}])]
    decision = decide(objects)
    assert (decision.allowed, decision.audit_policy, decision.policy) == (False, "shop/audit-all", "shop/deny-all")


def test_an_audit_policy_alone_does_not_turn_on_default_deny():
    assert decide([policy("audit-post", "AUDIT", [{"to": [{"operation": {"methods": ["POST"]}}]}])]).allowed


# --- empty policies -----------------------------------------------------------------------------


def test_an_allow_policy_without_rules_allows_nothing():
    decision = decide([policy("allow-nothing")])
    assert (decision.allowed, decision.status) == (False, 403)


def test_an_allow_policy_with_an_empty_rule_allows_everything():
    decision = decide([policy("allow-all", rules=[{}])], request("DELETE", identity=None))
    assert (decision.allowed, decision.policy) == (True, "shop/allow-all")


def test_a_deny_policy_with_an_empty_rule_denies_everything():
    assert not decide([policy("deny-all", "DENY", [{}])], request(identity=None)).allowed


def test_a_deny_policy_without_rules_denies_nothing():
    assert decide([policy("deny-nothing", "DENY")]).allowed


def test_an_allow_nothing_policy_beside_an_allow_all_policy_still_allows():
    assert decide([policy("allow-nothing"), policy("allow-all", rules=[{}])]).allowed


# --- dry-run ------------------------------------------------------------------------------------


def test_a_dry_run_deny_is_reported_and_not_enforced():
    decision = decide([policy("deny-all", "DENY", [{}], dry_run="true")])
    assert decision.allowed
    assert decision.dry_run is not None
    assert (decision.dry_run.denied, decision.dry_run.policy) == (True, "shop/deny-all")


def test_a_dry_run_allow_is_reported_and_does_not_turn_on_default_deny():
    objects = [policy("get-only", "ALLOW", METHODS_GET, dry_run="true")]
    post = decide(objects, request("POST"))
    assert post.allowed and post.dry_run.denied and post.dry_run.policy is None
    get = decide(objects, request("GET"))
    assert get.allowed and not get.dry_run.denied and get.dry_run.policy == "shop/get-only"


def test_dry_run_is_reported_beside_the_enforced_decision():
    objects = [policy("deny-post", "DENY", [{"to": [{"operation": {"methods": ["POST"]}}]}]),
               policy("deny-all", "DENY", [{}], dry_run="True")]
    decision = decide(objects, request("POST"))
    assert (decision.allowed, decision.policy) == (False, "shop/deny-post")
    assert decision.dry_run.policy == "shop/deny-all"


def test_the_dry_run_annotation_is_read_as_go_reads_booleans():
    for value, dry in (("true", True), ("1", True), ("T", True), ("false", False), ("yes", False), ("", False)):
        decision = decide([policy("deny-all", "DENY", [{}], dry_run=value)])
        assert decision.allowed is dry, value


def test_without_dry_run_policies_there_is_no_dry_run_result():
    assert decide([policy("deny-post", "DENY", [{"to": [{"operation": {"methods": ["POST"]}}]}])]).dry_run is None


# --- what the waypoint cannot do ----------------------------------------------------------------


def test_a_custom_policy_denies_the_requests_its_rules_match_and_says_why():
    objects = [policy("ext", "CUSTOM", [{"to": [{"operation": {"paths": ["/admin/*"]}}]}], provider={"name": "opa"})]
    compiled = compile_policies(objects, WAYPOINT)
    assert any("CUSTOM" in note.message and "opa" in note.message for note in compiled.notes)
    denied = authorize(compiled.for_service(ECHO), request(path="/admin/x"))
    assert (denied.allowed, denied.action, denied.policy, denied.status) == (False, "CUSTOM", "shop/ext", 403)
    assert authorize(compiled.for_service(ECHO), request(path="/public")).allowed


def test_a_custom_policy_is_evaluated_before_allow():
    objects = [policy("ext", "CUSTOM", [{}], provider={"name": "opa"}), policy("allow-all", "ALLOW", [{}])]
    assert decide(objects).action == "CUSTOM"


def test_request_principals_need_a_verified_token():
    """The JWT cases are in test_jwt_authz.py; here the rule stands beside the others of its policy."""
    objects = [policy("jwt", "ALLOW", [{"from": [{"source": {"requestPrincipals": ["*"]}}]},
                                       {"to": [{"operation": {"methods": ["GET"]}}]}])]
    compiled = compile_policies(objects, WAYPOINT)
    assert compiled.notes == ()
    authenticated = RequestAttributes(FRONTEND, "10.0.0.5", "10.96.0.10", 80, "echo.shop", "POST", "/",
                                      request_auth=RequestAuth("issuer-foo/alice"))
    assert authorize(compiled.default, request("GET")).allowed  # rule 1
    assert not authorize(compiled.default, request("POST")).allowed  # no token: rule 0 does not match
    assert authorize(compiled.default, authenticated).allowed


def test_not_request_principals_in_a_deny_rule_deny_requests_without_a_token():
    objects = [policy("require-jwt", "DENY", [{"from": [{"source": {"notRequestPrincipals": ["*"]}}],
                                               "to": [{"operation": {"paths": ["/admin"]}}]}])]
    assert not decide(objects, request(path="/admin")).allowed
    assert decide(objects, request(path="/public")).allowed
    with_token = RequestAttributes(FRONTEND, "10.0.0.5", "10.96.0.10", 80, "echo.shop", "GET", "/admin",
                                   request_auth=RequestAuth("issuer-foo/alice"))
    assert decide(objects, with_token).allowed


def test_a_claim_condition_matches_only_a_verified_claim():
    rules = [{"when": [{"key": "request.auth.claims[groups]", "values": ["admin"]}]}]
    admin = RequestAttributes(FRONTEND, "10.0.0.5", "10.96.0.10", 80, "echo.shop", "GET", "/",
                              request_auth=RequestAuth("i/s", claims={"groups": ["dev", "admin"]}))
    assert not decide([policy("claims", "ALLOW", rules)]).allowed
    assert decide([policy("claims", "ALLOW", rules)], admin).allowed
    assert decide([policy("claims", "DENY", rules)]).allowed
    assert not decide([policy("claims", "DENY", rules)], admin).allowed


def test_a_bad_value_in_a_deny_rule_is_ignored_and_the_rest_still_denies():
    objects = [policy("deny", "DENY", [{"from": [{"source": {"ipBlocks": ["not-an-ip", "10.0.0.5"]}}]}])]
    assert not decide(objects).allowed


def test_an_unreadable_allow_policy_allows_nothing():
    objects = [policy("broken", "ALLOW", "not-a-list")]
    compiled = compile_policies(objects, WAYPOINT)
    assert not authorize(compiled.default, request()).allowed
    assert "allows nothing" in compiled.notes[0].message


def test_an_unreadable_deny_policy_denies_everything():
    objects = [policy("broken", "DENY", [{"when": "source.ip"}])]
    compiled = compile_policies(objects, WAYPOINT)
    assert not authorize(compiled.default, request()).allowed
    assert "denies every request" in compiled.notes[0].message


def test_a_path_istio_rejects_gets_400():
    objects = [policy("no-admin", "DENY", [{"to": [{"operation": {"paths": ["/admin"]}}]}])]
    decision = decide(objects, request(path="/admin%00"))
    assert (decision.allowed, decision.status, decision.details) == (False, 400, "path_normalization_failed")


def test_a_request_is_not_changed_by_evaluation_except_for_its_match_path():
    req = request(path="/a/../admin?x=1")
    decide([policy("no-admin", "DENY", [{"to": [{"operation": {"paths": ["/admin"]}}]}])], req)
    assert (req.path, req.match_path) == ("/a/../admin?x=1", "/admin")


# --- connections passed through as TCP ------------------------------------------------------------


def decide_tcp(objects, identity=FRONTEND, port=80, service=ECHO) -> Decision:
    policies = compile_policies(objects, WAYPOINT).for_service(service, tcp=True)
    return authorize(policies, RequestAttributes.for_connection(identity, "10.0.0.5", "10.96.0.10", port))


def test_on_tcp_an_allow_rule_with_http_fields_is_dropped():
    objects = [policy("get-only", "ALLOW", METHODS_GET)]
    assert decide(objects).allowed
    assert not decide_tcp(objects).allowed


def test_on_tcp_a_deny_rule_ignores_its_http_fields_and_denies_more():
    objects = [policy("deny-post", "DENY", [{"to": [{"operation": {"methods": ["POST"], "ports": ["80"]}}]}])]
    assert decide(objects).allowed  # a GET over HTTP
    assert not decide_tcp(objects, port=80).allowed
    assert decide_tcp(objects, port=8080).allowed


def test_on_tcp_l4_fields_still_apply():
    objects = [policy("frontend", "ALLOW", [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}],
                                            "when": [{"key": "destination.port", "values": ["80"]}]}])]
    assert decide_tcp(objects).allowed
    assert not decide_tcp(objects, identity=BACKEND).allowed
    assert not decide_tcp(objects, port=81).allowed


def test_on_tcp_a_header_condition_in_a_deny_rule_is_ignored():
    objects = [policy("deny-debug", "DENY", [{"when": [{"key": "request.headers[x-debug]", "values": ["1"]}]}])]
    assert decide(objects).allowed
    assert not decide_tcp(objects).allowed


def test_http_only_fields_on_tcp_are_not_reported_as_notes():
    compiled = compile_policies([policy("get-only", "ALLOW", METHODS_GET)], WAYPOINT)
    assert compiled.notes == ()
