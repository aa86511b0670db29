"""The local source (a manifest directory), the object store it feeds, and Deployment -> Pods."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from wisp_operator.cluster import ClusterState
from wisp_operator.local_source import (
    POD_TEMPLATE_HASH_LABEL,
    LocalSource,
    ManifestError,
    SourceError,
    pods_for_deployment,
)
from wisp_operator.reconcile import build_model
from wisp_operator.store import InvalidChange, ObjectNotFound, ObjectStore

SHOP_NS = """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    istio.io/dataplane-mode: ambient
"""

WEB_POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  serviceAccountName: web
  containers: [{name: app, command: [echo-server]}]
"""

WEB_SVC = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
"""

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web, version: v1}
    spec:
      serviceAccountName: web
      containers: [{name: app, command: [echo-server]}]
"""

DEADLINE = 5.0


def write(directory: Path, name: str, *docs: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("---\n".join(docs))
    return path


def keys(store: ObjectStore) -> set[tuple[str, str, str]]:
    return set(store.snapshot().objects)


def loaded(directory: Path, store: ObjectStore | None = None) -> tuple[LocalSource, ObjectStore]:
    store = store or ObjectStore()
    source = LocalSource(directory, store)
    assert source.load() == []
    return source, store


# --- loading -------------------------------------------------------------------------------------


def test_multi_document_file_loads_every_object_and_skips_empty_documents(tmp_path: Path) -> None:
    write(tmp_path, "shop.yaml", SHOP_NS, "", WEB_POD, "# only a comment\n", WEB_SVC)
    _, store = loaded(tmp_path)
    assert keys(store) == {("Namespace", "", "shop"), ("Pod", "shop", "web"), ("Service", "shop", "web")}


def test_files_are_found_recursively_with_both_suffixes_and_hidden_ones_skipped(tmp_path: Path) -> None:
    write(tmp_path, "ns.yml", SHOP_NS)
    write(tmp_path, "apps/web/pod.yaml", WEB_POD)
    write(tmp_path, ".git/junk.yaml", "not: [valid")
    write(tmp_path, "README.md", "kind: Nonsense")
    _, store = loaded(tmp_path)
    assert keys(store) == {("Namespace", "", "shop"), ("Pod", "shop", "web")}


def test_list_items_are_expanded(tmp_path: Path) -> None:
    write(tmp_path, "list.yaml", """\
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop}}
- {apiVersion: v1, kind: ServiceAccount, metadata: {name: web, namespace: shop}}
""")
    _, store = loaded(tmp_path)
    assert keys(store) == {("Namespace", "", "shop"), ("ServiceAccount", "shop", "web")}


def test_namespace_defaults_to_default_for_namespaced_kinds_only(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all}
spec: {}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, namespace: ignored}
""")
    _, store = loaded(tmp_path)
    assert store.get("AuthorizationPolicy", "default", "deny-all")["metadata"]["namespace"] == "default"
    assert "namespace" not in store.get("Namespace", "", "shop")["metadata"]


@pytest.mark.parametrize("kind, api_version", [
    ("Gateway", "gateway.networking.k8s.io/v1beta1"),
    ("HTTPRoute", "gateway.networking.k8s.io/v1"),
    ("GRPCRoute", "gateway.networking.k8s.io/v1"),
    ("PeerAuthentication", "security.istio.io/v1beta1"),
    ("RequestAuthentication", "security.istio.io/v1"),
    ("ServiceAccount", "v1"),
    ("Deployment", "apps/v1"),
])
def test_supported_kinds_load_with_their_api_versions(tmp_path: Path, kind: str, api_version: str) -> None:
    specs = {"Deployment": "{template: {spec: {containers: []}}}",
             # The Gateway CRD requires a class and listeners (deploy/crds).
             "Gateway": "{gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}"}
    spec = specs.get(kind, "{}")
    write(tmp_path, "x.yaml", f"apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: x}}\nspec: {spec}\n")
    _, store = loaded(tmp_path)
    # A Deployment also brings its Pod (the control plane plays the ReplicaSet controller).
    assert {k for k in keys(store) if k[0] == kind} == {(kind, "default", "x")}
    assert len(keys(store)) == (2 if kind == "Deployment" else 1)


def test_deployment_pods_are_in_the_store_under_the_names_the_runtime_uses(tmp_path: Path) -> None:
    write(tmp_path, "d.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\n"
                              "spec: {replicas: 2, selector: {matchLabels: {app: web}},\n"
                              "  template: {metadata: {labels: {app: web}}, spec: {containers: [{name: c}]}}}\n")
    _, store = loaded(tmp_path)
    deployment = store.get("Deployment", "shop", "web")
    expected = {p["metadata"]["name"] for p in pods_for_deployment(deployment)}
    assert {k[2] for k in keys(store) if k[0] == "Pod"} == expected
    assert len(expected) == 2


# --- bad manifests -------------------------------------------------------------------------------

BAD = {
    "invalid yaml": ("apiVersion: v1\nkind: Pod\nmetadata: {name: broken\n", "", "", "invalid YAML at line"),
    "not a mapping": ("- just\n- a list\n", "", "", "must be an object"),
    "unknown kind": ("apiVersion: v1\nkind: Widget\nmetadata: {name: w1}\n", "Widget", "w1",
                     'no matches for kind "Widget" in version "v1"'),
    "wrong apiVersion": ("apiVersion: security.istio.io/v2\nkind: AuthorizationPolicy\nmetadata: {name: ap}\n",
                         "AuthorizationPolicy", "ap",
                         'no matches for kind "AuthorizationPolicy" in version "security.istio.io/v2"'),
    "missing name": ("apiVersion: v1\nkind: Service\nmetadata: {namespace: shop}\n", "Service", "",
                     "metadata.name is missing"),
    "metadata not a mapping": ("apiVersion: v1\nkind: Service\nmetadata: [web]\n", "Service", "",
                               "metadata is missing or not an object"),
    "non-string label": ("apiVersion: v1\nkind: Pod\nmetadata: {name: p1, labels: {version: 2}}\n", "Pod", "p1",
                         "metadata.labels must map strings to strings"),
    "annotations not a mapping": ("apiVersion: v1\nkind: Pod\nmetadata: {name: p1, annotations: [a]}\n", "Pod",
                                  "p1", "metadata.annotations must be an object"),
    "spec not a mapping": ("apiVersion: v1\nkind: Service\nmetadata: {name: s1}\nspec: [1]\n", "Service", "s1",
                           "spec must be an object"),
    "deployment without template": ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d1}\nspec: {}\n",
                                    "Deployment", "d1", "spec.template is missing"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_manifest_is_reported_with_file_document_and_object(tmp_path: Path, case: str) -> None:
    text, kind, name, problem = BAD[case]
    path = write(tmp_path, "app.yaml", WEB_SVC, text)
    errors = LocalSource(tmp_path, ObjectStore()).load()
    assert len(errors) == 1
    error = errors[0]
    assert isinstance(error, ManifestError)
    assert (error.path, error.document, error.kind, error.name) == (str(path), 2, kind, name)
    assert problem in error.problem
    assert str(path) in str(error) and (name in str(error))


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_file_keeps_its_previous_objects_and_other_files_still_load(tmp_path: Path, case: str) -> None:
    write(tmp_path, "app.yaml", WEB_POD, WEB_SVC)
    source, store = loaded(tmp_path)
    before = store.snapshot()

    write(tmp_path, "app.yaml", WEB_POD.replace("app: web", "app: changed"), BAD[case][0])
    write(tmp_path, "ns.yaml", SHOP_NS)
    errors = source.load()

    assert [e.path for e in errors] == [str(tmp_path / "app.yaml")]
    state = store.snapshot()
    assert state.get("Pod", "shop", "web") == before.get("Pod", "shop", "web")
    assert state.get("Service", "shop", "web") == before.get("Service", "shop", "web")
    assert state.namespace("shop") is not None


def test_first_load_of_a_bad_file_contributes_nothing(tmp_path: Path) -> None:
    write(tmp_path, "app.yaml", WEB_POD, BAD["unknown kind"][0])
    write(tmp_path, "ns.yaml", SHOP_NS)
    store = ObjectStore()
    LocalSource(tmp_path, store).load()
    assert keys(store) == {("Namespace", "", "shop")}


def test_fixing_a_bad_file_applies_it_and_clears_its_error(tmp_path: Path) -> None:
    write(tmp_path, "app.yaml", WEB_POD, BAD["missing name"][0])
    source = LocalSource(tmp_path, store := ObjectStore())
    assert source.load()
    write(tmp_path, "app.yaml", WEB_POD)
    assert source.load() == []
    assert keys(store) == {("Pod", "shop", "web")}


def test_bad_manifest_is_logged_once_while_it_persists(tmp_path: Path) -> None:
    write(tmp_path, "app.yaml", BAD["unknown kind"][0])
    source = LocalSource(tmp_path, ObjectStore())
    with structlog.testing.capture_logs() as logs:
        source.load()
        source.load()
    bad = [entry for entry in logs if entry["event"] == "bad manifest"]
    assert len(bad) == 1
    assert bad[0]["file"] == str(tmp_path / "app.yaml") and bad[0]["kind"] == "Widget"


def test_missing_directory_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        LocalSource(tmp_path / "nope", ObjectStore())


# --- conflicts between files ---------------------------------------------------------------------


def test_conflicting_definitions_keep_the_first_file_and_name_both(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", WEB_SVC)
    second = write(tmp_path, "b.yaml", WEB_SVC.replace("10.96.0.20", "10.96.0.99"), SHOP_NS)
    store = ObjectStore()
    errors = LocalSource(tmp_path, store).load()

    assert len(errors) == 1
    assert (errors[0].path, errors[0].other_path, errors[0].name) == (str(second), str(first), "web")
    assert str(first) in str(errors[0]) and str(second) in str(errors[0])
    assert store.get("Service", "shop", "web")["spec"]["clusterIP"] == "10.96.0.20"
    assert store.get("Namespace", "", "shop") is not None


def test_identical_definitions_in_two_files_are_not_a_conflict(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", SHOP_NS, WEB_POD)
    write(tmp_path, "b.yaml", SHOP_NS, WEB_SVC)
    _, store = loaded(tmp_path)
    assert len(store) == 3


# --- reloads and versions ------------------------------------------------------------------------


def test_deleting_a_file_removes_the_objects_it_contributed(tmp_path: Path) -> None:
    write(tmp_path, "ns.yaml", SHOP_NS)
    pod_file = write(tmp_path, "pod.yaml", WEB_POD)
    source, store = loaded(tmp_path)
    pod_file.unlink()
    assert source.load() == []
    assert keys(store) == {("Namespace", "", "shop")}


def test_reloading_unchanged_or_renamed_files_keeps_the_version(tmp_path: Path) -> None:
    path = write(tmp_path, "app.yaml", SHOP_NS, WEB_POD)
    source, store = loaded(tmp_path)
    version = store.version
    source.load()
    path.rename(tmp_path / "renamed.yml")
    source.load()
    assert store.version == version


def test_version_bumps_once_per_real_change(tmp_path: Path) -> None:
    path = write(tmp_path, "app.yaml", WEB_POD)
    source, store = loaded(tmp_path)
    version = store.version
    path.write_text(WEB_POD + "\n# a comment changes the bytes, not the objects\n")
    source.load()
    assert store.version == version
    path.write_text(WEB_POD.replace("serviceAccountName: web", "serviceAccountName: other"))
    source.load()
    assert store.version == version + 1


def test_store_snapshot_is_a_cluster_state_built_once_per_version(tmp_path: Path) -> None:
    write(tmp_path, "app.yaml", SHOP_NS, WEB_POD)
    _, store = loaded(tmp_path)
    state = store.snapshot()
    assert isinstance(state, ClusterState)
    assert state.pods("shop")[0]["metadata"]["name"] == "web"
    assert store.snapshot() is state


def test_wait_for_change_returns_when_the_version_moves() -> None:
    store = ObjectStore()

    async def main() -> int:
        waiter = asyncio.create_task(store.wait_for_change(store.version))
        await asyncio.sleep(0)
        assert not waiter.done()
        store.apply("test", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
        async with asyncio.timeout(DEADLINE):
            return await waiter

    assert asyncio.run(main()) == 1


def test_first_source_to_claim_an_object_owns_it_until_it_lets_go() -> None:
    store = ObjectStore()
    mine = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa", "namespace": "shop"}}
    theirs = copy.deepcopy(mine)
    theirs["metadata"]["labels"] = {"from": "runtime"}
    store.replace("local", [mine])
    assert store.replace("runtime", [theirs]) == [("ServiceAccount", "shop", "sa")]
    assert store.get("ServiceAccount", "shop", "sa") is mine
    store.replace("local", [])
    assert store.get("ServiceAccount", "shop", "sa") is theirs


# --- watching ------------------------------------------------------------------------------------


def watching(directory: Path, scenario: Callable[[LocalSource, ObjectStore], Awaitable[None]]) -> None:
    """Run ``scenario`` while ``LocalSource.watch`` runs, then stop the watch."""

    async def main() -> None:
        store = ObjectStore()
        source = LocalSource(directory, store)
        task = asyncio.create_task(source.watch(debounce_ms=50, resync=1.0))
        try:
            await until(store, lambda _: store.version > 0 or not any(directory.iterdir()))
            await scenario(source, store)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())


async def until(store: ObjectStore, condition: Callable[[ClusterState], bool]) -> None:
    async with asyncio.timeout(DEADLINE):
        while not condition(store.snapshot()):
            await store.wait_for_change(store.version)


def test_watch_picks_up_a_created_file(tmp_path: Path) -> None:
    async def scenario(source: LocalSource, store: ObjectStore) -> None:
        write(tmp_path, "apps/pod.yaml", WEB_POD)
        await until(store, lambda s: s.get("Pod", "shop", "web") is not None)

    watching(tmp_path, scenario)


def test_watch_picks_up_a_modified_file(tmp_path: Path) -> None:
    write(tmp_path, "pod.yaml", WEB_POD)

    async def scenario(source: LocalSource, store: ObjectStore) -> None:
        write(tmp_path, "pod.yaml", WEB_POD.replace("app: web", "app: shop-web"))
        await until(store, lambda s: s.get("Pod", "shop", "web")["metadata"]["labels"] == {"app": "shop-web"})

    watching(tmp_path, scenario)


def test_watch_picks_up_a_deleted_file(tmp_path: Path) -> None:
    write(tmp_path, "ns.yaml", SHOP_NS)
    pod_file = write(tmp_path, "pod.yaml", WEB_POD)

    async def scenario(source: LocalSource, store: ObjectStore) -> None:
        pod_file.unlink()
        await until(store, lambda s: s.get("Pod", "shop", "web") is None)
        assert keys(store) == {("Namespace", "", "shop")}

    watching(tmp_path, scenario)


def test_watch_reports_a_bad_edit_and_keeps_the_objects(tmp_path: Path) -> None:
    write(tmp_path, "pod.yaml", WEB_POD)

    async def scenario(source: LocalSource, store: ObjectStore) -> None:
        version = store.version
        write(tmp_path, "pod.yaml", "kind: [\n")
        async with asyncio.timeout(DEADLINE):
            while not source.errors:
                await asyncio.sleep(0.02)
        assert store.version == version
        assert store.get("Pod", "shop", "web") is not None

    watching(tmp_path, scenario)


# --- pod runtime state ---------------------------------------------------------------------------


def running(store: ObjectStore, **overrides: Any) -> None:
    args: dict[str, Any] = {"node": "node-1", "pod_ip": "10.244.1.5", "phase": "Running", "ready": True,
                            "annotations": {"ambient.istio.io/redirection": "enabled"}}
    args.update(overrides)
    store.set_pod_runtime("shop", "web", **args)


def test_pod_runtime_is_merged_as_kubernetes_shows_it(tmp_path: Path) -> None:
    write(tmp_path, "pod.yaml", WEB_POD)
    _, store = loaded(tmp_path)
    running(store)
    pod = store.get("Pod", "shop", "web")
    assert pod["spec"]["nodeName"] == "node-1"
    assert pod["spec"]["serviceAccountName"] == "web"
    assert pod["status"]["podIP"] == "10.244.1.5"
    assert pod["status"]["podIPs"] == [{"ip": "10.244.1.5"}]
    assert pod["status"]["phase"] == "Running"
    assert {"type": "Ready", "status": "True"} in pod["status"]["conditions"]
    assert pod["metadata"]["annotations"] == {"ambient.istio.io/redirection": "enabled"}
    assert pod["metadata"]["labels"] == {"app": "web"}


def test_pod_runtime_leaves_the_manifest_object_untouched(tmp_path: Path) -> None:
    write(tmp_path, "pod.yaml", WEB_POD)
    _, store = loaded(tmp_path)
    manifest = store.get("Pod", "shop", "web")
    pristine = copy.deepcopy(manifest)
    running(store)
    assert manifest == pristine
    store.clear_pod_runtime("shop", "web")
    assert store.get("Pod", "shop", "web") == pristine


def test_pod_readiness_replaces_the_ready_condition(tmp_path: Path) -> None:
    write(tmp_path, "pod.yaml", WEB_POD)
    _, store = loaded(tmp_path)
    running(store)
    running(store, ready=False)
    conditions = store.get("Pod", "shop", "web")["status"]["conditions"]
    assert [c for c in conditions if c["type"] == "Ready"] == [{"type": "Ready", "status": "False"}]


def test_pod_runtime_survives_a_manifest_reload(tmp_path: Path) -> None:
    path = write(tmp_path, "pod.yaml", WEB_POD)
    source, store = loaded(tmp_path)
    running(store)
    path.write_text(WEB_POD.replace("app: web", "app: web2"))
    source.load()
    pod = store.get("Pod", "shop", "web")
    assert pod["status"]["podIP"] == "10.244.1.5" and pod["metadata"]["labels"] == {"app": "web2"}


def test_unchanged_pod_runtime_does_not_bump_the_version(tmp_path: Path) -> None:
    write(tmp_path, "pod.yaml", WEB_POD)
    _, store = loaded(tmp_path)
    running(store)
    version = store.version
    running(store)
    assert store.version == version


@pytest.mark.parametrize("change", [
    {"phase": "Exploded"},
    {"pod_ip": "not-an-ip"},
])
def test_malformed_pod_runtime_is_refused(tmp_path: Path, change: dict[str, Any]) -> None:
    write(tmp_path, "pod.yaml", WEB_POD)
    _, store = loaded(tmp_path)
    with pytest.raises(InvalidChange):
        running(store, **change)


def test_runtime_for_an_unknown_pod_is_refused() -> None:
    with pytest.raises(ObjectNotFound, match="Pod shop/web not found"):
        running(ObjectStore())


def test_overlays_go_with_a_deleted_object(tmp_path: Path) -> None:
    path = write(tmp_path, "pod.yaml", WEB_POD)
    source, store = loaded(tmp_path)
    running(store)
    path.unlink()
    source.load()
    write(tmp_path, "pod.yaml", WEB_POD)
    source.load()
    assert "status" not in store.get("Pod", "shop", "web")


# --- label overlay -------------------------------------------------------------------------------


def test_label_overlay_survives_a_manifest_reload(tmp_path: Path) -> None:
    path = write(tmp_path, "ns.yaml", SHOP_NS)
    source, store = loaded(tmp_path)
    store.set_labels("Namespace", "", "shop", {"istio.io/use-waypoint": "waypoint"})
    path.write_text(SHOP_NS + "  annotations: {note: edited}\n")
    source.load()
    ns = store.get("Namespace", "", "shop")
    assert ns["metadata"]["labels"] == {"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "waypoint"}
    assert ns["metadata"]["annotations"] == {"note": "edited"}


def test_label_set_to_none_removes_a_manifest_label(tmp_path: Path) -> None:
    write(tmp_path, "ns.yaml", SHOP_NS)
    source, store = loaded(tmp_path)
    store.set_labels("Namespace", "", "shop", {"istio.io/dataplane-mode": None})
    source.load()
    assert store.get("Namespace", "", "shop")["metadata"]["labels"] == {}


@pytest.mark.parametrize("labels", [{"bad key!": "x"}, {"ok": "bad value!"}, {"ok": "x" * 64}])
def test_invalid_labels_are_refused(tmp_path: Path, labels: dict[str, str]) -> None:
    write(tmp_path, "ns.yaml", SHOP_NS)
    _, store = loaded(tmp_path)
    with pytest.raises(InvalidChange):
        store.set_labels("Namespace", "", "shop", labels)


# --- Deployments -> Pods -------------------------------------------------------------------------


def deployment(tmp_path: Path, text: str = DEPLOYMENT) -> dict[str, Any]:
    write(tmp_path, "deploy.yaml", text)
    _, store = loaded(tmp_path)
    deploy = store.get("Deployment", "shop", "web")
    assert deploy is not None
    return deploy


def test_pods_for_deployment_are_named_owned_and_labelled_as_by_kubernetes(tmp_path: Path) -> None:
    pods = pods_for_deployment(deployment(tmp_path))
    assert len(pods) == 2
    template_hash = pods[0]["metadata"]["labels"][POD_TEMPLATE_HASH_LABEL]
    for pod in pods:
        meta = pod["metadata"]
        assert meta["namespace"] == "shop"
        assert meta["name"].startswith(f"web-{template_hash}-") and len(meta["name"].rsplit("-", 1)[1]) == 5
        assert meta["labels"] == {"app": "web", "version": "v1", POD_TEMPLATE_HASH_LABEL: template_hash}
        [owner] = meta["ownerReferences"]
        assert (owner["apiVersion"], owner["kind"], owner["name"], owner["controller"]) == (
            "apps/v1", "ReplicaSet", f"web-{template_hash}", True)
        assert pod["spec"]["containers"] == [{"name": "app", "command": ["echo-server"]}]
    assert len({p["metadata"]["name"] for p in pods}) == 2


def test_pods_for_deployment_are_deterministic_and_follow_the_template(tmp_path: Path) -> None:
    deploy = deployment(tmp_path)
    names = [p["metadata"]["name"] for p in pods_for_deployment(deploy)]
    assert names == [p["metadata"]["name"] for p in pods_for_deployment(copy.deepcopy(deploy))]
    assert [p["metadata"]["name"] for p in pods_for_deployment(deploy, replicas=1)] == names[:1]
    changed = copy.deepcopy(deploy)
    changed["spec"]["template"]["metadata"]["labels"]["version"] = "v2"
    assert not set(names) & {p["metadata"]["name"] for p in pods_for_deployment(changed)}


def test_pods_for_deployment_do_not_share_state_with_the_deployment(tmp_path: Path) -> None:
    deploy = deployment(tmp_path)
    pristine = copy.deepcopy(deploy)
    for pod in pods_for_deployment(deploy):
        pod["spec"]["containers"].append({"name": "extra"})
        pod["metadata"]["labels"]["x"] = "y"
    assert deploy == pristine


def test_deployment_pods_with_runtime_state_become_workloads_named_for_the_deployment(tmp_path: Path) -> None:
    deploy = deployment(tmp_path)
    store = ObjectStore()
    store.replace("local", [deploy])
    store.replace("runtime", pods_for_deployment(deploy))
    for i, pod in enumerate(pods_for_deployment(deploy)):
        store.set_pod_runtime("shop", pod["metadata"]["name"], node="node-1", pod_ip=f"10.244.1.{10 + i}",
                              phase="Running", ready=True,
                              annotations={"ambient.istio.io/redirection": "enabled"})
    model = build_model(store.snapshot())
    workloads = sorted(model.workloads.values(), key=lambda w: w.name)
    assert len(workloads) == 2
    for wl in workloads:
        assert (wl.workload_name, wl.workload_type) == ("web", "deployment")
        assert (wl.status, wl.tunnel_protocol, wl.node) == ("HEALTHY", "HBONE", "node-1")
        assert wl.canonical_revision == "v1"
    assert sorted(a for wl in workloads for a in wl.addresses) == ["10.244.1.10", "10.244.1.11"]
