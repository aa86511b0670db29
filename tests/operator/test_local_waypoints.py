"""Local mode's waypoint objects: written into the manifest directory for the runtime to run.

A real LocalSource over a temporary directory and the real reconciliation core; the runtime's
own reading of the directory (runtime.manifests) checks the pod it will start.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from wisp.identity import SpiffeId
from runtime.manifests import desired_pods, load_directory, services
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
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"}
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


def test_kubernetes_and_local_modes_make_the_same_deployment_but_for_flags_and_local_files(mesh) -> None:
    _, store, _, waypoints, _, tmp_path = mesh
    gateway = store.snapshot().get("Gateway", "shop", "waypoint")
    kube = waypoint_objects(gateway, "wisp:0.1.0", control_plane="10.0.0.1:15012")
    local = waypoints.objects_for(gateway, "10.96.0.9")
    kube_pod, local_pod = (objs[2]["spec"]["template"] for objs in (kube, local))
    (kube_container,), (local_container,) = kube_pod["spec"]["containers"], local_pod["spec"]["containers"]
    kube_env = {e["name"]: e for e in kube_container["env"]}
    local_env = {e["name"]: e for e in local_container["env"]}
    # Only the token and roots (local files instead of mounted volumes) and POD_NAMESPACE differ.
    changed = {name for name in kube_env if kube_env[name] != local_env[name]}
    assert changed == {"AUTH_TOKEN", "CA_ROOT_CA", "POD_NAMESPACE"} and local_env.keys() == kube_env.keys()
    assert local_env["AUTH_TOKEN"]["value"] == str(waypoints.token_path("shop", "waypoint"))
    assert local_env["CA_ROOT_CA"]["value"] == str(tmp_path / "state" / "root-cert.pem")
    same = lambda c: {k: v for k, v in c.items() if k not in ("image", "args", "env")}  # noqa: E731
    assert same(kube_container) == same(local_container)
    assert {**kube_pod, "spec": None} == {**local_pod, "spec": None}
    assert {**kube_pod["spec"], "containers": None} == {**local_pod["spec"], "containers": None}
    assert kube_container["args"] == [] and kube_container["command"] == local_container["command"]
    assert kube[0] == local[0] and kube[1]["metadata"] == local[1]["metadata"]


def test_the_kubernetes_deployment_is_istios_waypoint_template_run_as_wisp_waypoint() -> None:
    gateway = dict(GATEWAY, metadata=dict(GATEWAY["metadata"], uid="1234"))
    sa, service, deployment = waypoint_objects(gateway, "wisp:0.1.0", control_plane="wisp-operator.wisp.svc:15012",
                                               trust_domain="example.org")
    assert sa["metadata"]["ownerReferences"][0]["uid"] == "1234"
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"] == {
        "sidecar.istio.io/inject": "false", "istio.io/dataplane-mode": "none",
        "service.istio.io/canonical-name": "waypoint", "service.istio.io/canonical-revision": "latest",
        "gateway.networking.k8s.io/gateway-name": "waypoint",
        "gateway.networking.k8s.io/gateway-class-name": "istio-waypoint",
        "istio.io/gateway-name": "waypoint", "gateway.istio.io/managed": "istio.io-mesh-controller"}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "15020"
    (container,) = pod["spec"]["containers"]
    assert (container["name"], container["image"], container["command"]) == ("istio-proxy", "wisp:0.1.0",
                                                                             ["wisp-waypoint"])
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["SERVICE_ACCOUNT"] == {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}
    assert (env["GATEWAY_NAME"], env["XDS_ADDRESS"], env["TRUST_DOMAIN"]) == (
        "waypoint", "wisp-operator.wisp.svc:15012", "example.org")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    token = volumes["istio-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "istio-ca" and env["AUTH_TOKEN"] == mounts["istio-token"] + "/" + token["path"]
    assert volumes["istiod-ca-cert"]["configMap"] == {"name": "istio-ca-root-cert"}
    assert env["CA_ROOT_CA"] == mounts["istiod-ca-cert"] + "/root-cert.pem"
    assert {p["containerPort"] for p in container["ports"]} == {15008, 15020, 15021}
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz/ready"
    assert {(p["name"], p["appProtocol"]) for p in service["spec"]["ports"]} == {("status-port", "tcp"),
                                                                              ("mesh", "hbone")}


def test_the_audience_is_the_one_the_operator_reviews_tokens_for() -> None:
    from wisp.waypoint_deployment import TOKEN_AUDIENCE
    from wisp_operator.kube_auth import DEFAULT_AUDIENCE

    assert TOKEN_AUDIENCE == DEFAULT_AUDIENCE


def test_the_waypoint_process_reads_the_kubernetes_environment() -> None:
    from waypoint.main import parse_args

    gateway = dict(GATEWAY, metadata=dict(GATEWAY["metadata"], uid="1234"))
    (container,) = waypoint_objects(gateway, control_plane="wisp-operator.istio-system.svc:15012")[2][
        "spec"]["template"]["spec"]["containers"]
    # What the kubelet would resolve from the downward API for this pod.
    downward = {"metadata.namespace": "shop", "metadata.name": "waypoint-5d9f-abcde", "status.podIP": "10.244.1.7",
                "status.hostIP": "172.18.0.2", "spec.serviceAccountName": "waypoint", "spec.nodeName": "node1"}
    environ = {e["name"]: e["value"] if "value" in e else downward[e["valueFrom"]["fieldRef"]["fieldPath"]]
               for e in container["env"]}
    with pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key in environ:
                patch.delenv(key)
        for key, value in environ.items():
            patch.setenv(key, value)
        settings, _ = parse_args(list(container["args"]))
    assert (settings.namespace, settings.name) == ("shop", "waypoint")
    assert settings.control_plane == "wisp-operator.istio-system.svc:15012"
    assert settings.identity == SpiffeId("cluster.local", "shop", "waypoint")
    assert settings.token_path() == "/var/run/secrets/tokens/istio-token"
    assert settings.root_path() == "/var/run/secrets/istio/root-cert.pem"


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
