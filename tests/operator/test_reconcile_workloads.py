"""Pods -> Workloads and Services -> model Services."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from wisp.model import Locality, LoadBalancing, PortMapping, Workload
from wisp_operator.cluster import ClusterState, MeshSettings
from wisp_operator.reconcile import build_model


def pod(
    name: str = "web-1",
    ns: str = "shop",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    phase: str = "Running",
    ready: str = "True",
    ip: str | None = "10.244.0.5",
    **extra: Any,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": "web"},
                     "annotations": annotations or {}},
        "spec": {
            "nodeName": "node-a",
            "serviceAccountName": "web",
            "containers": [{"name": "app", "ports": [{"name": "http-api", "containerPort": 8080}]}],
        },
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": ready}]},
    }
    if ip is not None:
        obj["status"]["podIP"] = ip
    for path, value in extra.items():
        section, _, key = path.partition("__")
        obj[section][key] = value
    return obj


def service(name: str = "web", ns: str = "shop", selector: dict[str, str] | None = None,
            ports: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"} if selector is None else selector,
                 "ports": ports if ports is not None else [{"name": "http", "port": 80, "targetPort": 8080}],
                 **spec},
    }


def workload(*objs: dict[str, Any], settings: MeshSettings | None = None) -> Workload | None:
    model = build_model(ClusterState.of(objs, settings))
    return next(iter(model.workloads.values()), None)


def only_workload(*objs: dict[str, Any], settings: MeshSettings | None = None) -> Workload:
    w = workload(*objs, settings=settings)
    assert w is not None
    return w


# --- identity and addressing --------------------------------------------------------------------


def test_uid_is_cluster_pod_namespace_name() -> None:
    assert only_workload(pod()).uid == "Kubernetes//Pod/shop/web-1"
    assert only_workload(pod(), settings=MeshSettings(cluster_id="east")).uid == "east//Pod/shop/web-1"


def test_addresses_come_from_pod_ips_in_order() -> None:
    p = pod(status__podIPs=[{"ip": "10.244.0.5"}, {"ip": "fd00::5"}])
    assert only_workload(p).addresses == ("10.244.0.5", "fd00::5")


def test_address_falls_back_to_pod_ip() -> None:
    assert only_workload(pod(ip="10.244.0.9")).addresses == ("10.244.0.9",)


@pytest.mark.parametrize(
    "the_pod",
    [pod(ip=None), pod(phase="Succeeded"), pod(phase="Failed"), pod(spec__hostNetwork=True)],
    ids=["no-ip", "succeeded", "failed", "host-network"],
)
def test_pods_without_a_workload(the_pod: dict[str, Any]) -> None:
    assert workload(the_pod) is None


def test_pending_pod_with_an_ip_is_an_unhealthy_workload() -> None:
    assert only_workload(pod(phase="Pending", ready="False")).status == "UNHEALTHY"


def test_service_account_node_and_identity() -> None:
    w = only_workload(pod())
    assert (w.service_account, w.node, w.trust_domain) == ("web", "node-a", "cluster.local")
    assert w.identity() == "spiffe://cluster.local/ns/shop/sa/web"


def test_service_account_defaults_to_default() -> None:
    p = pod()
    del p["spec"]["serviceAccountName"]
    assert only_workload(p).service_account == "default"


def test_trust_domain_comes_from_settings() -> None:
    assert only_workload(pod(), settings=MeshSettings(trust_domain="corp.example")).trust_domain == "corp.example"


@pytest.mark.parametrize(
    "annotations, protocol",
    [
        ({"ambient.istio.io/redirection": "enabled"}, "HBONE"),
        ({"ambient.istio.io/redirection": "pending"}, "NONE"),
        ({}, "NONE"),
    ],
)
def test_hbone_only_when_redirection_is_enabled(annotations: dict[str, str], protocol: str) -> None:
    assert only_workload(pod(annotations=annotations)).tunnel_protocol == protocol


# --- health ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "phase, ready, deleting, status",
    [
        ("Running", "True", False, "HEALTHY"),
        ("Running", "False", False, "UNHEALTHY"),
        ("Pending", "True", False, "UNHEALTHY"),
        ("Running", "True", True, "UNHEALTHY"),
    ],
    ids=["running-ready", "not-ready", "pending", "being-deleted"],
)
def test_healthy_only_when_running_ready_and_not_deleted(phase: str, ready: str, deleting: bool, status: str) -> None:
    p = pod(phase=phase, ready=ready)
    if deleting:
        p["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert only_workload(p).status == status


# --- telemetry names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels, name, revision",
    [
        ({"service.istio.io/canonical-name": "shop-web", "app.kubernetes.io/name": "x", "app": "y",
          "service.istio.io/canonical-revision": "r1", "app.kubernetes.io/version": "r2", "version": "r3"},
         "shop-web", "r1"),
        ({"app.kubernetes.io/name": "x", "app": "y", "app.kubernetes.io/version": "r2", "version": "r3"}, "x", "r2"),
        ({"app": "y", "version": "r3"}, "y", "r3"),
        ({}, "web-1", "latest"),
    ],
)
def test_canonical_name_and_revision_follow_label_precedence(labels: dict[str, str], name: str, revision: str) -> None:
    p = pod(labels=labels or {"other": "x"})
    w = only_workload(p)
    assert (w.canonical_name, w.canonical_revision) == (name, revision)


@pytest.mark.parametrize(
    "owner, labels, name, kind",
    [
        ({"kind": "ReplicaSet", "name": "web-7d4b9c8f6d", "controller": True},
         {"pod-template-hash": "7d4b9c8f6d"}, "web", "deployment"),
        ({"kind": "ReplicaSet", "name": "web-7d4b9c8f6d", "controller": True}, {}, "web", "deployment"),
        ({"kind": "ReplicaSet", "name": "standalone", "controller": True}, {}, "standalone", "pod"),
        ({"kind": "Job", "name": "migrate", "controller": True}, {}, "migrate", "job"),
        ({"kind": "Job", "name": "nightly-29012345", "controller": True}, {}, "nightly", "cronjob"),
        ({"kind": "StatefulSet", "name": "db", "controller": True}, {}, "db", "pod"),
        ({"kind": "DaemonSet", "name": "agent", "controller": True}, {}, "agent", "pod"),
        (None, {}, "web-1", "pod"),
    ],
    ids=["replicaset-with-hash-label", "replicaset-hash-by-shape", "bare-replicaset", "job", "cronjob",
         "statefulset", "daemonset", "no-owner"],
)
def test_workload_name_and_type_from_owner(owner: dict[str, Any] | None, labels: dict[str, str],
                                           name: str, kind: str) -> None:
    p = pod(labels={"app": "web", **labels})
    if owner is not None:
        p["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", **owner}]
    w = only_workload(p)
    assert (w.workload_name, w.workload_type) == (name, kind)


def test_canonical_name_defaults_to_workload_name() -> None:
    p = pod(labels={"pod-template-hash": "7d4b9c8f6d"})
    p["metadata"]["ownerReferences"] = [{"kind": "ReplicaSet", "name": "web-7d4b9c8f6d", "controller": True}]
    assert only_workload(p).canonical_name == "web"


def test_locality_comes_from_the_node() -> None:
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a", "labels": {
        "topology.kubernetes.io/region": "eu", "topology.kubernetes.io/zone": "eu-1a"}}}
    assert only_workload(pod(), node).locality == Locality("eu", "eu-1a", "")


# --- services membership -------------------------------------------------------------------------


def test_selecting_service_is_listed_with_its_ports() -> None:
    w = only_workload(pod(), service())
    assert w.services == {"shop/web.shop.svc.cluster.local": (PortMapping(80, 8080, "HTTP11"),)}


@pytest.mark.parametrize(
    "target, resolved",
    [
        ({"targetPort": "http-api"}, (PortMapping(80, 8080),)),
        ({"targetPort": 9000}, (PortMapping(80, 9000),)),
        ({"targetPort": "9001"}, (PortMapping(80, 9001),)),
        ({}, (PortMapping(80, 80),)),
        ({"targetPort": "missing"}, ()),
    ],
    ids=["named-resolved-from-container", "numeric", "numeric-string", "missing-means-port", "unknown-name-dropped"],
)
def test_target_port_resolution(target: dict[str, Any], resolved: tuple[PortMapping, ...]) -> None:
    svc = service(ports=[{"name": "web", "port": 80, **target}])
    assert only_workload(pod(), svc).services["shop/web.shop.svc.cluster.local"] == resolved


@pytest.mark.parametrize(
    "svc",
    [
        service(selector={"app": "other"}),
        service(selector={"app": "web", "tier": "front"}),
        service(ns="other"),
        service(selector={}),
    ],
    ids=["different-label", "extra-selector-label", "other-namespace", "no-selector"],
)
def test_services_that_do_not_select_the_pod(svc: dict[str, Any]) -> None:
    assert only_workload(pod(), svc).services == {}


def test_several_services_are_listed_sorted() -> None:
    w = only_workload(pod(labels={"app": "web", "tier": "front"}), service("b-svc"),
                      service("a-svc", selector={"tier": "front"}))
    assert list(w.services) == ["shop/a-svc.shop.svc.cluster.local", "shop/b-svc.shop.svc.cluster.local"]


# --- model services -------------------------------------------------------------------------------


def model_service(*objs: dict[str, Any]) -> Any:
    model = build_model(ClusterState.of(objs))
    return next(iter(model.services.values()), None)


def test_service_hostname_and_vips() -> None:
    s = model_service(service(clusterIPs=["10.96.0.20", "fd00:96::20"]))
    assert s.hostname == "web.shop.svc.cluster.local"
    assert s.addresses == ("10.96.0.20", "fd00:96::20")


def test_headless_service_has_no_vip() -> None:
    assert model_service(service(clusterIP="None")).addresses == ()


def test_external_name_services_are_not_modelled() -> None:
    assert model_service(service(type="ExternalName", externalName="example.com")) is None


@pytest.mark.parametrize(
    "port, expected",
    [
        ({"name": "http", "port": 80, "targetPort": 8080}, PortMapping(80, 8080, "HTTP11")),
        ({"name": "http2-x", "port": 80}, PortMapping(80, 80, "HTTP2")),
        ({"name": "grpc-web", "port": 80}, PortMapping(80, 80, "GRPC")),
        ({"name": "tcp", "port": 80}, PortMapping(80, 80, "")),
        ({"name": "x", "port": 80, "appProtocol": "kubernetes.io/h2c"}, PortMapping(80, 80, "HTTP2")),
        ({"name": "http", "port": 80, "appProtocol": "grpc"}, PortMapping(80, 80, "GRPC")),
        ({"name": "web", "port": 80, "targetPort": "http-api"}, PortMapping(80, 0, "")),
    ],
    ids=["http-name", "http2-prefix", "grpc-prefix", "tcp", "app-protocol-h2c", "app-protocol-wins", "named-target-is-0"],
)
def test_service_ports_and_app_protocol(port: dict[str, Any], expected: PortMapping) -> None:
    assert model_service(service(ports=[port])).ports == (expected,)


def test_prefer_close_traffic_distribution_sets_load_balancing() -> None:
    s = model_service(service(trafficDistribution="PreferClose"))
    assert s.load_balancing == LoadBalancing(("NETWORK", "REGION", "ZONE", "SUBZONE"), "FAILOVER")


def test_building_does_not_modify_the_input_objects() -> None:
    objs = [pod(), service()]
    before = copy.deepcopy(objs)
    build_model(ClusterState.of(objs))
    assert objs == before
