"""Local mode's waypoint objects: written into the manifest directory for the runtime to run.

A real LocalSource over a temporary directory and the real reconciliation core; the runtime's
own reading of the directory (wisp.runtime.manifests) checks the pod it will start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from wisp.identity import SpiffeId
from wisp.runtime.manifests import desired_pods, load_directory, services
from wisp.waypoint_deployment import waypoint_objects
from wisp_operator.local_source import LocalSource
from wisp_operator.local_waypoints import LocalWaypoints
from wisp_operator.reconcile import reconcile
from wisp_operator.store import ObjectStore

GATEWAY = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
    "metadata": {"name": "waypoint", "namespace": "shop", "labels": {"istio.io/waypoint-for": "service"}},
    "spec": {"gatewayClassName": "istio-waypoint",
             "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
}
NAMESPACE = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
TAKEN = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
         "spec": {"clusterIP": "10.96.7.7", "selector": {"app": "web"}, "ports": [{"port": 80}]}}


class Tokens:
    def __init__(self) -> None:
        self.issued: list[SpiffeId] = []

    def __call__(self, identity: SpiffeId) -> str:
        self.issued.append(identity)
        return f"token-{len(self.issued)}"


@pytest.fixture
def mesh(tmp_path: Path):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "app.yaml").write_text(yaml.safe_dump_all([NAMESPACE, TAKEN, GATEWAY]))
    store = ObjectStore()
    source = LocalSource(manifests, store)
    source.load()
    tokens = Tokens()
    waypoints = LocalWaypoints(source, state_dir=tmp_path / "state", control_plane="10.0.0.1:15012",
                               issue_token=tokens, command=["wisp-waypoint"])
    return manifests, store, source, waypoints, tokens, tmp_path


def by_kind(store: ObjectStore, kind: str) -> list[dict[str, Any]]:
    return store.snapshot().of_kind(kind, "shop")


def test_a_waypoint_gateway_gets_its_service_account_service_and_deployment(mesh) -> None:
    manifests, store, _, waypoints, _, _ = mesh
    waypoints.sync(store.snapshot())
    assert (manifests / "wisp-waypoints" / "shop.waypoint.yaml").is_file()
    (sa,) = by_kind(store, "ServiceAccount")
    deployment = next(d for d in by_kind(store, "Deployment") if d["metadata"]["name"] == "waypoint")
    service = next(s for s in by_kind(store, "Service") if s["metadata"]["name"] == "waypoint")
    for obj in (sa, deployment, service):
        assert obj["metadata"]["ownerReferences"][0]["kind"] == "Gateway"
        assert obj["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] == "waypoint"
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {("status-port", 15021), ("mesh", 15008)}
    assert service["spec"]["clusterIP"].startswith("10.96.") and service["spec"]["clusterIP"] != "10.96.7.7"
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"]["istio.io/dataplane-mode"] == "none"
    (container,) = template["spec"]["containers"]
    assert container["command"] == ["wisp-waypoint"]
    assert container["args"][:4] == ["--namespace", "shop", "--name", "waypoint"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert template["spec"]["serviceAccountName"] == "waypoint"


def test_the_runtime_runs_the_waypoint_pod_and_serves_its_service(mesh) -> None:
    manifests, store, _, waypoints, _, _ = mesh
    waypoints.sync(store.snapshot())
    objects = load_directory(manifests)
    (pod,) = [p for p in desired_pods(objects) if p["metadata"]["name"].startswith("waypoint-")]
    assert pod["spec"]["containers"][0]["command"] == ["wisp-waypoint"]
    assert pod["metadata"]["labels"]["istio.io/dataplane-mode"] == "none"
    (svc,) = [s for s in services(objects) if s.name == "waypoint"]
    assert svc.cluster_ip and {p.port for p in svc.ports} == {15008, 15021}
    # The control plane's store holds the same pod (it plays the ReplicaSet controller too).
    assert any(p["metadata"]["name"] == pod["metadata"]["name"] for p in store.snapshot().pods("shop"))


def test_the_waypoint_gets_a_token_for_its_own_identity(mesh) -> None:
    _, store, _, waypoints, tokens, tmp_path = mesh
    waypoints.sync(store.snapshot())
    waypoints.sync(store.snapshot())
    assert tokens.issued == [SpiffeId("cluster.local", "shop", "waypoint")]
    token = tmp_path / "state" / "tokens" / "waypoint-shop-waypoint"
    assert token.read_text() == "token-1"
    assert token.stat().st_mode & 0o777 == 0o600


def test_unchanged_objects_are_not_written_again_and_keep_their_cluster_ip(mesh) -> None:
    manifests, store, _, waypoints, _, _ = mesh
    waypoints.sync(store.snapshot())
    path = manifests / "wisp-waypoints" / "shop.waypoint.yaml"
    first, stamp = path.read_text(), path.stat().st_mtime_ns
    version = store.version
    waypoints.sync(store.snapshot())
    assert path.stat().st_mtime_ns == stamp and store.version == version
    fresh = LocalWaypoints(waypoints.source, state_dir=waypoints.state_dir, control_plane="10.0.0.1:15012",
                           issue_token=Tokens(), command=["wisp-waypoint"])
    fresh.sync(store.snapshot())  # a restarted operator keeps the address
    assert path.read_text() == first


def test_deleting_the_gateway_removes_its_objects_even_after_a_restart(mesh) -> None:
    manifests, store, source, waypoints, _, _ = mesh
    waypoints.sync(store.snapshot())
    source.delete_objects([("Gateway", "shop", "waypoint")])
    restarted = LocalWaypoints(source, state_dir=waypoints.state_dir, control_plane="10.0.0.1:15012",
                               issue_token=Tokens())
    restarted.sync(store.snapshot())
    assert not (manifests / "wisp-waypoints" / "shop.waypoint.yaml").exists()
    assert not by_kind(store, "Deployment") and not by_kind(store, "ServiceAccount")
    assert [s["metadata"]["name"] for s in by_kind(store, "Service")] == ["web"]


def test_the_core_sees_the_waypoint_once_its_pod_is_ready(mesh) -> None:
    _, store, _, waypoints, _, _ = mesh
    waypoints.sync(store.snapshot())
    (pod,) = [p for p in store.snapshot().pods("shop") if p["metadata"]["name"].startswith("waypoint-")]
    store.set_pod_runtime("shop", pod["metadata"]["name"], node="node-0", pod_ip="10.244.0.50",
                          phase="Running", ready=True)
    result = reconcile(store.snapshot())
    programmed = next(w for w in result.status if getattr(w, "kind", "") == "Gateway").fields["conditions"][1]
    assert (programmed["type"], programmed["status"]) == ("Programmed", "True")
    workload = next(w for w in result.model.workloads.values() if w.name == pod["metadata"]["name"])
    assert workload.waypoint is None and workload.service_account == "waypoint"


def test_kubernetes_and_local_modes_make_the_same_objects_but_for_the_command() -> None:
    gateway = dict(GATEWAY, metadata=dict(GATEWAY["metadata"], uid="1234"))
    kube = waypoint_objects(gateway)
    local = waypoint_objects(gateway, command=["wisp-waypoint"], args=[])
    strip = lambda objs: [{**o, "spec": None} if o["kind"] == "Deployment" else o for o in objs]  # noqa: E731
    assert strip(kube) == strip(local)
    assert kube[2]["spec"]["template"]["spec"]["containers"][0]["args"] == ["waypoint"]
    assert kube[0]["metadata"]["ownerReferences"][0]["uid"] == "1234"


def test_the_waypoint_process_accepts_the_command_line_and_finds_its_token(mesh) -> None:
    from waypoint.main import parse_args

    _, store, _, waypoints, _, tmp_path = mesh
    waypoints.sync(store.snapshot())
    deployment = next(d for d in by_kind(store, "Deployment") if d["metadata"]["name"] == "waypoint")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    settings, _ = parse_args(container["args"])
    assert (settings.namespace, settings.name, settings.control_plane) == ("shop", "waypoint", "10.0.0.1:15012")
    assert settings.identity == SpiffeId("cluster.local", "shop", "waypoint")
    assert settings.token_path() == str(waypoints.token_path("shop", "waypoint"))
    assert settings.root_path() == str(tmp_path / "state" / "root-cert.pem")
