"""KubeSource: list+watch of the kinds the core reads, feeding the ObjectStore.

One reflector per kind, as client-go's: list (paged) then watch from the list's
resourceVersion with ``allowWatchBookmarks``; each event updates the store under the source
name ``kube/<Kind>``, so a relist is one ``ObjectStore.replace`` of that kind's objects: the
store sees a consistent view, and whatever happened while no watch ran (adds, changes,
deletes) shows as the difference. A watch that ends normally (server timeout) resumes from
the last resourceVersion seen (an event's or a bookmark's). 410 Gone, on opening or as an
ERROR event (etcd compacted past our resourceVersion), forces a relist. Other failures back
off exponentially with full jitter, reset by the next success.

A kind whose resource is not served (its CRD is absent) is logged once and listed again every
``absent_retry`` seconds, so a CRD installed later is picked up. ``synced`` is set once every
kind has been listed or found absent. Objects are stored as the API returns them, with
``kind``/``apiVersion`` filled in (list items lack them) and ``managedFields`` dropped; of Pods,
the fields nothing in the operator reads (container statuses, volumes and mounts, tolerations)
are dropped too, which at 10,000 pods is the difference between the 300 MB budget and over it.

Counters (``lists``, ``relists_gone``, ``events``) are there for tests and the readiness probe.
``disconnect()``/``reconnect()`` drop and resume the watches keeping their resourceVersions,
as a network partition would (tests use it to make the operator miss events).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from wisp.waypoint_deployment import ROOT_CERT_CONFIGMAP
from wisp_operator.store import ObjectStore

from .client import KubeApi, KubeUnavailable

log = structlog.get_logger("wisp.operator.kube.source")

SOURCE_PREFIX = "kube/"
LIST_PAGE = 500


@dataclass(frozen=True, slots=True)
class Kind:
    """A resource the source follows."""

    kind: str
    api_version: str
    plural: str
    namespaced: bool = True
    # Lists and watches only the objects it selects (e.g. ``metadata.name=...``), as an informer's filter.
    field_selector: str | None = None

    def path(self, namespace: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else "/apis/" + self.api_version
        if namespace:
            return "%s/namespaces/%s/%s" % (base, namespace, self.plural)
        return "%s/%s" % (base, self.plural)

    def object_path(self, namespace: str, name: str) -> str:
        return "%s/%s" % (self.path(namespace if self.namespaced else None), name)


KINDS: tuple[Kind, ...] = (
    Kind("Namespace", "v1", "namespaces", namespaced=False),
    Kind("Pod", "v1", "pods"),
    Kind("Service", "v1", "services"),
    Kind("EndpointSlice", "discovery.k8s.io/v1", "endpointslices"),
    Kind("ServiceAccount", "v1", "serviceaccounts"),
    Kind("GatewayClass", "gateway.networking.k8s.io/v1", "gatewayclasses", namespaced=False),
    Kind("Gateway", "gateway.networking.k8s.io/v1", "gateways"),
    Kind("HTTPRoute", "gateway.networking.k8s.io/v1", "httproutes"),
    Kind("GRPCRoute", "gateway.networking.k8s.io/v1", "grpcroutes"),
    Kind("AuthorizationPolicy", "security.istio.io/v1", "authorizationpolicies"),
    Kind("PeerAuthentication", "security.istio.io/v1", "peerauthentications"),
    Kind("RequestAuthentication", "security.istio.io/v1", "requestauthentications"),
    Kind("VirtualService", "networking.istio.io/v1", "virtualservices"),
    Kind("DestinationRule", "networking.istio.io/v1", "destinationrules"),
    Kind("Telemetry", "telemetry.istio.io/v1", "telemetries"),
    Kind("Node", "v1", "nodes", namespaced=False),
    # Only the root certificate ConfigMap the writer publishes in every namespace (istiod's
    # namespace controller follows the same), so a deleted or edited one is put back.
    Kind("ConfigMap", "v1", "configmaps", field_selector="metadata.name=" + ROOT_CERT_CONFIGMAP),
)
KINDS_BY_NAME = {k.kind: k for k in KINDS}


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with full jitter (AWS's "full jitter": uniform in [0, cap])."""

    initial: float = 0.5
    maximum: float = 30.0
    attempt: int = 0

    def next(self) -> float:
        cap = min(self.maximum, self.initial * (2 ** self.attempt))
        self.attempt += 1
        return random.uniform(0, cap)

    def reset(self) -> None:
        self.attempt = 0


class _Gone(Exception):
    """The resourceVersion we hold is too old: relist."""


class _Absent(Exception):
    """The resource is not served (no CRD)."""


class KubeSource:
    """Reflectors for ``kinds`` into ``store``; run with ``await source.run()``."""

    def __init__(
        self,
        api: KubeApi,
        store: ObjectStore,
        kinds: Sequence[Kind] = KINDS,
        *,
        watch_timeout: int = 300,
        absent_retry: float = 10.0,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.api = api
        self.store = store
        self.kinds = tuple(kinds)
        self.watch_timeout = watch_timeout
        self.absent_retry = absent_retry
        self._backoff = backoff
        self.synced = asyncio.Event()
        self.resource_versions: dict[str, str] = {}
        self.absent: set[str] = set()
        self.lists = 0
        self.relists_gone = 0
        self.events = 0
        self.errors = 0
        self._listed: set[str] = set()
        self._connected = asyncio.Event()
        self._connected.set()
        self._watch_tasks: set[asyncio.Future[Any]] = set()
        self._dropped: set[asyncio.Future[Any]] = set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            for kind in self.kinds:
                tasks.create_task(self._reflect(kind), name="reflect-" + kind.kind)

    def disconnect(self) -> None:
        """Drop every watch and open none until ``reconnect()``; resourceVersions are kept."""
        self._connected.clear()
        for task in list(self._watch_tasks):
            self._dropped.add(task)
            task.cancel()

    def reconnect(self) -> None:
        self._connected.set()

    # --- one kind ----------------------------------------------------------------------------

    async def _reflect(self, kind: Kind) -> None:
        backoff = Backoff(*self._backoff)
        need_list = True
        while True:
            await self._connected.wait()
            try:
                if need_list:
                    await self._list(kind)
                    need_list = False
                    backoff.reset()
                watch = asyncio.ensure_future(self._watch(kind))
                self._watch_tasks.add(watch)
                try:
                    await watch
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if watch not in self._dropped or (current is not None and current.cancelling()):
                        raise  # we are being cancelled, not (only) disconnected
                finally:
                    self._dropped.discard(watch)
                    self._watch_tasks.discard(watch)
                    watch.cancel()
                backoff.reset()
            except _Gone:
                self.relists_gone += 1
                log.info("watch expired, relisting", kind=kind.kind,
                         resource_version=self.resource_versions.get(kind.kind))
                need_list = True
            except _Absent:
                if kind.kind not in self.absent:
                    self.absent.add(kind.kind)
                    log.warning("kind not served by the API server (CRD absent), skipped; will look again",
                                kind=kind.kind, api_version=kind.api_version, retry_seconds=self.absent_retry)
                self._mark_listed(kind)
                need_list = True
                await asyncio.sleep(self.absent_retry)
            except KubeUnavailable as exc:
                self.errors += 1
                delay = backoff.next()
                log.warning("list/watch failed, backing off", kind=kind.kind, error=str(exc),
                            seconds=round(delay, 2))
                await asyncio.sleep(delay)

    async def _list(self, kind: Kind) -> None:
        started = time.monotonic()
        objects: list[dict[str, Any]] = []
        selector = {"fieldSelector": kind.field_selector} if kind.field_selector else {}
        query = {"limit": str(LIST_PAGE), **selector}
        while True:
            response = await self.api.request("GET", kind.path(), query=query, timeout=60)
            if response.status == 404:
                raise _Absent()
            if response.status == 410:
                # A continue token expired mid-list: start over, from the latest state.
                query = {"limit": str(LIST_PAGE), **selector}
                objects.clear()
                continue
            if not response.ok:
                raise KubeUnavailable("list %s: %s" % (kind.path(), response.message()))
            for item in response.body.get("items") or ():
                if isinstance(item, dict):
                    objects.append(self._prepared(kind, item))
            meta = response.body.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                break
            query = {"limit": str(LIST_PAGE), "continue": token, **selector}
        resource_version = str(meta.get("resourceVersion", ""))
        self.store.replace(SOURCE_PREFIX + kind.kind, objects)
        self.resource_versions[kind.kind] = resource_version
        self.lists += 1
        if kind.kind in self.absent:
            self.absent.discard(kind.kind)
            log.info("kind now served, following it", kind=kind.kind)
        log.info("listed", kind=kind.kind, objects=len(objects), resource_version=resource_version,
                 seconds=round(time.monotonic() - started, 3))
        self._mark_listed(kind)

    async def _watch(self, kind: Kind) -> None:
        query = {
            "resourceVersion": self.resource_versions[kind.kind],
            "allowWatchBookmarks": "true",
            # The server ends the watch after this; jittered so the kinds do not reconnect together.
            "timeoutSeconds": str(int(self.watch_timeout * random.uniform(1.0, 2.0))),
        }
        if kind.field_selector:
            query["fieldSelector"] = kind.field_selector
        source = SOURCE_PREFIX + kind.kind
        async for event in self.api.watch(kind.path(), query, read_timeout=self.watch_timeout * 2 + 30):
            kind_of_event = event.get("type")
            obj = event.get("object")
            if not isinstance(obj, dict):
                continue
            if kind_of_event == "ERROR":
                code = obj.get("code")
                if code == 410:
                    raise _Gone()
                if code == 404:
                    raise _Absent()
                raise KubeUnavailable("watch %s: %s" % (kind.path(), obj.get("message") or code))
            meta = obj.get("metadata")
            if not isinstance(meta, dict):
                continue
            if "resourceVersion" in meta:
                self.resource_versions[kind.kind] = str(meta["resourceVersion"])
            if kind_of_event == "BOOKMARK":
                continue
            self.events += 1
            if kind_of_event in ("ADDED", "MODIFIED"):
                self.store.apply(source, self._prepared(kind, obj))
            elif kind_of_event == "DELETED":
                name = meta.get("name")
                if isinstance(name, str):
                    namespace = meta.get("namespace") or ""
                    self.store.delete(source, kind.kind, namespace if isinstance(namespace, str) else "", name)

    @staticmethod
    def _prepared(kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
        obj["kind"] = kind.kind
        obj["apiVersion"] = kind.api_version
        meta = obj.get("metadata")
        if isinstance(meta, dict):
            meta.pop("managedFields", None)
        if kind.kind == "Pod":
            _drop_unread_pod_fields(obj)
        return obj

    def _mark_listed(self, kind: Kind) -> None:
        self._listed.add(kind.kind)
        if len(self._listed) == len(self.kinds):
            self.synced.set()


# Pod fields no part of the operator reads (the core, the CA's pod lookups, the writer), dropped
# as they arrive: with 10,000 pods the kubelet's container statuses, the service-account token
# volume every pod gets and the default tolerations were ~a third of what the store held.
_UNREAD_POD_SPEC = ("volumes", "tolerations")
_UNREAD_POD_STATUS = ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")
_UNREAD_CONTAINER = ("volumeMounts", "terminationMessagePath", "terminationMessagePolicy", "resources")


def _drop_unread_pod_fields(pod: dict[str, Any]) -> None:
    spec, status = pod.get("spec"), pod.get("status")
    if isinstance(spec, dict):
        for name in _UNREAD_POD_SPEC:
            spec.pop(name, None)
        for list_name in ("containers", "initContainers"):
            containers = spec.get(list_name)
            if isinstance(containers, list):
                for container in containers:
                    if isinstance(container, dict):
                        for name in _UNREAD_CONTAINER:
                            container.pop(name, None)
    if isinstance(status, dict):
        for name in _UNREAD_POD_STATUS:
            status.pop(name, None)
