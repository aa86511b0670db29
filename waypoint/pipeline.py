"""The request pipeline: one request head in, one decision out; the same for every protocol shell.

A protocol shell (HTTP/1.1 in `http1`, HTTP/2 and gRPC in `http2*`) parses a request head into a
`RequestHead` and asks `Pipeline.decide(context, head)`. The stages run in a fixed order, each a
pure step over the current `WaypointConfig` (Envoy's HTTP connection manager order at a waypoint):

1. **normalise** the path as Istio does before routing and authorization
   (`waypoint.authz.normalize_path`, BASE); a path Istio rejects → `Respond(400)`.
1b. **authenticate** (`waypoint.authn`, RequestAuthentication): the JWT rules for the Service the
   client dialled; an invalid, expired or unverifiable token → `Respond(401)` (a disallowed
   audience: 403) with Envoy's message and `www-authenticate`; no token passes with no principal;
   a valid one passes its `RequestAuth` to authorize and may change the headers (token removed,
   payload and claim headers set) and the target (a token query parameter removed).
2. **authorize** (`waypoint.authz`): the policies for the Service the client dialled (None for a
   pod IP), the client's SPIFFE identity from the tunnel; denied → `Respond(403, "RBAC: access
   denied")`.
3. **route** (`waypoint.route.RouteTable.route`, by the dialled VIP:port and the client's
   namespace): `Redirect` → `Respond(3xx, Location)`, `DirectResponse` → `Respond(status)`,
   `Forward` → the backend Service port with the filters applied to the head, `DefaultService`
   → the dialled Service port (or, for a pod IP, that workload and port) unchanged. A route's
   fault policy (`waypoint.resilience.decide_fault`) draws here: an abort → `Respond` with the
   fault's status (after `Respond.delay`), a delay alone → `Proxy.fault`, waited by the shell.
   `Proxy.retry` is the route's retry policy or Istio's default, `Proxy.per_try_timeout` the
   per-attempt timeout, `Proxy.budget` the backend cluster's retry budget.
4. **choose an endpoint**: the balancer (`waypoint.balance.balancer.Balancer.pick`) picks a
   HEALTHY, non-ejected workload of the backend Service (of the route's DestinationRule subset,
   if any) at its target port and hands out the attempt's `Lease` (`Proxy.lease`, finished by
   the shell once the attempt ends); none → `Respond(503, "no healthy upstream")`, a full
   connection pool → `Respond(503)` with `x-envoy-overloaded: true`. A retry asks
   `Pipeline.retarget(proxy)` for another endpoint (earlier attempts' hosts excluded).
5. **forwarding headers**: `x-forwarded-for` gets the client's address appended,
   `x-forwarded-proto` is set when absent, `forwarded` passes unchanged, `x-request-id` is
   created when absent, and the trace context (`waypoint.tracing.forward`: W3C `traceparent`
   keeps its trace id with the waypoint's span as parent, a fresh one when absent or malformed,
   `tracestate` passes unchanged; B3 headers are accepted and propagated; the sampling decision
   by the Service's Telemetry percentage or the parent's flag). A sampled request's span rides
   on `Proxy.trace` for the shell's `RequestRecord` to export; a request answered at an earlier
   stage gets one on `Respond.trace` the same way (`waypoint.tracing.answer`).

The result is `Respond` (answer now; the shell encodes it) or `Proxy` (send `head` to
`endpoint`, apply `response_headers` to the response with `response_headers_of`, copy the
request to each of `mirrors` and ignore their answers). To reach an endpoint the shell calls
`Pipeline.open_upstream(endpoint, on_stream)`: `on_stream(end, None)` with a splice end (an HBONE
`StreamEnd` through the waypoint's pool presenting the waypoint's identity, or a `TcpEnd` for a
workload outside the mesh), or `on_stream(None, reason)`. The shell attaches its codec to the
end with `waypoint.channel.Channel` and reports the outcome with `telemetry.RequestRecord`.

`RequestHead.headers` are (name, value) byte pairs with lower-case names, in order, without
pseudo-headers, without `Host` (that is `authority`) and without hop-by-hop headers (the shell
removed them, RFC 9110 §7.6.1). Nothing here blocks or awaits: `decide` is a plain function
call on the loop.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from wisp.identity import SpiffeId
from wisp.model import Service

from .authn import KeySource, Rejected, authenticate
from .authz import (
    DENIED_BODY,
    DENIED_STATUS,
    RequestAttributes,
    ServiceRef,
    authorize,
    normalize_path,
)
from .authz import Decision as AuthzDecision
from .balance.balancer import OVERLOADED, OVERLOADED_HEADERS, Lease
from .config import Endpoint, WaypointConfig
from .resilience import DEFAULT_RETRY, Budget, Budgets, Injected, RetryPolicy, cluster_key, decide_fault
from .route import DirectResponse, Forward, HttpRequest, Redirect, apply_header_modifiers, header_map
from .route.filters import HeaderModifier
from .route.parse import RouteRef
from .tracing import TRACE_HEADERS, Span
from .tracing import answer as answer_span
from .tracing import forward as forward_trace

PROTOCOL_HTTP1 = "HTTP/1.1"
PROTOCOL_HTTP2 = "HTTP/2"
PROTOCOL_GRPC = "gRPC"


@dataclass(slots=True)
class ClientContext:
    """One client connection through the waypoint (one inbound HBONE CONNECT stream).

    `identity` is the SPIFFE id of the client's certificate (the HBONE server verified it);
    `dest_ip`/`dest_port` the CONNECT authority: the Service VIP and port (or pod IP and port) the
    client dialled."""

    identity: SpiffeId | None
    source_ip: str
    source_port: int
    dest_ip: str
    dest_port: int
    connect_headers: dict[str, str] = field(default_factory=dict)

    @property
    def namespace(self) -> str | None:
        return self.identity.namespace if self.identity is not None else None

    @property
    def destination(self) -> str:
        return f"[{self.dest_ip}]:{self.dest_port}" if ":" in self.dest_ip else f"{self.dest_ip}:{self.dest_port}"


@dataclass(slots=True)
class RequestHead:
    """A request as the shells hand it over and send it on (see the module docstring for headers)."""

    method: bytes
    target: bytes
    authority: bytes
    headers: list[tuple[bytes, bytes]]
    scheme: bytes = b"http"
    protocol: str = PROTOCOL_HTTP1

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def copy(self) -> RequestHead:
        return RequestHead(self.method, self.target, self.authority, list(self.headers), self.scheme, self.protocol)


@dataclass(slots=True)
class Respond:
    """Answer the client now. `detail` is the response code detail for the access log."""

    status: int
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    detail: str = ""
    grpc_status: int | None = None
    route: RouteRef | None = None
    service: Service | None = None
    authz: AuthzDecision | None = None
    delay: float = 0.0  # seconds to wait before answering: a fault-injected delay (waypoint.resilience)
    trace: Span | None = None  # the waypoint's span when sampled and exported (waypoint.tracing.answer)


@dataclass(slots=True)
class Proxy:
    """Send `head` to `endpoint`; `service` is the backend Service (None for a pod IP)."""

    head: RequestHead
    endpoint: Endpoint
    service: Service | None
    response_headers: tuple[HeaderModifier, ...] = ()
    mirrors: tuple[tuple[RequestHead, Endpoint], ...] = ()
    route: RouteRef | None = None
    timeout: float | None = None
    authz: AuthzDecision | None = None
    lease: Lease | None = None  # the current attempt's hold on `endpoint` (waypoint.balance)
    tried: tuple[str, ...] = ()  # addresses of earlier attempts' endpoints (retarget excludes them)
    trace: Span | None = None  # the waypoint's span when sampled and exported (waypoint.tracing)
    retry: RetryPolicy = DEFAULT_RETRY  # the route's, else Istio's default (waypoint.resilience)
    per_try_timeout: float | None = None  # seconds per attempt (HTTPRoute backendRequest, perTryTimeout)
    fault: Injected | None = None  # a fault-injected delay to wait before forwarding (never an abort)
    budget: Budget | None = None  # the backend cluster's retry budget


Outcome = Respond | Proxy
OnStream = Callable[[object | None, str | None], None]


def response_headers_of(proxy: Proxy, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The response's headers after the route's ResponseHeaderModifiers."""
    if not proxy.response_headers:
        return headers
    return apply_header_modifiers(headers, proxy.response_headers)


class Pipeline:
    """The stages over the config in force; `current()` returns it (replaced per version)."""

    def __init__(self, current: Callable[[], WaypointConfig], balancer,
                 open_upstream: Callable[[Endpoint, OnStream], None],
                 rng: random.Random | None = None) -> None:
        """`balancer`: a `waypoint.balance.balancer.Balancer` (tests that choose the endpoint
        themselves wrap a function in tests/support/balancer.py's FunctionBalancer)."""
        self.current = current
        self.balancer = balancer
        self._open = open_upstream
        self.rng = rng or random.Random()
        # Key sets fetched from jwksUri (waypoint.authn.RemoteJwks); the app sets it once running.
        self.jwks: KeySource | None = None
        self.budgets = Budgets()  # retry budgets by backend cluster (waypoint.resilience.budget)

    def open_upstream(self, endpoint: Endpoint, on_stream: OnStream) -> None:
        """A new stream to `endpoint`: `on_stream(end, None)` or `on_stream(None, reason)`, later."""
        self._open(endpoint, on_stream)

    def retarget(self, proxy: Proxy, exclude: Collection[str] = ()) -> Respond | None:
        """The next attempt of `proxy` (a retry): a new endpoint and lease in `proxy.endpoint` and
        `proxy.lease`, or the 503 to answer when there is none (`Respond`, as `decide` makes them).

        Finish the previous attempt's lease first (with its outcome: outlier detection and the
        latency estimate learn from it); one left open is finished here as cancelled. The hosts
        of earlier attempts (`proxy.tried`, which this extends, and `exclude`) are avoided as
        Envoy's `previous_hosts` retry predicate does: up to 5 draws, then whatever comes. A
        request to a pod IP, or one whose lease was not the balancer's, stays on its endpoint."""
        lease = proxy.lease
        if lease is not None:
            lease.finish(None)
        proxy.tried = proxy.tried + (proxy.endpoint.address,)
        cluster = lease.cluster if lease is not None else None
        if cluster is None or cluster.service is None:
            proxy.lease = self.balancer.lease_for(proxy.endpoint)
            return None
        avoid = set(proxy.tried)
        avoid.update(exclude)
        picked = self.balancer.pick(self.current(), cluster.service, cluster.port, cluster.subset, avoid,
                                    source_ip=lease.source_ip, head=proxy.head, http1=lease.http1)
        if picked is None:
            return Respond(503, b"no healthy upstream", [(b"content-type", b"text/plain")],
                           detail="no_healthy_upstream", route=proxy.route, service=proxy.service, authz=proxy.authz)
        if picked is OVERLOADED:
            return _overloaded(proxy.route, proxy.service, proxy.authz)
        proxy.lease = picked
        proxy.endpoint = picked.endpoint
        return None

    def decide(self, ctx: ClientContext, head: RequestHead) -> Outcome:
        outcome = self._stages(ctx, head)
        if type(outcome) is Respond:
            # Envoy traces the requests it answers itself too (a 403 of RBAC, a 404 without a route).
            outcome.trace = self._answer_span(ctx, head, outcome)
        return outcome

    def _answer_span(self, ctx: ClientContext, head: RequestHead, outcome: Respond) -> Span | None:
        tracing = self.current().tracing
        service = outcome.service
        if service is not None:
            percentage, export = tracing.for_service(service.namespace, service.name)
        else:
            percentage, export = tracing.for_service(None, None)
        if not export:
            return None
        if service is not None:
            return answer_span(head.headers, percentage, self.rng, service.hostname, ctx.dest_port, True,
                               ctx.source_ip)
        return answer_span(head.headers, percentage, self.rng, ctx.dest_ip, ctx.dest_port, False, ctx.source_ip)

    def _stages(self, ctx: ClientContext, head: RequestHead) -> Outcome:
        config = self.current()
        # 1. normalise
        target = head.target
        if head.method != b"CONNECT" and target != b"*":
            normalized = normalize_path(target.decode("latin-1"))
            if normalized is None:
                return Respond(400, b"Bad Request: path rejected by normalisation\n", detail="path_normalization_failed")
            target = normalized.encode("latin-1")
        dialled = config.service_at(ctx.dest_ip)
        service_ref = ServiceRef(dialled.namespace, dialled.name) if dialled is not None else None
        # 1b. authenticate
        request_auth = None
        authn_rules = config.authn.for_service(service_ref)
        if not authn_rules.empty:
            verdict = authenticate(authn_rules, head.method, target, head.authority, head.headers, self.jwks,
                                   time.time(), head.scheme)
            if type(verdict) is Rejected:
                return Respond(verdict.status, verdict.body,
                               [(b"content-type", b"text/plain"), (b"www-authenticate", verdict.www_authenticate)],
                               detail=verdict.detail, service=dialled)
            request_auth = verdict.auth
            if verdict.target is not None:
                target = verdict.target
            if verdict.headers is not None:
                head = head.copy()  # the shell's head stays as received
                head.headers = verdict.headers
        # 2. authorize
        policies = config.policies.for_service(service_ref)
        decision: AuthzDecision | None = None
        if not policies.empty:
            attrs = RequestAttributes(
                ctx.identity, ctx.source_ip, ctx.dest_ip, ctx.dest_port,
                head.authority.decode("latin-1") if head.authority else None,
                head.method.decode("latin-1"), target.decode("latin-1"), head.headers,
                request_auth=request_auth,
            )
            decision = authorize(policies, attrs)
            if not decision.allowed:
                body = DENIED_BODY if decision.status == DENIED_STATUS else b"Bad Request\n"
                return Respond(decision.status or DENIED_STATUS, body, [(b"content-type", b"text/plain")],
                               detail=decision.details, service=dialled, authz=decision)
        # 3. route
        request = HttpRequest(head.method, target, _match_headers(head), head.authority, head.scheme)
        routed = config.routes.route(request, ctx.dest_ip, ctx.dest_port, ctx.namespace, self.rng)
        kind = type(routed)
        if kind is Redirect:
            headers = [(b"location", routed.location)]
            if routed.response_headers:
                headers = apply_header_modifiers(headers, routed.response_headers)
            return Respond(routed.status, b"", headers, detail="direct_response", route=routed.route,
                           service=dialled, authz=decision)
        if kind is DirectResponse:
            return Respond(routed.status, routed.body, [], detail=routed.detail, grpc_status=routed.grpc_status,
                           route=routed.route, service=dialled, authz=decision)
        out = RequestHead(head.method, target, head.authority, head.headers, head.scheme, head.protocol)
        response_headers: tuple[HeaderModifier, ...] = ()
        mirrors: tuple[tuple[RequestHead, Endpoint], ...] = ()
        route = None
        timeout = None
        retry = DEFAULT_RETRY
        per_try: float | None = None
        injected: Injected | None = None
        if kind is Forward:
            backend = config.services_by_name.get((routed.backend.namespace, routed.backend.name))
            port = routed.backend.port if routed.backend.port is not None else ctx.dest_port
            subset = routed.backend.subset
            if routed.target is not None:
                out.target = routed.target
            if routed.authority is not None:
                out.authority = routed.authority
            if routed.request_headers:
                out.headers = _modify_request(out, routed.request_headers)
            response_headers = routed.response_headers
            route = routed.route
            timeout = _finite(routed.request_timeout)
            if routed.retry is not None:
                retry = routed.retry
            per_try = _finite(routed.backend_timeout if routed.backend_timeout is not None
                              else retry.per_try_timeout)
            if routed.fault is not None:
                # Envoy's fault filter runs before the router: an abort needs no endpoint.
                injected = decide_fault(routed.fault, self.rng)
                if injected is not None and injected.aborts:
                    return _fault_abort(injected, route, dialled, decision)
            if routed.mirrors:
                mirrors = self._mirrors(config, out, routed.mirrors)
            if backend is None:
                return Respond(500, b"", [], detail="backend_not_resolved", route=route, service=dialled,
                               authz=decision)
        else:  # DefaultService: the dialled Service, or the dialled pod
            backend = dialled
            port = ctx.dest_port
            subset = None
        # 4. endpoint
        if backend is not None:
            lease = self.balancer.pick(config, backend, port, subset, source_ip=ctx.source_ip, head=out,
                                       http1=head.protocol == PROTOCOL_HTTP1)
            if lease is None:
                return Respond(503, b"no healthy upstream", [(b"content-type", b"text/plain")],
                               detail="no_healthy_upstream", route=route, service=backend, authz=decision)
            if lease is OVERLOADED:
                return _overloaded(route, backend, decision)
            endpoint = lease.endpoint
        else:
            endpoint = pod_endpoint(config, ctx.dest_ip, port)
            if endpoint is None:
                return Respond(503, b"no healthy upstream", [(b"content-type", b"text/plain")],
                               detail="no_healthy_upstream", service=None, authz=decision)
            lease = self.balancer.lease_for(endpoint)
        budget = self.budgets.get(cluster_key(backend.namespace, backend.name, port) if backend is not None
                                  else cluster_key("", ctx.dest_ip, port))
        # 5. forwarding headers
        if backend is not None:
            percentage, export = config.tracing.for_service(backend.namespace, backend.name)
            out.headers, span = forwarded(out.headers, ctx, self.rng, percentage, export,
                                          backend.hostname, port, True, out.scheme)
        else:
            percentage, export = config.tracing.for_service(None, None)
            out.headers, span = forwarded(out.headers, ctx, self.rng, percentage, export,
                                          ctx.dest_ip, port, False, out.scheme)
        return Proxy(out, endpoint, backend, response_headers, mirrors, route, timeout, decision, trace=span,
                     lease=lease, retry=retry, per_try_timeout=per_try, fault=injected, budget=budget)

    def _mirrors(self, config: WaypointConfig, head: RequestHead, mirrors) -> tuple[tuple[RequestHead, Endpoint], ...]:
        out = []
        for mirror in mirrors:
            service = config.services_by_name.get((mirror.namespace, mirror.name))
            if service is None:
                continue
            endpoint = self.balancer.choose(config, service, mirror.port, mirror.subset)
            if endpoint is None:
                continue
            copy = head.copy()
            # Envoy marks a mirrored request's host with "-shadow" so the backend can tell.
            host, sep, port = copy.authority.rpartition(b":")
            if sep and port.isdigit():
                copy.authority = host + b"-shadow:" + port
            elif copy.authority:
                copy.authority = copy.authority + b"-shadow"
            out.append((copy, endpoint))
        return tuple(out)


def _overloaded(route: RouteRef | None, service: Service | None, authz: AuthzDecision | None) -> Respond:
    """Envoy's answer when a circuit breaker is open: 503, `x-envoy-overloaded: true`."""
    return Respond(503, b"upstream connect error or disconnect/reset before headers. reset reason: overflow",
                   [(b"content-type", b"text/plain"), *OVERLOADED_HEADERS],
                   detail="upstream_reset_before_response_started{overflow}", route=route, service=service,
                   authz=authz)


def _match_headers(head: RequestHead) -> dict[bytes, bytes]:
    headers = header_map(head.headers)
    if head.authority:
        headers.setdefault(b"host", head.authority)
    return headers


def _modify_request(head: RequestHead, modifiers: tuple[HeaderModifier, ...]) -> list[tuple[bytes, bytes]]:
    """RequestHeaderModifier; `host` in a modifier changes the authority, as on HTTP/2."""
    pairs = [(b"host", head.authority)] + head.headers if head.authority else list(head.headers)
    modified = apply_header_modifiers(pairs, modifiers)
    authority = b""
    headers = []
    for name, value in modified:
        if name == b"host":
            if not authority:
                authority = value
        else:
            headers.append((name, value))
    head.authority = authority
    return headers


def _finite(seconds: float | None) -> float | None:
    """A timeout in seconds, None when unset or disabled ("0s" is parsed as infinity)."""
    return seconds if seconds is not None and seconds != math.inf else None


def _fault_abort(injected: Injected, route: RouteRef | None, service: Service | None,
                 decision: AuthzDecision | None) -> Respond:
    """Envoy's fault-filter abort: the HTTP status with "fault filter abort", or for a gRPC status
    HTTP 200 with that grpc-status (a gRPC client gets it trailers-only)."""
    if injected.abort_grpc_status is not None:
        code = injected.abort_grpc_status
        return Respond(200, b"fault filter abort", [(b"content-type", b"text/plain"), (b"grpc-status", b"%d" % code)],
                       detail="fault_filter_abort", grpc_status=code, route=route, service=service, authz=decision,
                       delay=injected.delay)
    return Respond(injected.abort_status, b"fault filter abort", [(b"content-type", b"text/plain")],
                   detail="fault_filter_abort", route=route, service=service, authz=decision, delay=injected.delay)


def pod_endpoint(config: WaypointConfig, ip: str, port: int) -> Endpoint | None:
    workload = config.workload_at(ip)
    if workload is None or workload.status != "HEALTHY":
        return None
    return Endpoint(ip, port, SpiffeId.parse(workload.identity()), workload.tunnel_protocol == "HBONE", workload)


def forwarding_headers(headers: list[tuple[bytes, bytes]], ctx: ClientContext,
                       rng: random.Random) -> list[tuple[bytes, bytes]]:
    """`headers` with x-forwarded-for/-proto, x-request-id and the trace headers as a proxy sends
    them (no sampling of its own: a parent's decision passes on)."""
    return forwarded(headers, ctx, rng, 0.0, False, "", 0, False)[0]


def forwarded(headers: list[tuple[bytes, bytes]], ctx: ClientContext, rng: random.Random, percentage: float,
              export: bool, host: str, port: int, service: bool,
              scheme: bytes = b"http") -> tuple[list[tuple[bytes, bytes]], Span | None]:
    """`forwarding_headers` and the span to export (`waypoint.tracing.forward`), in one pass."""
    out: list[tuple[bytes, bytes]] = []
    xff: bytes | None = None
    proto = False
    request_id: bytes | None = None
    trace: list[tuple[bytes, bytes]] = []
    for pair in headers:
        name = pair[0]
        if name == b"x-forwarded-for":
            xff = pair[1] if xff is None else xff + b"," + pair[1]
            continue
        if name in TRACE_HEADERS:
            trace.append(pair)
            continue
        if name == b"x-forwarded-proto":
            proto = True
        elif name == b"x-request-id" and request_id is None:
            request_id = pair[1]
        out.append(pair)
    client = ctx.source_ip.encode("ascii")
    out.append((b"x-forwarded-for", xff + b"," + client if xff else client))
    if not proto:
        out.append((b"x-forwarded-proto", b"http"))
    if request_id is None:
        request_id = _uuid4(rng)
        out.append((b"x-request-id", request_id))
    span = forward_trace(trace, out, percentage, export, rng, host, port, service, ctx.source_ip, request_id, scheme)
    if span is not None:
        for name, value in out:
            if name == b"user-agent":
                span.user_agent = value.decode("latin-1")
                break
    return out, span


def _uuid4(rng: random.Random) -> bytes:
    value = (rng.getrandbits(128) & ~(0xF000 << 64) | (0x4000 << 64)) & ~(0xC000 << 48) | (0x8000 << 48)
    text = b"%032x" % value
    return text[:8] + b"-" + text[8:12] + b"-" + text[12:16] + b"-" + text[16:20] + b"-" + text[20:]
