"""The request pipeline (waypoint/pipeline.py) over a config built from constructed objects."""

from __future__ import annotations

import random

from tests.support.balancer import FunctionBalancer
from waypoint.authz import WaypointRef
from waypoint.config import compile_config
from waypoint.pipeline import ClientContext, Pipeline, Proxy, RequestHead, Respond, forwarding_headers
from waypoint.upstream import choose_endpoint
from wisp.identity import SpiffeId
from wisp.model import ModelSnapshot, PortMapping, Service, Workload, config_object

HOST = "echo.shop.svc.cluster.local"
KEY = f"shop/{HOST}"
ECHO = Service("echo", "shop", HOST, ("10.96.0.10",), (PortMapping(80, 8080),))
POD = Workload("u1", "echo-1", "shop", ("10.244.1.5",), tunnel_protocol="HBONE", service_account="echo",
               services={KEY: (PortMapping(80, 8080),)})
SICK = Workload("u2", "echo-2", "shop", ("10.244.1.6",), tunnel_protocol="HBONE", status="UNHEALTHY",
                services={KEY: (PortMapping(80, 8080),)})
CLIENT = SpiffeId("cluster.local", "shop", "client")


def _pipeline(objects=(), workloads=(POD, SICK), services=(ECHO,)) -> Pipeline:
    snapshot = ModelSnapshot.of([*workloads, *services, *(config_object(o) for o in objects)])
    config = compile_config(snapshot, WaypointRef("shop", "waypoint"), "v1")
    rng = random.Random(7)
    return Pipeline(lambda: config, FunctionBalancer(lambda c, s, p: choose_endpoint(c, s, p, rng)), lambda e, cb: None, rng)


def _ctx(dest_ip: str = "10.96.0.10", port: int = 80, identity: SpiffeId | None = CLIENT) -> ClientContext:
    return ClientContext(identity, "10.244.2.9", 40000, dest_ip, port)


def _head(method: bytes = b"GET", target: bytes = b"/", headers=()) -> RequestHead:
    return RequestHead(method, target, b"echo", list(headers))


def test_no_route_goes_to_a_healthy_endpoint_of_the_dialled_service_at_its_target_port():
    outcome = _pipeline().decide(_ctx(), _head())
    assert isinstance(outcome, Proxy)
    assert (outcome.endpoint.address, outcome.endpoint.port, outcome.endpoint.hbone) == ("10.244.1.5", 8080, True)
    assert str(outcome.endpoint.identity) == "spiffe://cluster.local/ns/shop/sa/echo"
    assert outcome.service == ECHO


def test_a_pod_ip_goes_to_that_pod_and_port():
    outcome = _pipeline().decide(_ctx("10.244.1.5", 8080), _head())
    assert isinstance(outcome, Proxy) and outcome.service is None
    assert (outcome.endpoint.address, outcome.endpoint.port) == ("10.244.1.5", 8080)


def test_no_healthy_endpoint_is_503():
    outcome = _pipeline(workloads=(SICK,)).decide(_ctx(), _head())
    assert isinstance(outcome, Respond) and outcome.status == 503 and outcome.detail == "no_healthy_upstream"


def test_the_path_is_normalised_before_routing_and_a_nul_is_400():
    pipeline = _pipeline()
    outcome = pipeline.decide(_ctx(), _head(target=b"/a/../b/%61?q=1"))
    assert outcome.head.target == b"/b/a?q=1"
    assert pipeline.decide(_ctx(), _head(target=b"/a%00b")).status == 400


def test_a_deny_policy_answers_403_with_istios_body_and_names_the_rule():
    policy = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
              "metadata": {"name": "no-post", "namespace": "shop"},
              "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "echo"}], "action": "DENY",
                       "rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]}}
    pipeline = _pipeline([policy])
    denied = pipeline.decide(_ctx(), _head(b"POST"))
    assert (denied.status, denied.body) == (403, b"RBAC: access denied")
    assert denied.detail == "rbac_access_denied_matched_policy[ns[shop]-policy[no-post]-rule[0]]"
    assert isinstance(pipeline.decide(_ctx(), _head(b"GET")), Proxy)


def test_an_allow_policy_on_principals_uses_the_tunnel_identity():
    policy = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
              "metadata": {"name": "only-client", "namespace": "shop"},
              "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}],
                       "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/client"]}}]}]}}
    pipeline = _pipeline([policy])
    assert isinstance(pipeline.decide(_ctx(), _head()), Proxy)
    other = SpiffeId("cluster.local", "shop", "other")
    assert pipeline.decide(_ctx(identity=other), _head()).status == 403


def test_a_route_with_no_matching_rule_is_404_and_a_route_on_port_80_leaves_8080_alone():
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "r", "namespace": "shop"},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}],
                      "rules": [{"matches": [{"path": {"type": "Exact", "value": "/only"}}],
                                 "backendRefs": [{"name": "echo", "port": 80}]}]}}
    service = Service("echo", "shop", HOST, ("10.96.0.10",), (PortMapping(80, 8080), PortMapping(8080, 8080)))
    pipeline = _pipeline([route], services=(service,))
    missed = pipeline.decide(_ctx(), _head(target=b"/else"))
    assert (missed.status, missed.detail) == (404, "route_not_found")
    assert isinstance(pipeline.decide(_ctx(port=8080), _head(target=b"/else")), Proxy)


def test_forwarding_headers_append_the_client_and_keep_the_trace():
    rng = random.Random(1)
    headers = forwarding_headers(
        [(b"x-forwarded-for", b"1.2.3.4"), (b"x-request-id", b"abc"),
         (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")], _ctx(), rng)
    values = dict(headers)
    assert values[b"x-forwarded-for"] == b"1.2.3.4,10.244.2.9"
    assert values[b"x-request-id"] == b"abc" and values[b"x-forwarded-proto"] == b"http"
    trace = values[b"traceparent"]
    assert trace[:36] == b"00-0af7651916cd43dd8448eb211c80319c-" and trace.endswith(b"-01")
    assert trace[36:52] != b"b7ad6b7169203331"
    fresh = dict(forwarding_headers([(b"traceparent", b"garbage")], _ctx(), rng))[b"traceparent"]
    assert len(fresh) == 55 and fresh.startswith(b"00-") and fresh != b"garbage"
