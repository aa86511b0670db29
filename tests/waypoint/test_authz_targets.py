"""Which AuthorizationPolicies a waypoint enforces, for which traffic (targetRefs, Istio's rules)."""

from __future__ import annotations

from waypoint.authz import (
    DENIED_STATUS,
    RequestAttributes,
    ServiceRef,
    WaypointRef,
    attachment,
    authorize,
    compile_policies,
)
from wisp.identity import SpiffeId

WAYPOINT = WaypointRef("shop", "waypoint")
ECHO = ServiceRef("shop", "echo")
CART = ServiceRef("shop", "cart")
GATEWAY = {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}
DENY_ALL = {"action": "DENY", "rules": [{}]}


def policy(name, spec, namespace="shop"):
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def request():
    return RequestAttributes(SpiffeId("cluster.local", "shop", "frontend"), "10.0.0.5", "10.96.0.10", 80,
                             "echo.shop", "GET", "/")


def denied(objects, service, root_namespace="istio-system"):
    policies = compile_policies(objects, WAYPOINT, root_namespace=root_namespace)
    return not authorize(policies.for_service(service), request()).allowed


def test_a_policy_targeting_the_waypoint_gateway_applies_to_every_service_and_to_pod_ips():
    objects = [policy("deny", {"targetRefs": [GATEWAY], **DENY_ALL})]
    assert denied(objects, ECHO)
    assert denied(objects, CART)
    assert denied(objects, None)


def test_a_policy_targeting_a_service_applies_only_to_requests_for_that_service():
    objects = [policy("deny", {"targetRefs": [{"kind": "Service", "group": "", "name": "echo"}], **DENY_ALL})]
    assert denied(objects, ECHO)
    assert not denied(objects, CART)
    assert not denied(objects, None)  # straight to a pod IP: no Service, no Service policies


def test_a_service_target_may_spell_the_core_group_or_leave_it_out():
    for ref in ({"kind": "Service", "name": "echo"}, {"kind": "Service", "group": "core", "name": "echo"}):
        assert denied([policy("deny", {"targetRefs": [ref], **DENY_ALL})], ECHO)


def test_a_service_policy_must_live_in_the_services_namespace():
    objects = [policy("deny", {"targetRefs": [{"kind": "Service", "name": "echo"}], **DENY_ALL}, namespace="other")]
    assert not denied(objects, ECHO)
    assert denied(objects, ServiceRef("other", "echo"))


def test_a_gateway_policy_in_another_namespace_does_not_apply():
    objects = [policy("deny", {"targetRefs": [GATEWAY], **DENY_ALL}, namespace="other")]
    assert not denied(objects, ECHO)


def test_a_gateway_policy_naming_another_gateway_does_not_apply():
    objects = [policy("deny", {"targetRefs": [{**GATEWAY, "name": "other-waypoint"}], **DENY_ALL})]
    assert not denied(objects, ECHO)


def test_a_cross_namespace_target_reference_never_matches():
    objects = [policy("deny", {"targetRefs": [{**GATEWAY, "namespace": "elsewhere"}], **DENY_ALL})]
    assert not denied(objects, ECHO)
    same = [policy("deny", {"targetRefs": [{**GATEWAY, "namespace": "shop"}], **DENY_ALL})]
    assert denied(same, ECHO)


def test_selector_policies_are_ignored_by_waypoints():
    objects = [policy("deny", {"selector": {"matchLabels": {"app": "echo"}}, **DENY_ALL})]
    assert not denied(objects, ECHO)
    assert "ztunnel" in attachment("shop", objects[0]["spec"], WAYPOINT).reason


def test_namespace_wide_policies_are_ignored_by_waypoints():
    assert not denied([policy("deny", DENY_ALL)], ECHO)
    assert not denied([policy("deny", DENY_ALL, namespace="istio-system")], ECHO)


def test_the_istio_waypoint_gateway_class_in_the_root_namespace_applies_to_every_waypoint():
    ref = {"kind": "GatewayClass", "group": "gateway.networking.k8s.io", "name": "istio-waypoint"}
    objects = [policy("deny", {"targetRefs": [ref], **DENY_ALL}, namespace="istio-system")]
    assert denied(objects, ECHO)
    assert denied(objects, None)


def test_the_gateway_class_target_outside_the_root_namespace_does_not_apply():
    ref = {"kind": "GatewayClass", "group": "gateway.networking.k8s.io", "name": "istio-waypoint"}
    assert not denied([policy("deny", {"targetRefs": [ref], **DENY_ALL})], ECHO)


def test_the_root_namespace_is_a_parameter():
    ref = {"kind": "GatewayClass", "group": "gateway.networking.k8s.io", "name": "istio-waypoint"}
    objects = [policy("deny", {"targetRefs": [ref], **DENY_ALL}, namespace="mesh-root")]
    assert not denied(objects, ECHO)
    assert denied(objects, ECHO, root_namespace="mesh-root")


def test_a_root_namespace_policy_targeting_a_gateway_is_not_mesh_wide():
    objects = [policy("deny", {"targetRefs": [GATEWAY], **DENY_ALL}, namespace="istio-system")]
    assert not denied(objects, ECHO)


def test_another_gateway_class_does_not_apply():
    ref = {"kind": "GatewayClass", "group": "gateway.networking.k8s.io", "name": "istio"}
    assert not denied([policy("deny", {"targetRefs": [ref], **DENY_ALL}, namespace="istio-system")], ECHO)


def test_the_legacy_single_target_ref_is_read():
    assert denied([policy("deny", {"targetRef": GATEWAY, **DENY_ALL})], ECHO)


def test_one_policy_may_target_several_services():
    refs = [{"kind": "Service", "name": "echo"}, {"kind": "Service", "name": "cart"}]
    objects = [policy("deny", {"targetRefs": refs, **DENY_ALL})]
    assert denied(objects, ECHO) and denied(objects, CART)
    assert not denied(objects, ServiceRef("shop", "other"))


def test_a_service_entry_target_applies_to_the_service_entry_not_a_service_of_the_same_name():
    ref = {"kind": "ServiceEntry", "group": "networking.istio.io", "name": "echo"}
    objects = [policy("deny", {"targetRefs": [ref], **DENY_ALL})]
    assert denied(objects, ServiceRef("shop", "echo", "ServiceEntry"))
    assert not denied(objects, ECHO)


def test_gateway_and_service_policies_combine_for_that_services_requests():
    # An ALLOW on the Gateway and an ALLOW on the Service: the request must match one of them.
    allow_get = policy("gw-allow-get", {"targetRefs": [GATEWAY], "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]})
    allow_post = policy("svc-allow-post", {"targetRefs": [{"kind": "Service", "name": "echo"}],
                                           "rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]})
    policies = compile_policies([allow_get, allow_post], WAYPOINT)
    post = request()
    post.method = "POST"
    assert authorize(policies.for_service(ECHO), post).allowed
    assert authorize(policies.for_service(CART), request()).allowed
    decision = authorize(policies.for_service(CART), post)
    assert (decision.allowed, decision.status) == (False, DENIED_STATUS)


def test_an_unreadable_target_list_is_reported_and_ignored():
    objects = [policy("broken", {"targetRefs": "waypoint", **DENY_ALL})]
    policies = compile_policies(objects, WAYPOINT)
    assert not authorize(policies.for_service(ECHO), request()).status
    assert [note.policy for note in policies.notes] == ["shop/broken"]
