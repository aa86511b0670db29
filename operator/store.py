"""ObjectStore: the cluster objects the reconciler sees, fed by one or more sources.

Source-agnostic: the local source (a manifest directory) and the Kubernetes
source each hand it the objects they hold, under a source name. Each key
(kind, namespace, name) has one owner: the source that claimed it first among
those that hold it; if the owner lets go, the next holder's object shows. On
top of the sources' objects sit two overlays that outlive reloads of the
source but not the object itself:

- pod runtime state (node, IP, phase, readiness, node agent annotations), which
  the local runtime knows as kubelet would;
- label changes (``wisp label ...``), where ``None`` removes a label.

Every change that alters the effective object set bumps ``version`` and wakes
``wait_for_change``; a change that leaves it as it was (a resync, a reload of an
unchanged file) does not. ``changes_since(version)`` names the keys that changed,
so a reader can redo only what depends on them. Snapshots are ``ClusterState``
values, built once per version, by patching the previous snapshot when few keys
changed. Objects in snapshots are shared: treat them as read-only.

Mutations are synchronous and must run on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import re
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from wisp_operator.cluster import KIND_POD, ClusterState, Key, MeshSettings
from wisp_operator.errors import OperatorError
from wisp.kube import DNS_SUBDOMAIN, non_string_entry
from wisp_operator.errors import object_id

log = structlog.get_logger(__name__)

POD_PHASES = frozenset({"Pending", "Running", "Succeeded", "Failed", "Unknown"})
# Conditions the runtime owns on a pod; the manifest's others (e.g. ours, WaypointBound) stay.
_RUNTIME_CONDITIONS = ("Ready", "ContainersReady")

# How many versions' changed keys are kept for changes_since; older asks get None.
CHANGE_HISTORY = 1024

_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")


class StoreError(OperatorError):
    """Base of the store's errors."""


class ObjectNotFound(StoreError, LookupError):
    """The object named in a runtime or label change is not in the store."""

    def __init__(self, kind: str, namespace: str, name: str) -> None:
        self.kind, self.namespace, self.name = kind, namespace, name
        where = f"{namespace}/{name}" if namespace else name
        super().__init__(f"{kind} {where} not found")


class InvalidChange(StoreError, ValueError):
    """A runtime or label change is malformed (bad label, IP, phase)."""


@dataclass(frozen=True, slots=True)
class PodRuntime:
    """What kubelet (here: the local runtime) and the node agent know about a pod."""

    node: str
    pod_ip: str | None
    phase: str
    ready: bool
    annotations: tuple[tuple[str, str], ...] = ()


class ObjectStore:
    """Current objects by (kind, namespace, name), versioned, with change notification."""

    def __init__(self, settings: MeshSettings | None = None) -> None:
        self._settings = settings or MeshSettings()
        self._by_source: dict[str, dict[Key, dict[str, Any]]] = {}
        # Per key, the sources holding it in claim order; the first one's object shows.
        self._holders: dict[Key, list[str]] = {}
        self._runtime: dict[Key, PodRuntime] = {}
        self._labels: dict[Key, dict[str, str | None]] = {}
        self._annotations: dict[Key, dict[str, str | None]] = {}
        self._effective: dict[Key, dict[str, Any]] = {}
        self._version = 0
        self._snapshot: ClusterState | None = None
        # The last snapshot built and its version: the base the next one is patched from.
        self._built: tuple[int, ClusterState] | None = None
        self._changes: deque[tuple[int, frozenset[Key]]] = deque(maxlen=CHANGE_HISTORY)
        self._changed = asyncio.Event()
        self._reported_conflicts: set[tuple[str, Key]] = set()

    # --- reading ---------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """Bumped once per change of the effective object set; starts at 0 (empty)."""
        return self._version

    def snapshot(self) -> ClusterState:
        if self._snapshot is None:
            changed = self.changes_since(self._built[0]) if self._built is not None else None
            if self._built is not None and changed is not None and len(changed) <= max(64, len(self._effective) // 8):
                self._snapshot = _patched(self._built[1], self._effective, changed)
            else:
                self._snapshot = ClusterState(dict(self._effective), self._settings)
            self._built = (self._version, self._snapshot)
        return self._snapshot

    def changes_since(self, version: int) -> frozenset[Key] | None:
        """The keys whose effective object changed (added, replaced, removed) after ``version``.

        None when ``version`` is older than the history kept (or not one of ours): the caller
        must then assume everything changed.
        """
        if version == self._version:
            return frozenset()
        if not 0 <= version < self._version or not self._changes or self._changes[0][0] > version + 1:
            return None
        keys: set[Key] = set()
        for number, changed in reversed(self._changes):
            if number <= version:
                break
            keys |= changed
        return frozenset(keys)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._effective.get((kind, namespace, name))

    def __len__(self) -> int:
        return len(self._effective)

    async def wait_for_change(self, since: int) -> int:
        """Return the current version once it is greater than ``since``."""
        while self._version <= since:
            event = self._changed
            await event.wait()
        return self._version

    # --- sources ---------------------------------------------------------------------------

    def replace(self, source: str, objects: Iterable[dict[str, Any]]) -> list[Key]:
        """Make ``objects`` the whole set ``source`` holds (a load or relist).

        The store keeps the dicts as given: do not change them afterwards.
        Returns the keys another source already owns (their objects do not show).
        """
        new: dict[Key, dict[str, Any]] = {}
        for obj in objects:
            new[_key(obj)] = obj
        old = self._by_source.get(source, {})
        self._by_source[source] = new
        touched = set(old) | set(new)
        for key in old.keys() - new.keys():
            self._release(source, key)
        for key in new.keys() - old.keys():
            self._claim(source, key)
        self._refresh(touched)
        return self._conflicts(source, new)

    def apply(self, source: str, obj: dict[str, Any]) -> bool:
        """Add or replace one object of ``source``; False if another source owns its key."""
        key = _key(obj)
        held = self._by_source.setdefault(source, {})
        if key not in held:
            self._claim(source, key)
        held[key] = obj
        self._refresh({key})
        return not self._conflicts(source, {key: obj})

    def delete(self, source: str, kind: str, namespace: str, name: str) -> None:
        key = (kind, namespace, name)
        if self._by_source.get(source, {}).pop(key, None) is not None:
            self._release(source, key)
            self._refresh({key})

    # --- overlays --------------------------------------------------------------------------

    def set_pod_runtime(
        self,
        namespace: str,
        name: str,
        *,
        node: str,
        pod_ip: str | None,
        phase: str,
        ready: bool,
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        """Record what kubelet knows of a pod; replaces the previous runtime record.

        Merged into the pod as Kubernetes shows it: spec.nodeName, status.podIP(s),
        status.phase, Ready/ContainersReady conditions, annotations over the manifest's.
        """
        key = (KIND_POD, namespace, name)
        self._require(key)
        if phase not in POD_PHASES:
            raise InvalidChange(f"pod phase must be one of {sorted(POD_PHASES)}, got {phase!r}")
        if pod_ip is not None:
            try:
                ipaddress.ip_address(pod_ip)
            except ValueError:
                raise InvalidChange(f"pod IP must be an IP address, got {pod_ip!r}") from None
        extra = dict(annotations or {})
        bad = non_string_entry(extra)
        if bad is not None:
            raise InvalidChange(f"annotations must map strings to strings, got {bad[0]!r}: {bad[1]!r}")
        self._runtime[key] = PodRuntime(node, pod_ip, phase, ready, tuple(sorted(extra.items())))
        self._refresh({key})

    def clear_pod_runtime(self, namespace: str, name: str) -> None:
        key = (KIND_POD, namespace, name)
        if self._runtime.pop(key, None) is not None:
            self._refresh({key})

    def set_labels(self, kind: str, namespace: str, name: str, labels: Mapping[str, str | None]) -> None:
        """Overlay labels on an object, as ``kubectl label`` does; ``None`` removes a label.

        Changes accumulate over calls and survive reloads of the object's source.
        """
        key = (kind, namespace, name)
        self._require(key)
        for k, v in labels.items():
            _check_label(k, v)
        self._labels.setdefault(key, {}).update(labels)
        self._refresh({key})

    def set_annotations(self, kind: str, namespace: str, name: str, annotations: Mapping[str, str | None]) -> None:
        """Overlay annotations, as ``kubectl annotate`` (or the node agent's patch) does.

        ``None`` removes one. Changes accumulate and survive reloads of the object's source.
        """
        key = (kind, namespace, name)
        self._require(key)
        for k, v in annotations.items():
            if not isinstance(k, str) or not k or (v is not None and not isinstance(v, str)):
                raise InvalidChange(f"annotations must map names to strings or null, got {k!r}: {v!r}")
        self._annotations.setdefault(key, {}).update(annotations)
        self._refresh({key})

    # --- persistence of the overlays (local mode) ------------------------------------------

    def overlays(self) -> dict[str, list]:
        """What was overlaid on the objects (runtime state, labels, annotations) as JSON-able
        lists: in local mode the control plane is its own API server, and this is the part of
        its state the manifests do not hold, so it is kept across a restart (`restore_overlays`)."""
        return {
            "runtime": [[*key, {"node": r.node, "pod_ip": r.pod_ip, "phase": r.phase, "ready": r.ready,
                                "annotations": dict(r.annotations)}] for key, r in sorted(self._runtime.items())],
            "labels": [[*key, dict(v)] for key, v in sorted(self._labels.items())],
            "annotations": [[*key, dict(v)] for key, v in sorted(self._annotations.items())],
        }

    def restore_overlays(self, saved: Any) -> int:
        """Put back what `overlays` returned before a restart, on the objects that still exist;
        entries that are malformed or name a missing object are skipped. Returns how many were
        restored."""
        if not isinstance(saved, dict):
            return 0
        restored: set[Key] = set()
        for entry in saved.get("runtime") or ():
            try:
                kind, namespace, name, r = entry
                self.set_pod_runtime(namespace, name, node=str(r["node"]), pod_ip=r["pod_ip"], phase=r["phase"],
                                     ready=bool(r["ready"]), annotations=r.get("annotations") or {})
            except (StoreError, ValueError, TypeError, KeyError):
                continue
            restored.add((kind, namespace, name))
        for field, setter in (("labels", self.set_labels), ("annotations", self.set_annotations)):
            for entry in saved.get(field) or ():
                try:
                    kind, namespace, name, changes = entry
                    setter(kind, namespace, name, changes)
                except (StoreError, ValueError, TypeError, AttributeError):
                    continue
                restored.add((kind, namespace, name))
        return len(restored)

    # --- internals -------------------------------------------------------------------------

    def _require(self, key: Key) -> None:
        if key not in self._effective:
            raise ObjectNotFound(*key)

    def _claim(self, source: str, key: Key) -> None:
        self._holders.setdefault(key, []).append(source)

    def _release(self, source: str, key: Key) -> None:
        holders = self._holders.get(key)
        if holders is None:
            return
        holders.remove(source)
        self._reported_conflicts.discard((source, key))
        if not holders:
            del self._holders[key]

    def _conflicts(self, source: str, objects: Mapping[Key, dict[str, Any]]) -> list[Key]:
        refused = []
        for key in objects:
            owner = self._holders[key][0]
            if owner == source:
                continue
            refused.append(key)
            if (source, key) not in self._reported_conflicts:
                self._reported_conflicts.add((source, key))
                log.warning(
                    "object held by another source", kind=key[0], namespace=key[1], name=key[2],
                    source=source, owner=owner,
                )
        return refused

    def _refresh(self, keys: Iterable[Key]) -> None:
        changed: list[Key] = []
        for key in keys:
            holders = self._holders.get(key)
            if holders is None:
                # The object is gone; so is what was overlaid on it, as on a cluster.
                self._runtime.pop(key, None)
                self._labels.pop(key, None)
                self._annotations.pop(key, None)
                if self._effective.pop(key, None) is not None:
                    changed.append(key)
                continue
            obj = self._effective_object(key, self._by_source[holders[0]][key])
            if self._effective.get(key) != obj:
                self._effective[key] = obj
                changed.append(key)
        if changed:
            self._version += 1
            self._changes.append((self._version, frozenset(changed)))
            self._snapshot = None
            event, self._changed = self._changed, asyncio.Event()
            event.set()

    def _effective_object(self, key: Key, base: dict[str, Any]) -> dict[str, Any]:
        label_overlay = self._labels.get(key)
        annotation_overlay = self._annotations.get(key)
        runtime = self._runtime.get(key)
        if not label_overlay and not annotation_overlay and runtime is None:
            return base
        obj = dict(base)
        meta = obj["metadata"] = dict(obj["metadata"])
        if label_overlay:
            _overlay(meta, "labels", label_overlay)
        if runtime is not None:
            _merge_runtime(obj, meta, runtime)
        if annotation_overlay:
            _overlay(meta, "annotations", annotation_overlay)
        return obj


def _overlay(meta: dict[str, Any], field: str, changes: Mapping[str, str | None]) -> None:
    """Set ``meta[field]`` to a copy with ``changes`` applied; None removes a key."""
    merged = dict(meta.get(field) or {})
    for k, v in changes.items():
        if v is None:
            merged.pop(k, None)
        else:
            merged[k] = v
    meta[field] = merged


def _patched(base: ClusterState, effective: Mapping[Key, dict[str, Any]], changed: Iterable[Key]) -> ClusterState:
    """``base`` with the objects under ``changed`` taken from ``effective``.

    A fresh ClusterState sorts every key (~15 ms for 10k objects); here only the
    (kind, namespace) lists that changed are copied, each kept sorted by name as
    ClusterState keeps them.
    """
    objects = dict(base.objects)
    by_kind = dict(base._by_kind)  # noqa: SLF001 - the index ClusterState would rebuild from scratch
    copied_kinds: set[str] = set()
    copied_lists: set[tuple[str, str]] = set()
    for key in changed:
        kind, ns, name = key
        old = base.objects.get(key)
        new = effective.get(key)
        if old is None and new is None:
            continue
        if new is None:
            del objects[key]
        else:
            objects[key] = new
        if kind not in copied_kinds:
            by_kind[kind] = dict(by_kind.get(kind, {}))
            copied_kinds.add(kind)
        per_ns = by_kind[kind]
        if (kind, ns) not in copied_lists:
            per_ns[ns] = list(per_ns.get(ns, ()))
            copied_lists.add((kind, ns))
        listed = per_ns[ns]
        at = bisect_left(listed, name, key=_name)
        if old is None:
            listed.insert(at, new)
        elif new is None:
            del listed[at]
        else:
            listed[at] = new
    for kind, ns in copied_lists:
        if not by_kind[kind][ns]:
            del by_kind[kind][ns]
    for kind in copied_kinds:
        if not by_kind[kind]:
            del by_kind[kind]
    return ClusterState(objects, base.settings, by_kind)


def _name(obj: dict[str, Any]) -> str:
    # Every stored object passed object_id(), so metadata.name is a string.
    return obj["metadata"]["name"]


def _merge_runtime(obj: dict[str, Any], meta: dict[str, Any], runtime: PodRuntime) -> None:
    # Copy each level we write to; the manifest's dicts are shared with the source.
    if runtime.annotations:
        meta["annotations"] = {**(meta.get("annotations") or {}), **dict(runtime.annotations)}
    spec = obj["spec"] = dict(obj.get("spec") or {})
    spec["nodeName"] = runtime.node
    status = obj["status"] = dict(obj.get("status") or {})
    status["phase"] = runtime.phase
    if runtime.pod_ip is not None:
        status["podIP"] = runtime.pod_ip
        status["podIPs"] = [{"ip": runtime.pod_ip}]
    else:
        status.pop("podIP", None)
        status.pop("podIPs", None)
    truth = "True" if runtime.ready else "False"
    conditions = [
        copy.copy(c) for c in status.get("conditions") or []
        if not (isinstance(c, dict) and c.get("type") in _RUNTIME_CONDITIONS)
    ]
    conditions.extend({"type": t, "status": truth} for t in _RUNTIME_CONDITIONS)
    status["conditions"] = conditions


def _key(obj: dict[str, Any]) -> Key:
    oid = object_id(obj)
    return (oid.kind, oid.namespace, oid.name)


def _check_label(key: Any, value: Any) -> None:
    if not isinstance(key, str):
        raise InvalidChange(f"label keys must be strings, got {key!r}")
    prefix, _, name = key.rpartition("/")
    if (prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix))) or len(name) > 63 or not _LABEL_NAME.match(name):
        raise InvalidChange(f"invalid label key {key!r}: want [prefix/]name, name up to 63 of [A-Za-z0-9-_.]")
    if value is None:
        return
    if not isinstance(value, str) or len(value) > 63 or (value and not _LABEL_NAME.match(value)):
        raise InvalidChange(f"invalid value for label {key!r}: {value!r} (up to 63 of [A-Za-z0-9-_.], or empty)")


__all__ = [
    "InvalidChange",
    "ObjectNotFound",
    "ObjectStore",
    "POD_PHASES",
    "PodRuntime",
    "StoreError",
]
