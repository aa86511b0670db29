"""AuthorizationPolicy -> ztunnel Authorization (ambient-dataplane §9, ambient-api §3)."""

from __future__ import annotations

from typing import Any

import pytest

from wisp.model import Authorization, Clause, Match, Rule, ServiceAccountMatch, StringMatch
from wisp_operator.cluster import ClusterState
from wisp_operator.errors import InvalidObject
from wisp_operator.policy import convert_authorization_policy
from wisp_operator.reconcile import reconcile

ROOT = "istio-system"


def ap(spec: dict[str, Any], ns: str = "shop", name: str = "policy", generation: int = 0) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if generation:
        meta["generation"] = generation
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": meta, "spec": spec}


def convert(spec: dict[str, Any], ns: str = "shop") -> Authorization:
    result = convert_authorization_policy(ap(spec, ns), ROOT)
    assert result.authorization is not None
    return result.authorization


def one_rule(rule: dict[str, Any], action: str = "ALLOW") -> Rule:
    auth = convert({"action": action, "rules": [rule]})
    assert len(auth.rules) == 1
    return auth.rules[0]


def clause(**fields: Any) -> Clause:
    return Clause((Match(**fields),))


def exact(v: str) -> tuple[StringMatch, ...]:
    return (StringMatch("exact", v),)


# --- scope and action -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ns, spec, scope",
    [
        (ROOT, {}, "GLOBAL"),
        ("shop", {}, "NAMESPACE"),
        ("shop", {"selector": {"matchLabels": {"app": "web"}}}, "WORKLOAD_SELECTOR"),
        (ROOT, {"selector": {"matchLabels": {"app": "web"}}}, "WORKLOAD_SELECTOR"),
    ],
    ids=["root-namespace-global", "namespace", "selector", "selector-in-root-namespace"],
)
def test_scope(ns: str, spec: dict[str, Any], scope: str) -> None:
    assert convert(spec, ns).scope == scope


@pytest.mark.parametrize("spec, action", [({}, "ALLOW"), ({"action": "ALLOW"}, "ALLOW"), ({"action": "DENY"}, "DENY")])
def test_action_defaults_to_allow(spec: dict[str, Any], action: str) -> None:
    assert convert(spec).action == action


def test_policy_without_rules_has_no_rules() -> None:
    # ztunnel: a policy with no rules never matches, so an ALLOW like this denies everything.
    assert convert({}).rules == ()


def test_empty_rule_matches_everything() -> None:
    assert convert({"rules": [{}]}).rules == (Rule(()),)


# --- L4 fields ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, expected",
    [
        ({"principals": ["cluster.local/ns/a/sa/b"]}, clause(principals=exact("cluster.local/ns/a/sa/b"))),
        ({"notPrincipals": ["cluster.local/ns/a/sa/b"]}, clause(not_principals=exact("cluster.local/ns/a/sa/b"))),
        ({"namespaces": ["a"]}, clause(namespaces=exact("a"))),
        ({"notNamespaces": ["a"]}, clause(not_namespaces=exact("a"))),
        ({"ipBlocks": ["10.1.2.3", "10.0.0.0/8"]}, clause(source_ips=("10.1.2.3/32", "10.0.0.0/8"))),
        ({"notIpBlocks": ["10.1.2.3/16"]}, clause(not_source_ips=("10.1.0.0/16",))),
        ({"ipBlocks": ["fd00::1"]}, clause(source_ips=("fd00::1/128",))),
        ({"serviceAccounts": ["web", "other/db"]},
         clause(service_accounts=(ServiceAccountMatch("shop", "web"), ServiceAccountMatch("other", "db")))),
        ({"notServiceAccounts": ["web"]}, clause(not_service_accounts=(ServiceAccountMatch("shop", "web"),))),
        ({"principals": ["a"], "namespaces": ["b"]}, clause(principals=exact("a"), namespaces=exact("b"))),
    ],
    ids=["principals", "notPrincipals", "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks", "ipv6",
         "serviceAccounts", "notServiceAccounts", "fields-and-in-one-match"],
)
def test_source_fields(source: dict[str, Any], expected: Clause) -> None:
    assert one_rule({"from": [{"source": source}]}) == Rule((expected,))


@pytest.mark.parametrize(
    "operation, expected",
    [
        ({"ports": ["8080", "9090"]}, clause(destination_ports=(8080, 9090))),
        ({"notPorts": ["22"]}, clause(not_destination_ports=(22,))),
        ({"ports": [8080]}, clause(destination_ports=(8080,))),
    ],
    ids=["ports", "notPorts", "integer-port"],
)
def test_operation_fields(operation: dict[str, Any], expected: Clause) -> None:
    assert one_rule({"to": [{"operation": operation}]}) == Rule((expected,))


@pytest.mark.parametrize(
    "condition, expected",
    [
        ({"key": "source.ip", "values": ["10.0.0.1"]}, clause(source_ips=("10.0.0.1/32",))),
        ({"key": "source.ip", "notValues": ["10.0.0.0/8"]}, clause(not_source_ips=("10.0.0.0/8",))),
        ({"key": "source.namespace", "values": ["a"], "notValues": ["b"]},
         clause(namespaces=exact("a"), not_namespaces=exact("b"))),
        ({"key": "source.principal", "values": ["td/ns/a/sa/b"]}, clause(principals=exact("td/ns/a/sa/b"))),
        ({"key": "source.principal", "notValues": ["*"]}, clause(not_principals=(StringMatch("presence"),))),
        ({"key": "destination.ip", "values": ["10.96.0.1"]}, clause(destination_ips=("10.96.0.1/32",))),
        ({"key": "destination.ip", "notValues": ["10.96.0.1"]}, clause(not_destination_ips=("10.96.0.1/32",))),
        ({"key": "destination.port", "values": ["80"]}, clause(destination_ports=(80,))),
        ({"key": "destination.port", "notValues": ["80"]}, clause(not_destination_ports=(80,))),
    ],
    ids=["source.ip", "source.ip-not", "source.namespace", "source.principal", "source.principal-not",
         "destination.ip", "destination.ip-not", "destination.port", "destination.port-not"],
)
def test_l4_when_conditions(condition: dict[str, Any], expected: Clause) -> None:
    assert one_rule({"when": [condition]}) == Rule((expected,))


@pytest.mark.parametrize(
    "value, expected",
    [
        ("*", StringMatch("presence")),
        ("*/sa/web", StringMatch("suffix", "/sa/web")),
        ("cluster.local/ns/shop/*", StringMatch("prefix", "cluster.local/ns/shop/")),
        ("cluster.local/ns/shop/sa/web", StringMatch("exact", "cluster.local/ns/shop/sa/web")),
        ("spiffe://cluster.local/ns/shop/sa/web", StringMatch("exact", "spiffe://cluster.local/ns/shop/sa/web")),
    ],
    ids=["presence", "suffix", "prefix", "exact", "spiffe-prefix-kept-as-istio-does"],
)
def test_string_match_forms(value: str, expected: StringMatch) -> None:
    assert one_rule({"from": [{"source": {"principals": [value]}}]}) == Rule((clause(principals=(expected,)),))


def test_from_to_and_when_become_clauses_that_and() -> None:
    rule = one_rule({
        "from": [{"source": {"namespaces": ["a"]}}, {"source": {"namespaces": ["b"]}}],
        "to": [{"operation": {"ports": ["80"]}}],
        "when": [{"key": "source.ip", "values": ["10.0.0.1"]}, {"key": "destination.port", "values": ["80"]}],
    })
    assert rule == Rule((
        clause(destination_ports=(80,)),
        Clause((Match(namespaces=exact("a")), Match(namespaces=exact("b")))),
        clause(source_ips=("10.0.0.1/32",)),
        clause(destination_ports=(80,)),
    ))


def test_each_policy_rule_is_a_rule() -> None:
    auth = convert({"rules": [{"from": [{"source": {"namespaces": ["a"]}}]}, {"to": [{"operation": {"ports": ["1"]}}]}]})
    assert auth.rules == (Rule((clause(namespaces=exact("a")),)), Rule((clause(destination_ports=(1,)),)))


# --- HTTP attributes ------------------------------------------------------------------------------

HTTP_CASES = [
    ("hosts", {"to": [{"operation": {"hosts": ["a.com"]}}]}),
    ("notHosts", {"to": [{"operation": {"notHosts": ["a.com"]}}]}),
    ("methods", {"to": [{"operation": {"methods": ["GET"]}}]}),
    ("notMethods", {"to": [{"operation": {"notMethods": ["GET"]}}]}),
    ("paths", {"to": [{"operation": {"paths": ["/x"]}}]}),
    ("notPaths", {"to": [{"operation": {"notPaths": ["/x"]}}]}),
    ("requestPrincipals", {"from": [{"source": {"requestPrincipals": ["iss/sub"]}}]}),
    ("notRequestPrincipals", {"from": [{"source": {"notRequestPrincipals": ["*"]}}]}),
    ("remoteIpBlocks", {"from": [{"source": {"remoteIpBlocks": ["1.2.3.4"]}}]}),
    ("notRemoteIpBlocks", {"from": [{"source": {"notRemoteIpBlocks": ["1.2.3.4"]}}]}),
    ("request.headers[x-user]", {"when": [{"key": "request.headers[x-user]", "values": ["a"]}]}),
    ("connection.sni", {"when": [{"key": "connection.sni", "values": ["a.com"]}]}),
]


@pytest.mark.parametrize("field, rule", HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_allow_rule_with_http_attribute_is_dropped(field: str, rule: dict[str, Any]) -> None:
    kept = {"from": [{"source": {"namespaces": ["a"]}}]}
    result = convert_authorization_policy(ap({"action": "ALLOW", "rules": [rule, kept]}), ROOT)
    assert result.authorization is not None
    assert result.authorization.rules == (Rule((clause(namespaces=exact("a")),)),)
    assert result.ignored_http == (field,)


@pytest.mark.parametrize("field, rule", HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_deny_rule_with_only_http_attribute_denies_everything(field: str, rule: dict[str, Any]) -> None:
    # The HTTP part cannot be checked, so it stops constraining: the DENY becomes broader.
    assert one_rule(rule, "DENY") == Rule(())


def test_allow_with_every_rule_dropped_allows_nothing() -> None:
    auth = convert({"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]})
    assert auth.rules == ()


def test_deny_keeps_the_l4_part_of_an_http_rule() -> None:
    rule = one_rule({
        "from": [{"source": {"namespaces": ["a"], "requestPrincipals": ["*"]}}],
        "to": [{"operation": {"methods": ["GET"], "ports": ["80"]}}],
        "when": [{"key": "request.auth.claims[iss]", "values": ["x"]}],
    }, "DENY")
    assert rule == Rule((clause(destination_ports=(80,)), clause(namespaces=exact("a"))))


def test_deny_drops_a_clause_when_one_of_its_entries_was_only_http() -> None:
    # "to GET anything OR to port 80": without methods the first entry is any port.
    rule = one_rule({
        "from": [{"source": {"namespaces": ["a"]}}],
        "to": [{"operation": {"methods": ["GET"]}}, {"operation": {"ports": ["80"]}}],
    }, "DENY")
    assert rule == Rule((clause(namespaces=exact("a")),))


# --- ZtunnelAccepted and exclusions ----------------------------------------------------------------


def test_accepted_condition() -> None:
    result = convert_authorization_policy(ap({"rules": [{}]}, generation=3), ROOT)
    assert result.condition == {"type": "ZtunnelAccepted", "status": "True", "reason": "Accepted",
                                "message": "attached to ztunnel", "observedGeneration": 3}


@pytest.mark.parametrize(
    "action, boilerplate",
    [
        ("ALLOW", "Within an ALLOW policy, rules matching HTTP attributes are omitted. "
                  "This will be more restrictive than requested."),
        ("DENY", "DENY policy with HTTP attributes is enforced without the HTTP rules. "
                 "This will be more restrictive than requested."),
    ],
)
def test_http_attributes_are_accepted_with_unsupported_value(action: str, boilerplate: str) -> None:
    spec = {"action": action, "rules": [{"to": [{"operation": {"paths": ["/x"], "methods": ["GET"]}}]}]}
    result = convert_authorization_policy(ap(spec), ROOT)
    assert result.condition == {
        "type": "ZtunnelAccepted", "status": "True", "reason": "UnsupportedValue",
        "message": "ztunnel does not support HTTP attributes (found: methods, paths). "
                   "In ambient mode you must use a waypoint proxy to enforce HTTP rules. " + boilerplate,
    }


@pytest.mark.parametrize("action", ["CUSTOM", "AUDIT"])
def test_custom_and_audit_never_reach_ztunnel(action: str) -> None:
    result = convert_authorization_policy(ap({"action": action, "rules": [{}]}), ROOT)
    assert result.authorization is None
    assert result.reason == f"ztunnel does not support the {action} action"
    assert result.condition == {"type": "ZtunnelAccepted", "status": "False", "reason": "UnsupportedValue",
                                "message": f"ztunnel does not support the {action} action"}


@pytest.mark.parametrize(
    "target",
    [{"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}]},
     {"targetRef": {"kind": "Service", "group": "", "name": "web"}}],
    ids=["targetRefs", "targetRef"],
)
def test_waypoint_policies_never_reach_ztunnel_and_get_no_ztunnel_condition(target: dict[str, Any]) -> None:
    result = convert_authorization_policy(ap({"action": "ALLOW", "rules": [{}], **target}), ROOT)
    assert (result.authorization, result.condition) == (None, None)
    assert "targetRefs" in result.reason


# --- malformed policies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, problem",
    [
        ({"rules": {"from": []}}, "spec.rules must be a list"),
        ({"rules": ["allow"]}, "spec.rules[0] must be an object"),
        ({"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}, "spec.rules[0].to[0].operation.ports[0]"),
        ({"rules": [{"to": [{"operation": {"ports": ["70000"]}}]}]}, "0-65535"),
        ({"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.300"]}}]}]}, "ipBlocks[0]"),
        ({"rules": [{"from": [{"source": {"principals": [1]}}]}]}, "principals[0] must be a string"),
        ({"rules": [{"when": [{"values": ["x"]}]}]}, "spec.rules[0].when[0].key is required"),
        ({"action": "MAYBE"}, "spec.action"),
        ({"selector": {"matchLabels": {"app": 1}}}, "spec.selector.matchLabels"),
    ],
)
def test_malformed_policy_raises_invalid_object(spec: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidObject) as info:
        convert_authorization_policy(ap(spec), ROOT)
    assert (info.value.kind, info.value.namespace, info.value.name) == ("AuthorizationPolicy", "shop", "policy")
    assert problem in str(info.value)


@pytest.mark.parametrize(
    "action, rules",
    [("ALLOW", ()), ("DENY", (Rule(()),))],
    ids=["allow-allows-nothing", "deny-denies-everything"],
)
def test_malformed_policy_fails_closed_in_the_model(action: str, rules: tuple[Rule, ...]) -> None:
    bad = ap({"action": action, "rules": [{"to": [{"operation": {"ports": ["http"]}}]}]})
    result = reconcile(ClusterState.of([bad]))
    assert result.model.authorizations["shop/policy"].rules == rules
    assert len(result.errors) == 1 and isinstance(result.errors[0], InvalidObject)
    (write,) = result.status
    assert write.condition is not None
    assert (write.condition["status"], write.condition["reason"]) == ("False", "Invalid")


# --- which workloads list which policies ------------------------------------------------------------


def pod(name: str, ns: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {}, "status": {"phase": "Running", "podIP": "10.244.0.5"}}


def test_workloads_list_matching_selector_policies_of_their_namespace_and_root() -> None:
    objs = [
        pod("web-1", "shop", {"app": "web"}),
        ap({"selector": {"matchLabels": {"app": "web"}}}, name="b-web"),
        ap({"selector": {"matchLabels": {"app": "web"}}}, ns=ROOT, name="mesh-web"),
        ap({"selector": {"matchLabels": {"app": "web"}}}, ns="other", name="other-ns"),
        ap({"selector": {"matchLabels": {"app": "db"}}}, name="db"),
        ap({}, name="namespace-wide"),
        ap({"selector": {"matchLabels": {"app": "web"}}, "action": "CUSTOM",
            "provider": {"name": "ext"}}, name="custom"),
        ap({"selector": {"matchLabels": {"app": "web"}}, "action": "DENY"}, name="a-deny"),
    ]
    model = reconcile(ClusterState.of(objs)).model
    assert model.workloads["Kubernetes//Pod/shop/web-1"].authorization_policies == (
        f"{ROOT}/mesh-web", "shop/a-deny", "shop/b-web",
    )
    assert "shop/custom" not in model.authorizations
    assert model.authorizations["shop/namespace-wide"].scope == "NAMESPACE"


def test_status_write_for_each_policy_that_reaches_or_is_refused_by_ztunnel() -> None:
    objs = [ap({}, name="ok"), ap({"action": "AUDIT"}, name="audit"),
            ap({"targetRefs": [{"kind": "Gateway", "name": "wp"}]}, name="waypoint")]
    status = reconcile(ClusterState.of(objs)).status
    writes = {w.name: w.condition for w in status if w.condition_type == "ZtunnelAccepted"}
    assert set(writes) == {"ok", "audit"}
    assert writes["ok"] is not None and writes["ok"]["reason"] == "Accepted"
    # The waypoint's policy gets the waypoint's condition instead (tests/operator/test_gateway_status.py).
    assert [(w.name, w.condition_type) for w in status if w.condition_type != "ZtunnelAccepted"] == [
        ("waypoint", "WaypointAccepted")]
