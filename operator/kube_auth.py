"""Callers of the control plane on Kubernetes: projected service-account tokens, checked with
TokenReview, and Istio's rule for node proxies that obtain certificates for other identities.

Contract:
- `TokenReviewer.review(token)` asks the API server (TokenReview, authentication.k8s.io/v1) whether
  `token` is a valid service-account token for `audience` (`istio-ca` by default, the audience
  Istio's ztunnel chart projects and istiod's CA expects) and returns a `ReviewedToken`: namespace,
  service account, and the pod the token is bound to (the `authentication.kubernetes.io/pod-name`
  and `pod-uid` extras; `node-name` when the API server adds it). It raises `TokenRefused` with the
  API server's reason (wrong audience, expired, deleted pod or service account, not a
  service-account token) or `ReviewUnavailable` when the API server cannot be asked. Positive
  answers are cached, keyed by the token's SHA-256, until the token's `exp` or `cache_seconds`
  (60) after the review, whichever comes first, at most `cache_size` entries (oldest dropped);
  concurrent reviews of one token share one request. So a burst of CSRs costs one TokenReview.
  Refusals are never cached.
- `KubeAuthenticator.check(authorization)` turns an `Authorization: Bearer <token>` header into a
  `Caller` (operator/auth.py) or a `Refusal` that says why. A token of a trusted node account
  (Istio's `CA_TRUSTED_NODE_ACCOUNTS`, default `istio-system/ztunnel` as Istio's chart sets it)
  must be bound to a pod that still exists with the same UID and service account and is
  scheduled: it becomes `Caller(ztunnel, node=<that pod's spec.nodeName>)`. Any other token
  becomes a caller holding its own identity: `waypoint` when its pod is a waypoint's (label
  `gateway.istio.io/managed=istio.io-mesh-controller`), else `workload`. `authenticate()` is the
  same with the refusal logged, answering `None` as `LocalCredentials.authenticate` does.
- `KubeAuthenticator.authorize(caller, identity, state, trust_domain)` has the signature of
  `ca_service.authorize` (pass it as `CaService(ca, authorizer=...)`) and applies Istio's CA rule
  (istio security/pkg/server/ca/server.go and node_auth.go): every caller may obtain its own
  identity; a trusted node proxy may also obtain an identity of which a non-terminal pod (that
  namespace and service account) runs on its node; nobody else may impersonate. Each refusal says
  why, in the words of ca_service.py.
- Pods are looked up through two callables so the operator answers them from its watch cache:
  `pod_by_name(namespace, name) -> dict | None` and `pod_on_node(namespace, service_account, node)
  -> bool` (a non-terminal pod). `state_pod_lookups(state)` builds both over a `ClusterState`;
  `KubeAuthenticator.for_operator(api_client, state, ...)` wires reviewer and lookups at once.

Why kubernetes-asyncio rather than httpx: the operator runs on asyncio and talks to the API server
through one kubernetes-asyncio `ApiClient` configured from its kubeconfig or in-cluster service
account (operator/kube/); the reviewer takes that client, so TokenReview uses the same
credentials, CA bundle and connection pool as the watches, and nothing here reads configuration
again. (The test bed deliberately speaks httpx, so tests check this client against another one.)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass

import aiohttp
import structlog
from kubernetes_asyncio import client as k8s_client

from wisp.identity import InvalidSpiffeId, SpiffeId
from wisp.model import DEFAULT_SERVICE_ACCOUNT, DEFAULT_TRUST_DOMAIN

from .auth import ROLE_WORKLOAD, Caller
from .cluster import KIND_POD, ClusterState
from .distributor import ROLE_WAYPOINT, ROLE_ZTUNNEL
from .pods import TERMINAL_PHASES
from .waypoints import MANAGED_BY_MESH, MANAGED_GATEWAY_LABEL

log = structlog.get_logger("wisp.operator.kube_auth")

# What Istio's ztunnel chart projects (`audience: istio-ca`) and istiod's TOKEN_AUDIENCES default.
DEFAULT_AUDIENCE = "istio-ca"
# Istio's chart sets istiod's CA_TRUSTED_NODE_ACCOUNTS to `<ztunnel namespace>/ztunnel`.
DEFAULT_TRUSTED_NODE_ACCOUNTS = ("istio-system/ztunnel",)
DEFAULT_CACHE_SIZE = 4096
DEFAULT_CACHE_SECONDS = 60.0
REVIEW_TIMEOUT = 10.0

EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"
EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name"
SERVICE_ACCOUNTS_GROUP = "system:serviceaccounts"
_USER_PREFIX = "system:serviceaccount:"

PodByName = Callable[[str, str], "dict | None"]
PodOnNode = Callable[[str, str, str], bool]


class KubeAuthError(Exception):
    """Base of this module's errors; the message says what was wrong."""


class TokenRefused(KubeAuthError):
    """The API server does not vouch for the token (the message gives its reason)."""


class ReviewUnavailable(KubeAuthError):
    """The API server could not be asked, or answered something other than a TokenReview."""


@dataclass(slots=True, frozen=True)
class ReviewedToken:
    """What TokenReview vouched for."""

    namespace: str
    service_account: str
    pod_name: str | None = None
    pod_uid: str | None = None
    # Only when the API server adds it (ServiceAccountTokenPodNodeInfo, on by default since 1.30).
    node_name: str | None = None
    # The token's `exp` claim (seconds since the epoch), if it has one.
    expires: float | None = None

    @property
    def account(self) -> str:
        return f"{self.namespace}/{self.service_account}"


@dataclass(slots=True, frozen=True)
class Refusal:
    reason: str
    # True when the API server could not be asked: the caller is not at fault, a retry may pass.
    unavailable: bool = False


def parse_accounts(text: str | Collection[str]) -> frozenset[tuple[str, str]]:
    """`ns/name` entries (a list, or one comma-separated string as Istio's env variable) as pairs."""
    entries = text.split(",") if isinstance(text, str) else list(text)
    accounts = set()
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        namespace, slash, name = entry.partition("/")
        if not slash or not namespace or not name or "/" in name:
            raise KubeAuthError(f"trusted node account {entry!r} is not <namespace>/<service-account>")
        accounts.add((namespace, name))
    return frozenset(accounts)


def token_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT, unverified: only read after TokenReview accepted the token."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return None
    return float(exp)


def read_review(status: dict, audience: str) -> ReviewedToken:
    """The ReviewedToken in a TokenReview's `status`, or TokenRefused saying why not (sans-IO)."""
    if not isinstance(status, dict):
        raise ReviewUnavailable("the TokenReview answer has no status")
    if status.get("authenticated") is not True:
        error = status.get("error")
        raise TokenRefused(error if isinstance(error, str) and error else "the token is not authenticated")
    audiences = status.get("audiences")
    # The API server answers the audiences it checked; one that ignored `spec.audiences` (an
    # audience-agnostic authenticator) would answer none, and then the token proves nothing here.
    if not isinstance(audiences, list) or audience not in audiences:
        raise TokenRefused(f"the token is not valid for audience {audience!r} (the API server "
                           f"confirmed {audiences or 'no audience'})")
    user = status.get("user")
    if not isinstance(user, dict):
        raise TokenRefused("the TokenReview names no user")
    groups = user.get("groups")
    username = user.get("username")
    if not isinstance(groups, list) or SERVICE_ACCOUNTS_GROUP not in groups or not isinstance(username, str) \
            or not username.startswith(_USER_PREFIX):
        raise TokenRefused(f"the token is not a service-account token (user {username!r})")
    namespace, colon, service_account = username[len(_USER_PREFIX):].partition(":")
    if not colon or not namespace or not service_account or ":" in service_account:
        raise TokenRefused(f"the token's user {username!r} is not system:serviceaccount:<namespace>:<name>")
    extra = user.get("extra")
    extra = extra if isinstance(extra, dict) else {}

    def one(key: str) -> str | None:
        values = extra.get(key)
        if isinstance(values, list) and len(values) == 1 and isinstance(values[0], str) and values[0]:
            return values[0]
        return None

    return ReviewedToken(namespace, service_account, one(EXTRA_POD_NAME), one(EXTRA_POD_UID), one(EXTRA_NODE_NAME))


class TokenReviewer:
    """TokenReview through a kubernetes-asyncio ApiClient, with a short positive cache."""

    def __init__(
        self,
        api_client: k8s_client.ApiClient,
        audience: str = DEFAULT_AUDIENCE,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        timeout: float = REVIEW_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if cache_size < 0 or cache_seconds < 0:
            raise ValueError("cache_size and cache_seconds must not be negative")
        self._api = api_client
        self.audience = audience
        self.cache_size = cache_size
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[ReviewedToken, float]] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Future[ReviewedToken]] = {}
        # TokenReviews sent to the API server (cache hits and shared reviews are not counted).
        self.reviews = 0

    async def review(self, token: str) -> ReviewedToken:
        key = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None:
            reviewed, until = cached
            if now < until:
                return reviewed
            del self._cache[key]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._review_and_remember(key, token, now))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._settled(key, done))
        # shield: a waiter that is cancelled (its request went away) must not cancel the review
        # the other waiters share; a review nobody waits for any more still ends within `timeout`.
        return await asyncio.shield(task)

    async def _review_and_remember(self, key: bytes, token: str, now: float) -> ReviewedToken:
        reviewed = await self._ask(token)
        self._remember(key, reviewed, now)
        return reviewed

    def _settled(self, key: bytes, task: asyncio.Future[ReviewedToken]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        # Retrieved here so a refusal whose waiters were all cancelled is not reported as lost.
        if not task.cancelled():
            task.exception()

    def _remember(self, key: bytes, reviewed: ReviewedToken, now: float) -> None:
        if reviewed.expires is None or self.cache_size == 0:
            return
        until = min(reviewed.expires, now + self.cache_seconds)
        if until <= now:
            return
        self._cache[key] = (reviewed, until)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def _ask(self, token: str) -> ReviewedToken:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": [self.audience]}}
        self.reviews += 1
        try:
            response = await self._api.call_api(
                "/apis/authentication.k8s.io/v1/tokenreviews", "POST",
                header_params={"Content-Type": "application/json", "Accept": "application/json"},
                body=body, auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=self.timeout,
            )
            async with response:
                raw = await response.read()
                code = response.status
        except k8s_client.ApiException as exc:
            raise ReviewUnavailable(f"TokenReview failed: HTTP {exc.status} {exc.reason}") from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise ReviewUnavailable(f"TokenReview failed: {exc or type(exc).__name__}") from None
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if not 200 <= code < 300 or not isinstance(answer, dict):
            message = answer.get("message") if isinstance(answer, dict) else None
            raise ReviewUnavailable(f"TokenReview failed: HTTP {code} {message or ''}".rstrip())
        reviewed = read_review(answer.get("status"), self.audience)
        return ReviewedToken(reviewed.namespace, reviewed.service_account, reviewed.pod_name,
                             reviewed.pod_uid, reviewed.node_name, token_expiry(token))


class KubeAuthenticator:
    """Bearer service-account tokens to `Caller`s, and the CA's decision for them."""

    def __init__(
        self,
        reviewer: TokenReviewer,
        pod_by_name: PodByName,
        pod_on_node: PodOnNode,
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        trusted_node_accounts: str | Collection[str] = DEFAULT_TRUSTED_NODE_ACCOUNTS,
    ) -> None:
        self.reviewer = reviewer
        self.pod_by_name = pod_by_name
        self.pod_on_node = pod_on_node
        self.trust_domain = trust_domain
        self.trusted_node_accounts = parse_accounts(trusted_node_accounts)

    @classmethod
    def for_operator(
        cls,
        api_client: k8s_client.ApiClient,
        state: Callable[[], ClusterState],
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        trusted_node_accounts: str | Collection[str] = DEFAULT_TRUSTED_NODE_ACCOUNTS,
        audience: str = DEFAULT_AUDIENCE,
    ) -> KubeAuthenticator:
        """Reviews through the operator's ApiClient, pods from its latest ClusterState."""
        pod_by_name, pod_on_node = state_pod_lookups(state)
        return cls(TokenReviewer(api_client, audience), pod_by_name, pod_on_node,
                   trust_domain=trust_domain, trusted_node_accounts=trusted_node_accounts)

    async def authenticate(self, authorization: str | None) -> Caller | None:
        """The caller behind an `Authorization: Bearer <token>` header, or None (reason logged)."""
        verdict = await self.check(authorization)
        if isinstance(verdict, Refusal):
            log.warning("caller refused", reason=verdict.reason, unavailable=verdict.unavailable)
            return None
        return verdict

    async def check(self, authorization: str | None) -> Caller | Refusal:
        if not authorization:
            return Refusal("no bearer credential: send the projected service-account token "
                           f"(audience {self.reviewer.audience!r}) as 'Authorization: Bearer <token>'")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Refusal("the Authorization header is not 'Bearer <token>'")
        try:
            reviewed = await self.reviewer.review(token)
        except TokenRefused as exc:
            return Refusal(f"the API server refused the token: {exc}")
        except ReviewUnavailable as exc:
            return Refusal(str(exc), unavailable=True)
        try:
            own = SpiffeId(self.trust_domain, reviewed.namespace, reviewed.service_account)
        except InvalidSpiffeId as exc:
            return Refusal(f"service account {reviewed.account} has no SPIFFE identity: {exc}")
        if (reviewed.namespace, reviewed.service_account) in self.trusted_node_accounts:
            return self._node_proxy(reviewed, own)
        pod = self._bound_pod(reviewed)
        labels = pod.get("metadata", {}).get("labels") if isinstance(pod, dict) else None
        if isinstance(labels, dict) and labels.get(MANAGED_GATEWAY_LABEL) == MANAGED_BY_MESH:
            return Caller(ROLE_WAYPOINT, identity=own)
        return Caller(ROLE_WORKLOAD, identity=own)

    def _bound_pod(self, reviewed: ReviewedToken) -> dict | None:
        """The pod the token is bound to, if it still exists as the same pod (same UID)."""
        if not reviewed.pod_name or not reviewed.pod_uid:
            return None
        pod = self.pod_by_name(reviewed.namespace, reviewed.pod_name)
        if not isinstance(pod, dict):
            return None
        metadata = pod.get("metadata")
        if not isinstance(metadata, dict) or metadata.get("uid") != reviewed.pod_uid:
            return None
        return pod

    def _node_proxy(self, reviewed: ReviewedToken, own: SpiffeId) -> Caller | Refusal:
        """Istio's checks of the caller in node_auth.go: a bound pod, the same UID and account."""
        who = f"node proxy account {reviewed.account}"
        if not reviewed.pod_name or not reviewed.pod_uid:
            return Refusal(f"the token of {who} is not bound to a pod; node proxies must present "
                           f"the token projected into their pod (audience {self.reviewer.audience!r})")
        where = f"{reviewed.namespace}/{reviewed.pod_name}"
        pod = self.pod_by_name(reviewed.namespace, reviewed.pod_name)
        if not isinstance(pod, dict):
            return Refusal(f"pod {where}, to which the token of {who} is bound, does not exist")
        metadata = pod.get("metadata") if isinstance(pod.get("metadata"), dict) else {}
        spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
        if metadata.get("uid") != reviewed.pod_uid:
            return Refusal(f"pod {where} has UID {metadata.get('uid')!r}, the token was issued for UID "
                           f"{reviewed.pod_uid!r} (the pod was replaced; a new token will follow)")
        account = spec.get("serviceAccountName") or DEFAULT_SERVICE_ACCOUNT
        if account != reviewed.service_account:
            return Refusal(f"pod {where} runs as service account {account!r}, the token is for "
                           f"{reviewed.service_account!r}")
        node = spec.get("nodeName")
        if not isinstance(node, str) or not node:
            return Refusal(f"pod {where} of {who} is not scheduled to a node")
        if reviewed.node_name is not None and reviewed.node_name != node:
            return Refusal(f"the token of {who} was issued on node {reviewed.node_name!r}, but pod "
                           f"{where} runs on node {node!r}")
        return Caller(ROLE_ZTUNNEL, node=node, identity=own)

    def authorize(self, caller: Caller, identity: SpiffeId, state: ClusterState | None = None,
                  trust_domain: str | None = None) -> str | None:
        """None if `caller` may obtain `identity`, else the reason it may not (as ca_service.authorize).

        `state` is unused: pods come from `pod_on_node`, which the operator serves from its
        watch cache; the parameter keeps the signature of `ca_service.authorize`.
        """
        trust_domain = trust_domain or self.trust_domain
        if identity.trust_domain != trust_domain:
            return f"{identity} is not in this mesh's trust domain {trust_domain!r}"
        if caller.identity is not None and caller.identity == identity:
            return None
        if caller.role == ROLE_WAYPOINT:
            return f"waypoint {caller.identity} may only obtain its own identity, not {identity}"
        if caller.role != ROLE_ZTUNNEL or not caller.node:
            trusted = ", ".join(sorted(f"{ns}/{name}" for ns, name in self.trusted_node_accounts)) or "none"
            return (f"{caller.describe()} is not a trusted node proxy account ({trusted}), so it may "
                    f"only obtain its own identity, not {identity}")
        if self.pod_on_node(identity.namespace, identity.service_account, caller.node):
            return None
        return (f"no running pod with service account {identity.service_account!r} in namespace "
                f"{identity.namespace!r} is on node {caller.node!r}, so its ztunnel may not obtain {identity}")


def state_pod_lookups(state: Callable[[], ClusterState]) -> tuple[PodByName, PodOnNode]:
    """`pod_by_name` and `pod_on_node` over the operator's latest ClusterState (its watch cache)."""

    def pod_by_name(namespace: str, name: str) -> dict | None:
        return state().get(KIND_POD, namespace, name)

    def pod_on_node(namespace: str, service_account: str, node: str) -> bool:
        for pod in state().pods(namespace):
            spec = pod.get("spec")
            if not isinstance(spec, dict) or spec.get("nodeName") != node:
                continue
            if (spec.get("serviceAccountName") or DEFAULT_SERVICE_ACCOUNT) != service_account:
                continue
            status = pod.get("status")
            if isinstance(status, dict) and status.get("phase") in TERMINAL_PHASES:
                continue
            return True
        return False

    return pod_by_name, pod_on_node
