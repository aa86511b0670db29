"""ConfigObject: the Gateway API and AuthorizationPolicy objects waypoints receive on the config stream.

The contract (docs of issue #11's waypoint plan): kind, namespace, name and the object's compact
JSON text; resource key "object" / "<kind>/<ns>/<name>"; handled by snapshots, diffs, deltas and
the stream's wire format like the other kinds.
"""

from __future__ import annotations

import json

import pytest

from wisp.controlplane.protocol import (
    ConfigView,
    StreamProtocolError,
    decode,
    encode_delta,
    encode_resource,
    encode_snapshot,
)
from wisp.model import (
    KIND_CONFIG_OBJECT,
    Authorization,
    ConfigObject,
    Delta,
    ModelError,
    ModelSnapshot,
    ResourceKey,
    Service,
    Workload,
    apply,
    config_object,
    diff,
    encode,
    from_json,
    resource_key,
    to_json,
)

ROUTE = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "HTTPRoute",
    "metadata": {
        "name": "canary", "namespace": "shop", "uid": "1234", "resourceVersion": "77", "generation": 3,
        "creationTimestamp": "2026-12-04T20:00:00Z", "labels": {"app": "web"},
        "managedFields": [{"manager": "kubectl"}],
    },
    "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
             "rules": [{"backendRefs": [{"name": "web-v2", "port": 80}]}]},
    "status": {"parents": [{"conditions": []}]},
}
GATEWAY = ConfigObject("Gateway", "shop", "waypoint", '{"kind":"Gateway"}')


def test_config_object_body_keeps_spec_and_the_metadata_a_waypoint_uses() -> None:
    obj = config_object(ROUTE)
    assert (obj.kind, obj.namespace, obj.name) == ("HTTPRoute", "shop", "canary")
    assert obj.object() == {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "canary", "namespace": "shop", "generation": 3,
                     "creationTimestamp": "2026-12-04T20:00:00Z", "labels": {"app": "web"}},
        "spec": ROUTE["spec"],
    }


def test_config_object_body_is_compact_key_sorted_json() -> None:
    body = config_object(ROUTE).body
    assert " " not in body
    assert body == json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"))


def test_a_status_change_does_not_change_the_config_object() -> None:
    other = dict(ROUTE, status={"parents": []}, metadata=dict(ROUTE["metadata"], resourceVersion="78"))
    assert config_object(other) == config_object(ROUTE)


@pytest.mark.parametrize("obj", [
    {"kind": "HTTPRoute", "metadata": {"name": "r"}},                      # no namespace
    {"kind": "HTTPRoute", "metadata": {"namespace": "n"}},                 # no name
    {"metadata": {"name": "r", "namespace": "n"}},                         # no kind
    {"kind": "HTTPRoute"},                                                 # no metadata
    {"kind": "Deployment", "metadata": {"name": "r", "namespace": "n"}},   # not a waypoint's kind
])
def test_config_object_refuses_an_incomplete_or_foreign_object(obj: dict) -> None:
    with pytest.raises(ModelError):
        config_object(obj)


def test_config_object_kind_must_be_one_a_waypoint_receives() -> None:
    with pytest.raises(ModelError, match="ServiceEntry"):
        ConfigObject("ServiceEntry", "n", "x", "{}")


@pytest.mark.parametrize("body", ["not json", "[1, 2]"])
def test_reading_a_body_that_is_not_a_json_object_raises_model_error(body: str) -> None:
    with pytest.raises(ModelError, match="HTTPRoute n/r"):
        ConfigObject("HTTPRoute", "n", "r", body).object()


def test_config_object_key_is_kind_namespace_name() -> None:
    assert resource_key(config_object(ROUTE)) == ResourceKey(KIND_CONFIG_OBJECT, "HTTPRoute/shop/canary")
    assert KIND_CONFIG_OBJECT == "object"


def test_config_object_json_round_trip() -> None:
    obj = config_object(ROUTE)
    assert from_json("object", to_json(obj)) == obj
    assert json.loads(encode(obj)) == {"kind": "HTTPRoute", "namespace": "shop", "name": "canary",
                                       "body": obj.body}


@pytest.mark.parametrize("data", [
    {"kind": "Pod", "namespace": "n", "name": "x", "body": "{}"},
    {"kind": "Gateway", "namespace": "n", "name": "x"},
    {"kind": "Gateway", "namespace": "n", "name": "x", "body": {}},
])
def test_malformed_config_object_json_raises_model_error(data: dict) -> None:
    with pytest.raises(ModelError):
        from_json("object", data)


def test_snapshot_holds_config_objects_apart_from_other_kinds() -> None:
    # Same "ns/name" as an Authorization: different kinds, different resources.
    policy = Authorization("waypoint", "shop", "NAMESPACE", "ALLOW")
    snap = ModelSnapshot.of([GATEWAY, policy])
    assert snap.objects == {"Gateway/shop/waypoint": GATEWAY}
    assert snap.authorizations == {"shop/waypoint": policy}
    assert len(snap) == 2
    assert set(snap.resources()) == {GATEWAY, policy}
    assert snap != ModelSnapshot.of([policy])
    assert ModelSnapshot.of([GATEWAY]).persistent() == ModelSnapshot.of([GATEWAY])


def test_diff_and_apply_carry_config_objects() -> None:
    route = config_object(ROUTE)
    changed = config_object(dict(ROUTE, spec={"parentRefs": []}))
    svc = Service("web", "shop", "web.shop.svc.cluster.local")
    old = ModelSnapshot.of([svc, GATEWAY, route])
    new = ModelSnapshot.of([svc, changed])
    delta = diff(old, new)
    assert delta == Delta(upserts=(changed,), removals=(ResourceKey("object", "Gateway/shop/waypoint"),))
    patched = apply(old, delta)
    assert patched == new
    assert patched.services is old.services  # untouched kinds are shared


def test_config_stream_carries_config_objects_in_snapshots_and_deltas() -> None:
    route = config_object(ROUTE)
    workload = Workload("u", "w", "shop")
    view = ConfigView()
    view.apply(decode(encode_snapshot("e-1", [encode_resource(workload), encode_resource(GATEWAY)])))
    assert view.snapshot == ModelSnapshot.of([workload, GATEWAY])
    view.apply(decode(encode_delta("e-2", "e-1", [encode_resource(route)],
                                   [ResourceKey("object", "Gateway/shop/waypoint")])))
    assert view.snapshot == ModelSnapshot.of([workload, route])
    assert view.version == "e-2"


def test_config_stream_refuses_a_bad_config_object_naming_it() -> None:
    line = encode_snapshot("e-1", [{"kind": "object", "key": "Pod/n/x",
                                    "value": {"kind": "Pod", "namespace": "n", "name": "x", "body": "{}"}}])
    with pytest.raises(StreamProtocolError, match="Pod/n/x"):
        decode(line)
