"""kube-proxy's rules and /etc/hosts entries from Services and EndpointSlices (runtime/kube/proxy.py)."""

from __future__ import annotations

from runtime.kube.proxy import host_entries, plan_rules

FORWARD = ("10.250.0.1", 6443)


def service(name: str, namespace: str = "shop", ip: str = "10.96.0.20", ports=None, **spec) -> dict:
    return {"metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterIP": ip, "ports": ports or [{"name": "http", "port": 80, "targetPort": "http"}], **spec}}


def slice_of(service_name: str, endpoints, ports=None, namespace: str = "shop", name: str | None = None) -> dict:
    return {"metadata": {"name": name or f"{service_name}-abc", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "ports": ports or [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints}


def ready(ip: str, value: bool | None = True) -> dict:
    return {"addresses": [ip], "conditions": {} if value is None else {"ready": value}}


def test_ready_endpoints_of_every_slice_on_the_slice_port_of_the_same_name():
    slices = [slice_of("web", [ready("10.244.1.10"), ready("10.244.2.10", False)]),
              slice_of("web", [ready("10.244.2.11", None)], name="web-def")]
    assert plan_rules([service("web")], slices, FORWARD) == [
        ("10.96.0.20", 80, [("10.244.1.10", 8080), ("10.244.2.11", 8080)])]


def test_each_service_port_takes_its_own_named_slice_port():
    ports = [{"name": "http", "port": 80}, {"name": "grpc", "port": 9000}]
    slice_ports = [{"name": "grpc", "port": 9090, "protocol": "TCP"}, {"name": "http", "port": 8080, "protocol": "TCP"}]
    rules = plan_rules([service("web", ports=ports)], [slice_of("web", [ready("10.244.1.10")], slice_ports)], FORWARD)
    assert rules == [("10.96.0.20", 80, [("10.244.1.10", 8080)]), ("10.96.0.20", 9000, [("10.244.1.10", 9090)])]


def test_an_unnamed_port_matches_the_unnamed_slice_port():
    rules = plan_rules([service("web", ports=[{"port": 80, "targetPort": 8080}])],
                       [slice_of("web", [ready("10.244.1.10")], [{"port": 8080}])], FORWARD)
    assert rules == [("10.96.0.20", 80, [("10.244.1.10", 8080)])]


def test_slices_of_another_namespace_or_service_are_not_endpoints():
    slices = [slice_of("web", [ready("10.244.1.10")], namespace="other"), slice_of("api", [ready("10.244.1.11")])]
    assert plan_rules([service("web")], slices, FORWARD) == [("10.96.0.20", 80, [])]


def test_headless_external_name_and_udp_get_no_rule():
    services = [service("headless", ip="None"), service("ext", ip="", type="ExternalName"),
                service("dns", ports=[{"name": "dns", "port": 53, "protocol": "UDP"}])]
    assert plan_rules(services, [], FORWARD) == []


def test_the_kubernetes_service_goes_to_the_api_forwarder():
    kubernetes = service("kubernetes", "default", "10.96.0.1", [{"name": "https", "port": 443, "targetPort": 6443}])
    assert plan_rules([kubernetes], [slice_of("kubernetes", [ready("127.0.0.1")], namespace="default")], FORWARD) == [
        ("10.96.0.1", 443, [FORWARD])]


def test_hosts_give_the_short_name_only_in_the_pods_namespace():
    services = [service("web"), service("db", "data", "10.96.0.30"), service("headless", ip="None")]
    assert host_entries(services, "shop") == [
        ("10.96.0.30", ["db.data.svc.cluster.local", "db.data.svc", "db.data"]),
        ("10.96.0.20", ["web.shop.svc.cluster.local", "web.shop.svc", "web.shop", "web"]),
    ]
