"""upstream.choose_endpoint shares one Endpoint per workload and target port within a config version
(no SPIFFE id parsed per request), and a new version makes its own."""

from __future__ import annotations

import random

from waypoint.authz import WaypointRef
from waypoint.config import compile_config
from waypoint.upstream import choose_endpoint
from wisp.identity import SpiffeId
from wisp.model import ModelSnapshot, PortMapping, Service, Workload

HOST = "echo.shop.svc.cluster.local"
KEY = f"shop/{HOST}"
ECHO = Service("echo", "shop", HOST, ("10.96.0.10",), (PortMapping(80, 8080), PortMapping(81, 9090)))
PODS = tuple(Workload(f"u{n}", f"echo-{n}", "shop", (f"10.244.1.{n}",), tunnel_protocol="HBONE",
                      service_account=f"echo{n}", services={KEY: (PortMapping(80, 8080), PortMapping(81, 9090))})
             for n in (1, 2))


def _config(version: str):
    return compile_config(ModelSnapshot.of([*PODS, ECHO]), WaypointRef("shop", "waypoint"), version)


def test_one_endpoint_per_workload_and_port_within_a_version():
    config, rng = _config("v1"), random.Random(7)
    seen: dict[tuple[str, int], object] = {}
    for _ in range(200):
        for port in (80, 81):
            endpoint = choose_endpoint(config, ECHO, port, rng)
            n = endpoint.address.rsplit(".", 1)[1]
            assert endpoint.port == {80: 8080, 81: 9090}[port]
            assert endpoint.identity == SpiffeId("cluster.local", "shop", f"echo{n}")
            assert seen.setdefault((endpoint.address, endpoint.port), endpoint) is endpoint
    assert len(seen) == 4  # both workloads were chosen, on both ports
    again = choose_endpoint(_config("v2"), ECHO, 80, rng)
    assert again == seen[(again.address, again.port)] and again is not seen[(again.address, again.port)]
