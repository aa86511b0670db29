"""KubeWriter: what the core decides, written back to the API server.

Two kinds of writes, each only when its content changed:

- **Status conditions** (the core's ``StatusWrite``s: ``istio.io/WaypointBound`` on Services and
  Pods, ``ZtunnelAccepted`` on AuthorizationPolicies, and any other it emits) go to the
  object's ``/status`` subresource as a JSON merge patch of the whole ``status.conditions`` list
  carrying the ``metadata.resourceVersion`` it was computed from, as istiod's status writer
  updates status: read, change one condition, write; a 409 Conflict (someone wrote in between)
  is retried with a fresh read, up to ``CONFLICT_RETRIES`` times. ``lastTransitionTime`` changes
  only when the condition's status does. Other writers' conditions are kept.
- **Gateway API status** (the core's ``StatusFieldsWrite``s: a waypoint Gateway's conditions,
  listeners and addresses, a mesh route's ``parents`` entries of our controller) goes the same
  way, fields merged by ``gateways.merge_status`` (others' conditions and parents kept).
- **Waypoint objects**: for each Gateway of class ``istio-waypoint`` a ServiceAccount, a
  Service and a Deployment named after it (``wisp.waypoint_deployment``, shared with local
  mode: Istio's waypoint template run as ``wisp-waypoint`` with image ``waypoint_image``,
  dialling ``control_plane``); owned by the Gateway (``ownerReferences`` with its uid) so the
  garbage collector removes them with it.
  They are written with server-side apply, field manager ``wisp``, ``force=true`` as istiod
  forces. The core does not produce these objects yet; the writer derives them from the Gateway.
- **The root certificate ConfigMap**, as istiod's namespace controller publishes it
  (pilot/pkg/serviceregistry/kube/controller/namespacecontroller.go): ``istio-ca-root-cert``
  with ``root-cert.pem`` (``root_cert``, the CA's roots) and label ``istio.io/config: "true"``
  in every namespace but ``kube-public``, ``kube-node-lease`` and ``local-path-storage``
  (Istio's ignored namespaces, less ``kube-system``) and those terminating; server-side applied
  (field manager ``wisp``, force) whenever the one the source follows (ConfigMaps of that name
  only) is missing or differs, so a new namespace gets it and a deleted or edited one is put
  back. A namespace that is going away (403 terminating, 404) is skipped without retrying;
  the next change brings it back if the namespace lives on.

``run`` follows the controller: after each reconciliation, if ``is_leader()`` says so, it writes.
A write that fails is logged and tried again after the next reconciliation or ``retry`` s.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog

from wisp_operator.cluster import ClusterState, Key
from wisp_operator.controller import Controller
from wisp_operator.gateways import StatusFieldsWrite, merge_status
from wisp_operator.reconcile import StatusWrite
from wisp.model import DEFAULT_TRUST_DOMAIN
from wisp.waypoint_deployment import (
    DEFAULT_CONTROL_PLANE,
    DEFAULT_WAYPOINT_IMAGE,
    ROOT_CERT_CONFIGMAP,
    ROOT_CERT_KEY,
    waypoint_objects,
)
from wisp_operator.waypoints import WAYPOINT_GATEWAY_CLASS

from .client import APPLY_PATCH, MERGE_PATCH, KubeApi, KubeUnavailable, Response
from .source import KINDS_BY_NAME, Kind

log = structlog.get_logger("wisp.operator.kube.writer")

FIELD_MANAGER = "wisp"
CONFLICT_RETRIES = 5
_WAYPOINT_KINDS = {
    "ServiceAccount": Kind("ServiceAccount", "v1", "serviceaccounts"),
    "Service": Kind("Service", "v1", "services"),
    "Deployment": Kind("Deployment", "apps/v1", "deployments"),
}
_CONFIG_MAPS = Kind("ConfigMap", "v1", "configmaps")
# Istio's inject.IgnoredNamespaces less kube-system, where ztunnel may run.
ROOT_CERT_IGNORED_NAMESPACES = frozenset({"kube-public", "kube-node-lease", "local-path-storage"})
ROOT_CERT_LABELS = {"istio.io/config": "true"}


class KubeWriter:
    def __init__(
        self,
        api: KubeApi,
        *,
        is_leader: Callable[[], bool] = lambda: True,
        waypoint_image: str = DEFAULT_WAYPOINT_IMAGE,
        control_plane: str = DEFAULT_CONTROL_PLANE,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        root_cert: str | None = None,
        retry: float = 5.0,
        waypoint_env: Mapping[str, str] | None = None,
    ) -> None:
        self.api = api
        self.waypoint_env = dict(waypoint_env or {})  # mesh-wide waypoint settings (docs/tracing.md)
        self.is_leader = is_leader
        self.waypoint_image = waypoint_image
        self.control_plane = control_plane
        self.trust_domain = trust_domain
        self.root_cert = root_cert
        self.retry = retry
        self.status_writes = 0
        self.conflicts = 0
        self.applies = 0
        # (kind, ns, name, condition type) -> (condition written, resourceVersion it was computed
        # from): until the watch brings the written object, the core asks for the same write again.
        self._written: dict[tuple[str, str, str, str], tuple[str, str]] = {}
        # (kind, ns, name) of waypoint objects -> the manifest last applied, as JSON.
        self._applied: dict[Key, str] = {}
        # namespace -> (roots applied, resourceVersion of the ConfigMap seen then; "" for none):
        # until the watch brings our write back, the store still shows what we replaced.
        self._roots_applied: dict[str, tuple[str, str]] = {}
        self.root_cert_applies = 0

    async def run(self, controller: Controller) -> None:
        seen = 0
        while True:
            try:
                seen = await asyncio.wait_for(controller.wait_for_reconciliation(seen), self.retry)
            except TimeoutError:
                pass
            if not self.is_leader():
                # A new leader starts from what the API says, not from what we wrote earlier.
                self._written.clear()
                self._applied.clear()
                self._roots_applied.clear()
                continue
            await self.write(controller.state, controller.last_status)

    async def write(self, state: ClusterState, writes: Iterable[StatusWrite | StatusFieldsWrite]) -> None:
        """Write ``writes`` and the waypoint objects ``state``'s Gateways want; log failures."""
        for write in writes:
            current = state.get(write.kind, write.namespace, write.name)
            try:
                if isinstance(write, StatusFieldsWrite):
                    await self.write_status_fields(write, current)
                else:
                    await self.write_status(write, current)
            except KubeUnavailable as exc:
                log.warning("status write failed", kind=write.kind, namespace=write.namespace,
                            name=write.name, condition=getattr(write, "condition_type", None), error=str(exc))
        try:
            await self.sync_waypoints(state)
        except KubeUnavailable as exc:
            log.warning("waypoint objects not written", error=str(exc))
        await self.sync_root_cert(state)

    # --- status ------------------------------------------------------------------------------

    async def write_status(self, write: StatusWrite, current: dict[str, Any] | None = None) -> bool:
        """Set or remove one condition; True if the API server took a change.

        ``current`` is the object as last seen (the store's); without it, or after a conflict,
        the object is read fresh.
        """
        kind = KINDS_BY_NAME.get(write.kind)
        if kind is None:
            log.warning("status for a kind we do not follow, not written", kind=write.kind)
            return False
        path = kind.object_path(write.namespace, write.name)
        wanted = _canonical(write.condition)
        memo_key = (write.kind, write.namespace, write.name, write.condition_type)
        if current is not None:
            seen_rv = _resource_version(current)
            if self._written.get(memo_key) == (wanted, seen_rv):
                return False  # written already; the watch has not brought it back yet
        for _ in range(CONFLICT_RETRIES):
            if current is None:
                response = await self.api.request("GET", path)
                if response.status == 404:
                    return False
                _check(response, "read", path)
                current = response.body
            rv = _resource_version(current)
            conditions = _conditions(current)
            merged = _with_condition(conditions, write.condition_type, write.condition)
            if merged == conditions:
                self._written[memo_key] = (wanted, rv)
                return False
            patch = {"metadata": {"resourceVersion": rv}, "status": {"conditions": merged}}
            response = await self.api.request("PATCH", path + "/status", body=patch, content_type=MERGE_PATCH,
                                              query={"fieldManager": FIELD_MANAGER})
            if response.status == 409:
                self.conflicts += 1
                log.info("status write conflict, retrying with a fresh read", kind=write.kind,
                         namespace=write.namespace, name=write.name)
                current = None
                continue
            if response.status == 404:
                return False
            _check(response, "write status of", path)
            self.status_writes += 1
            self._written[memo_key] = (wanted, rv)
            log.info("status written", kind=write.kind, namespace=write.namespace, name=write.name,
                     condition=write.condition_type,
                     status=write.condition.get("status") if write.condition else None)
            return True
        log.warning("status write kept conflicting, giving up until the next reconciliation",
                    kind=write.kind, namespace=write.namespace, name=write.name, attempts=CONFLICT_RETRIES)
        return False

    async def write_status_fields(self, write: StatusFieldsWrite, current: dict[str, Any] | None = None) -> bool:
        """Set the Gateway API status fields we own; True if the API server took a change."""
        kind = KINDS_BY_NAME.get(write.kind)
        if kind is None:
            log.warning("status for a kind we do not follow, not written", kind=write.kind)
            return False
        path = kind.object_path(write.namespace, write.name)
        wanted = _canonical(write.fields)
        memo_key = (write.kind, write.namespace, write.name, "")
        if current is not None and self._written.get(memo_key) == (wanted, _resource_version(current)):
            return False
        for _ in range(CONFLICT_RETRIES):
            if current is None:
                response = await self.api.request("GET", path)
                if response.status == 404:
                    return False
                _check(response, "read", path)
                current = response.body
            rv = _resource_version(current)
            status = current.get("status") if isinstance(current.get("status"), dict) else {}
            merged = merge_status(write.kind, status, write.fields)
            if all(status.get(k) == v for k, v in merged.items()):
                self._written[memo_key] = (wanted, rv)
                return False
            patch = {"metadata": {"resourceVersion": rv}, "status": merged}
            response = await self.api.request("PATCH", path + "/status", body=patch, content_type=MERGE_PATCH,
                                              query={"fieldManager": FIELD_MANAGER})
            if response.status == 409:
                self.conflicts += 1
                current = None
                continue
            if response.status == 404:
                return False
            _check(response, "write status of", path)
            self.status_writes += 1
            self._written[memo_key] = (wanted, rv)
            log.info("status written", kind=write.kind, namespace=write.namespace, name=write.name,
                     fields=sorted(write.fields))
            return True
        log.warning("status write kept conflicting, giving up until the next reconciliation",
                    kind=write.kind, namespace=write.namespace, name=write.name, attempts=CONFLICT_RETRIES)
        return False

    # --- waypoint objects -------------------------------------------------------------------

    async def sync_waypoints(self, state: ClusterState) -> None:
        wanted: dict[Key, dict[str, Any]] = {}
        for gateway in state.gateways():
            spec = gateway.get("spec")
            meta = gateway.get("metadata")
            if not isinstance(spec, dict) or not isinstance(meta, dict):
                continue
            if spec.get("gatewayClassName") != WAYPOINT_GATEWAY_CLASS or not meta.get("uid"):
                continue
            if meta.get("deletionTimestamp"):
                continue  # the garbage collector takes its objects
            for obj in waypoint_objects(gateway, self.waypoint_image, control_plane=self.control_plane,
                                        trust_domain=self.trust_domain, env=self.waypoint_env):
                wanted[(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj
        for key in list(self._applied):
            if key not in wanted:
                del self._applied[key]  # its Gateway is gone; ownerReferences do the rest
        for key, obj in wanted.items():
            text = json.dumps(obj, sort_keys=True)
            if self._applied.get(key) == text:
                continue
            await self.apply(obj)
            self._applied[key] = text

    # --- istio-ca-root-cert ------------------------------------------------------------------

    async def sync_root_cert(self, state: ClusterState) -> None:
        """Apply the root certificate ConfigMap where the store shows it missing or different."""
        if self.root_cert is None:
            return
        live: set[str] = set()
        failed: list[str] = []
        for namespace in state.namespaces():
            meta = namespace.get("metadata")
            name = meta.get("name") if isinstance(meta, dict) else None
            if not isinstance(name, str) or name in ROOT_CERT_IGNORED_NAMESPACES:
                continue
            status = namespace.get("status")
            if isinstance(status, dict) and status.get("phase") == "Terminating":
                continue
            live.add(name)
            current = state.get("ConfigMap", name, ROOT_CERT_CONFIGMAP)
            if current is not None and _holds_root(current, self.root_cert):
                # Our write came back (or was never needed): a later delete must be seen anew.
                self._roots_applied.pop(name, None)
                continue
            seen = _resource_version(current) if current is not None else ""
            if self._roots_applied.get(name) == (self.root_cert, seen):
                continue  # applied already; the watch has not brought it back yet
            try:
                if await self.apply_root_cert(name):
                    self._roots_applied[name] = (self.root_cert, seen)
            except KubeUnavailable as exc:
                # One namespace's failure does not hold back the others; one line for them all.
                failed.append(str(exc))
        for name in list(self._roots_applied):
            if name not in live:
                del self._roots_applied[name]
        if failed:
            log.warning("root certificate not published, retrying after the next reconciliation",
                        namespaces=len(failed), error=failed[0])

    async def apply_root_cert(self, namespace: str) -> bool:
        """Server-side apply ``istio-ca-root-cert`` in ``namespace``; False if the namespace is going away."""
        obj = {"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": ROOT_CERT_CONFIGMAP, "namespace": namespace, "labels": dict(ROOT_CERT_LABELS)},
               "data": {ROOT_CERT_KEY: self.root_cert}}
        path = _CONFIG_MAPS.object_path(namespace, ROOT_CERT_CONFIGMAP)
        response = await self.api.request("PATCH", path, body=obj, content_type=APPLY_PATCH,
                                          query={"fieldManager": FIELD_MANAGER, "force": "true"})
        if response.status in (403, 404) and _namespace_gone(response):
            # As istiod: a namespace deleted or terminating takes no new objects; not retried.
            log.info("root certificate not published, namespace going away", namespace=namespace,
                     reason=response.message())
            return False
        _check(response, "apply", path)
        self.root_cert_applies += 1
        log.info("root certificate published", namespace=namespace, configmap=ROOT_CERT_CONFIGMAP)
        return True

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply ``obj`` as field manager ``wisp`` with force; the object as stored."""
        kind = _WAYPOINT_KINDS[obj["kind"]]
        meta = obj["metadata"]
        path = kind.object_path(meta["namespace"], meta["name"])
        response = await self.api.request("PATCH", path, body=obj, content_type=APPLY_PATCH,
                                          query={"fieldManager": FIELD_MANAGER, "force": "true"})
        _check(response, "apply", path)
        self.applies += 1
        log.info("applied", kind=obj["kind"], namespace=meta["namespace"], name=meta["name"])
        return response.body


def _check(response: Response, what: str, path: str) -> None:
    if not response.ok:
        raise KubeUnavailable("%s %s: %s" % (what, path, response.message()))


def _holds_root(configmap: dict[str, Any], roots: str) -> bool:
    data = configmap.get("data")
    meta = configmap.get("metadata")
    labels = meta.get("labels") if isinstance(meta, dict) else None
    return (isinstance(data, dict) and data.get(ROOT_CERT_KEY) == roots and isinstance(labels, dict)
            and all(labels.get(k) == v for k, v in ROOT_CERT_LABELS.items()))


def _namespace_gone(response: Response) -> bool:
    if response.status == 404:
        return True
    body = response.body if isinstance(response.body, dict) else {}
    causes = (body.get("details") or {}).get("causes") if isinstance(body.get("details"), dict) else None
    if isinstance(causes, list) and any(isinstance(c, dict) and c.get("type") == "NamespaceTerminating"
                                        for c in causes):
        return True
    return "being terminated" in response.message()


def _resource_version(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return rv if isinstance(rv, str) else ""


def _conditions(obj: dict[str, Any]) -> list[Any]:
    status = obj.get("status")
    conditions = status.get("conditions") if isinstance(status, dict) else None
    return list(conditions) if isinstance(conditions, list) else []


def _with_condition(conditions: list[Any], condition_type: str, wanted: dict[str, Any] | None) -> list[Any]:
    """``conditions`` with ``condition_type`` set to ``wanted`` (removed if None), others kept."""
    out: list[Any] = []
    found = False
    for cond in conditions:
        if isinstance(cond, dict) and cond.get("type") == condition_type:
            found = True
            if wanted is None:
                continue
            if all(cond.get(k) == v for k, v in wanted.items()):
                out.append(cond)
                continue
            new = dict(wanted)
            same_status = cond.get("status") == wanted.get("status")
            new["lastTransitionTime"] = cond.get("lastTransitionTime") if same_status and \
                cond.get("lastTransitionTime") else _now()
            out.append(new)
        else:
            out.append(cond)
    if not found and wanted is not None:
        out.append({**wanted, "lastTransitionTime": _now()})
    return out


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _canonical(condition: dict[str, Any] | None) -> str:
    return json.dumps(condition, sort_keys=True)
