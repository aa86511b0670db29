"""L4 authorization (reference §9), one rule per test, over plain data."""

from __future__ import annotations

import pytest

from wisp.identity import SpiffeId
from wisp.model import Authorization, Clause, Match, Rule, ServiceAccountMatch, StringMatch, Workload
from ztunnel.state import rbac
from ztunnel.state.proxy_state import ProxyState
from wisp.model import ModelSnapshot

WEB = SpiffeId("cluster.local", "shop", "web")
OTHER = SpiffeId("cluster.local", "other", "client")


def conn(identity=WEB, src="10.0.0.1", dst="10.0.0.2", port=8080) -> rbac.Connection:
    return rbac.Connection(identity, src, dst, port)


def exact(v: str) -> StringMatch:
    return StringMatch("exact", v)


def policy(action: str, *matches: Match, name: str = "p", ns: str = "shop", scope: str = "NAMESPACE",
           rules=None, dry_run: bool = False) -> Authorization:
    if rules is None:
        rules = (Rule((Clause(tuple(matches)),)),)
    return Authorization(name=name, namespace=ns, scope=scope, action=action, rules=rules, dry_run=dry_run)


def allowed(policies, c=None) -> bool:
    return rbac.authorize(policies, c or conn()).allowed


def test_no_policies_allow():
    assert allowed([])


def test_no_allow_policy_allows_when_no_deny_matches():
    assert allowed([policy("DENY", Match(principals=(exact("x/y"),)))])


def test_matching_deny_wins_over_matching_allow():
    m = Match(namespaces=(exact("shop"),))
    decision = rbac.authorize([policy("ALLOW", m, name="a"), policy("DENY", m, name="d")], conn())
    assert not decision.allowed and decision.policy == "shop/d"


def test_matching_allow_allows():
    assert allowed([policy("ALLOW", Match(principals=(exact(WEB.principal),)))])


def test_allow_policies_without_a_match_deny():
    decision = rbac.authorize([policy("ALLOW", Match(principals=(exact("cluster.local/ns/x/sa/y"),)))], conn())
    assert not decision.allowed and decision.policy is None


def test_empty_match_never_matches():
    assert not allowed([policy("ALLOW", Match())])
    assert allowed([policy("DENY", Match())])


def test_policy_without_rules_never_matches():
    assert not allowed([policy("ALLOW", rules=())])
    assert allowed([policy("DENY", rules=())])


def test_rule_with_no_clauses_matches_everything():
    assert allowed([policy("ALLOW", rules=(Rule(()),))])


def test_clauses_are_anded():
    both = Rule((Clause((Match(namespaces=(exact("shop"),)),)), Clause((Match(destination_ports=(9090,)),))))
    assert not allowed([policy("ALLOW", rules=(both,))])
    assert allowed([policy("ALLOW", rules=(both,))], conn(port=9090))


def test_rules_are_ored():
    rules = (Rule((Clause((Match(destination_ports=(1,)),)),)), Rule((Clause((Match(destination_ports=(8080,)),)),)))
    assert allowed([policy("ALLOW", rules=rules)])


def test_matches_in_a_clause_are_ored():
    assert allowed([policy("ALLOW", Match(destination_ports=(1,)), Match(destination_ports=(8080,)))])


def test_fields_in_a_match_are_anded_and_values_ored():
    m = Match(namespaces=(exact("nope"), exact("shop")), destination_ports=(8080,))
    assert allowed([policy("ALLOW", m)])
    assert not allowed([policy("ALLOW", m)], conn(port=1))


@pytest.mark.parametrize("m", [
    Match(not_namespaces=(exact("shop"),)),
    Match(not_principals=(exact(WEB.principal),)),
    Match(not_source_ips=("10.0.0.0/24",)),
    Match(not_destination_ips=("10.0.0.2/32",)),
    Match(not_destination_ports=(8080,)),
    Match(not_service_accounts=(ServiceAccountMatch("shop", "web"),)),
])
def test_not_fields_fail_when_any_value_matches(m):
    assert not allowed([policy("ALLOW", m)])


@pytest.mark.parametrize("m", [
    Match(not_namespaces=(exact("other"),)),
    Match(not_principals=(exact("cluster.local/ns/x/sa/y"),)),
    Match(not_source_ips=("192.168.0.0/16",)),
    Match(not_destination_ips=("10.9.0.0/16",)),
    Match(not_destination_ports=(1, 2)),
    Match(not_service_accounts=(ServiceAccountMatch("shop", "db"),)),
])
def test_not_fields_pass_when_no_value_matches(m):
    assert allowed([policy("ALLOW", m)])


def test_principals_are_compared_without_the_spiffe_scheme():
    assert allowed([policy("ALLOW", Match(principals=(exact("cluster.local/ns/shop/sa/web"),)))])
    assert not allowed([policy("ALLOW", Match(principals=(exact("spiffe://cluster.local/ns/shop/sa/web"),)))])


@pytest.mark.parametrize("kind,value", [("prefix", "cluster.local/ns/shop/"), ("suffix", "/sa/web"), ("presence", "")])
def test_principal_string_match_kinds(kind, value):
    assert allowed([policy("ALLOW", Match(principals=(StringMatch(kind, value),)))])


def test_namespace_comes_from_the_peer_identity():
    m = Match(namespaces=(exact("shop"),))
    assert allowed([policy("ALLOW", m)])
    assert not allowed([policy("ALLOW", m)], conn(identity=OTHER))


def test_plaintext_matches_no_identity_field():
    assert not allowed([policy("ALLOW", Match(principals=(StringMatch("presence"),)))], conn(identity=None))
    assert not allowed([policy("ALLOW", Match(namespaces=(StringMatch("presence"),)))], conn(identity=None))


def test_strict_peer_authentication_denies_plaintext_only():
    strict = policy("DENY", Match(not_principals=(StringMatch("presence"),)))
    assert not allowed([strict], conn(identity=None))
    assert allowed([strict], conn())


def test_source_and_destination_ip_cidrs():
    assert allowed([policy("ALLOW", Match(source_ips=("10.0.0.0/8",), destination_ips=("10.0.0.2/32",)))])
    assert not allowed([policy("ALLOW", Match(source_ips=("10.1.0.0/16",)))])


def test_unparsable_cidr_matches_nothing():
    assert not allowed([policy("ALLOW", Match(source_ips=("nonsense",)))])


def test_service_account_match_uses_namespace_and_name():
    assert allowed([policy("ALLOW", Match(service_accounts=(ServiceAccountMatch("shop", "web"),)))])
    assert not allowed([policy("ALLOW", Match(service_accounts=(ServiceAccountMatch("other", "web"),)))])


def test_dry_run_policies_are_not_enforced():
    assert allowed([policy("DENY", Match(destination_ports=(8080,)), dry_run=True)])


# -- which policies apply (ProxyState.policies_for) ------------------------------------------------
def _state(*policies, workload_policies=()) -> tuple[ProxyState, Workload]:
    w = Workload(uid="c//Pod/shop/web-1", name="web-1", namespace="shop", addresses=("10.0.0.2",),
                 authorization_policies=tuple(workload_policies))
    resources = [w, *policies]
    return ProxyState(ModelSnapshot.of(resources)), w


def test_global_policies_apply_everywhere():
    g = policy("DENY", Match(destination_ports=(8080,)), ns="istio-system", scope="GLOBAL", name="g")
    state, w = _state(g)
    assert state.policies_for(w) == [g]


def test_namespace_policies_apply_only_in_their_namespace():
    mine = policy("DENY", Match(destination_ports=(8080,)), name="mine")
    theirs = policy("DENY", Match(destination_ports=(8080,)), ns="other", name="theirs")
    state, w = _state(mine, theirs)
    assert state.policies_for(w) == [mine]


def test_selector_policies_apply_only_when_listed_on_the_workload():
    listed = policy("ALLOW", Match(destination_ports=(1,)), scope="WORKLOAD_SELECTOR", name="listed")
    unlisted = policy("DENY", Match(destination_ports=(8080,)), scope="WORKLOAD_SELECTOR", name="unlisted")
    state, w = _state(listed, unlisted, workload_policies=["shop/listed"])
    assert state.policies_for(w) == [listed]
    assert not rbac.authorize(state.policies_for(w), conn()).allowed
