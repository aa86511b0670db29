"""The resource model: JSON round trip, stable encoding, keys, snapshot diffs."""

from __future__ import annotations

import json

import pytest

from wisp.model import (
    Authorization,
    Clause,
    Delta,
    GatewayAddress,
    LoadBalancing,
    Locality,
    Match,
    ModelError,
    ModelSnapshot,
    PortMapping,
    ResourceKey,
    Rule,
    Service,
    ServiceAccountMatch,
    StringMatch,
    Workload,
    apply,
    diff,
    encode,
    from_json,
    resource_key,
    to_json,
)

FULL_WORKLOAD = Workload(
    uid="Kubernetes//Pod/shop/web-1",
    name="web-1",
    namespace="shop",
    addresses=("10.244.0.5", "fd00::5"),
    network="net1",
    tunnel_protocol="HBONE",
    trust_domain="example.org",
    service_account="web",
    waypoint=GatewayAddress("10.96.0.10"),
    node="node-a",
    canonical_name="web",
    canonical_revision="v2",
    workload_type="deployment",
    workload_name="web",
    services={"shop/web.shop.svc.cluster.local": (PortMapping(80, 8080, "HTTP11"),)},
    authorization_policies=("shop/allow-web",),
    status="UNHEALTHY",
    cluster_id="Kubernetes",
    locality=Locality("eu", "eu-1a"),
    capacity=2,
)
MINIMAL_WORKLOAD = Workload(uid="c//Pod/a/b", name="b", namespace="a")
FULL_SERVICE = Service(
    name="web",
    namespace="shop",
    hostname="web.shop.svc.cluster.local",
    addresses=("10.96.1.1",),
    ports=(PortMapping(80, 0, "HTTP2"), PortMapping(443, 8443)),
    subject_alt_names=("spiffe://cluster.local/ns/shop/sa/web",),
    waypoint=GatewayAddress("10.96.0.10", 15008),
    load_balancing=LoadBalancing(("NETWORK", "REGION"), "FAILOVER"),
)
FULL_AUTHORIZATION = Authorization(
    name="allow-web",
    namespace="shop",
    scope="WORKLOAD_SELECTOR",
    action="DENY",
    rules=(
        Rule(
            (
                Clause(
                    (
                        Match(
                            namespaces=(StringMatch("exact", "shop"),),
                            not_namespaces=(StringMatch("prefix", "kube-"),),
                            principals=(StringMatch("suffix", "/sa/web"),),
                            not_principals=(StringMatch("presence"),),
                            source_ips=("10.0.0.0/8",),
                            not_source_ips=("10.1.0.0/16",),
                            destination_ips=("10.96.1.1/32",),
                            not_destination_ips=("fd00::/8",),
                            destination_ports=(8080,),
                            not_destination_ports=(9090,),
                            service_accounts=(ServiceAccountMatch("shop", "web"),),
                            not_service_accounts=(ServiceAccountMatch("shop", "db"),),
                        ),
                    )
                ),
                Clause(()),
            )
        ),
        Rule(()),
    ),
    dry_run=True,
)


@pytest.mark.parametrize(
    "kind, obj",
    [
        ("workload", FULL_WORKLOAD),
        ("workload", MINIMAL_WORKLOAD),
        ("service", FULL_SERVICE),
        ("service", Service("s", "n", "s.n.svc.cluster.local")),
        ("authorization", FULL_AUTHORIZATION),
        ("authorization", Authorization("p", "n", "NAMESPACE", "ALLOW")),
    ],
)
def test_json_round_trip_gives_an_equal_object(kind: str, obj: object) -> None:
    assert from_json(kind, to_json(obj)) == obj
    assert from_json(type(obj), json.loads(encode(obj))) == obj


def test_encoding_is_compact_and_key_sorted() -> None:
    data = encode(Authorization("p", "n", "NAMESPACE", "ALLOW"))
    assert data == b'{"action":"ALLOW","name":"p","namespace":"n","scope":"NAMESPACE"}'


def test_equal_objects_encode_to_equal_bytes_whatever_the_mapping_order() -> None:
    a = Workload("u", "n", "ns", services={"b": (), "a": (PortMapping(1, 2),)})
    b = Workload("u", "n", "ns", services={"a": (PortMapping(1, 2),), "b": ()})
    assert encode(a) == encode(b)


def test_defaults_are_left_out_of_the_encoding() -> None:
    assert to_json(MINIMAL_WORKLOAD) == {"uid": "c//Pod/a/b", "name": "b", "namespace": "a"}


@pytest.mark.parametrize(
    "match, encoded",
    [
        (StringMatch("exact", "a"), {"exact": "a"}),
        (StringMatch("prefix", "a"), {"prefix": "a"}),
        (StringMatch("suffix", "a"), {"suffix": "a"}),
        (StringMatch("presence"), {"presence": {}}),
    ],
)
def test_string_match_uses_the_protobuf_oneof_form(match: StringMatch, encoded: dict[str, object]) -> None:
    assert to_json(match) == encoded
    assert from_json(StringMatch, encoded) == match


@pytest.mark.parametrize(
    "kind, data",
    [
        ("workload", {"name": "b", "namespace": "a"}),  # uid missing
        ("workload", {"uid": 1, "name": "b", "namespace": "a"}),
        ("workload", {"uid": "u", "name": "b", "namespace": "a", "addresses": "10.0.0.1"}),
        ("workload", {"uid": "u", "name": "b", "namespace": "a", "colour": "red"}),
        ("service", []),
        ("authorization", {"name": "p", "namespace": "n", "scope": "GLOBAL", "action": "ALLOW",
                           "rules": [{"clauses": [{"matches": [{"principals": [{"regex": ".*"}]}]}]}]}),
        ("gadget", {}),
    ],
)
def test_malformed_json_raises_model_error(kind: str, data: object) -> None:
    with pytest.raises(ModelError):
        from_json(kind, data)


@pytest.mark.parametrize(
    "obj, key",
    [
        (MINIMAL_WORKLOAD, ResourceKey("workload", "c//Pod/a/b")),
        (FULL_SERVICE, ResourceKey("service", "shop/web.shop.svc.cluster.local")),
        (FULL_AUTHORIZATION, ResourceKey("authorization", "shop/allow-web")),
    ],
)
def test_each_resource_has_a_stable_key(obj: object, key: ResourceKey) -> None:
    assert resource_key(obj) == key  # type: ignore[arg-type]


def test_workload_identity_is_its_spiffe_id() -> None:
    assert FULL_WORKLOAD.identity() == "spiffe://example.org/ns/shop/sa/web"


def test_diff_of_equal_snapshots_is_empty() -> None:
    snap = ModelSnapshot.of([FULL_WORKLOAD, FULL_SERVICE, FULL_AUTHORIZATION])
    again = ModelSnapshot.of([FULL_WORKLOAD, FULL_SERVICE, FULL_AUTHORIZATION])
    assert not diff(snap, again)


def test_diff_upserts_new_and_changed_resources() -> None:
    old = ModelSnapshot.of([MINIMAL_WORKLOAD, FULL_SERVICE])
    changed = Service("web", "shop", "web.shop.svc.cluster.local", addresses=("10.96.9.9",))
    new = ModelSnapshot.of([MINIMAL_WORKLOAD, changed, FULL_AUTHORIZATION])
    assert diff(old, new) == Delta(upserts=(FULL_AUTHORIZATION, changed), removals=())


def test_diff_removes_resources_that_disappeared() -> None:
    old = ModelSnapshot.of([MINIMAL_WORKLOAD, FULL_WORKLOAD, FULL_AUTHORIZATION])
    new = ModelSnapshot.of([FULL_WORKLOAD])
    assert diff(old, new) == Delta(
        upserts=(),
        removals=(ResourceKey("authorization", "shop/allow-web"), ResourceKey("workload", "c//Pod/a/b")),
    )


def test_diff_keeps_kinds_apart_when_keys_collide() -> None:
    # A Service "n/x" and an Authorization "n/x" are different resources.
    svc = Service("x", "n", "x")
    auth = Authorization("x", "n", "NAMESPACE", "ALLOW")
    delta = diff(ModelSnapshot.of([svc]), ModelSnapshot.of([auth]))
    assert delta.upserts == (auth,)
    assert delta.removals == (ResourceKey("service", "n/x"),)


def test_applying_a_diff_yields_the_new_snapshot() -> None:
    old = ModelSnapshot.of([MINIMAL_WORKLOAD, FULL_SERVICE])
    new = ModelSnapshot.of([FULL_WORKLOAD, FULL_AUTHORIZATION])
    assert apply(old, diff(old, new)) == new


def test_applying_deltas_in_a_row_leaves_every_earlier_snapshot_as_it_was() -> None:
    first = ModelSnapshot.of([MINIMAL_WORKLOAD, FULL_SERVICE])
    second = apply(first, Delta(upserts=(FULL_WORKLOAD,), removals=()))
    third = apply(second, Delta(upserts=(FULL_AUTHORIZATION,), removals=(ResourceKey("workload", "c//Pod/a/b"),)))
    assert first == ModelSnapshot.of([MINIMAL_WORKLOAD, FULL_SERVICE])
    assert second == ModelSnapshot.of([MINIMAL_WORKLOAD, FULL_WORKLOAD, FULL_SERVICE])
    assert third == ModelSnapshot.of([FULL_WORKLOAD, FULL_SERVICE, FULL_AUTHORIZATION])
    # Kinds a delta does not touch are shared, not copied.
    assert third.services is first.services
    assert diff(third, first) == diff(ModelSnapshot.of([FULL_WORKLOAD, FULL_SERVICE, FULL_AUTHORIZATION]), first)


def test_snapshots_compare_by_content_whatever_their_maps() -> None:
    built = ModelSnapshot.of([MINIMAL_WORKLOAD, FULL_SERVICE])
    patched = apply(ModelSnapshot.of([MINIMAL_WORKLOAD]), Delta(upserts=(FULL_SERVICE,), removals=()))
    assert type(patched.services) is not type(built.services)
    assert patched == built and built == patched
    changed = Service("web", "shop", "web.shop.svc.cluster.local", addresses=("10.96.9.9",))
    assert apply(patched, Delta(upserts=(changed,), removals=())) != built
    assert ModelSnapshot.of([MINIMAL_WORKLOAD]) != built
