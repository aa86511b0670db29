"""What routing decided for one request: plain data the HTTP shell acts on.

- ``DefaultService``: no route is attached to what the client dialled (or it dialled a pod IP,
  not a Service), so the request goes to the dialled destination unchanged. GEP-1294, "Route
  presence": "When no xRoute resources are defined, all traffic should implicitly work"; "when
  sent to a Service backend (ex: curl pod-ip), it would not" use a route.
- ``Forward``: send to ``backend`` (a Service port; the shell picks the endpoint) after applying
  ``request_headers`` in order, the rewritten ``target``/``authority`` when set, and copy the
  request to each of ``mirrors``; apply ``response_headers`` in order to the response.
  ``request_timeout`` bounds the whole request (504), ``backend_timeout`` each attempt;
  ``retry`` (None: Istio's default policy) and ``fault`` are ``waypoint.resilience`` policies.
- ``Redirect``: answer ``status`` with ``Location: location``.
- ``DirectResponse``: answer ``status`` with ``body`` (empty but for a VirtualService
  ``directResponse``). ``detail`` is the Envoy-style
  response code detail for access logs (Istio answers 404 ``route_not_found`` when routes are
  attached but none matches). For a gRPC request the shell answers with ``grpc_status``
  instead (trailers-only): ``UNAVAILABLE`` (14) for a rule without usable backends, as
  GRPCRoute's spec requires, and ``UNIMPLEMENTED`` (12), which is what a gRPC client makes of
  Envoy's 404, when no rule matches.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..resilience.policy import FaultPolicy, RetryPolicy
from .backends import Backend
from .filters import HeaderModifier, RequestMirror
from .parse import RouteRef

GRPC_UNIMPLEMENTED = 12
GRPC_UNAVAILABLE = 14


@dataclass(frozen=True, slots=True)
class DefaultService:
    """Forward to the dialled destination; ``service`` is ``(namespace, name)`` or None for a pod IP."""

    service: tuple[str, str] | None


@dataclass(frozen=True, slots=True)
class Forward:
    route: RouteRef
    backend: Backend
    request_headers: tuple[HeaderModifier, ...] = ()
    response_headers: tuple[HeaderModifier, ...] = ()
    # None: unchanged. ``target`` is the new request target (path and query).
    target: bytes | None = None
    authority: bytes | None = None
    mirrors: tuple[RequestMirror, ...] = ()
    request_timeout: float | None = None
    backend_timeout: float | None = None
    # None: the waypoint's default retry policy (Istio's; waypoint.resilience.DEFAULT_RETRY).
    retry: RetryPolicy | None = None
    fault: FaultPolicy | None = None

    @property
    def subset(self) -> str | None:
        """The DestinationRule subset of the backend (VirtualService routes), None for every endpoint."""
        return self.backend.subset


@dataclass(frozen=True, slots=True)
class Redirect:
    route: RouteRef
    status: int
    location: bytes
    response_headers: tuple[HeaderModifier, ...] = ()


@dataclass(frozen=True, slots=True)
class DirectResponse:
    status: int
    detail: str
    grpc_status: int | None = None
    route: RouteRef | None = None
    body: bytes = b""


Decision = DefaultService | Forward | Redirect | DirectResponse

ROUTE_NOT_FOUND = DirectResponse(404, "route_not_found", GRPC_UNIMPLEMENTED)
