"""Builders for the Gateway API objects and Services the route tests feed to ``waypoint.route``.

Objects are written the way a user writes them (defaults left out), since the local store keeps
them so; ``waypoint.route.parse`` applies the schema defaults itself.
"""

from __future__ import annotations

import random
from typing import Any

from waypoint.route import HttpRequest, compile_table, header_map
from waypoint.route.table import RouteTable
from wisp.model import PortMapping, Service

SHOP = "shop"
WEB_VIP = "10.96.0.10"
V2_VIP = "10.96.0.11"
POD_IP = "10.244.1.7"


def service(name: str, vip: str, ns: str = SHOP, ports: tuple[int, ...] = (80, 8080)) -> Service:
    return Service(name, ns, f"{name}.{ns}.svc.cluster.local", (vip,), tuple(PortMapping(p, 8080) for p in ports))


def services() -> list[Service]:
    return [
        service("web", WEB_VIP),
        service("web-v2", V2_VIP),
        service("web-v3", "10.96.0.12"),
        service("mirror", "10.96.0.13"),
        service("api", "10.96.1.10", ns="other"),
    ]


def parent(name: str = "web", ns: str | None = None, port: int | None = None, **extra: Any) -> dict[str, Any]:
    ref: dict[str, Any] = {"group": "", "kind": "Service", "name": name}
    if ns is not None:
        ref["namespace"] = ns
    if port is not None:
        ref["port"] = port
    ref.update(extra)
    return ref


def backend(name: str = "web", port: int = 80, weight: int | None = None, ns: str | None = None,
            filters: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": name, "port": port}
    if weight is not None:
        ref["weight"] = weight
    if ns is not None:
        ref["namespace"] = ns
    if filters:
        ref["filters"] = filters
    ref.update(extra)
    return ref


def path(type_: str, value: str) -> dict[str, Any]:
    return {"path": {"type": type_, "value": value}}


def rule(*matches: dict[str, Any], backends: list[dict[str, Any]] | None = None,
         filters: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if matches:
        out["matches"] = list(matches)
    out["backendRefs"] = [backend()] if backends is None else backends
    if not out["backendRefs"]:
        del out["backendRefs"]
    if filters:
        out["filters"] = filters
    out.update(extra)
    return out


def http_route(name: str, *rules: dict[str, Any], ns: str = SHOP, parents: list[dict[str, Any]] | None = None,
               created: str | None = "2024-01-01T00:00:00Z", kind: str = "HTTPRoute") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if created is not None:
        meta["creationTimestamp"] = created
    spec: dict[str, Any] = {"parentRefs": [parent()] if parents is None else parents}
    if rules:
        spec["rules"] = list(rules)
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": kind, "metadata": meta, "spec": spec}


def grpc_route(name: str, *rules: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return http_route(name, *rules, kind="GRPCRoute", **kwargs)


def request(target: bytes = b"/", method: bytes = b"GET", headers: list[tuple[bytes, bytes]] | None = None,
            authority: bytes = b"web.shop.svc.cluster.local") -> HttpRequest:
    return HttpRequest(method, target, header_map(headers or []), authority)


def table(*routes: dict[str, Any]) -> RouteTable:
    return compile_table(routes, services())


def decide(t: RouteTable, req: HttpRequest, ip: str = WEB_VIP, port: int = 80, client_ns: str | None = SHOP,
           seed: int = 0) -> Any:
    return t.route(req, ip, port, client_ns, random.Random(seed))


def backend_name(decision: Any) -> str:
    """The chosen backend's name, so a test can ask which rule won by where it sends."""
    return decision.backend.name
