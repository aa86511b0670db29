"""The reconciliation core as a whole: ClusterState, determinism, bad input."""

from __future__ import annotations

from typing import Any

import pytest

from wisp.model import ModelSnapshot, diff, encode
from wisp_operator.cluster import ClusterState, MeshSettings
from wisp_operator.errors import InvalidObject, OperatorError
from wisp_operator.reconcile import build_model, build_status, reconcile


def pod(name: str = "web-1", ns: str = "shop", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": "10.244.0.5", **status},
    }


def service(name: str = "web", ns: str = "shop") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": "10.96.0.1", "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}}


def test_cluster_state_indexes_by_kind_namespace_and_name() -> None:
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
    state = ClusterState.of([pod("b"), pod("a"), pod("c", ns="other"), service(), ns])
    assert [p["metadata"]["name"] for p in state.pods()] == ["c", "a", "b"]
    assert [p["metadata"]["name"] for p in state.pods("shop")] == ["a", "b"]
    assert state.get("Service", "shop", "web") is not None
    assert state.namespace("shop") is ns
    assert state.gateways() == []


def test_cluster_state_updates_return_new_states() -> None:
    state = ClusterState.of([pod("a")])
    bigger = state.with_objects([pod("b")])
    smaller = bigger.without([("Pod", "shop", "a")])
    assert (len(state), len(bigger), len(smaller)) == (1, 2, 1)
    assert smaller.pods()[0]["metadata"]["name"] == "b"


def test_default_settings_are_istios() -> None:
    assert MeshSettings() == MeshSettings("Kubernetes", "cluster.local", "istio-system", "cluster.local", "")


def test_build_is_deterministic() -> None:
    objs = [pod("b"), pod("a", podIP="10.244.0.6"), service()]
    one, two = build_model(ClusterState.of(objs)), build_model(ClusterState.of(list(reversed(objs))))
    assert [encode(r) for r in one.resources()] == [encode(r) for r in two.resources()]
    assert not diff(one, two)


def test_pod_change_shows_up_as_one_upsert() -> None:
    before = build_model(ClusterState.of([pod("a"), pod("b", podIP="10.244.0.6"), service()]))
    after = build_model(ClusterState.of([pod("a"), pod("b", podIP="10.244.0.7"), service()]))
    delta = diff(before, after)
    assert [getattr(r, "uid", None) for r in delta.upserts] == ["Kubernetes//Pod/shop/b"]
    assert delta.removals == ()


def test_empty_state_builds_an_empty_model() -> None:
    assert build_model(ClusterState()) == ModelSnapshot()
    assert build_status(ClusterState()) == []


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj, problem",
    [
        ("a string", "expected an object"),
        ({"kind": "Pod"}, "metadata is missing"),
        ({"kind": "Pod", "metadata": {"namespace": "shop"}}, "metadata.name"),
        ({"kind": "Pod", "metadata": {"name": "x", "namespace": 3}}, "metadata.namespace"),
        ({"kind": 7, "metadata": {"name": "x"}}, "kind must be a string"),
    ],
)
def test_objects_without_an_identity_are_rejected_by_cluster_state(obj: Any, problem: str) -> None:
    with pytest.raises(InvalidObject) as info:
        ClusterState.of([obj])
    assert problem in str(info.value)
    assert isinstance(info.value, OperatorError) and isinstance(info.value, ValueError)


def broken(path: str, value: Any, obj: dict[str, Any] | None = None) -> dict[str, Any]:
    obj = obj or pod("broken")
    *parents, last = path.split(".")
    cur = obj
    for part in parents:
        cur = cur.setdefault(part, {})
    cur[last] = value
    return obj


@pytest.mark.parametrize(
    "bad, problem",
    [
        (broken("metadata.labels", ["app=web"]), "metadata.labels must be an object"),
        (broken("metadata.labels", {"app": 1}), "metadata.labels['app'] must be a string"),
        (broken("spec", "none"), "spec must be an object"),
        (broken("spec.hostNetwork", "no"), "spec.hostNetwork must be a boolean"),
        (broken("status.podIP", 10), "status.podIP must be a string"),
        (broken("status.podIP", "not-an-ip"), "must hold IP addresses"),
        (broken("status.podIPs", [{"ip": 5}]), "status.podIPs[0].ip must be a string"),
        (broken("status.conditions", [42]), "status.conditions[0] must be an object"),
        (broken("spec.containers", [{"ports": [{"name": "http"}]}]), "spec.containers[0].ports[0].containerPort is required"),
        (broken("spec.containers", [{"ports": [{"name": "http", "containerPort": "80"}]}]),
         "spec.containers[0].ports[0].containerPort must be an integer"),
        (broken("metadata.ownerReferences", [{"kind": "ReplicaSet"}]), "ownerReferences"),
        (broken("spec.serviceAccountName", ["web"]), "spec.serviceAccountName must be a string"),
        (broken("spec.ports", [{"name": "x"}], service("broken")), "spec.ports[0].port is required"),
        (broken("spec.ports", [{"port": "80"}], service("broken")), "spec.ports[0].port must be an integer"),
        (broken("spec.ports", [{"port": 80, "targetPort": 1.5}], service("broken")), "targetPort"),
        (broken("spec.selector", "app=web", service("broken")), "spec.selector must be an object"),
        (broken("spec.clusterIPs", "10.0.0.1", service("broken")), "spec.clusterIPs must be a list"),
    ],
)
def test_malformed_object_is_reported_and_left_out(bad: dict[str, Any], problem: str) -> None:
    result = reconcile(ClusterState.of([pod("good", podIP="10.244.0.9"), service(), bad]))
    (error,) = result.errors
    assert isinstance(error, InvalidObject)
    assert (error.kind, error.namespace, error.name) == (bad["kind"], "shop", "broken")
    assert problem in str(error), str(error)
    assert "Kubernetes//Pod/shop/good" in result.model.workloads
    assert "Kubernetes//Pod/shop/broken" not in result.model.workloads


def test_malformed_gateway_is_reported_and_its_clients_see_not_ready() -> None:
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop",
                                                               "labels": {"istio.io/use-waypoint": "waypoint"}}}
    gw = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
          "metadata": {"name": "waypoint", "namespace": "shop"},
          "spec": {"gatewayClassName": "istio-waypoint", "listeners": "mesh"}}
    result = reconcile(ClusterState.of([ns, gw, service()]))
    assert [e.kind for e in result.errors] == ["Gateway"]
    (write,) = result.status
    assert write.condition is not None and write.condition["reason"] == "WaypointIsNotReady"


def test_invalid_object_message_names_object_and_field() -> None:
    with pytest.raises(InvalidObject) as info:
        ClusterState.of([{"kind": "Pod", "metadata": {"namespace": "shop"}}])
    assert str(info.value) == "invalid Pod shop/<unnamed>: metadata.name is missing or not a string"
