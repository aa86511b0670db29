"""Every AuthorizationPolicy field at the waypoint, and its not-form, with Istio's semantics.

Each test evaluates one ALLOW policy with one rule against one request: allowed means the rule
matched. Values use Istio's forms: exact, ``prefix*``, ``*suffix`` and ``*``.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waypoint.authz import RequestAttributes, WaypointRef, authorize, compile_policies
from wisp.identity import SpiffeId

FRONTEND = SpiffeId("cluster.local", "shop", "frontend")


def request(identity=FRONTEND, source_ip="10.0.0.5", destination_ip="10.96.0.10", port=8080,
            host="echo.shop:8080", method="GET", path="/", headers=(), sni=None):
    return RequestAttributes(identity, source_ip, destination_ip, port, host, method, path, headers, sni)


def rule_matches(rule, req=None, namespace="shop"):
    spec = {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
            "action": "ALLOW", "rules": [rule]}
    obj = {"metadata": {"name": "p", "namespace": namespace}, "spec": spec}
    policies = compile_policies([obj], WaypointRef(namespace, "waypoint"))
    assert policies.default.policies == (f"{namespace}/p",)
    assert not policies.notes, policies.notes
    return authorize(policies.default, req or request()).allowed


def source(**fields):
    return {"from": [{"source": fields}]}


def operation(**fields):
    return {"to": [{"operation": fields}]}


def when(key, values=None, not_values=None):
    condition = {"key": key}
    if values is not None:
        condition["values"] = values
    if not_values is not None:
        condition["notValues"] = not_values
    return {"when": [condition]}


# --- from.source -------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("cluster.local/ns/shop/sa/frontend", True),
    ("cluster.local/ns/shop/sa/backend", False),
    ("cluster.local/ns/shop/*", True),
    ("cluster.local/ns/other/*", False),
    ("*/sa/frontend", True),
    ("*/sa/front", False),
    ("*", True),
    ("spiffe://cluster.local/ns/shop/sa/frontend", False),  # Istio compares without the scheme
])
def test_principals(value, expected):
    assert rule_matches(source(principals=[value])) is expected
    assert rule_matches(source(notPrincipals=[value])) is not expected


def test_principals_match_nothing_for_a_plaintext_request_and_not_principals_match_it():
    plaintext = request(identity=None)
    assert not rule_matches(source(principals=["*"]), plaintext)
    assert rule_matches(source(notPrincipals=["*"]), plaintext)
    assert not rule_matches(source(namespaces=["*"]), plaintext)
    assert rule_matches(source(notNamespaces=["shop"]), plaintext)


def test_values_of_one_field_are_alternatives():
    assert rule_matches(source(principals=["cluster.local/ns/a/sa/b", "cluster.local/ns/shop/sa/frontend"]))


@pytest.mark.parametrize("value, expected", [
    ("shop", True), ("sho", False), ("sh*", True), ("*op", True), ("*", True), ("s*p", True), ("x*p", False),
])
def test_namespaces(value, expected):
    assert rule_matches(source(namespaces=[value])) is expected
    assert rule_matches(source(notNamespaces=[value])) is not expected


@pytest.mark.parametrize("value, expected", [
    ("shop/frontend", True), ("frontend", True), ("other/frontend", False), ("shop/backend", False),
])
def test_service_accounts_bare_names_mean_the_policys_namespace(value, expected):
    assert rule_matches(source(serviceAccounts=[value])) is expected
    assert rule_matches(source(notServiceAccounts=[value])) is not expected


def test_a_bare_service_account_is_looked_up_in_the_policys_namespace_not_the_clients():
    assert not rule_matches(source(serviceAccounts=["frontend"]), namespace="other")


@pytest.mark.parametrize("value, expected", [
    ("10.0.0.5", True), ("10.0.0.6", False), ("10.0.0.0/24", True), ("10.1.0.0/16", False), ("fd00::/8", False),
])
def test_ip_blocks_match_the_source_address(value, expected):
    assert rule_matches(source(ipBlocks=[value])) is expected
    assert rule_matches(source(notIpBlocks=[value])) is not expected


def test_ipv6_ip_blocks():
    req = request(source_ip="fd00::5")
    assert rule_matches(source(ipBlocks=["fd00::/64"]), req)
    assert not rule_matches(source(ipBlocks=["10.0.0.0/8"]), req)


def test_remote_ip_blocks_use_the_last_forwarded_for_address_else_the_source():
    assert rule_matches(source(remoteIpBlocks=["10.0.0.5"]))
    forwarded = request(headers=[("X-Forwarded-For", "1.1.1.1, 203.0.113.7")])
    assert rule_matches(source(remoteIpBlocks=["203.0.113.0/24"]), forwarded)
    assert not rule_matches(source(remoteIpBlocks=["10.0.0.5"]), forwarded)
    assert rule_matches(source(notRemoteIpBlocks=["10.0.0.5"]), forwarded)
    garbage = request(headers=[("x-forwarded-for", "not-an-ip")])
    assert rule_matches(source(remoteIpBlocks=["10.0.0.5"]), garbage)


def test_fields_of_one_source_all_apply():
    assert rule_matches(source(namespaces=["shop"], ipBlocks=["10.0.0.0/8"]))
    assert not rule_matches(source(namespaces=["shop"], ipBlocks=["192.168.0.0/16"]))


def test_from_entries_are_alternatives():
    rule = {"from": [{"source": {"namespaces": ["other"]}}, {"source": {"ipBlocks": ["10.0.0.5"]}}]}
    assert rule_matches(rule)
    rule = {"from": [{"source": {"namespaces": ["other"]}}, {"source": {"ipBlocks": ["10.9.9.9"]}}]}
    assert not rule_matches(rule)


# --- to.operation ------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("echo.shop:8080", True),
    ("ECHO.Shop:8080", True),  # case-insensitive
    ("echo.shop", False),  # the port is part of the host, as in Istio's waypoints
    ("echo.shop*", True),
    ("*.shop:8080", True),
    ("*", True),
    ("cart.shop:8080", False),
])
def test_hosts(value, expected):
    assert rule_matches(operation(hosts=[value])) is expected
    assert rule_matches(operation(notHosts=[value])) is not expected


def test_hosts_without_a_host_header():
    req = request(host=None)
    assert not rule_matches(operation(hosts=["*"]), req)
    assert rule_matches(operation(notHosts=["*"]), req)


@pytest.mark.parametrize("value, expected", [
    ("GET", True), ("get", False), ("POST", False), ("G*", True), ("*T", True), ("*", True),
])
def test_methods(value, expected):
    assert rule_matches(operation(methods=[value])) is expected
    assert rule_matches(operation(notMethods=[value])) is not expected


@pytest.mark.parametrize("value, path, expected", [
    ("/api", "/api", True),
    ("/api", "/api/", False),
    ("/api", "/API", False),  # paths are case-sensitive
    ("/api", "/api?x=1", True),  # the query is ignored
    ("/api/*", "/api/v1/items", True),
    ("/api/*", "/apiv1", False),
    ("*.json", "/data/x.json", True),
    ("*", "/anything", True),
    ("/api/{*}/items", "/api/v1/items", True),
    ("/api/{*}/items", "/api/v1/v2/items", False),
    ("/api/{*}/items", "/api//items", False),
    ("/api/{**}", "/api/v1/v2/items", True),
    ("/api/{**}", "/api/", True),
    ("/api/{**}", "/api", False),
    ("/{*}/admin", "/x/admin", True),
    ("/{*}/admin", "/x/admin/", False),
    ("/{**}/config", "/a/b/config", True),
    ("/{**}/config", "/config", False),
    ("/a/{*}/", "/a/b/", True),
    ("/a/{*}/", "/a/b", False),
    ("/a.b/{*}", "/axb/c", False),  # template literals are exact
])
def test_paths(value, path, expected):
    assert rule_matches(operation(paths=[value]), request(path=path)) is expected
    assert rule_matches(operation(notPaths=[value]), request(path=path)) is not expected


def test_paths_are_matched_after_base_normalisation():
    assert rule_matches(operation(paths=["/admin"]), request(path="/public/../admin"))
    assert rule_matches(operation(paths=["/admin"]), request(path="/%61dmin"))
    assert rule_matches(operation(paths=["/admin/x"]), request(path="/admin\\x"))
    assert not rule_matches(operation(paths=["/admin/x"]), request(path="/admin//x"))  # BASE keeps "//"
    assert not rule_matches(operation(paths=["/admin/x"]), request(path="/admin%2Fx"))  # %2F is kept


@pytest.mark.parametrize("value, expected", [("8080", True), ("80", False), (8080, True)])
def test_ports_are_the_port_the_client_dialled(value, expected):
    assert rule_matches(operation(ports=[value])) is expected
    assert rule_matches(operation(notPorts=[value])) is not expected


def test_fields_of_one_operation_all_apply():
    assert rule_matches(operation(methods=["GET"], paths=["/"]))
    assert not rule_matches(operation(methods=["GET"], paths=["/other"]))


def test_to_entries_are_alternatives():
    rule = {"to": [{"operation": {"methods": ["POST"]}}, {"operation": {"paths": ["/"]}}]}
    assert rule_matches(rule)


def test_from_to_and_when_all_apply():
    rule = {**source(namespaces=["shop"]), **operation(methods=["GET"]), **when("destination.port", ["8080"])}
    assert rule_matches(rule)
    assert not rule_matches({**rule, **when("destination.port", ["80"])})
    assert not rule_matches({**rule, **operation(methods=["POST"])})
    assert not rule_matches({**rule, **source(namespaces=["other"])})


# --- when ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("values, expected", [
    (["curl/8.0"], True), (["curl/*"], True), (["*/8.0"], True), (["*"], True), (["wget"], False),
])
def test_request_headers(values, expected):
    req = request(headers=[(b"User-Agent", b"curl/8.0")])
    assert rule_matches(when("request.headers[user-agent]", values), req) is expected
    assert rule_matches(when("request.headers[user-agent]", not_values=values), req) is not expected


def test_header_names_ignore_case():
    req = request(headers=[("x-team", "blue")])
    assert rule_matches(when("request.headers[X-Team]", ["blue"]), req)


def test_header_values_are_case_sensitive():
    req = request(headers=[("x-team", "blue")])
    assert not rule_matches(when("request.headers[x-team]", ["Blue"]), req)


def test_duplicate_headers_are_joined_with_commas():
    req = request(headers=[("x-team", "blue"), ("X-Team", "red")])
    assert rule_matches(when("request.headers[x-team]", ["blue,red"]), req)
    assert not rule_matches(when("request.headers[x-team]", ["red"]), req)
    assert rule_matches(when("request.headers[x-team]", ["*red"]), req)


def test_an_absent_header():
    assert not rule_matches(when("request.headers[x-team]", ["*"]))
    assert rule_matches(when("request.headers[x-team]", not_values=["*"]))


def test_an_empty_header_is_present():
    req = request(headers=[("x-team", "")])
    assert rule_matches(when("request.headers[x-team]", ["*"]), req)


def test_values_and_not_values_of_one_condition_both_apply():
    req = request(headers=[("x-team", "blue")])
    assert rule_matches(when("request.headers[x-team]", ["b*"], ["red"]), req)
    assert not rule_matches(when("request.headers[x-team]", ["b*"], ["blue"]), req)


@pytest.mark.parametrize("key, value, expected", [
    ("source.ip", "10.0.0.0/8", True),
    ("source.ip", "10.0.0.6", False),
    ("remote.ip", "10.0.0.5", True),
    ("source.namespace", "shop", True),
    ("source.namespace", "other", False),
    ("source.principal", "cluster.local/ns/shop/sa/frontend", True),
    ("source.principal", "*/sa/backend", False),
    ("source.serviceAccount", "shop/frontend", True),
    ("destination.ip", "10.96.0.0/12", True),
    ("destination.ip", "10.0.0.5", False),
    ("destination.port", "8080", True),
    ("destination.port", "9090", False),
])
def test_when_keys(key, value, expected):
    assert rule_matches(when(key, [value])) is expected
    assert rule_matches(when(key, not_values=[value])) is not expected


def test_connection_sni_never_matches_plaintext_inside_the_tunnel():
    assert not rule_matches(when("connection.sni", ["*"]))
    assert rule_matches(when("connection.sni", not_values=["*"]))
    assert rule_matches(when("connection.sni", ["*.shop"]), request(sni="echo.shop"))
    # Outside headers, "*" is Envoy's regex ".+": an empty value is not present.
    assert not rule_matches(when("connection.sni", ["*"]), request(sni=""))


def test_every_when_condition_must_hold():
    rule = {"when": [{"key": "source.namespace", "values": ["shop"]},
                     {"key": "request.headers[x-team]", "values": ["blue"]}]}
    assert rule_matches(rule, request(headers=[("x-team", "blue")]))
    assert not rule_matches(rule, request(headers=[("x-team", "red")]))


# --- not-forms are exactly the negation of their positive forms --------------------------------

_word = st.text(alphabet="abcdeshopAB-./:0123456789", min_size=1, max_size=12)
_value = st.one_of(_word, _word.map(lambda w: w + "*"), _word.map(lambda w: "*" + w), st.just("*"))
_values = st.lists(_value, min_size=1, max_size=4)

_FIELDS = {
    "principals": ("from", "source", "principals", "notPrincipals"),
    "namespaces": ("from", "source", "namespaces", "notNamespaces"),
    "hosts": ("to", "operation", "hosts", "notHosts"),
    "methods": ("to", "operation", "methods", "notMethods"),
    "paths": ("to", "operation", "paths", "notPaths"),
}


def _field_rule(field, key_index, values):
    clause, inner, *keys = _FIELDS[field]
    return {clause: [{inner: {keys[key_index]: values}}]}


_requests = st.builds(
    request,
    identity=st.one_of(st.none(), st.builds(SpiffeId, st.just("cluster.local"),
                                            st.sampled_from(["shop", "dev", "abc"]),
                                            st.sampled_from(["frontend", "a", "b-c"]))),
    host=st.one_of(st.none(), _word),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "abc"]),
    path=_word.map(lambda w: "/" + w),
)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(sorted(_FIELDS)), values=_values, req=_requests)
def test_a_not_field_matches_exactly_when_its_positive_field_does_not(field, values, req):
    positive = rule_matches(_field_rule(field, 0, values), req)
    negative = rule_matches(_field_rule(field, 1, values), req)
    assert positive is not negative


@settings(max_examples=200, deadline=None)
@given(values=_values, header=st.one_of(st.none(), _word))
def test_not_values_match_exactly_when_values_do_not(values, header):
    req = request(headers=[("x-h", header)] if header is not None else [])
    positive = rule_matches(when("request.headers[x-h]", values), req)
    negative = rule_matches(when("request.headers[x-h]", not_values=values), req)
    assert positive is not negative


@settings(max_examples=200, deadline=None)
@given(values=st.lists(_word, min_size=1, max_size=3), candidate=_word)
def test_exact_prefix_and_suffix_forms_agree_with_str_methods(values, candidate):
    req = request(headers=[("x-h", candidate)])
    assert rule_matches(when("request.headers[x-h]", values), req) is (candidate in values)
    assert rule_matches(when("request.headers[x-h]", [v + "*" for v in values]), req) is \
        any(candidate.startswith(v) for v in values)
    assert rule_matches(when("request.headers[x-h]", ["*" + v for v in values]), req) is \
        any(candidate.endswith(v) for v in values)
