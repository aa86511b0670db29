"""Incremental reconciliation: patching the last build for a Pod change gives exactly the full build.

Every check compares ``Reconciler.update`` (fed the keys the ObjectStore says changed) with
``reconcile`` of the same state from scratch: the model (including key order), the status
writes and the errors, and the delta with ``diff`` of the two models.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wisp.model import KIND_WORKLOAD, Delta, ModelSnapshot, ResourceKey, Workload, diff
from wisp_operator.cluster import ClusterState
from wisp_operator.controller import Controller
from wisp_operator.distributor import ROLE_ZTUNNEL, Distributor, View
from wisp_operator.reconcile import Reconciler, Reconciliation, reconcile
from wisp_operator.store import ObjectNotFound, ObjectStore
from wisp.controlplane.protocol import ConfigView, decode

SOURCE = "manifests"
GATEWAY_NAME = "gateway.networking.k8s.io/gateway-name"
USE_WAYPOINT = "istio.io/use-waypoint"


# --- a small cluster with every kind of thing a Pod's Workload depends on --------------------------


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"istio.io/dataplane-mode": "ambient", **labels}}}


def pod(ns: str, name: str, labels: dict[str, Any] | None = None, *, node: str = "node-a",
        ip: str | None = "10.244.0.1", ready: bool = True, phase: str = "Running",
        annotations: dict[str, str] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip is not None:
        status["podIP"] = ip
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": dict(labels or {}),
                     "annotations": dict(annotations or {"ambient.istio.io/redirection": "enabled"}),
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                          "name": f"{name}-5d8f7c9b4f", "controller": True}]},
        "spec": {"nodeName": node, "serviceAccountName": "sa-" + ns,
                 "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": status,
    }


def service(ns: str, name: str, selector: dict[str, str] | None, ip: str, **labels: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                                                       {"name": "grpc", "port": 9090, "targetPort": 9090}]}
    if selector is not None:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": spec}


def policy(ns: str, name: str, selector: dict[str, str] | None = None, action: str = "ALLOW") -> dict[str, Any]:
    spec: dict[str, Any] = {"action": action, "rules": [{"from": [{"source": {"namespaces": ["bank"]}}]}]}
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": ns, "generation": 1}, "spec": spec}


def peer_authentication(ns: str, name: str, mode: str, selector: dict[str, str] | None = None,
                        ports: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"mtls": {"mode": mode}}
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    if ports:
        spec["portLevelMtls"] = {port: {"mode": m} for port, m in ports.items()}
    return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": "2024-01-01T00:00:00Z"}, "spec": spec}


def base_objects() -> list[dict[str, Any]]:
    return [
        namespace("istio-system"),
        namespace("shop", **{USE_WAYPOINT: "waypoint"}),
        namespace("bank", **{"topology.istio.io/network": "net-bank"}),
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a", "labels": {
            "topology.kubernetes.io/region": "eu", "topology.kubernetes.io/zone": "eu-1"}}},
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b"}},
        # A waypoint whose readiness hangs on its own Pod (no Deployment status, no addresses).
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
         "metadata": {"name": "waypoint", "namespace": "shop", "labels": {"istio.io/waypoint-for": "all"}},
         "spec": {"gatewayClassName": "istio-waypoint",
                  "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}},
        service("shop", "waypoint", None, "10.96.0.10"),
        pod("shop", "waypoint-0", {GATEWAY_NAME: "waypoint"}, ip="10.244.9.9"),
        service("shop", "web", {"app": "web"}, "10.96.0.1"),
        service("shop", "api", {"app": "api"}, "10.96.0.2"),
        service("shop", "front", {"tier": "front"}, "10.96.0.3", **{USE_WAYPOINT: "none"}),
        service("shop", "manual", None, "10.96.0.4"),
        service("bank", "ledger", {"app": "ledger"}, "10.96.1.1"),
        service("bank", "web", {"app": "web"}, "None"),
        policy("shop", "allow-web", {"app": "web"}),
        policy("shop", "deny-front", {"tier": "front"}, action="DENY"),
        policy("shop", "namespace-wide"),
        policy("istio-system", "root-api", {"app": "api"}),
        policy("bank", "allow-ledger", {"app": "ledger"}),
        peer_authentication("istio-system", "default", "STRICT"),
        peer_authentication("shop", "api-permissive-port", "UNSET", {"app": "api"}, {"8080": "PERMISSIVE"}),
        peer_authentication("bank", "ledger-permissive", "PERMISSIVE", {"app": "ledger"}),
        pod("shop", "web-1", {"app": "web", "tier": "front"}, ip="10.244.0.11"),
        pod("shop", "web-2", {"app": "web"}, ip="10.244.0.12", node="node-b"),
        pod("shop", "api-1", {"app": "api"}, ip="10.244.0.13"),
        pod("bank", "ledger-1", {"app": "ledger"}, ip="10.244.1.11", node="node-b"),
        pod("bank", "batch-1", {"app": "batch"}, ip="10.244.1.12", phase="Succeeded"),
    ]


def endpoint_slice(ns: str, name: str, ip: str) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}]}


def node(name: str, *, ready: str = "True", **topology: str) -> dict[str, Any]:
    labels = {f"topology.kubernetes.io/{k}": v for k, v in topology.items()}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "status": {"conditions": [{"type": "Ready", "status": ready}]}}


def new_store(objects: list[dict[str, Any]] | None = None) -> ObjectStore:
    store = ObjectStore()
    store.replace(SOURCE, base_objects() if objects is None else objects)
    return store


class Follower:
    """A Reconciler fed by a store, as the Controller feeds it."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.reconciler = Reconciler()
        self.version = store.version
        self.result = self.reconciler.update(store.snapshot(), None)

    def step(self) -> tuple[Reconciliation, Reconciliation, bool]:
        """(previous, current, patched) after reconciling whatever the store changed."""
        state = self.store.snapshot()
        changed = self.store.changes_since(self.version)
        patched = self.reconciler.can_patch(state, changed)
        previous, self.result = self.result, self.reconciler.update(state, changed)
        self.version = self.store.version
        return previous, self.result, patched


def assert_same_as_full_build(store: ObjectStore, previous: Reconciliation, result: Reconciliation) -> None:
    state = store.snapshot()
    # The store's patched snapshot is the state a fresh one would be, lists and order included.
    fresh = ClusterState(dict(state.objects))
    assert state == fresh
    for kind in ("Pod", "Service", "Namespace"):
        assert [id(o) for o in state.of_kind(kind)] == [id(o) for o in fresh.of_kind(kind)]
    full = reconcile(fresh)
    assert result.model == full.model
    assert list(result.model.workloads) == list(full.model.workloads)
    assert list(result.model.services) == list(full.model.services)
    assert list(result.model.authorizations) == list(full.model.authorizations)
    assert result.status == full.status
    assert [str(e) for e in result.errors] == [str(e) for e in full.errors]
    if result.delta is not None:
        assert result.delta == diff(previous.model, result.model)


def workload(result: Reconciliation, ns: str, name: str) -> Workload | None:
    return result.model.workloads.get(f"Kubernetes//Pod/{ns}/{name}")


# --- a table of changes ---------------------------------------------------------------------------


def _runtime(ns: str, name: str, **kw: Any) -> Callable[[ObjectStore], None]:
    defaults = {"node": "node-a", "pod_ip": "10.244.0.11", "phase": "Running", "ready": True}
    return lambda s: s.set_pod_runtime(ns, name, **{**defaults, **kw})


def _labels(kind: str, ns: str, name: str, **labels: str | None) -> Callable[[ObjectStore], None]:
    return lambda s: s.set_labels(kind, ns, name, labels)


def _apply(obj: dict[str, Any]) -> Callable[[ObjectStore], None]:
    return lambda s: s.apply(SOURCE, obj)


def _several(*changes: Callable[[ObjectStore], None]) -> Callable[[ObjectStore], None]:
    def run(s: ObjectStore) -> None:
        for change in changes:
            change(s)
    return run


CASES = [
    # (name, change, patched?)
    ("pod becomes unready", _runtime("shop", "web-1", ready=False), True),
    ("pod gets a new IP", _runtime("shop", "web-1", pod_ip="10.244.0.99"), True),
    ("pod moves node (locality)", _runtime("shop", "web-2", node="node-a", pod_ip="10.244.0.12"), True),
    ("pod finishes", _runtime("shop", "api-1", phase="Succeeded", ready=False, pod_ip="10.244.0.13"), True),
    ("pod loses its IP", _runtime("shop", "api-1", pod_ip=None, ready=False), True),
    ("finished pod runs again", _runtime("bank", "batch-1", pod_ip="10.244.1.12"), True),
    ("pod is annotated out of redirection",
     _runtime("shop", "web-1", annotations={"ambient.istio.io/redirection": "disabled"}), True),
    ("pod label moves it from one service to another", _labels("Pod", "shop", "web-1", app="api"), True),
    ("pod label brings a selector policy", _labels("Pod", "shop", "web-2", tier="front"), True),
    ("pod label drops every service", _labels("Pod", "shop", "web-1", app=None, tier=None), True),
    ("pod label matches a root-namespace policy and a port-level peer authentication",
     _labels("Pod", "shop", "web-2", app="api"), True),
    ("pod label picks a workload peer authentication", _labels("Pod", "bank", "ledger-1", app="web"), True),
    ("pod opts out of the namespace waypoint", _labels("Pod", "shop", "web-1", **{USE_WAYPOINT: "none"})
     , True),
    ("pod asks for a waypoint that does not exist", _labels("Pod", "bank", "ledger-1", **{USE_WAYPOINT: "nope"}),
     True),
    ("pod's own network label", _labels("Pod", "bank", "ledger-1", **{"topology.istio.io/network": "n2"}), True),
    ("pod added before the others", _apply(pod("shop", "aaa-1", {"app": "web"}, ip="10.244.0.21")), True),
    ("pod added after the others", _apply(pod("shop", "zzz-1", {"app": "api"}, ip="10.244.0.22")), True),
    ("pod added in a new namespace", _apply(pod("empty", "lonely-1", {"app": "web"}, ip="10.244.3.1")), True),
    ("pod deleted", lambda s: s.delete(SOURCE, "Pod", "shop", "web-2"), True),
    ("last pod of a namespace deleted", _several(lambda s: s.delete(SOURCE, "Pod", "bank", "ledger-1"),
                                                 lambda s: s.delete(SOURCE, "Pod", "bank", "batch-1")), True),
    ("pod with a malformed IP", _apply(pod("shop", "web-2", {"app": "web"}, ip="not-an-ip")), True),
    ("pod with malformed labels", _apply(pod("shop", "web-2", {"app": 7})), False),
    ("several pods at once", _several(_runtime("shop", "web-1", ready=False),
                                      _labels("Pod", "shop", "api-1", app="web"),
                                      lambda s: s.delete(SOURCE, "Pod", "bank", "ledger-1")), True),
    ("endpoint slice rewritten", _apply(endpoint_slice("shop", "web-abcde", "10.244.0.11")), True),
    ("endpoint slice rewritten with a pod change",
     _several(_apply(endpoint_slice("shop", "web-abcde", "10.244.0.99")),
              _runtime("shop", "web-1", pod_ip="10.244.0.99")), True),
    ("node status update keeps its locality", _apply(node("node-a", region="eu", zone="eu-1", ready="False")), True),
    ("node added without a locality", _apply(node("node-c")), True),
    ("node moves zone", _apply(node("node-a", region="eu", zone="eu-2")), False),
    ("waypoint's pod becomes unready", _runtime("shop", "waypoint-0", ready=False, pod_ip="10.244.9.9"), False),
    ("pod becomes a waypoint instance", _labels("Pod", "shop", "web-1", **{GATEWAY_NAME: "waypoint"}), False),
    ("namespace label changes", _labels("Namespace", "", "bank", **{USE_WAYPOINT: "waypoint"}), False),
    ("service selector changes", _apply(service("shop", "web", {"app": "api"}, "10.96.0.1")), False),
    ("policy added", _apply(policy("shop", "allow-api", {"app": "api"})), False),
    ("pod and service change together",
     _several(_runtime("shop", "web-1", ready=False), _apply(service("shop", "web", {"tier": "front"}, "10.96.0.1"))),
     False),
]


@pytest.mark.parametrize("change,patched", [pytest.param(c, p, id=n) for n, c, p in CASES])
def test_reconciling_a_change_gives_the_full_build(change, patched):
    store = new_store()
    follower = Follower(store)
    change(store)
    previous, result, was_patched = follower.step()
    assert was_patched == patched
    assert (result.delta is not None) == patched
    assert_same_as_full_build(store, previous, result)


def test_pod_becoming_unready_patches_one_workload_and_says_so_in_the_delta():
    store = new_store()
    follower = Follower(store)
    before = workload(follower.result, "shop", "web-1")
    store.set_pod_runtime("shop", "web-1", node="node-a", pod_ip="10.244.0.11", phase="Running", ready=False)
    previous, result, patched = follower.step()
    after = workload(result, "shop", "web-1")
    assert patched and before.status == "HEALTHY" and after.status == "UNHEALTHY"
    assert result.delta == Delta((after,), ())
    # Everything else is the very same object: nothing to re-encode downstream.
    for uid, other in result.model.workloads.items():
        if uid != after.uid:
            assert other is previous.model.workloads[uid]
    assert result.model.services is previous.model.services


def test_pod_relabelled_into_another_service_changes_its_services_and_policies():
    store = new_store()
    follower = Follower(store)
    store.set_labels("Pod", "shop", "web-2", {"app": "api"})
    _, result, patched = follower.step()
    moved = workload(result, "shop", "web-2")
    assert patched
    assert set(moved.services) == {"shop/api.shop.svc.cluster.local"}
    assert "istio-system/root-api" in moved.authorization_policies
    assert "shop/allow-web" not in moved.authorization_policies


def test_removed_workload_is_a_removal_in_the_delta():
    store = new_store()
    follower = Follower(store)
    store.delete(SOURCE, "Pod", "shop", "api-1")
    _, result, _ = follower.step()
    assert result.delta == Delta((), (ResourceKey(KIND_WORKLOAD, "Kubernetes//Pod/shop/api-1"),))


def test_unchanged_model_gives_an_empty_delta():
    store = new_store()
    follower = Follower(store)
    # The annotation is not one the model reads.
    store.set_pod_runtime("shop", "web-1", node="node-a", pod_ip="10.244.0.11", phase="Running", ready=True,
                          annotations={"example.com/note": "x"})
    previous, result, patched = follower.step()
    assert patched and not result.delta
    assert result.model.workloads == previous.model.workloads


def test_unknown_changes_rebuild_everything():
    store = new_store()
    reconciler = Reconciler()
    reconciler.update(store.snapshot(), None)
    assert not reconciler.can_patch(store.snapshot(), None)
    assert reconciler.can_patch(store.snapshot(), frozenset())


def test_too_many_changed_pods_rebuild_everything():
    store = new_store()
    reconciler = Reconciler(max_patch=1)
    reconciler.update(store.snapshot(), None)
    keys = frozenset({("Pod", "shop", "web-1"), ("Pod", "shop", "web-2")})
    assert not reconciler.can_patch(store.snapshot(), keys)


def test_a_failed_patch_is_not_kept(monkeypatch):
    from wisp_operator import reconcile as reconcile_module

    store = new_store()
    reconciler = Reconciler()
    reconciler.update(store.snapshot(), None)
    version = store.version
    store.set_pod_runtime("shop", "web-1", node="node-a", pod_ip="10.244.0.11", phase="Running", ready=False)

    def broken(*args):
        raise RuntimeError("bug half way through a patch")

    monkeypatch.setattr(reconcile_module, "_pod_outcome", broken)
    with pytest.raises(RuntimeError):
        reconciler.update(store.snapshot(), store.changes_since(version))
    assert reconciler.last is None
    assert not reconciler.can_patch(store.snapshot(), frozenset())


# --- random pod changes ---------------------------------------------------------------------------

POD_NAMES = [("shop", "web-1"), ("shop", "web-2"), ("shop", "api-1"), ("shop", "new-1"),
             ("bank", "ledger-1"), ("bank", "batch-1"), ("bank", "new-2"), ("fresh", "solo-1")]
LABEL_VALUES = {
    "app": st.sampled_from(["web", "api", "ledger", None]),
    "tier": st.sampled_from(["front", None]),
    USE_WAYPOINT: st.sampled_from(["waypoint", "none", None]),
    "topology.istio.io/network": st.sampled_from(["net-2", None]),
    GATEWAY_NAME: st.sampled_from(["waypoint", None]),
}

runtime_changes = st.fixed_dictionaries({
    "node": st.sampled_from(["node-a", "node-b", "node-c"]),
    "pod_ip": st.sampled_from([None, "10.244.5.1", "10.244.5.2", "fd00::5"]),
    "phase": st.sampled_from(["Running", "Running", "Pending", "Succeeded", "Failed"]),
    "ready": st.booleans(),
    "annotations": st.sampled_from([{}, {"ambient.istio.io/redirection": "enabled"},
                                    {"ambient.istio.io/redirection": "disabled"}]),
})
label_changes = st.dictionaries(st.sampled_from(sorted(LABEL_VALUES)), st.none(), min_size=1, max_size=3).flatmap(
    lambda keys: st.fixed_dictionaries({k: LABEL_VALUES[k] for k in keys}))
manifests = st.builds(
    lambda labels, ip, ready, malformed: pod("x", "x", {k: v for k, v in labels.items() if v is not None},
                                              ip="not-an-ip" if malformed else ip, ready=ready),
    label_changes, st.sampled_from([None, "10.244.6.1", "10.244.6.2"]), st.booleans(),
    st.sampled_from([False] * 9 + [True]),
)
operations = st.one_of(
    st.tuples(st.just("runtime"), st.sampled_from(POD_NAMES), runtime_changes),
    st.tuples(st.just("clear-runtime"), st.sampled_from(POD_NAMES), st.none()),
    st.tuples(st.just("labels"), st.sampled_from(POD_NAMES), label_changes),
    st.tuples(st.just("apply"), st.sampled_from(POD_NAMES), manifests),
    st.tuples(st.just("delete"), st.sampled_from(POD_NAMES), st.none()),
    st.tuples(st.just("annotate"), st.sampled_from(POD_NAMES),
              st.sampled_from([{"ambient.istio.io/redirection": "enabled"}, {"ambient.istio.io/redirection": None},
                               {"example.com/unrelated": "x"}])),
)


def perform(store: ObjectStore, op: str, target: tuple[str, str], arg: Any) -> None:
    ns, name = target
    try:
        if op == "runtime":
            store.set_pod_runtime(ns, name, **arg)
        elif op == "clear-runtime":
            store.clear_pod_runtime(ns, name)
        elif op == "labels":
            store.set_labels("Pod", ns, name, arg)
        elif op == "apply":
            obj = copy.deepcopy(arg)
            obj["metadata"].update(name=name, namespace=ns)
            store.apply(SOURCE, obj)
        elif op == "delete":
            store.delete(SOURCE, "Pod", ns, name)
        elif op == "annotate":
            store.set_annotations("Pod", ns, name, arg)
    except ObjectNotFound:
        pass  # changing a pod that is not there: nothing happens, as with kubectl


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(operations, min_size=1, max_size=3), min_size=1, max_size=12))
def test_random_pod_changes_patch_to_the_full_build(batches):
    store = new_store()
    follower = Follower(store)
    for batch in batches:
        for op, target, arg in batch:
            perform(store, op, target, arg)
        previous, result, _ = follower.step()
        assert_same_as_full_build(store, previous, result)


def test_random_changes_do_mostly_patch():
    """The property above would pass if everything rebuilt; make sure patching is what it tests."""
    store = new_store()
    follower = Follower(store)
    for i in range(20):
        store.set_pod_runtime("shop", "web-1", node="node-a", pod_ip="10.244.0.11", phase="Running", ready=bool(i % 2))
        follower.step()
    assert follower.reconciler.patches == 20 and follower.reconciler.full_builds == 1


# --- the store's side -----------------------------------------------------------------------------


def test_store_names_the_keys_changed_since_a_version():
    store = new_store()
    start = store.version
    store.set_pod_runtime("shop", "web-1", node="node-a", pod_ip="10.244.0.11", phase="Running", ready=False)
    store.set_labels("Namespace", "", "bank", {"team": "money"})
    store.delete(SOURCE, "Pod", "shop", "web-2")
    assert store.changes_since(start) == {("Pod", "shop", "web-1"), ("Namespace", "", "bank"),
                                          ("Pod", "shop", "web-2")}
    assert store.changes_since(start + 2) == {("Pod", "shop", "web-2")}
    assert store.changes_since(store.version) == frozenset()


def test_store_change_that_changes_nothing_names_no_key():
    store = new_store()
    start = store.version
    store.replace(SOURCE, base_objects())
    assert store.version == start and store.changes_since(start) == frozenset()


def test_store_cannot_say_what_changed_since_an_unknown_version():
    store = new_store()
    assert store.changes_since(store.version + 1) is None
    assert store.changes_since(-1) is None


def test_store_forgets_changes_beyond_its_history(monkeypatch):
    from wisp_operator import store as store_module

    monkeypatch.setattr(store_module, "CHANGE_HISTORY", 4)
    store = new_store()
    start = store.version
    for i in range(6):
        store.set_pod_runtime("shop", "web-1", node="node-a", pod_ip="10.244.0.11", phase="Running", ready=bool(i % 2))
    assert store.changes_since(start) is None
    assert store.changes_since(store.version - 3) == {("Pod", "shop", "web-1")}


def test_store_snapshot_is_patched_from_the_last_one():
    store = new_store()
    first = store.snapshot()
    store.set_pod_runtime("shop", "web-1", node="node-a", pod_ip="10.244.0.11", phase="Running", ready=False)
    second = store.snapshot()
    # Untouched namespaces' lists are shared, the touched one is a new list.
    assert second.pods("bank") is first.pods("bank")
    assert second.pods("shop") is not first.pods("shop")
    assert first.get("Pod", "shop", "web-1")["status"]["conditions"][0]["status"] == "True"
    assert second == ClusterState(dict(second.objects))


# --- controller and distributor -------------------------------------------------------------------


async def _next_version(distributor: Distributor, version: str) -> None:
    async def changed() -> None:
        while distributor.version == version:
            await asyncio.sleep(0.001)

    await asyncio.wait_for(changed(), 5)


def test_controller_patches_a_pod_change_and_publishes_its_delta():
    async def scenario() -> None:
        store = new_store()
        distributor = Distributor()
        controller = Controller(store, distributor)
        task = asyncio.create_task(controller.run())
        try:
            await asyncio.wait_for(controller.synced.wait(), 5)
            first = distributor.version
            store.set_pod_runtime("shop", "web-1", node="node-a", pod_ip="10.244.0.11", phase="Running", ready=False)
            await _next_version(distributor, first)
            assert controller.reconciler.patches == 1 and controller.reconciler.full_builds == 1
            assert distributor.snapshot == reconcile(store.snapshot()).model
            _, message = distributor.next_message(View(ROLE_ZTUNNEL, "node-a"), first)
            decoded = decode(message)
            assert decoded.type == "delta" and [w.name for w in decoded.delta.upserts] == ["web-1"]
            # A Namespace change is not a Pod change: full build.
            second = distributor.version
            store.set_labels("Namespace", "", "bank", {"topology.istio.io/network": "net-moved"})
            await _next_version(distributor, second)
            assert controller.reconciler.full_builds == 2
            assert distributor.snapshot == reconcile(store.snapshot()).model
        finally:
            task.cancel()

    asyncio.run(scenario())


def _views(distributor: Distributor, nodes: list[str]) -> dict[str, ModelSnapshot]:
    out = {}
    for node in nodes:
        view = ConfigView()
        view.apply(decode(distributor.next_message(View(ROLE_ZTUNNEL, node), None)[1]))
        out[node] = view.snapshot
    return out


def test_distributor_given_the_delta_serves_what_it_would_have_computed():
    """Node filtering (which namespaces' policies a ztunnel gets) follows precomputed deltas too."""

    async def scenario() -> None:
        store = new_store()
        follower = Follower(store)
        given_delta, computed = Distributor(), Distributor()
        for d in (given_delta, computed):
            d.publish(follower.result.model)
        moves = [("bank", "ledger-1", "node-a"), ("shop", "web-2", "node-a"), ("bank", "ledger-1", "node-c"),
                 ("shop", "web-1", "node-c"), ("shop", "api-1", "node-c")]
        nodes = ["node-a", "node-b", "node-c"]
        for ns, name, node in moves:
            bases = {n: (given_delta.version, computed.version) for n in nodes}
            store.set_pod_runtime(ns, name, node=node, pod_ip="10.244.7.1", phase="Running", ready=True)
            _, result, patched = follower.step()
            assert patched
            given_delta.publish(result.model, result.delta)
            computed.publish(result.model)
            assert _views(given_delta, nodes) == _views(computed, nodes)
            for node in nodes:
                view = View(ROLE_ZTUNNEL, node)
                a, b = given_delta.next_message(view, bases[node][0]), computed.next_message(view, bases[node][1])
                da, db = decode(a[1]), decode(b[1])
                assert (da.type, set(map(repr, da.delta.upserts)), set(da.delta.removals)) == \
                       (db.type, set(map(repr, db.delta.upserts)), set(db.delta.removals))

    asyncio.run(scenario())


def test_same_delta_is_encoded_once_per_filter():
    async def scenario() -> None:
        store = new_store()
        follower = Follower(store)
        distributor = Distributor()
        base = distributor.publish(follower.result.model)
        store.set_pod_runtime("shop", "web-1", node="node-a", pod_ip="10.244.0.11", phase="Running", ready=False)
        _, result, _ = follower.step()
        distributor.publish(result.model, result.delta)
        first = distributor.next_message(View(ROLE_ZTUNNEL, "node-a"), base)[1]
        assert distributor.next_message(View(ROLE_ZTUNNEL, "node-a"), base)[1] is first
        # Another node has other policies in its view: its own message, not node-a's.
        other = distributor.next_message(View(ROLE_ZTUNNEL, "node-b"), base)[1]
        assert other is not first and decode(other).type == "delta"

    asyncio.run(scenario())
