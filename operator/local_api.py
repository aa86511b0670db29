"""Local mode's stand-in for the Kubernetes API: what node agents and the runtime read and write.

On a cluster the node agent watches Pods and Namespaces and patches annotations through the API
server, and kubelet reports pod state. Without Kubernetes those go through the control plane:
- node agents: `GET /v1/local/pods` streams (newline-delimited JSON) a full view of the
  Namespaces and of the Pods on the caller's node whenever it changes, with `{"ping": true}`
  lines when idle; `PATCH /v1/local/pods/<ns>/<name>/annotations` sets or (null) removes
  annotations on a pod of their node;
- the runtime (kubelet and kubectl for the CLI): `PUT`/`DELETE /v1/local/pods/<ns>/<name>/runtime`
  reports a pod's node, IP, phase and readiness; `PATCH /v1/local/labels/<kind>/<ns>/<name>`
  (`-` for a cluster-scoped object's namespace) overlays labels; `GET /v1/local/objects` lists
  everything with the conditions the control plane derived (Gateway API status — waypoint
  Gateways' conditions, listeners and addresses, routes' parents — merged into the objects);
- the CLI (`wisp apply/delete/get`, as kubectl): `GET /v1/local/resources` is discovery (kinds,
  plural, singular and short names); `POST /v1/local/apply` validates one file's objects and, only
  if all pass, writes the file into the manifest directory and loads it (answer 200 with
  created/configured/unchanged per object and warnings, or 422 with kubectl-worded errors and
  nothing changed); `POST /v1/local/delete` removes objects by kind, namespace and name.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import structlog

from .auth import ROLE_NODE_AGENT, ROLE_RUNTIME, Caller
from .controller import Controller
from .local_source import LocalSource, SourceError
from .server import first_of, wait_disconnect
from .store import ObjectNotFound, ObjectStore, StoreError

log = structlog.get_logger("wisp.operator.local")

PREFIX = "/v1/local/"
PING = b'{"ping":true}\n'


class LocalApi:
    def __init__(self, store: ObjectStore, controller: Controller, *, ping_interval: float = 10.0,
                 source: LocalSource | None = None) -> None:
        self.store = store
        self.controller = controller
        self.ping_interval = ping_interval
        self.source = source

    async def handle(self, scope, receive, send, caller: Caller, read_body, respond) -> None:
        parts = scope["path"][len(PREFIX):].split("/")
        method = scope["method"]
        if method in ("PATCH", "PUT", "POST"):
            # Read the body before anything can refuse: hypercorn fails the whole HTTP/2
            # connection if request data arrives for a stream that was already answered.
            body = await read_body()
            if body is None:
                return

            async def read_body():
                return body

        if parts == ["pods"] and method == "GET":
            if caller.role != ROLE_NODE_AGENT:
                return await respond(403, {"error": "only node agents watch pods"})
            return await self._watch_pods(receive, send, caller)
        if len(parts) == 4 and parts[0] == "pods" and parts[3] == "annotations" and method == "PATCH":
            return await self._annotate(parts[1], parts[2], caller, read_body, respond)
        if len(parts) == 4 and parts[0] == "pods" and parts[3] == "runtime" and method in ("PUT", "DELETE"):
            if caller.role != ROLE_RUNTIME:
                return await respond(403, {"error": "only the runtime reports pod state"})
            return await self._runtime(parts[1], parts[2], method, read_body, respond)
        if len(parts) == 4 and parts[0] == "labels" and method == "PATCH":
            if caller.role != ROLE_RUNTIME:
                return await respond(403, {"error": "only the runtime changes labels"})
            namespace = "" if parts[2] == "-" else parts[2]
            return await self._labels(parts[1], namespace, parts[3], read_body, respond)
        if parts == ["objects"] and method == "GET":
            if caller.role != ROLE_RUNTIME:
                return await respond(403, {"error": "only the runtime lists objects"})
            return await respond(200, self._objects())
        if parts in (["resources"], ["apply"], ["delete"]):
            if caller.role != ROLE_RUNTIME:
                return await respond(403, {"error": "only the runtime changes or discovers objects"})
            if self.source is None:
                return await respond(404, {"error": "this control plane has no local manifest directory"})
            if parts == ["resources"] and method == "GET":
                return await respond(200, {"resources": self.source.resources.as_list()})
            if parts == ["apply"] and method == "POST":
                return await self._apply(read_body, respond)
            if parts == ["delete"] and method == "POST":
                return await self._delete(read_body, respond)
        return await respond(404, {"error": f"no route {method} {scope['path']}"})

    # -- node agents -------------------------------------------------------------------------------
    def pods_view(self, node: str) -> dict[str, Any]:
        state = self.store.snapshot()
        pods = []
        for pod in state.pods():
            spec = pod.get("spec")
            if isinstance(spec, dict) and spec.get("nodeName") == node:
                pods.append(_with_uid(pod))
        return {"namespaces": state.namespaces(), "pods": pods}

    async def _watch_pods(self, receive, send, caller: Caller) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-ndjson")]})

        async def follow() -> None:
            last = None
            seen = None
            while True:
                if self.store.version != seen:
                    seen = self.store.version
                    view = self.pods_view(caller.node or "")
                    body = json.dumps(view, sort_keys=True, separators=(",", ":"))
                    if body != last:
                        last = body
                        line = f'{{"version":{seen},{body[1:]}\n'.encode()
                        await send({"type": "http.response.body", "body": line, "more_body": True})
                try:
                    async with asyncio.timeout(self.ping_interval):
                        await self.store.wait_for_change(seen)
                except TimeoutError:
                    await send({"type": "http.response.body", "body": PING, "more_body": True})

        await first_of(wait_disconnect(receive), follow())

    async def _annotate(self, namespace: str, name: str, caller: Caller, read_body, respond) -> None:
        pod = self.store.get("Pod", namespace, name)
        if pod is None:
            return await respond(404, {"error": f"no pod {namespace}/{name}"})
        node = (pod.get("spec") or {}).get("nodeName")
        if caller.role == ROLE_NODE_AGENT and node != caller.node:
            return await respond(403, {"error": f"pod {namespace}/{name} is on node {node!r}, not {caller.node!r}"})
        if caller.role not in (ROLE_NODE_AGENT, ROLE_RUNTIME):
            return await respond(403, {"error": f"{caller.describe()} may not annotate pods"})
        changes = await _json_object(read_body, respond)
        if changes is None:
            return
        try:
            self.store.set_annotations("Pod", namespace, name, changes)
        except StoreError as exc:
            return await respond(400, {"error": str(exc)})
        log.info("pod annotated", pod=f"{namespace}/{name}", by=caller.describe(), changes=changes)
        await respond(204, None)

    # -- the runtime -------------------------------------------------------------------------------
    async def _runtime(self, namespace: str, name: str, method: str, read_body, respond) -> None:
        if method == "DELETE":
            self.store.clear_pod_runtime(namespace, name)
            return await respond(204, None)
        body = await _json_object(read_body, respond)
        if body is None:
            return
        try:
            self.store.set_pod_runtime(
                namespace, name, node=str(body.get("node", "")), pod_ip=body.get("pod_ip"),
                phase=str(body.get("phase", "Pending")), ready=bool(body.get("ready", False)),
            )
        except StoreError as exc:
            return await respond(404 if isinstance(exc, ObjectNotFound) else 400, {"error": str(exc)})
        await respond(204, None)

    async def _labels(self, kind: str, namespace: str, name: str, read_body, respond) -> None:
        changes = await _json_object(read_body, respond)
        if changes is None:
            return
        try:
            self.store.set_labels(kind, namespace, name, changes)
        except StoreError as exc:
            return await respond(404 if isinstance(exc, ObjectNotFound) else 400, {"error": str(exc)})
        await respond(204, None)

    # -- the CLI: apply and delete ---------------------------------------------------------------------
    async def _apply(self, read_body, respond) -> None:
        body = await _json_object(read_body, respond)
        if body is None:
            return
        path, shown, documents = body.get("path"), body.get("source"), body.get("documents")
        if not isinstance(path, str) or not isinstance(documents, list):
            return await respond(400, {"error": "apply needs path (string) and documents (list)"})
        shown = shown if isinstance(shown, str) and shown else path
        assert self.source is not None
        try:
            result = self.source.apply_file(path, documents, dry_run=bool(body.get("dryRun")))
        except SourceError as exc:
            return await respond(400, {"error": str(exc)})
        if result.errors:
            lines = [e.kubectl(shown) for e in result.errors]
            log.info("apply refused", file=shown, errors=len(lines))
            return await respond(422, {"error": "\n".join(lines), "messages": lines})
        results = [self._described(key, action=action) for key, action in result.applied]
        log.info("applied", file=shown, objects=len(results),
                 changed=sum(1 for r in results if r["action"] != "unchanged"))
        await respond(200, {"results": results, "warnings": list(result.warnings)})

    async def _delete(self, read_body, respond) -> None:
        body = await _json_object(read_body, respond)
        if body is None:
            return
        objects = body.get("objects")
        if not isinstance(objects, list) or not all(
                isinstance(o, dict) and all(isinstance(o.get(k), str) for k in ("kind", "namespace", "name"))
                for o in objects):
            return await respond(400, {"error": "delete needs objects: [{kind, namespace, name}]"})
        assert self.source is not None
        keys = [(o["kind"], o["namespace"], o["name"]) for o in objects]
        outcome = self.source.delete_objects(keys)
        await respond(200, {"results": [self._described(key, deleted=found) for key, found in outcome]})

    def _described(self, key: tuple[str, str, str], **extra: Any) -> dict[str, Any]:
        kind, namespace, name = key
        assert self.source is not None
        rt = self.source.resources.for_kind(kind)
        return {"kind": kind, "namespace": namespace, "name": name,
                "resource": rt.display if rt else kind.lower(), "qualified": rt.qualified if rt else kind.lower(),
                **extra}

    def _objects(self) -> dict[str, Any]:
        state = self.store.snapshot()
        conditions: dict[str, list] = {}
        for (kind, namespace, name, _), condition in self.controller.status.items():
            if condition is not None:
                conditions.setdefault(f"{kind}/{namespace}/{name}", []).append(condition)
        objects = list(state.objects.values())
        fields = self.controller.status_fields
        if fields:
            # Gateway API status (Gateway conditions, listeners, addresses; route parents) shows
            # in the object itself, as kubectl shows it.
            objects = [_with_status(o, fields) for o in objects]
        return {
            "version": self.store.version,
            "objects": objects,
            "conditions": conditions,
            "config_version": self.controller.distributor.version,
        }


def _with_status(obj: dict[str, Any], fields: dict[tuple[str, str, str], dict]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    ours = fields.get((obj.get("kind"), meta.get("namespace", ""), meta.get("name")))
    if ours is None:
        return obj
    return dict(obj, status={**(obj.get("status") or {}), **ours})


def _with_uid(pod: dict[str, Any]) -> dict[str, Any]:
    meta = pod.get("metadata") or {}
    if meta.get("uid"):
        return pod
    # Local pods have no API server to assign a uid; derive a stable one from the name.
    pod = dict(pod)
    pod["metadata"] = dict(meta, uid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"wisp:{meta.get('namespace')}/{meta.get('name')}")))
    return pod


async def _json_object(read_body, respond) -> dict | None:
    body = await read_body()
    if body is None:
        return None
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        await respond(400, {"error": f"body is not JSON: {exc}"})
        return None
    if not isinstance(value, dict):
        await respond(400, {"error": "body must be a JSON object"})
        return None
    return value
