"""Shared data for the balancer tests: a Service with pods on two nodes, a settable clock, and a
config built from DestinationRule dicts (waypoint.config.compile_config, as the waypoint does)."""

from __future__ import annotations

import random
from typing import Any

from waypoint.authz import WaypointRef
from waypoint.balance.balancer import Balancer
from waypoint.config import compile_config
from wisp.model import LoadBalancing, ModelSnapshot, PortMapping, Service, Workload

HOST = "echo.lb.svc.cluster.local"
KEY = f"lb/{HOST}"
ECHO = Service("echo", "lb", HOST, ("10.96.0.10",), (PortMapping(80, 8080), PortMapping(81, 9090)))
CLOSE = Service("echo", "lb", HOST, ("10.96.0.10",), (PortMapping(80, 8080),),
                load_balancing=LoadBalancing(("NETWORK", "REGION", "ZONE", "SUBZONE"), "FAILOVER"))
CLIENT = Workload("client", "client", "lb", ("10.244.1.100",), tunnel_protocol="HBONE", node="node1")


def pod(n: int, *, version: str = "v1", node: str = "node1") -> Workload:
    return Workload(f"u{n}", f"echo-{n}", "lb", (f"10.244.1.{n}",), tunnel_protocol="HBONE", service_account="echo",
                    node=node, labels={"app": "echo", "version": version},
                    services={KEY: (PortMapping(80, 8080), PortMapping(81, 9090))})


def rule(spec: dict[str, Any], name: str = "echo", namespace: str = "lb", created: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if created:
        meta["creationTimestamp"] = created
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": meta,
            "spec": {"host": "echo", **spec}}


def config(pods, rules=(), service: Service = ECHO, version: str = "v1", extra=()):
    snapshot = ModelSnapshot.of([*pods, service, CLIENT, *extra])
    return compile_config(snapshot, WaypointRef("lb", "waypoint"), version, list(rules))


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def balancer(seed: int = 1, clock: Clock | None = None) -> tuple[Balancer, Clock]:
    clock = clock or Clock()
    calls: list = []
    b = Balancer(random.Random(seed), clock, call_soon=lambda cb: calls.append(cb) or cb())
    return b, clock
