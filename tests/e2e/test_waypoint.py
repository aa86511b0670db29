"""Waypoints end to end on the shared local mesh: `wisp waypoint apply` deploys a real waypoint
process, ztunnels send the namespace's Service traffic through it, and HTTPRoutes and L7
AuthorizationPolicies apply there (issue 11's Must-show list).

The module's fixture adds a namespace `shop` (a client, echo v1 and v2, Services `echo` on ports
80 and 8080, `echo-v1`, `echo-v2`) and enrols it with `wisp waypoint apply -n shop
--enroll-namespace --wait`. Every test removes the routes and policies it applies; the last one
deletes the waypoint and checks traffic goes direct again.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from .objects import client, echo_deployment, manifest, namespace, service

APP = manifest(
    namespace("shop"),
    client("shop"),
    client("shop", "stranger"),
    *(echo_deployment("shop", f"echo-{v}", labels={"app": "echo", "version": v}, account="echo")
      for v in ("v1", "v2")),
    service("shop", "echo", ports=[{"name": "http", "port": 80, "targetPort": 8080},
                                   {"name": "http-alt", "port": 8080, "targetPort": 8080}]),
    *(service("shop", f"echo-{v}", {"app": "echo", "version": v}) for v in ("v1", "v2")),
)

MARKER = "wisp-waypoint-marker-51c9"


def version(body: str) -> str:
    """Which Deployment answered, from the echo app's `hostname=` line."""
    found = re.search(r"^hostname=echo-(v\d)-", body, re.M)
    return found.group(1) if found else "?"


def echo_headers(body: str) -> dict[str, str]:
    return dict(re.findall(r"^header (\S+?)=(.*)$", body, re.M))


def waypoint_pod(mesh) -> dict:
    pods = [p for p in mesh.status()["pods"] if p["namespace"] == "shop" and p["name"].startswith("waypoint-")]
    assert pods, "no waypoint pod in shop"
    return pods[0]


def waypoint_metrics(mesh) -> str:
    pod = waypoint_pod(mesh)
    return mesh.in_node(pod["node"], "curl", "-s", "-m", "5", f"http://{pod['ip']}:15020/metrics").stdout


def requests_total(metrics: str, **labels: str) -> float:
    """The sum of istio_requests_total samples whose labels include `labels`."""
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith("istio_requests_total{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def many(mesh, url: str, count: int, *extra: str) -> list[str]:
    """`count` requests on one keep-alive connection (curl's URL globbing); the bodies, in order."""
    separator = f"--{secrets.token_hex(4)}--"
    result = mesh.in_pod("shop", "client", "curl", "-s", "-m", "60", *extra, "-w", separator,
                         f"{url}?n=[1-{count}]", timeout=90)
    bodies = result.stdout.split(separator)[:-1]
    assert len(bodies) == count, result.stderr[-500:]
    return bodies


@contextmanager
def applied(mesh, text: str, name: str) -> Iterator[None]:
    mesh.apply(text, name)
    try:
        yield
    finally:
        mesh.delete(text, name)


def route_in_effect(mesh, check, what: str, timeout: float = 20):
    """Poll until `check()` is true: the waypoint applies a new route or policy shortly after
    the control plane accepted it (one config push)."""
    return mesh.wait_for(check, timeout=timeout, interval=0.3, what=what)


@pytest.fixture(scope="module")
def shop(mesh):
    mesh.apply(APP, "waypoint-app")
    try:
        mesh.wait_for(lambda: all(p["ready"] for p in mesh.status()["pods"] if p["namespace"] == "shop")
                      and sum(1 for p in mesh.status()["pods"] if p["namespace"] == "shop") == 4,
                      timeout=60, what="shop's pods ready")
        enrolled = mesh.wisp("waypoint", "apply", "-n", "shop", "--enroll-namespace", "--wait",
                             "--waypoint-timeout", "90s", timeout=120)
        yield enrolled
    finally:
        mesh.wisp("waypoint", "delete", "-n", "shop", "--all")
        mesh.delete(APP, "waypoint-app")


# -- the waypoint comes up and carries the namespace's traffic ------------------------------------


def test_apply_enroll_namespace_wait_returns_once_the_waypoint_is_programmed(mesh, shop):
    assert shop.returncode == 0, shop.stderr
    assert shop.stdout.splitlines() == ["✅ waypoint shop/waypoint applied",
                                        "✅ waypoint shop/waypoint is ready!",
                                        '✅ namespace shop labeled with "istio.io/use-waypoint: waypoint"']
    listed = mesh.wisp("waypoint", "list", "-n", "shop")
    assert listed.stdout.splitlines()[1].split() == ["waypoint", "default", "service", "True"]
    assert waypoint_pod(mesh)["ready"]


def test_requests_cross_client_ztunnel_waypoint_and_destination_ztunnel_over_hbone(mesh, shop):
    client, waypoint = mesh.pod("shop", "client"), waypoint_pod(mesh)
    echo_ips = {p["ip"] for p in mesh.status()["pods"] if p["namespace"] == "shop" and p["name"].startswith("echo-")}
    before = requests_total(waypoint_metrics(mesh), reporter="waypoint", destination_service_name="echo")
    # Pod to pod: the waypoint's own config stream (15012) goes to the node network.
    pods_only = "tcp and src net 10.244.0.0/16 and dst net 10.244.0.0/16 and not port 15020 and not port 15021"
    with mesh.capture(waypoint["netns"], "eth0", pods_only) as cap:
        code, body = mesh.curl("shop", "client", f"http://echo.shop/{MARKER}")
    assert code == 200, body
    peers = re.findall(r"IP (\S+) > (\S+?):", cap["summary"])
    assert peers, cap["summary"]
    # Every packet at the waypoint is HBONE: in from the client's ztunnel, out to an echo pod's.
    assert all(a.endswith(".15008") or b.endswith(".15008") for a, b in peers), cap["summary"][:2000]
    hosts = {a.rsplit(".", 1)[0] for a, b in peers} | {b.rsplit(".", 1)[0] for a, b in peers}
    assert client["ip"] in hosts and hosts & echo_ips, hosts
    assert f"{waypoint['ip']}.15008" in {b for a, b in peers}
    assert MARKER not in cap["text"]
    after = requests_total(waypoint_metrics(mesh), reporter="waypoint", destination_service_name="echo")
    assert after == before + 1


def test_the_waypoint_counts_requests_with_istios_labels(mesh, shop):
    many(mesh, "http://echo.shop/counted", 5)
    metrics = waypoint_metrics(mesh)
    assert requests_total(metrics, reporter="waypoint", response_code="200", request_protocol="http",
                          source_principal="spiffe://cluster.local/ns/shop/sa/client",
                          destination_service="echo.shop.svc.cluster.local") >= 5
    for name in ("istio_request_duration_milliseconds_bucket", "istio_request_bytes_bucket", "istio_response_bytes_bucket"):
        assert any(line.startswith(name + "{") and 'reporter="waypoint"' in line for line in metrics.splitlines()), name


# -- routing ---------------------------------------------------------------------------------------


def route(name: str, rules: str, parent: str = "{group: \"\", kind: Service, name: echo, port: 80}") -> str:
    return (f"apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: shop}}\n"
            f"spec:\n  parentRefs: [{parent}]\n  rules:\n{rules}")


def test_a_70_30_weighted_route_lands_within_5_points_over_1000_requests(mesh, shop):
    text = route("weighted", """
  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-route, value: weighted}]}}]
    backendRefs: [{name: echo-v1, port: 80, weight: 70}, {name: echo-v2, port: 80, weight: 30}]
""")
    with applied(mesh, text, "weighted"):
        route_in_effect(mesh, lambda: echo_headers(mesh.curl("shop", "client", "http://echo.shop/")[1]).get("x-route") == "weighted",
                        "the weighted route")
        counts = Counter(version(body) for body in many(mesh, "http://echo.shop/split", 1000))
    assert set(counts) == {"v1", "v2"}, counts
    assert abs(counts["v1"] / 1000 - 0.70) <= 0.05, counts


def test_header_path_and_query_matches_pick_the_backend(mesh, shop):
    text = route("matches", """
  - matches: [{headers: [{name: x-version, value: v2}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /beta}}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{queryParams: [{name: version, value: v2}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - backendRefs: [{name: echo-v1, port: 80}]
""")
    with applied(mesh, text, "matches"):
        route_in_effect(mesh, lambda: {version(b) for b in many(mesh, "http://echo.shop/", 6)} == {"v1"}, "the match route")
        assert {version(b) for b in many(mesh, "http://echo.shop/", 5, "-H", "x-version: v2")} == {"v2"}
        assert {version(b) for b in many(mesh, "http://echo.shop/beta/items", 5)} == {"v2"}
        assert {version(b) for b in many(mesh, "http://echo.shop/betamax", 5)} == {"v1"}  # whole path elements
        assert {version(b) for b in many(mesh, "http://echo.shop/x", 5, "-G", "-d", "version=v2")} == {"v2"}
        assert {version(b) for b in many(mesh, "http://echo.shop/x", 5, "-H", "x-version: v3")} == {"v1"}


def test_redirects_answer_the_status_and_location(mesh, shop):
    text = route("redirects", """
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}}]
  - matches: [{path: {type: Exact, value: /elsewhere}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: shop.example}}]
  - backendRefs: [{name: echo, port: 80}]
""")

    def redirect(path: str) -> tuple[str, str]:
        result = mesh.in_pod("shop", "client", "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                             f"http://echo.shop{path}")
        code, _, location = result.stdout.partition(" ")
        return code, location

    with applied(mesh, text, "redirects"):
        route_in_effect(mesh, lambda: redirect("/old/a")[0] == "301", "the redirect route")
        assert redirect("/old/a/b?x=1") == ("301", "http://echo.shop/new/a/b?x=1")
        assert redirect("/elsewhere") == ("302", "https://shop.example/elsewhere")
        assert redirect("/older")[0] == "200"


def test_rewrites_and_header_modifiers_are_visible_at_the_echo_app_and_the_client(mesh, shop):
    text = route("rewrites", """
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - {type: URLRewrite, urlRewrite: {hostname: echo.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v1}}}
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-set, value: by-route}], add: [{name: x-added, value: "1"}], remove: [x-secret]}}
    - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-served-by, value: waypoint-route}]}}
    backendRefs: [{name: echo, port: 80}]
""")
    with applied(mesh, text, "rewrites"):
        route_in_effect(mesh, lambda: "path=/v1/items" in mesh.curl("shop", "client", "http://echo.shop/api/items")[1], "the rewrite")
        result = mesh.in_pod("shop", "client", "curl", "-s", "-m", "5", "-D", "-", "-H", "x-secret: s3", "-H", "x-set: client",
                             "http://echo.shop/api/items?q=1")
        head, _, body = result.stdout.partition("\n\n")  # text mode: curl's CRLFs read as newlines
        assert re.search(r"^method=GET path=/v1/items\?q=1$", body, re.M), result.stdout
        seen = echo_headers(body)
        assert seen["host"] == "echo.internal"
        assert seen["x-set"] == "by-route" and seen["x-added"] == "1" and "x-secret" not in seen
        assert re.search(r"^x-served-by: waypoint-route$", head, re.M | re.I), head


def test_a_request_to_a_pod_ip_is_not_routed_by_the_services_route(mesh, shop):
    text = route("all-to-v2", """
  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-route, value: all-to-v2}]}}]
    backendRefs: [{name: echo-v2, port: 80}]
""")
    v1 = next(p for p in mesh.status()["pods"] if p["namespace"] == "shop" and p["name"].startswith("echo-v1-"))
    with applied(mesh, text, "all-to-v2"):
        route_in_effect(mesh, lambda: {version(b) for b in many(mesh, "http://echo.shop/", 6)} == {"v2"}, "the route")
        bodies = many(mesh, f"http://{v1['ip']}:8080/", 5)
    assert {version(b) for b in bodies} == {"v1"}
    assert all("x-route" not in echo_headers(b) for b in bodies)


def test_a_route_scoped_to_port_80_does_not_apply_on_8080(mesh, shop):
    text = route("port-80-only", """
  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-route, value: port-80}]}}]
    backendRefs: [{name: echo-v2, port: 80}]
""")
    with applied(mesh, text, "port-80-only"):
        route_in_effect(mesh, lambda: {version(b) for b in many(mesh, "http://echo.shop/", 6)} == {"v2"}, "the route")
        on_8080 = many(mesh, "http://echo.shop:8080/", 30)
    assert all("x-route" not in echo_headers(b) for b in on_8080)
    assert "v1" in {version(b) for b in on_8080}  # the Service's own endpoints: v1 and v2


# -- HTTP/2 and gRPC --------------------------------------------------------------------------------

GRPC_CLIENT = """
import sys, grpc
def encode(text):
    data = text.encode()
    return b"\\x0a" + bytes([len(data)]) + data
def decode(data):
    fields, i = {}, 0
    while i < len(data):
        key, size = data[i], data[i + 1]
        fields[key >> 3] = data[i + 2:i + 2 + size].decode()
        i += 2 + size
    return fields
with grpc.insecure_channel(sys.argv[1]) as channel:
    echo = channel.unary_unary("/wisp.echo.Echo/Echo", request_serializer=encode, response_deserializer=decode)
    for _ in range(int(sys.argv[2])):
        answer = echo("through the waypoint", timeout=5)
        print(answer.get(3), answer.get(1))
"""


def grpc_calls(mesh, count: int) -> list[tuple[str, str]]:
    """(hostname, echoed message) of `count` unary calls on one gRPC channel to echo:80."""
    ip = json.loads(mesh.wisp("get", "svc", "echo", "-n", "shop", "-o", "json").stdout)["spec"]["clusterIP"]
    result = mesh.in_pod("shop", "client", sys.executable, "-c", GRPC_CLIENT, f"ipv4:{ip}:80", str(count), timeout=30)
    assert result.returncode == 0, result.stderr[-1500:]
    return [tuple(line.split(" ", 1)) for line in result.stdout.splitlines()]


H2C_CLIENT = """
import sys, httpx
with httpx.Client(http1=False, http2=True, timeout=5) as client:
    for n in range(int(sys.argv[2])):
        answer = client.get(sys.argv[1] + "?n=%d" % n)
        print(answer.http_version, answer.status_code, answer.text.split(chr(10))[0])
"""


def test_an_h2c_client_goes_through_the_waypoint(mesh, shop):
    # httpx, not curl: curl 7.88 sends nothing for a second URL on a reused prior-knowledge connection.
    before = requests_total(waypoint_metrics(mesh), reporter="waypoint", destination_service_name="echo")
    result = mesh.in_pod("shop", "client", sys.executable, "-c", H2C_CLIENT, "http://echo.shop/h2c", "5", timeout=30)
    assert result.returncode == 0, result.stderr[-1500:]
    answers = [line.split(" ", 2) for line in result.stdout.splitlines()]
    assert len(answers) == 5 and all(a[:2] == ["HTTP/2", "200"] and version(a[2]) in ("v1", "v2") for a in answers), answers
    assert requests_total(waypoint_metrics(mesh), reporter="waypoint", destination_service_name="echo") == before + 5


def test_grpc_calls_go_through_the_waypoint_and_a_grpcroute_picks_the_backend(mesh, shop):
    before = requests_total(waypoint_metrics(mesh), reporter="waypoint", request_protocol="grpc")
    calls = grpc_calls(mesh, 4)
    assert [message for _, message in calls] == ["through the waypoint"] * 4
    assert requests_total(waypoint_metrics(mesh), reporter="waypoint", request_protocol="grpc",
                          grpc_response_status="0") == before + 4
    text = """
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc-to-v2, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{method: {service: wisp.echo.Echo, method: Echo}}]
    backendRefs: [{name: echo-v2, port: 80}]
"""
    with applied(mesh, text, "grpc-to-v2"):
        route_in_effect(mesh, lambda: {version(f"hostname={h}") for h, _ in grpc_calls(mesh, 6)} == {"v2"}, "the GRPCRoute")


# -- L7 policy -------------------------------------------------------------------------------------


def test_get_is_allowed_and_post_denied_by_the_clients_spiffe_identity(mesh, shop):
    text = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-read-only, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]
    to: [{operation: {methods: [GET]}}]
"""
    with applied(mesh, text, "read-only"):
        route_in_effect(mesh, lambda: mesh.curl("shop", "client", "http://echo.shop/", "-X", "POST")[0] == 403, "the policy")
        assert mesh.curl("shop", "client", "http://echo.shop/")[0] == 200
        code, body = mesh.curl("shop", "client", "http://echo.shop/", "-X", "POST", "-d", "x=1")
        assert (code, body) == (403, "RBAC: access denied")
        # Same pod network, same request, another service account: not the principal allowed.
        code, body = mesh.curl("shop", "stranger", "http://echo.shop/")
        assert (code, body) == (403, "RBAC: access denied")
    route_in_effect(mesh, lambda: mesh.curl("shop", "stranger", "http://echo.shop/")[0] == 200, "the policy removed")


def test_a_deny_on_a_path_refuses_only_that_path(mesh, shop):
    text = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin", "/admin/*"]}}]}]
"""
    with applied(mesh, text, "no-admin"):
        route_in_effect(mesh, lambda: mesh.curl("shop", "client", "http://echo.shop/admin/users")[0] == 403, "the deny")
        assert mesh.curl("shop", "client", "http://echo.shop/public/../admin")[0] == 403
        assert mesh.curl("shop", "client", "http://echo.shop/administrators")[0] == 200
        assert mesh.curl("shop", "client", "http://echo.shop/")[0] == 200


# -- binding ---------------------------------------------------------------------------------------


def service_conditions(mesh, name: str) -> list[dict]:
    listing = json.loads(mesh.wisp("get", "svc", name, "-n", "shop", "-o", "json").stdout)
    return (listing.get("status") or {}).get("conditions") or []


def test_a_binding_to_a_missing_waypoint_refuses_traffic_and_says_why(mesh, shop):
    mesh.label("svc", "echo-v1", "istio.io/use-waypoint=ghost", namespace="shop")
    try:
        bound = mesh.wait_for(lambda: next((c for c in service_conditions(mesh, "echo-v1")
                                            if c["type"] == "istio.io/WaypointBound" and c["status"] == "False"), None),
                              what="WaypointBound=False on echo-v1")
        assert "ghost" in bound["message"], bound
        route_in_effect(mesh, lambda: mesh.curl("shop", "client", "http://echo-v1.shop/")[0] == 0, "refusal")
        # No bypass: repeated attempts are all refused, none reaches the app.
        assert {mesh.curl("shop", "client", "http://echo-v1.shop/", timeout=3)[0] for _ in range(3)} == {0}
    finally:
        mesh.label("svc", "echo-v1", "istio.io/use-waypoint-", namespace="shop")
    route_in_effect(mesh, lambda: mesh.curl("shop", "client", "http://echo-v1.shop/")[0] == 200, "echo-v1 reachable again")


# -- and back ---------------------------------------------------------------------------------------


def test_zz_delete_sends_traffic_direct_again(mesh, shop):
    client = mesh.pod("shop", "client")
    gone = mesh.wisp("waypoint", "delete", "-n", "shop", "waypoint")
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout.splitlines()[:2] == ["waypoint shop/waypoint deleted",
                                            '✅ namespace shop no longer labeled with "istio.io/use-waypoint: waypoint"']
    echo_ips = {p["ip"] for p in mesh.status()["pods"] if p["namespace"] == "shop" and p["name"].startswith("echo-")}

    def direct() -> bool:
        with mesh.capture(client["netns"], "eth0", "tcp") as cap:
            code, body = mesh.curl("shop", "client", "http://echo.shop/")
        hosts = {b.rsplit(".", 1)[0] for a, b in re.findall(r"IP (\S+) > (\S+?):", cap["summary"])}
        return code == 200 and f"peer={client['ip']}:" in body and bool(hosts) and hosts <= echo_ips | {client["ip"]}

    route_in_effect(mesh, direct, "traffic direct to the echo pods", timeout=30)
