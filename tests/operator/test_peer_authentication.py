"""PeerAuthentication -> DENY Authorizations ztunnel enforces (Istio's convertPeerAuthentication)."""

from __future__ import annotations

from typing import Any

import pytest

from wisp.model import Authorization, Clause, Match, ModelSnapshot, Rule, StringMatch
from wisp_operator.cluster import ClusterState
from wisp_operator.errors import InvalidObject
from wisp_operator.peer_authentication import parse_peer_authentication
from wisp_operator.reconcile import reconcile

ROOT = "istio-system"
STATIC = f"{ROOT}/istio_converted_static_strict"
NO_IDENTITY = Match(not_principals=(StringMatch("presence"),))


def pa(mode: str | None = None, ns: str = "shop", name: str = "default", selector: dict[str, str] | None = None,
       ports: dict[str, str] | None = None, created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if mode:
        spec["mtls"] = {"mode": mode}
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    if ports:
        spec["portLevelMtls"] = {port: {"mode": m} for port, m in ports.items()}
    return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": created}, "spec": spec}


def mesh(mode: str, **kw: Any) -> dict[str, Any]:
    return pa(mode, ns=ROOT, **kw)


POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
       "spec": {}, "status": {"phase": "Running", "podIP": "10.244.0.5"}}
WEB = {"app": "web"}


def build(*objs: dict[str, Any]) -> ModelSnapshot:
    result = reconcile(ClusterState.of([POD, *objs]))
    assert result.errors == ()
    return result.model


def keys(*objs: dict[str, Any]) -> tuple[str, ...]:
    return build(*objs).workloads["Kubernetes//Pod/shop/web-1"].authorization_policies


def test_without_peer_authentication_nothing_is_generated() -> None:
    model = build()
    assert model.authorizations == {}
    assert keys() == ()


def test_static_strict_policy_denies_connections_without_identity() -> None:
    assert build(mesh("PERMISSIVE")).authorizations[STATIC] == Authorization(
        name="istio_converted_static_strict", namespace=ROOT, scope="WORKLOAD_SELECTOR", action="DENY",
        rules=(Rule((Clause((NO_IDENTITY,)),)),),
    )


@pytest.mark.parametrize(
    "objs, strict",
    [
        ([mesh("STRICT")], True),
        ([mesh("PERMISSIVE")], False),
        ([mesh("DISABLE")], False),
        ([pa("STRICT")], True),
        ([pa("STRICT", ns="other")], False),
        ([mesh("PERMISSIVE"), pa("STRICT")], True),
        ([mesh("STRICT"), pa("PERMISSIVE")], False),
        ([mesh("STRICT"), pa(None)], True),
        ([pa("STRICT", name="workload", selector=WEB)], True),
        ([mesh("STRICT"), pa("PERMISSIVE", name="workload", selector=WEB)], False),
        ([mesh("STRICT"), pa("PERMISSIVE", name="workload", selector={"app": "db"})], True),
        ([mesh("STRICT"), pa(None, name="workload", selector=WEB)], True),
        ([mesh("STRICT", selector=WEB)], False),
    ],
    ids=["mesh-strict", "mesh-permissive", "mesh-disable", "namespace-strict", "other-namespace-strict",
         "namespace-strict-beats-mesh", "namespace-permissive-beats-mesh", "namespace-unset-inherits",
         "selector-strict", "selector-permissive-beats-mesh", "selector-not-matching", "selector-unset-inherits",
         "selector-in-root-namespace-ignored"],
)
def test_effective_strict_lists_the_static_policy(objs: list[dict[str, Any]], strict: bool) -> None:
    assert keys(*objs) == ((STATIC,) if strict else ())


def test_oldest_policy_of_a_level_wins() -> None:
    old = mesh("STRICT", name="old", created="2025-01-01T00:00:00Z")
    new = mesh("PERMISSIVE", name="new", created="2026-01-01T00:00:00Z")
    assert keys(new, old) == (STATIC,)


# --- port level ----------------------------------------------------------------------------------


def test_strict_port_under_permissive_workload_denies_that_port_without_identity() -> None:
    model = build(pa("PERMISSIVE", name="web", selector=WEB, ports={"8080": "STRICT"}))
    assert model.authorizations["shop/converted_peer_authentication_web"] == Authorization(
        name="converted_peer_authentication_web", namespace="shop", scope="WORKLOAD_SELECTOR", action="DENY",
        rules=(Rule((Clause((Match(not_principals=(StringMatch("presence"),), destination_ports=(8080,)),)),)),),
    )
    assert model.workloads["Kubernetes//Pod/shop/web-1"].authorization_policies == (
        "shop/converted_peer_authentication_web",
    )


def test_each_strict_port_is_its_own_rule() -> None:
    auth = build(pa(None, name="web", selector=WEB, ports={"9090": "STRICT", "8080": "STRICT"})).authorizations[
        "shop/converted_peer_authentication_web"]
    assert [r.clauses[0].matches[0].destination_ports for r in auth.rules] == [(8080,), (9090,)]


def test_permissive_port_under_strict_workload_denies_other_ports_without_identity() -> None:
    model = build(pa("STRICT", name="web", selector=WEB, ports={"9090": "PERMISSIVE"}))
    assert model.authorizations["shop/converted_peer_authentication_web"].rules == (
        Rule((Clause((NO_IDENTITY,)), Clause((Match(not_destination_ports=(9090,)),)))),
    )
    # The converted policy carries STRICT itself: listing the static one too would deny port 9090.
    assert model.workloads["Kubernetes//Pod/shop/web-1"].authorization_policies == (
        "shop/converted_peer_authentication_web",
    )


@pytest.mark.parametrize(
    "parent",
    [pa("STRICT"), mesh("STRICT"), mesh("STRICT", name="m"), ],
    ids=["namespace-strict", "mesh-strict", "mesh-strict-other-name"],
)
def test_permissive_port_under_inherited_strict_merges_strictness(parent: dict[str, Any]) -> None:
    model = build(parent, pa(None, name="web", selector=WEB, ports={"9090": "PERMISSIVE"}))
    assert model.authorizations["shop/converted_peer_authentication_web"].rules == (
        Rule((Clause((Match(not_destination_ports=(9090,)),)), Clause((NO_IDENTITY,)))),
    )
    assert keys(parent, pa(None, name="web", selector=WEB, ports={"9090": "PERMISSIVE"})) == (
        "shop/converted_peer_authentication_web",
    )


def test_permissive_port_under_unset_namespace_inherits_mesh_strict() -> None:
    objs = [mesh("STRICT"), pa("UNSET", name="ns-default"), pa(None, name="web", selector=WEB, ports={"9090": "PERMISSIVE"})]
    assert keys(*objs) == ("shop/converted_peer_authentication_web",)
    assert build(*objs).authorizations["shop/converted_peer_authentication_web"].rules == (
        Rule((Clause((Match(not_destination_ports=(9090,)),)), Clause((NO_IDENTITY,)))),
    )


@pytest.mark.parametrize(
    "objs",
    [
        [pa("STRICT", name="web", selector=WEB, ports={"8080": "STRICT"})],
        [pa("PERMISSIVE", name="web", selector=WEB, ports={"8080": "PERMISSIVE"})],
        [mesh("STRICT"), pa(None, name="web", selector=WEB, ports={"8080": "STRICT"})],
        [pa(None, name="web", selector=WEB, ports={"8080": "PERMISSIVE"})],
        [mesh("STRICT"), pa("STRICT", ns=ROOT, name="web", selector=WEB, ports={"8080": "PERMISSIVE"})],
    ],
    ids=["strict-all-ports-strict", "permissive-all-ports-permissive", "unset-strict-port-under-strict-parent",
         "unset-permissive-port-under-permissive-parent", "root-namespace-selector"],
)
def test_port_settings_that_change_nothing_generate_no_policy(objs: list[dict[str, Any]]) -> None:
    assert [k for k in build(*objs).authorizations if "converted_peer_authentication" in k] == []


def test_disable_is_treated_as_permissive() -> None:
    model = build(pa("STRICT", name="web", selector=WEB, ports={"9090": "DISABLE"}))
    assert "shop/converted_peer_authentication_web" in model.authorizations


@pytest.mark.parametrize(
    "obj, problem",
    [
        (pa("MAYBE"), "spec.mtls.mode"),
        (pa(None, selector=WEB, ports={"http": "STRICT"}), "must be a port number"),
        ({"kind": "PeerAuthentication", "metadata": {"name": "x", "namespace": "shop"}, "spec": {"mtls": "STRICT"}},
         "spec.mtls must be an object"),
    ],
)
def test_malformed_peer_authentication_raises_invalid_object(obj: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidObject) as info:
        parse_peer_authentication(obj)
    assert problem in str(info.value)


def test_malformed_peer_authentication_is_reported_and_skipped() -> None:
    result = reconcile(ClusterState.of([POD, pa("MAYBE"), mesh("STRICT")]))
    assert len(result.errors) == 1
    assert result.model.workloads["Kubernetes//Pod/shop/web-1"].authorization_policies == (STATIC,)
