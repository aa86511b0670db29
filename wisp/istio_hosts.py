"""Istio host names (VirtualService ``hosts``, ``destination.host``, DestinationRule ``host``) → Service.

Istio reads a host in a networking object relative to the object's namespace: a short name
(``reviews``) is the Service of that name in the object's namespace ("Istio will interpret the
short name based on the namespace of the rule, not the service", VirtualService.hosts); a fully
qualified name (``reviews.prod.svc.cluster.local``) is the Service with that hostname. Clients in
Kubernetes also write ``reviews.prod`` and ``reviews.prod.svc`` (what DNS search paths expand),
and wisp accepts those as ``name.namespace``, as the issue asks. Wildcards (``*``,
``*.example.com``) name no single Service and resolve to nothing here.

The lookup is by (namespace, name) or by hostname, so it needs no domain suffix: the Service's
own hostname carries it. Used by the control plane (distribution, status) and by the waypoint
(VirtualService compilation, DestinationRule hosts), on the same data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

S = TypeVar("S")


def host_key(host: str, namespace: str) -> tuple[str, str] | str | None:
    """``(namespace, name)`` for a short or ``name.ns[.svc]`` host, the host itself when it is a
    longer name (compare with Service hostnames), None for a wildcard or an empty host."""
    host = host.strip().rstrip(".").lower()
    if not host or "*" in host:
        return None
    parts = host.split(".")
    if len(parts) == 1:
        return (namespace, parts[0])
    if len(parts) == 2 or (len(parts) == 3 and parts[2] == "svc"):
        return (parts[1], parts[0])
    return host


def resolve_host(host: str, namespace: str, by_name: Callable[[str, str], S | None],
                 by_hostname: Callable[[str], S | None]) -> S | None:
    """The Service ``host`` names, read relative to ``namespace``; None when there is none."""
    key = host_key(host, namespace)
    if key is None:
        return None
    if isinstance(key, tuple):
        return by_name(key[0], key[1])
    return by_hostname(key)
