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
  mode); owned by the Gateway (``ownerReferences`` with its uid) so the garbage collector
  removes them with it.
  They are written with server-side apply, field manager ``wisp``, ``force=true`` as istiod
  forces. The core does not produce these objects yet; the writer derives them from the Gateway.

``run`` follows the controller: after each reconciliation, if ``is_leader()`` says so, it writes.
A write that fails is logged and tried again after the next reconciliation or ``retry`` s.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from wisp_operator.cluster import ClusterState, Key
from wisp_operator.controller import Controller
from wisp_operator.gateways import StatusFieldsWrite, merge_status
from wisp_operator.reconcile import StatusWrite
from wisp.waypoint_deployment import DEFAULT_WAYPOINT_IMAGE, waypoint_objects
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


class KubeWriter:
    def __init__(
        self,
        api: KubeApi,
        *,
        is_leader: Callable[[], bool] = lambda: True,
        waypoint_image: str = DEFAULT_WAYPOINT_IMAGE,
        retry: float = 5.0,
    ) -> None:
        self.api = api
        self.is_leader = is_leader
        self.waypoint_image = waypoint_image
        self.retry = retry
        self.status_writes = 0
        self.conflicts = 0
        self.applies = 0
        # (kind, ns, name, condition type) -> (condition written, resourceVersion it was computed
        # from): until the watch brings the written object, the core asks for the same write again.
        self._written: dict[tuple[str, str, str, str], tuple[str, str]] = {}
        # (kind, ns, name) of waypoint objects -> the manifest last applied, as JSON.
        self._applied: dict[Key, str] = {}

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
            for obj in waypoint_objects(gateway, self.waypoint_image):
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
