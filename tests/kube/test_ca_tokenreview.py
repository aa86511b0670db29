"""The CA on Kubernetes: projected service-account tokens checked with the real API server's
TokenReview, and Istio's impersonation rule for node proxies (operator/kube_auth.py).

Everything runs against the test bed's kube-apiserver 1.37 (tests/kube/conftest.py): tokens come
from TokenRequest bound to real pods on the simulated nodes, the expired one is signed with the
test bed's service-account key so the API server itself finds it expired. Pod lookups read the
API directly (the operator serves them from its watch cache). Each case is accepted or refused as
istiod's CA would (istio security/pkg/server/ca/server.go, node_auth.go): a node proxy may obtain
identities running on its node, everyone else only their own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from tests.kube.conftest import wait_for
from wisp.identity import CertificateAuthority, SpiffeId, make_csr
from wisp.identity.certs import generate_key
from runtime.testbed.cluster import SERVICE_ACCOUNT_ISSUER, Cluster
from runtime.testbed.nodes import Nodes
from wisp_operator.auth import ROLE_WORKLOAD, Caller
from wisp_operator.ca_service import CaService
from wisp_operator.cluster import ClusterState
from wisp_operator.distributor import ROLE_WAYPOINT, ROLE_ZTUNNEL
from wisp_operator.kube_auth import (
    DEFAULT_AUDIENCE,
    KubeAuthenticator,
    KubeAuthError,
    Refusal,
    ReviewedToken,
    ReviewUnavailable,
    TokenRefused,
    TokenReviewer,
    parse_accounts,
    read_review,
    token_expiry,
)
from wisp_operator.waypoints import MANAGED_BY_MESH, MANAGED_GATEWAY_LABEL

TRUST_DOMAIN = "cluster.local"


@dataclass(slots=True)
class Bed:
    """Two namespaces: `system` holds the ztunnel pods (node1, node2), `apps` the workloads."""

    cluster: Cluster
    system: str
    apps: str
    pods: dict[str, dict[str, Any]]

    def identity(self, service_account: str, namespace: str | None = None) -> SpiffeId:
        return SpiffeId(TRUST_DOMAIN, namespace or self.apps, service_account)

    def token(self, pod: str | None, namespace: str, account: str, audience: str = DEFAULT_AUDIENCE) -> str:
        """TokenRequest for `account`, bound to `pod` (as the kubelet projects it) unless None."""
        spec: dict[str, Any] = {"audiences": [audience], "expirationSeconds": 600}
        if pod is not None:
            spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", "name": pod,
                                      "uid": self.pods[pod]["metadata"]["uid"]}
        with self.cluster.client() as client:
            response = client.post("/api/v1/namespaces/%s/serviceaccounts/%s/token" % (namespace, account),
                                   json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                         "spec": spec})
        assert response.status_code == 201, response.text
        return response.json()["status"]["token"]

    # Direct API reads standing in for the operator's watch cache.
    def pod_by_name(self, namespace: str, name: str) -> dict | None:
        with self.cluster.client() as client:
            response = client.get("/api/v1/namespaces/%s/pods/%s" % (namespace, name))
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        return response.json()

    def pod_on_node(self, namespace: str, service_account: str, node: str) -> bool:
        selector = ("spec.nodeName=%s,spec.serviceAccountName=%s,status.phase!=Succeeded,status.phase!=Failed"
                    % (node, service_account))
        with self.cluster.client() as client:
            response = client.get("/api/v1/namespaces/%s/pods" % namespace, params={"fieldSelector": selector})
        assert response.status_code == 200, response.text
        return bool(response.json()["items"])


def _pod(name: str, account: str, node: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}},
            "spec": {"serviceAccountName": account, "nodeName": node,
                     "containers": [{"name": "main", "image": "registry.invalid/wisp-test:1"}]}}


@pytest.fixture(scope="module")
def bed(cluster: Cluster, nodes: Nodes) -> Iterator[Bed]:
    suffix = uuid.uuid4().hex[:6]
    system, apps = "ca-sys-" + suffix, "ca-apps-" + suffix
    layout = {
        system: [("ztunnel", [_pod("ztunnel-node1", "ztunnel", "node1"), _pod("ztunnel-node2", "ztunnel", "node2")])],
        apps: [
            ("reviews", [_pod("reviews-node1", "reviews", "node1")]),
            ("ratings", [_pod("ratings-node2", "ratings", "node2")]),
            # Same name as the trusted account, in the wrong namespace.
            ("ztunnel", [_pod("fake-ztunnel-node1", "ztunnel", "node1")]),
            ("shop-waypoint", [_pod("shop-waypoint-node1", "shop-waypoint", "node1",
                                    {MANAGED_GATEWAY_LABEL: MANAGED_BY_MESH,
                                     "gateway.networking.k8s.io/gateway-name": "shop-waypoint"})]),
        ],
    }
    pods: dict[str, dict[str, Any]] = {}
    try:
        with cluster.client() as client:
            for namespace, accounts in layout.items():
                created = client.post("/api/v1/namespaces", json={"metadata": {"name": namespace}})
                assert created.status_code == 201, created.text
                for account, account_pods in accounts:
                    created = client.post("/api/v1/namespaces/%s/serviceaccounts" % namespace,
                                          json={"metadata": {"name": account}})
                    assert created.status_code == 201, created.text
                    for pod in account_pods:
                        created = client.post("/api/v1/namespaces/%s/pods" % namespace, json=pod)
                        assert created.status_code == 201, created.text
                        pods[pod["metadata"]["name"]] = created.json()

            def all_running() -> bool:
                phases = [client.get("/api/v1/namespaces/%s/pods" % ns).json()["items"] for ns in layout]
                return all(p.get("status", {}).get("phase") == "Running" for items in phases for p in items)

            wait_for(all_running, "the test pods Running on their nodes")
        yield Bed(cluster, system, apps, pods)
    finally:
        with cluster.client() as client:
            for namespace in layout:
                client.delete("/api/v1/namespaces/%s" % namespace)


async def _api_client(cluster: Cluster) -> k8s_client.ApiClient:
    configuration = k8s_client.Configuration()
    await k8s_config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)
    return k8s_client.ApiClient(configuration)


def _authenticator(bed: Bed, reviewer: TokenReviewer) -> KubeAuthenticator:
    return KubeAuthenticator(reviewer, bed.pod_by_name, bed.pod_on_node, trust_domain=TRUST_DOMAIN,
                             trusted_node_accounts="%s/ztunnel" % bed.system)


def _check(bed: Bed, token: str) -> Caller | Refusal:
    async def scenario() -> Caller | Refusal:
        api = await _api_client(bed.cluster)
        try:
            return await _authenticator(bed, TokenReviewer(api)).check("Bearer " + token)
        finally:
            await api.close()

    return asyncio.run(scenario())


def _sign(bed: Bed, token: str, identity: SpiffeId) -> tuple[int, dict]:
    """The whole path of one CSR: TokenReview, the caller's pod, then CaService with the rule."""

    async def scenario() -> tuple[int, dict]:
        api = await _api_client(bed.cluster)
        try:
            authenticator = _authenticator(bed, TokenReviewer(api))
            caller = await authenticator.authenticate("Bearer " + token)
            if caller is None:
                verdict = await authenticator.check("Bearer " + token)
                assert isinstance(verdict, Refusal)
                return 401, {"error": verdict.reason}
        finally:
            await api.close()
        body = json.dumps({"csr": make_csr(generate_key(), identity).decode(), "identity": str(identity)})
        response = CaService(CA, authorizer=authenticator.authorize).sign(caller, body.encode(), ClusterState())
        return response.status, response.body

    return asyncio.run(scenario())


CA = CertificateAuthority.generate(TRUST_DOMAIN)


def _leaf_identity(body: dict) -> str:
    leaf = x509.load_pem_x509_certificate(body["cert_chain"][0].encode())
    return leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)[0]


# --- accepted ---------------------------------------------------------------------------------


def test_ztunnel_obtains_the_identity_of_a_pod_on_its_node(bed: Bed) -> None:
    token = bed.token("ztunnel-node1", bed.system, "ztunnel")
    status, body = _sign(bed, token, bed.identity("reviews"))
    assert status == 200, body
    assert _leaf_identity(body) == str(bed.identity("reviews"))


def test_a_projected_ztunnel_token_makes_a_node_proxy_caller_on_its_pods_node(bed: Bed) -> None:
    caller = _check(bed, bed.token("ztunnel-node2", bed.system, "ztunnel"))
    assert caller == Caller(ROLE_ZTUNNEL, node="node2", identity=bed.identity("ztunnel", bed.system))


def test_token_review_1_37_names_the_pod_and_node_the_token_is_bound_to(bed: Bed) -> None:
    token = bed.token("ztunnel-node1", bed.system, "ztunnel")

    async def scenario() -> ReviewedToken:
        api = await _api_client(bed.cluster)
        try:
            return await TokenReviewer(api).review(token)
        finally:
            await api.close()

    reviewed = asyncio.run(scenario())
    assert (reviewed.namespace, reviewed.service_account) == (bed.system, "ztunnel")
    assert reviewed.pod_name == "ztunnel-node1"
    assert reviewed.pod_uid == bed.pods["ztunnel-node1"]["metadata"]["uid"]
    assert reviewed.node_name == "node1"
    assert reviewed.expires is not None and 0 < reviewed.expires - time.time() <= 600


def test_waypoint_obtains_its_own_identity(bed: Bed) -> None:
    token = bed.token("shop-waypoint-node1", bed.apps, "shop-waypoint")
    assert _check(bed, token) == Caller(ROLE_WAYPOINT, identity=bed.identity("shop-waypoint"))
    status, body = _sign(bed, token, bed.identity("shop-waypoint"))
    assert status == 200, body
    assert _leaf_identity(body) == str(bed.identity("shop-waypoint"))


def test_any_service_account_obtains_its_own_identity(bed: Bed) -> None:
    token = bed.token("reviews-node1", bed.apps, "reviews")
    assert _check(bed, token) == Caller(ROLE_WORKLOAD, identity=bed.identity("reviews"))
    status, body = _sign(bed, token, bed.identity("reviews"))
    assert status == 200, body


# --- refused ----------------------------------------------------------------------------------


def test_token_for_another_audience_is_refused(bed: Bed) -> None:
    token = bed.token("ztunnel-node1", bed.system, "ztunnel", audience="somebody-else")
    status, body = _sign(bed, token, bed.identity("reviews"))
    assert status == 401
    assert body["error"].startswith("the API server refused the token: ")
    assert 'token audiences ["somebody-else"] is invalid for the target audiences ["istio-ca"]' in body["error"]


def _expired_token(bed: Bed, pod: str) -> str:
    """A token the test bed's API server issued in every respect but its age: the claims of a
    real bound token, `exp` an hour ago, signed with the service-account signing key."""
    real = bed.token(pod, bed.system, "ztunnel")
    header_part, payload_part, _ = real.split(".")
    header = json.loads(base64.urlsafe_b64decode(header_part + "=" * (-len(header_part) % 4)))
    claims = json.loads(base64.urlsafe_b64decode(payload_part + "=" * (-len(payload_part) % 4)))
    now = int(time.time())
    claims.update(iat=now - 7200, nbf=now - 7200, exp=now - 3600, jti=str(uuid.uuid4()))
    assert claims["iss"] == SERVICE_ACCOUNT_ISSUER

    def encode(part: dict) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(part, separators=(",", ":")).encode()).rstrip(b"=")

    signing_input = encode(header) + b"." + encode(claims)
    key = serialization.load_pem_private_key(bed.cluster.pki.service_account_key.read_bytes(), password=None)
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


def test_expired_token_is_refused_by_token_review(bed: Bed) -> None:
    status, body = _sign(bed, _expired_token(bed, "ztunnel-node1"), bed.identity("reviews"))
    assert status == 401
    assert body["error"] == "the API server refused the token: [invalid bearer token, service account token has expired]"


def test_ztunnel_may_not_obtain_an_identity_that_runs_only_on_another_node(bed: Bed) -> None:
    token = bed.token("ztunnel-node1", bed.system, "ztunnel")
    status, body = _sign(bed, token, bed.identity("ratings"))
    assert status == 403
    assert body["error"] == (
        f"no running pod with service account 'ratings' in namespace {bed.apps!r} is on node 'node1', "
        f"so its ztunnel may not obtain {bed.identity('ratings')}")
    # The same request from the node it runs on passes: the node made the difference.
    assert _sign(bed, bed.token("ztunnel-node2", bed.system, "ztunnel"), bed.identity("ratings"))[0] == 200


def test_untrusted_service_account_may_not_obtain_someone_elses_identity(bed: Bed) -> None:
    token = bed.token("reviews-node1", bed.apps, "reviews")
    status, body = _sign(bed, token, bed.identity("ratings"))
    assert status == 403
    assert body["error"] == (
        f"workload {bed.identity('reviews')} is not a trusted node proxy account ({bed.system}/ztunnel), "
        f"so it may only obtain its own identity, not {bed.identity('ratings')}")


def test_account_named_ztunnel_outside_the_trusted_namespace_may_not_impersonate(bed: Bed) -> None:
    token = bed.token("fake-ztunnel-node1", bed.apps, "ztunnel")
    status, body = _sign(bed, token, bed.identity("reviews"))
    assert status == 403
    assert "is not a trusted node proxy account" in body["error"]


def test_waypoint_may_not_obtain_another_identity(bed: Bed) -> None:
    token = bed.token("shop-waypoint-node1", bed.apps, "shop-waypoint")
    status, body = _sign(bed, token, bed.identity("reviews"))
    assert status == 403
    assert body["error"] == (f"waypoint {bed.identity('shop-waypoint')} may only obtain its own identity, "
                             f"not {bed.identity('reviews')}")


def test_trusted_account_token_not_bound_to_a_pod_is_refused(bed: Bed) -> None:
    verdict = _check(bed, bed.token(None, bed.system, "ztunnel"))
    assert verdict == Refusal(f"the token of node proxy account {bed.system}/ztunnel is not bound to a pod; "
                              "node proxies must present the token projected into their pod (audience 'istio-ca')")


def test_identity_outside_the_trust_domain_is_refused(bed: Bed) -> None:
    token = bed.token("ztunnel-node1", bed.system, "ztunnel")
    status, body = _sign(bed, token, SpiffeId("example.org", bed.apps, "reviews"))
    assert status == 403
    assert body["error"] == f"spiffe://example.org/ns/{bed.apps}/sa/reviews is not in this mesh's trust domain 'cluster.local'"


def test_token_of_a_deleted_ztunnel_pod_is_refused(bed: Bed) -> None:
    with bed.cluster.client() as client:
        created = client.post("/api/v1/namespaces/%s/pods" % bed.system, json=_pod("ztunnel-gone", "ztunnel", "node3"))
        assert created.status_code == 201, created.text
        bed.pods["ztunnel-gone"] = created.json()
        token = bed.token("ztunnel-gone", bed.system, "ztunnel")
        assert isinstance(_check(bed, token), Caller)
        deleted = client.delete("/api/v1/namespaces/%s/pods/ztunnel-gone" % bed.system, params={"gracePeriodSeconds": 0})
        assert deleted.status_code == 200, deleted.text
        wait_for(lambda: client.get("/api/v1/namespaces/%s/pods/ztunnel-gone" % bed.system).status_code == 404,
                 "pod ztunnel-gone deleted")
    verdict = _check(bed, token)
    # Either refusal is Istio's: the API server's own check of the bound pod reads its informer
    # cache and may still pass the token for a moment; then the pod lookup refuses it.
    assert isinstance(verdict, Refusal)
    gone = (f"pod {bed.system}/ztunnel-gone, to which the token of node proxy account {bed.system}/ztunnel "
            "is bound, does not exist")
    assert verdict.reason == gone or verdict.reason.startswith("the API server refused the token: "), verdict


# --- the review cache -------------------------------------------------------------------------


def test_a_burst_of_requests_costs_one_token_review(bed: Bed) -> None:
    token = bed.token("ztunnel-node1", bed.system, "ztunnel")

    async def scenario() -> tuple[list, int]:
        api = await _api_client(bed.cluster)
        try:
            reviewer = TokenReviewer(api)
            authenticator = _authenticator(bed, reviewer)
            callers = await asyncio.gather(*(authenticator.authenticate("Bearer " + token) for _ in range(20)))
            callers.append(await authenticator.authenticate("Bearer " + token))
            return callers, reviewer.reviews
        finally:
            await api.close()

    callers, reviews = asyncio.run(scenario())
    assert reviews == 1
    assert all(c == Caller(ROLE_ZTUNNEL, node="node1", identity=bed.identity("ztunnel", bed.system)) for c in callers)


def test_cached_review_lasts_60_seconds_at_most(bed: Bed) -> None:
    token = bed.token("ztunnel-node1", bed.system, "ztunnel")
    now = [time.time()]

    async def scenario() -> list[int]:
        api = await _api_client(bed.cluster)
        try:
            reviewer = TokenReviewer(api, clock=lambda: now[0])
            counts = []
            for advance in (0, 59, 2):
                now[0] += advance
                await reviewer.review(token)
                counts.append(reviewer.reviews)
            return counts
        finally:
            await api.close()

    assert asyncio.run(scenario()) == [1, 1, 2]


def test_cached_review_ends_when_the_token_expires(bed: Bed) -> None:
    token = bed.token("ztunnel-node1", bed.system, "ztunnel")

    async def scenario() -> tuple[ReviewedToken, list[int]]:
        api = await _api_client(bed.cluster)
        try:
            clock = [time.time()]
            reviewer = TokenReviewer(api, clock=lambda: clock[0], cache_seconds=3600)
            reviewed = await reviewer.review(token)
            counts = [reviewer.reviews]
            clock[0] = reviewed.expires - 1
            await reviewer.review(token)
            counts.append(reviewer.reviews)
            # From its expiry on, the cache must not answer for it: the API server is asked again
            # (which, on its own clock, still accepts the token).
            clock[0] = reviewed.expires
            await reviewer.review(token)
            counts.append(reviewer.reviews)
            return reviewed, counts
        finally:
            await api.close()

    _, counts = asyncio.run(scenario())
    assert counts == [1, 1, 2]


def test_review_cache_keeps_at_most_cache_size_tokens(bed: Bed) -> None:
    tokens = [bed.token("ztunnel-node1", bed.system, "ztunnel") for _ in range(3)]

    async def scenario() -> int:
        api = await _api_client(bed.cluster)
        try:
            reviewer = TokenReviewer(api, cache_size=2)
            for token in tokens:
                await reviewer.review(token)
            await reviewer.review(tokens[2])  # still cached
            await reviewer.review(tokens[0])  # dropped when the third came
            return reviewer.reviews
        finally:
            await api.close()

    assert asyncio.run(scenario()) == 4


def test_refusals_are_not_cached(bed: Bed) -> None:
    token = bed.token("ztunnel-node1", bed.system, "ztunnel", audience="somebody-else")

    async def scenario() -> int:
        api = await _api_client(bed.cluster)
        try:
            reviewer = TokenReviewer(api)
            for _ in range(2):
                with pytest.raises(TokenRefused):
                    await reviewer.review(token)
            return reviewer.reviews
        finally:
            await api.close()

    assert asyncio.run(scenario()) == 2


def test_a_cancelled_request_does_not_cancel_the_review_others_share(bed: Bed) -> None:
    token = bed.token("ztunnel-node1", bed.system, "ztunnel")

    async def scenario() -> tuple[ReviewedToken, int]:
        api = await _api_client(bed.cluster)
        try:
            reviewer = TokenReviewer(api)
            first = asyncio.ensure_future(reviewer.review(token))
            second = asyncio.ensure_future(reviewer.review(token))
            await asyncio.sleep(0)
            first.cancel()
            return await second, reviewer.reviews
        finally:
            await api.close()

    reviewed, reviews = asyncio.run(scenario())
    assert reviewed.pod_name == "ztunnel-node1"
    assert reviews == 1


# --- the reviewer's own permission ------------------------------------------------------------


def test_reviewer_needs_create_on_tokenreviews_and_says_so_without_it(bed: Bed) -> None:
    """The operator reviews with its own service account: without `create tokenreviews` (the
    system:auth-delegator ClusterRole) the API server answers 403, which is the control plane's
    problem, not the caller's (`unavailable`); with the binding the same review passes."""
    binding = "wisp-ca-test-reviewer-" + bed.system
    with bed.cluster.client() as client:
        created = client.post("/api/v1/namespaces/%s/serviceaccounts" % bed.system,
                              json={"metadata": {"name": "reviewer"}})
        assert created.status_code == 201, created.text
        # No audience: the API server's own, so the token authenticates the operator to it.
        issued = client.post("/api/v1/namespaces/%s/serviceaccounts/reviewer/token" % bed.system,
                             json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                   "spec": {"expirationSeconds": 600}})
        assert issued.status_code == 201, issued.text
    operator_token = issued.json()["status"]["token"]
    caller_token = bed.token("ztunnel-node1", bed.system, "ztunnel")

    async def check() -> Caller | Refusal:
        configuration = k8s_client.Configuration(host=bed.cluster.server, api_key={"BearerToken": operator_token},
                                                 api_key_prefix={"BearerToken": "Bearer"})
        configuration.ssl_ca_cert = str(bed.cluster.pki.ca_cert)
        api = k8s_client.ApiClient(configuration)
        try:
            return await _authenticator(bed, TokenReviewer(api)).check("Bearer " + caller_token)
        finally:
            await api.close()

    try:
        refused = asyncio.run(check())
        assert isinstance(refused, Refusal) and refused.unavailable
        assert refused.reason.startswith("TokenReview failed: HTTP 403"), refused
        assert 'User "system:serviceaccount:%s:reviewer" cannot create resource "tokenreviews"' % bed.system \
            in refused.reason
        with bed.cluster.client() as client:
            created = client.post("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", json={
                "metadata": {"name": binding},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "system:auth-delegator"},
                "subjects": [{"kind": "ServiceAccount", "name": "reviewer", "namespace": bed.system}]})
            assert created.status_code == 201, created.text
        # RBAC is read from the API server's informer cache: the binding takes effect shortly.
        accepted = wait_for(lambda: (lambda v: v if isinstance(v, Caller) else None)(asyncio.run(check())),
                            "the review to pass with system:auth-delegator", timeout=15)
        assert accepted == Caller(ROLE_ZTUNNEL, node="node1", identity=bed.identity("ztunnel", bed.system))
    finally:
        with bed.cluster.client() as client:
            client.delete("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/%s" % binding)


# --- answers that are not what the API server should say (no test bed needed) ----------------


@pytest.mark.parametrize("status, error", [
    (None, ReviewUnavailable),
    ({"authenticated": True}, TokenRefused),  # no audiences confirmed
    ({"authenticated": True, "audiences": ["istio-ca"], "user": "x"}, TokenRefused),
    ({"authenticated": True, "audiences": ["istio-ca"],
      "user": {"username": "kubernetes-admin", "groups": ["system:masters"]}}, TokenRefused),
    ({"authenticated": True, "audiences": ["istio-ca"],
      "user": {"username": "system:serviceaccount:a", "groups": ["system:serviceaccounts"]}}, TokenRefused),
    ({"authenticated": "yes", "audiences": ["istio-ca"]}, TokenRefused),
])
def test_odd_token_review_answers_are_refusals(status: Any, error: type) -> None:
    with pytest.raises(error):
        read_review(status, DEFAULT_AUDIENCE)


def test_extras_other_than_one_string_are_ignored() -> None:
    reviewed = read_review({"authenticated": True, "audiences": ["istio-ca"], "user": {
        "username": "system:serviceaccount:ns:sa", "groups": ["system:serviceaccounts"],
        "extra": {"authentication.kubernetes.io/pod-name": ["a", "b"],
                  "authentication.kubernetes.io/pod-uid": "u",
                  "authentication.kubernetes.io/node-name": [""]}}}, DEFAULT_AUDIENCE)
    assert reviewed == ReviewedToken("ns", "sa")


@pytest.mark.parametrize("text", ["istio-system", "/ztunnel", "istio-system/", "a/b/c"])
def test_trusted_node_accounts_must_be_namespace_slash_name(text: str) -> None:
    with pytest.raises(KubeAuthError, match="is not <namespace>/<service-account>"):
        parse_accounts(text)


def test_trusted_node_accounts_read_istios_comma_separated_form() -> None:
    assert parse_accounts("istio-system/ztunnel, kube-system/ztunnel,") == {
        ("istio-system", "ztunnel"), ("kube-system", "ztunnel")}


@pytest.mark.parametrize("token", ["", "a.b", "a.!!!.c", "a.%s.c" % base64.urlsafe_b64encode(b"[1]").decode(),
                                   "a.%s.c" % base64.urlsafe_b64encode(b'{"exp": true}').decode()])
def test_token_without_a_readable_exp_has_no_expiry(token: str) -> None:
    assert token_expiry(token) is None


def test_for_operator_serves_pods_from_a_cluster_state(bed: Bed) -> None:
    """The operator's wiring: pods from its ClusterState (here filled by one list per namespace,
    as its watch cache is), reviews through its ApiClient."""
    with bed.cluster.client() as client:
        listed = [dict(pod, kind="Pod", apiVersion="v1") for ns in (bed.system, bed.apps)
                  for pod in client.get("/api/v1/namespaces/%s/pods" % ns).json()["items"]]
    state = ClusterState.of(listed)
    token = bed.token("ztunnel-node2", bed.system, "ztunnel")

    async def scenario() -> tuple[Caller | None, str | None, str | None]:
        api = await _api_client(bed.cluster)
        try:
            authenticator = KubeAuthenticator.for_operator(
                api, lambda: state, trusted_node_accounts=["%s/ztunnel" % bed.system])
            caller = await authenticator.authenticate("Bearer " + token)
            assert caller is not None
            return (caller, authenticator.authorize(caller, bed.identity("ratings"), state, TRUST_DOMAIN),
                    authenticator.authorize(caller, bed.identity("reviews"), state, TRUST_DOMAIN))
        finally:
            await api.close()

    caller, ratings, reviews = asyncio.run(scenario())
    assert caller == Caller(ROLE_ZTUNNEL, node="node2", identity=bed.identity("ztunnel", bed.system))
    assert ratings is None
    assert reviews is not None and "is on node 'node2'" in reviews
