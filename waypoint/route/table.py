"""The route table of a waypoint: routes compiled once per config, one decision per request.

``compile_table(routes, services)`` takes every HTTPRoute and GRPCRoute the waypoint was sent
and the Services it serves (``wisp.model.Service``: name, namespace, hostname, VIPs, ports) and
builds, for each Service port and each group of clients, the sorted match index of ``match``.
``RouteTable.route(request, dest_ip, dest_port, client_namespace, rng)`` is the per-request
entry point: a dict lookup, the index walk, a weighted draw.

Which routes apply (GEP-1294, kubernetes-sigs/gateway-api ``geps/gep-1294/index.md``):

- The route is chosen by the Service the client dialled — its VIP and port — never by ``Host``.
  A request to a pod IP uses no Service route ("when sent to a Service backend (ex: curl
  pod-ip), it would not").
- ``parentRef.port`` set: the route applies to that Service port only; unset: to every port of
  the Service ("Ports").
- A parentRef's namespace defaults to the route's. A route in the Service's namespace is a
  *producer* route and applies to every client; a route in another namespace is a *consumer*
  route and applies only to clients in its own namespace, and for them it replaces the producer
  routes: "Requests from a namespace with consumer routes will utilize the (possibly merged) set
  of routes in the consumer namespace; requests from other namespaces will utilize the ... routes
  in the producer namespace" ("Namespace boundaries", "Multiple routes for a Service"). Groups
  are per Service port: a consumer route scoped to port 80 leaves 8080 to the producer routes.
  The client's namespace comes from its SPIFFE identity, which the HBONE server verified.
- "Route types": when GRPCRoutes and HTTPRoutes bind to the same Service port in the same group,
  the GRPCRoutes apply and the HTTPRoutes are reported ``Conflicted`` there.
- Routes attached but no rule matching: 404 (``HTTPRouteRule.Matches``: "When no rules matching a
  request have been successfully attached to the parent a request is coming from, a HTTP 404
  status code MUST be returned"; Istio answers ``route_not_found``). No route attached: the
  request goes to the dialled Service unchanged ("Route presence").

Cost, measured with ``timeit`` (best of 3 × 20,000 calls, on the 2-core build machine shared with
other work; ``pytest -s tests/waypoint/test_route_cost.py`` prints them): a table of 100 producer
HTTPRoutes on one Service port (344 matches: Exact, PathPrefix, method, header, query-param and,
on 10 routes, RegularExpression matches; 70/30 weights), per ``route()`` call: ~0.7-1.3 µs for
an Exact match, ~1.6-2.1 µs for a PathPrefix match with a header match and a weighted draw,
~2.7-4.3 µs for a RegularExpression match (one RE2::Set pass for the 10 patterns), ~2.2 µs for a
request no rule matches (404). The cost does not grow with the number of Exact and PathPrefix
routes (dict lookups per path element). Compiling the table: ~10-16 ms.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .backends import Backend, RandomSource, choose_index
from .decision import (
    GRPC_UNAVAILABLE,
    ROUTE_NOT_FOUND,
    Decision,
    DefaultService,
    DirectResponse,
    Forward,
    Redirect,
)
from .filters import RequestMirror, URLRewrite, redirect_location, rewrite_target
from .match import Entry, GrpcRoutes, HttpRoutes, build_grpc, build_http
from .parse import (
    GRPC_ROUTE,
    HTTP_ROUTE,
    GrpcMatch,
    HttpMatch,
    ParentRef,
    ParsedRoute,
    Rule,
    ServiceLike,
    grpc_precedence,
    http_precedence,
    parse_route,
)
from .request import HttpRequest, split_target
from .status import ACCEPTED, CONFLICTED, Problem, parent_conditions
from .virtualservice import VIRTUAL_SERVICE, VsRoutes, build_vs, parse_virtual_service

ServiceKey = tuple[str, str]
Routes = HttpRoutes | GrpcRoutes | VsRoutes

_RNG = random.Random()


@dataclass(frozen=True, slots=True)
class _Port:
    """The routes one group of clients gets on one Service port."""

    routes: Routes
    host: bytes


def _merged_rewrite(rule: Rule, backend: Backend) -> URLRewrite | None:
    # Gateway API does not say how a backendRef's URLRewrite combines with the rule's; the more
    # specific one wins field by field.
    if backend.rewrite is None:
        return rule.rewrite
    if rule.rewrite is None:
        return backend.rewrite
    return URLRewrite(backend.rewrite.hostname or rule.rewrite.hostname, backend.rewrite.path or rule.rewrite.path)


def _static_forward(rule: Rule, backend: Backend) -> Forward | None:
    """The Forward for ``backend`` when nothing in it depends on the request; else None."""
    if backend.problem is not None or backend.redirect is not None:
        return None
    rewrite = _merged_rewrite(rule, backend)
    mirrors = rule.mirrors + backend.mirrors
    if (rewrite is not None and rewrite.path is not None) or any(0.0 < m.fraction < 1.0 for m in mirrors):
        return None
    return Forward(
        route=rule.ref,
        backend=backend,
        request_headers=rule.request_headers + backend.request_headers,
        response_headers=rule.response_headers + backend.response_headers,
        authority=rewrite.hostname if rewrite is not None else None,
        mirrors=tuple(m for m in mirrors if m.fraction > 0.0),
        request_timeout=rule.request_timeout,
        backend_timeout=rule.backend_timeout,
        retry=rule.retry,
        fault=rule.fault,
    )


class RouteTable:
    """Immutable after ``compile_table``; one per config version, shared by every request."""

    __slots__ = ("_frontends", "_producer", "_consumer", "_routes", "_conflicts", "_static", "_applied", "_notes")

    def __init__(
        self,
        frontends: dict[str, ServiceKey],
        producer: dict[tuple[ServiceKey, int], _Port],
        consumer: dict[tuple[ServiceKey, int, str], _Port],
        routes: dict[tuple[str, str, str], ParsedRoute],
        conflicts: dict[tuple[str, str, str], list[Problem]],
        applied: dict[tuple[str, str, str], list[str]] | None = None,
        notes: dict[tuple[tuple[str, str, str], int], list[str]] | None = None,
    ) -> None:
        self._frontends = frontends
        # VirtualService key -> where it is in force ("Service ns/name port 80").
        self._applied = applied or {}
        # (xRoute key, parent index) -> what it overrides there (a VirtualService it wins over).
        self._notes = notes or {}
        self._producer = producer
        self._consumer = consumer
        self._routes = routes
        self._conflicts = conflicts
        # Rules keep their identity for the table's life, so id() is a cheap, exact key.
        self._static: dict[int, tuple[Forward | None, ...]] = {
            id(rule): tuple(_static_forward(rule, b) for b in rule.choice.backends)
            for route in routes.values()
            for rule in route.rules
        }

    def service_at(self, dest_ip: str) -> ServiceKey | None:
        """The Service whose VIP is ``dest_ip``, or None (a pod IP or unknown address)."""
        return self._frontends.get(dest_ip)

    def routes_for(self, dest_ip: str, dest_port: int, client_namespace: str | None) -> Routes | None:
        """The routes that apply to a client in ``client_namespace`` dialling ``dest_ip:dest_port``."""
        port = self._port(dest_ip, dest_port, client_namespace)
        return None if port is None else port.routes

    def _port(self, dest_ip: str, dest_port: int, client_namespace: str | None) -> _Port | None:
        service = self._frontends.get(dest_ip)
        if service is None:
            return None
        if client_namespace is not None and client_namespace != service[0]:
            consumer = self._consumer.get((service, dest_port, client_namespace))
            if consumer is not None:
                return consumer
        return self._producer.get((service, dest_port))

    def route(
        self,
        request: HttpRequest,
        dest_ip: str,
        dest_port: int,
        client_namespace: str | None = None,
        rng: RandomSource = _RNG,
    ) -> Decision:
        """The decision for one request the client sent to ``dest_ip:dest_port``.

        ``client_namespace`` is the namespace of the client's verified identity (None when it
        has none: then only producer routes apply). ``rng`` draws backends and mirrors.
        """
        port = self._port(dest_ip, dest_port, client_namespace)
        if port is None:
            return DefaultService(self._frontends.get(dest_ip))
        path, query = split_target(request.target)
        entry = port.routes.match(request, path, query)
        if entry is None:
            return ROUTE_NOT_FOUND
        rule = entry.rule
        if rule.unresolved_filter:
            return DirectResponse(500, "filter_not_resolved", GRPC_UNAVAILABLE, rule.ref)
        if rule.redirect is not None:
            location = redirect_location(rule.redirect, request, path, query, entry.prefix, dest_port, port.host)
            return Redirect(rule.ref, rule.redirect.status, location, rule.response_headers)
        if rule.direct_status is not None:
            return DirectResponse(rule.direct_status, "direct_response", None, rule.ref, rule.direct_body)
        index = choose_index(rule.choice, rng)
        if index is None:
            return DirectResponse(500, "no_backend", GRPC_UNAVAILABLE, rule.ref)
        static = self._static[id(rule)][index]
        if static is not None:
            return static
        return self._forward(rule, rule.choice.backends[index], entry, request, path, query, dest_port, port.host, rng)

    def _forward(self, rule: Rule, backend: Backend, entry: Entry, request: HttpRequest, path: bytes,
                 query: bytes, dest_port: int, host: bytes, rng: RandomSource) -> Decision:
        if backend.problem is not None:
            return DirectResponse(500, "backend_not_resolved", GRPC_UNAVAILABLE, rule.ref)
        if backend.redirect is not None:
            location = redirect_location(backend.redirect, request, path, query, entry.prefix, dest_port, host)
            return Redirect(rule.ref, backend.redirect.status, location,
                            rule.response_headers + backend.response_headers)
        rewrite = _merged_rewrite(rule, backend)
        mirrors: tuple[RequestMirror, ...] = tuple(
            m for m in rule.mirrors + backend.mirrors if m.fraction >= 1.0 or rng.random() < m.fraction
        )
        return Forward(
            route=rule.ref,
            backend=backend,
            request_headers=rule.request_headers + backend.request_headers,
            response_headers=rule.response_headers + backend.response_headers,
            target=rewrite_target(rewrite, path, query, entry.prefix) if rewrite is not None else None,
            authority=rewrite.hostname if rewrite is not None else None,
            mirrors=mirrors,
            request_timeout=rule.request_timeout,
            backend_timeout=rule.backend_timeout,
            retry=rule.retry,
            fault=rule.fault,
        )

    # --- for the control plane ---------------------------------------------------------------

    def problems(self, kind: str, namespace: str, name: str) -> tuple[Problem, ...]:
        """Everything wrong with one route, including conflicts with other routes."""
        key = (kind, namespace, name)
        route = self._routes.get(key)
        if route is None:
            return ()
        return route.problems + tuple(self._conflicts.get(key, ()))

    def applied(self, namespace: str, name: str) -> list[str]:
        """Where a VirtualService is in force: "Service ns/name port N" entries, sorted."""
        return list(self._applied.get((VIRTUAL_SERVICE, namespace, name), ()))

    def notes(self, kind: str, namespace: str, name: str, parent: int) -> list[str]:
        """What an HTTPRoute or GRPCRoute overrides at its parentRef ``parent``: the
        VirtualServices of the same Service port that are not applied because of it."""
        return list(self._notes.get(((kind, namespace, name), parent), ()))

    def parent_status(self, kind: str, namespace: str, name: str) -> dict[int, list[dict[str, str]]]:
        """Conditions per mesh parentRef (by index in ``spec.parentRefs``) of one route."""
        route = self._routes.get((kind, namespace, name))
        if route is None:
            return {}
        problems = self.problems(kind, namespace, name)
        return {p.index: parent_conditions(problems, p.index, route.rule_count) for p in route.parents}


def _attached_parents(route: ParsedRoute) -> list[ParentRef]:
    refused = {p.parent for p in route.problems if p.condition == ACCEPTED and p.parent is not None}
    return [p for p in route.parents if p.index not in refused]


def compile_table(
    routes: Iterable[Mapping[str, Any]],
    services: Iterable[ServiceLike],
    domain_suffix: str = "cluster.local",
) -> RouteTable:
    """Parse, attach and index ``routes`` (HTTPRoute, GRPCRoute and VirtualService objects; others
    are ignored). A VirtualService serves a Service port only where no HTTPRoute or GRPCRoute is
    bound, and of several VirtualServices for one Service the oldest; the others get Conflicted."""
    by_key: dict[ServiceKey, ServiceLike] = {(s.namespace, s.name): s for s in services}
    by_hostname = {service.hostname: service for service in by_key.values()}
    frontends = {address: key for key, service in by_key.items() for address in service.addresses}

    def lookup(namespace: str, name: str) -> ServiceLike | None:
        return by_key.get((namespace, name))

    parsed: dict[tuple[str, str, str], ParsedRoute] = {}
    for obj in routes:
        kind = obj.get("kind") if isinstance(obj, Mapping) else None
        if kind in (HTTP_ROUTE, GRPC_ROUTE):
            route = parse_route(obj, lookup, domain_suffix)
            parsed[route.key] = route
        elif kind == VIRTUAL_SERVICE:
            route = parse_virtual_service(obj, lookup, by_hostname.get)
            parsed[route.key] = route

    # (service, port, consumer namespace or None) -> kind -> route key -> (route, parent index)
    groups: dict[tuple[ServiceKey, int, str | None], dict[str, dict[tuple[str, str, str], tuple[ParsedRoute, int]]]]
    groups = {}
    # (service, port) -> VirtualService key -> (route, host index); a VirtualService serves every
    # client (it has no consumer form), so it is grouped apart and placed after the xRoutes.
    vs_groups: dict[tuple[ServiceKey, int], dict[tuple[str, str, str], tuple[ParsedRoute, int]]] = {}
    for route in parsed.values():
        if not route.accepted:
            continue
        if route.kind == VIRTUAL_SERVICE:
            for parent in route.parents:
                service_key = (parent.namespace, parent.name)
                for port in sorted({p.service_port for p in by_key[service_key].ports}):
                    vs_groups.setdefault((service_key, port), {}).setdefault(route.key, (route, parent.index))
            continue
        for parent in _attached_parents(route):
            service_key = (parent.namespace, parent.name)
            service = by_key[service_key]
            ports = [parent.port] if parent.port is not None else sorted({p.service_port for p in service.ports})
            group = None if parent.namespace == route.namespace else route.namespace
            for port in ports:
                kinds = groups.setdefault((service_key, port, group), {})
                kinds.setdefault(route.kind, {}).setdefault(route.key, (route, parent.index))

    producer: dict[tuple[ServiceKey, int], _Port] = {}
    consumer: dict[tuple[ServiceKey, int, str], _Port] = {}
    # (HTTPRoute key, parent index) -> (winning GRPCRoute, Service, ports where it lost)
    lost: dict[tuple[tuple[str, str, str], int], tuple[ParsedRoute, ServiceKey, list[int]]] = {}
    for (service_key, port, group), kinds in groups.items():
        grpc_routes = kinds.get(GRPC_ROUTE)
        built: Routes
        if grpc_routes:
            built = build_grpc(
                (grpc_precedence(m, route, rule.ref.rule, i), m, rule)
                for route, _ in grpc_routes.values()
                for rule in route.rules
                for i, m in enumerate(rule.matches)
                if isinstance(m, GrpcMatch)
            )
            winner = min((r for r, _ in grpc_routes.values()), key=lambda r: (r.created, r.namespace, r.name))
            for key, (_, parent) in kinds.get(HTTP_ROUTE, {}).items():
                lost.setdefault((key, parent), (winner, service_key, []))[2].append(port)
        else:
            built = build_http(
                (http_precedence(m, route, rule.ref.rule, i), m, rule)
                for route, _ in kinds.get(HTTP_ROUTE, {}).values()
                for rule in route.rules
                for i, m in enumerate(rule.matches)
                if isinstance(m, HttpMatch)
            )
        host = by_key[service_key].hostname.encode("utf-8")
        if group is None:
            producer[(service_key, port)] = _Port(built, host)
        else:
            consumer[(service_key, port, group)] = _Port(built, host)
    conflicts: dict[tuple[str, str, str], list[Problem]] = {}
    applied: dict[tuple[str, str, str], list[str]] = {}
    notes: dict[tuple[tuple[str, str, str], int], list[str]] = {}
    # Service port -> the xRoutes bound there, for any group of clients.
    xroutes: dict[tuple[ServiceKey, int], list[tuple[tuple[str, str, str], int]]] = {}
    for (service_key, port, _), kinds in groups.items():
        for by_route in kinds.values():
            xroutes.setdefault((service_key, port), []).extend((key, parent) for key, (_, parent) in by_route.items())
    for (service_key, port), candidates in sorted(vs_groups.items()):
        where = f"Service {service_key[0]}/{service_key[1]} port {port}"
        bound = xroutes.get((service_key, port))
        if bound:
            # Not merged: an HTTPRoute or GRPCRoute on the Service port wins (docs/virtualservice.md).
            names = ", ".join(sorted({f"{k[0]} {k[1]}/{k[2]}" for k, _ in bound}))
            for key, (route, parent) in candidates.items():
                conflicts.setdefault(key, []).append(Problem(
                    ACCEPTED, CONFLICTED, f"{where}: {names} bound there takes precedence; this VirtualService "
                    "is not applied there (routes of the two APIs are not merged)", parent=parent))
            for key, parent in bound:
                vs_names = ", ".join(f"VirtualService {k[1]}/{k[2]}" for k in sorted(candidates))
                note = f"{where}: {vs_names} for the same Service is not applied (this route takes precedence)"
                if note not in notes.setdefault((key, parent), []):
                    notes[(key, parent)].append(note)
            continue
        ordered = sorted(candidates.values(), key=lambda item: (item[0].created, item[0].namespace, item[0].name))
        winner = ordered[0][0]
        for route, parent in ordered[1:]:
            conflicts.setdefault(route.key, []).append(Problem(
                ACCEPTED, CONFLICTED, f"{where}: VirtualService {winner.namespace}/{winner.name} is older and "
                "takes it; VirtualServices for one host are not merged", parent=parent))
        applied.setdefault(winner.key, []).append(where)
        producer[(service_key, port)] = _Port(build_vs(winner, port), by_key[service_key].hostname.encode("utf-8"))
    for (key, parent), (winner, service_key, ports) in lost.items():
        conflicts.setdefault(key, []).append(Problem(
            ACCEPTED, CONFLICTED,
            f"GRPCRoute {winner.namespace}/{winner.name} binds to Service {service_key[0]}/{service_key[1]} "
            f"port {', '.join(map(str, sorted(ports)))} too; GRPCRoute takes precedence over HTTPRoute there "
            "(GEP-1294, route types)",
            parent=parent,
        ))
    return RouteTable(frontends, producer, consumer, parsed, conflicts, applied, notes)
