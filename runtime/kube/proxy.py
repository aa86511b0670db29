"""kube-proxy's job for the runtime's nodes: Services and EndpointSlices become each node's DNAT.

A cluster's kube-proxy watches Services and EndpointSlices and programs every node so that a
ClusterIP:port reaches one ready endpoint. Here the same objects, from the real API server, feed
the local runtime's kube-proxy-like chain (runtime/topology.py `service_rules`,
`set_service_rules`: WISP-SERVICES DNAT in each node netns), so non-mesh pods and host-network
pods reach ClusterIPs exactly as `wisp up DIR` lets them.

Contract:
- `KubeProxy(api, topology, nodes, api_forward).run(task_status=...)` installs the chain's hooks
  and a route to the service range (via the switch) on every node, lists Services and discovery.k8s.io/v1 EndpointSlices, reports started once
  every node has its first rules, then watches both (relisting on 410 Gone, backing off on
  errors: 0.2 s doubling to 5 s, one log line per failure streak) and reprograms every node
  whenever the rules change (iptables-restore runs on a worker thread). Runs until cancelled.
- Rules (`plan_rules`, pure): for each Service with a ClusterIP (not headless, not
  ExternalName) and each TCP port, the ready endpoints (`conditions.ready` true or unset) of the
  slices labelled `kubernetes.io/service-name` with its name in its namespace, on the slice port
  of the same name (the EndpointSlice controller has already resolved named target ports). No
  ready endpoint: the port is rejected (tcp-reset) as kube-proxy does. `default/kubernetes`
  (the test bed's API server reconciles no endpoints) goes to `api_forward`, the API server
  forwarder (`apiforward.py`), whatever the slices say.
- `hosts(namespace)` (pure over the last listing: `host_entries`) gives /etc/hosts entries for a
  pod of `namespace`: `(clusterIP, [svc.ns.svc.cluster.local, svc.ns.svc, svc.ns, svc])`, the
  short name only for Services of the pod's own namespace, in the order the local runtime writes
  them. `generation` increases whenever Services change, so a kubelet can tell when to rewrite.
- `rules` is the iptables-restore text last applied to every node.
"""

from __future__ import annotations

from typing import Any

import structlog
import trio

from runtime.topology import (
    CONTROL_PLANE_IP,
    SERVICE_HOOKS,
    SERVICE_NETWORK,
    Node,
    Topology,
    TopologyError,
    ip_batch,
    service_rules,
)

from .api import ApiError, Gone, KubeApi

log = structlog.get_logger("runtime.kube.proxy")

SERVICES = "/api/v1/services"
SLICES = "/apis/discovery.k8s.io/v1/endpointslices"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
API_SERVICE = ("default", "kubernetes")
Key = tuple[str, str]
ServiceRule = tuple[str, int, list[tuple[str, int]]]


def _key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _cluster_ip(service: dict[str, Any]) -> str | None:
    spec = service.get("spec") or {}
    ip = spec.get("clusterIP")
    if spec.get("type") == "ExternalName" or not ip or ip == "None":
        return None
    return str(ip)


def plan_rules(services: list[dict[str, Any]], slices: list[dict[str, Any]],
               api_forward: tuple[str, int]) -> list[ServiceRule]:
    """[(vip, port, [(endpoint ip, port), ...])] for `service_rules`, sorted for stable output."""
    by_service: dict[Key, list[dict[str, Any]]] = {}
    for item in slices:
        namespace, _ = _key(item)
        owner = ((item.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
        if owner and item.get("addressType", "IPv4") == "IPv4":
            by_service.setdefault((namespace, owner), []).append(item)
    rules: list[ServiceRule] = []
    for service in services:
        vip = _cluster_ip(service)
        if vip is None:
            continue
        key = _key(service)
        for port in (service.get("spec") or {}).get("ports") or []:
            if port.get("protocol", "TCP") != "TCP" or not isinstance(port.get("port"), int):
                continue
            if key == API_SERVICE:
                rules.append((vip, port["port"], [api_forward]))
                continue
            name = port.get("name") or ""
            endpoints: set[tuple[str, int]] = set()
            for item in by_service.get(key, []):
                target = next((p.get("port") for p in item.get("ports") or []
                               if (p.get("name") or "") == name and p.get("protocol", "TCP") == "TCP"), None)
                if not isinstance(target, int):
                    continue
                for endpoint in item.get("endpoints") or []:
                    if (endpoint.get("conditions") or {}).get("ready") is False:
                        continue
                    addresses = endpoint.get("addresses") or []
                    if addresses:
                        endpoints.add((str(addresses[0]), target))
            rules.append((vip, port["port"], sorted(endpoints)))
    return sorted(rules, key=lambda r: (r[0], r[1]))


def host_entries(services: list[dict[str, Any]], namespace: str) -> list[tuple[str, list[str]]]:
    entries = []
    for service in sorted(services, key=_key):
        vip = _cluster_ip(service)
        if vip is None:
            continue
        ns, name = _key(service)
        names = [f"{name}.{ns}.svc.cluster.local", f"{name}.{ns}.svc", f"{name}.{ns}"]
        if ns == namespace:
            names.append(name)
        entries.append((vip, names))
    return entries


class KubeProxy:
    def __init__(self, api: KubeApi, topology: Topology, nodes: list[Node], api_forward: tuple[str, int]) -> None:
        self.api = api
        self.topology = topology
        self.nodes = nodes
        self.api_forward = api_forward
        self.services: dict[Key, dict[str, Any]] = {}
        self.slices: dict[Key, dict[str, Any]] = {}
        self.rules: str | None = None
        self.generation = 0
        self._changed = trio.Event()

    def hosts(self, namespace: str) -> list[tuple[str, list[str]]]:
        return host_entries(list(self.services.values()), namespace)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        for node in self.nodes:
            await trio.to_thread.run_sync(self._prepare, node)
        async with trio.open_nursery() as nursery:
            services_listed, slices_listed = trio.Event(), trio.Event()
            nursery.start_soon(self._follow, SERVICES, self.services, services_listed)
            nursery.start_soon(self._follow, SLICES, self.slices, slices_listed)
            await services_listed.wait()
            await slices_listed.wait()
            await self._program()
            task_status.started()
            while True:
                await self._changed.wait()
                self._changed = trio.Event()
                try:
                    await self._program()
                except TopologyError as exc:  # must not end kube-proxy: retried a second later
                    log.error("programming services failed", error=str(exc))
                    await trio.sleep(1.0)
                    self._changed.set()

    def _prepare(self, node: Node) -> None:
        # A node netns has no default route: without one to the service range, a host-network
        # pod's connect() to a ClusterIP fails before the OUTPUT chain's DNAT is consulted.
        ip_batch(node.netns, [f"route replace {SERVICE_NETWORK} via {CONTROL_PLANE_IP}"])
        self.topology.set_service_rules(node, SERVICE_HOOKS)

    async def _program(self) -> None:
        text = service_rules(plan_rules(list(self.services.values()), list(self.slices.values()), self.api_forward))
        if text == self.rules:
            return
        for node in self.nodes:
            await trio.to_thread.run_sync(self.topology.set_service_rules, node, text)
        self.rules = text
        log.info("services programmed", nodes=len(self.nodes), services=len(self.services),
                 rules=text.count("\n-A "))

    async def _follow(self, path: str, store: dict[Key, dict[str, Any]], listed: trio.Event) -> None:
        """List then watch `path` into `store` forever; relist on Gone or when the watch ends."""
        backoff = 0.2
        failing = False
        while True:
            try:
                items, version = await self.api.list(path)
                fresh = {_key(item): item for item in items}
                if fresh != store:
                    store.clear()
                    store.update(fresh)
                    self._touch(path)
                listed.set()
                async for kind, obj in self.api.watch(path, version):
                    if kind == "BOOKMARK":
                        continue
                    key = _key(obj)
                    if kind == "DELETED":
                        store.pop(key, None)
                    elif kind in ("ADDED", "MODIFIED"):
                        store[key] = obj
                    else:
                        continue
                    self._touch(path)
                backoff, failing = 0.2, False
            except Gone:
                log.info("watch expired; relisting", path=path)
            except (ApiError, ValueError) as exc:
                if not failing:
                    log.warning("list/watch failed; retrying", path=path, error=str(exc), backoff=backoff)
                failing = True
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _touch(self, path: str) -> None:
        if path == SERVICES:
            self.generation += 1
        self._changed.set()

