"""The local source: a directory of Kubernetes-shaped YAML manifests feeding an ObjectStore.

Every ``*.yaml``/``*.yml`` file under the directory (recursively, hidden files
and folders skipped) holds one or more documents; empty documents are skipped
and ``kind: List`` is expanded. Each object is checked the way the API server
would check it: the kind must be served at its apiVersion, the envelope must be
sound (name, metadata/labels/annotations/spec shapes) and defaulted (namespace
"default" for namespaced kinds), and kinds with a CRD in deploy/crds must pass
``wisp_operator.validation.admit`` (the CRD's schema and istiod's webhook checks).
Objects carry ``metadata.generation`` as on a cluster: 1 when created, one more
each time anything but metadata and status changes.

A bad manifest changes nothing but itself: a file with any bad document is
rejected as a whole, and the objects it contributed before (its last good
version) stay as they were, while other files load normally. Two files that
define the same object differently conflict: the first in sorted path order
keeps it and the conflict is reported naming both files. Errors are returned
by ``load`` and logged once each, for as long as they persist.

``apply_file`` and ``delete_objects`` are the local ``kubectl apply``/``delete``:
they validate first and change the directory only if every object passes, then
load, so the store holds the result before they return.

``pods_for_deployment`` is the local runtime's ReplicaSet controller: the Pods
a Deployment stands for, named and owned as Kubernetes would.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import watchfiles
import yaml

from wisp_operator.cluster import KIND_DEPLOYMENT, KIND_NAMESPACE, KIND_POD, Key
from wisp_operator.errors import OperatorError
from wisp.kube import DNS_SUBDOMAIN, non_string_entry
from wisp_operator.errors import object_id
from wisp_operator.store import ObjectStore
from wisp_operator.selectors import is_subset
from wisp_operator.validation import Refusal, Resources, admit, load_resources
from wisp_operator.validation.errors import no_match
from wisp_operator.validation.resources import BUILTIN
from wisp.deployments import POD_TEMPLATE_HASH_LABEL, pod_template_hash, pods_for_deployment  # noqa: F401 (re-exported)

log = structlog.get_logger(__name__)

# Kinds without a namespace, as the served resource types declare them.
CLUSTER_SCOPED = frozenset(rt.kind for rt in BUILTIN if not rt.namespaced)
DEFAULT_NAMESPACE = "default"
MANIFEST_SUFFIXES = (".yaml", ".yml")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class SourceError(OperatorError):
    """The local source cannot work at all (its directory is missing)."""


class ManifestError(OperatorError):
    """One bad manifest: where it is (file, document, List item), which object, what is wrong.

    Reported rather than raised: ``LocalSource.load`` returns them.
    ``document`` counts from 1, as a reader counts ``---`` sections; ``item`` is the
    index in a List's ``items``. ``other_path`` names the first file of a conflict.
    """

    def __init__(
        self,
        path: str,
        problem: str,
        *,
        document: int | None = None,
        item: int | None = None,
        kind: str = "",
        namespace: str = "",
        name: str = "",
        other_path: str | None = None,
        refusal: Refusal | None = None,
    ) -> None:
        self.path = path
        self.refusal = refusal
        self.problem = problem
        self.document = document
        self.item = item
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.other_path = other_path
        super().__init__(str(self))

    def _fields(self) -> tuple[Any, ...]:
        return (self.path, self.problem, self.document, self.item, self.kind, self.namespace, self.name,
                self.other_path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ManifestError) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __str__(self) -> str:
        where = self.path
        if self.document is not None:
            where += f" document {self.document}"
        if self.item is not None:
            where += f" items[{self.item}]"
        what = ""
        if self.name:
            what = f" {self.kind or 'object'} {self.namespace + '/' if self.namespace else ''}{self.name}"
        elif self.kind:
            what = f" {self.kind}"
        return f"{where}:{what}: {self.problem}" if what else f"{where}: {self.problem}"

    def log_fields(self) -> dict[str, Any]:
        fields = {"file": self.path, "document": self.document, "item": self.item, "kind": self.kind,
                  "namespace": self.namespace, "name": self.name, "problem": self.problem,
                  "other_file": self.other_path}
        return {k: v for k, v in fields.items() if v not in (None, "")}

    def kubectl(self, source: str) -> str:
        """This error as ``kubectl apply -f source`` would word it."""
        if self.refusal is not None:
            return self.refusal.kubectl(source)
        if self.kind and self.name:
            return f'The {self.kind} "{self.name}" is invalid: {self.problem}'
        return f'error: error validating "{source}": {self.problem}'


@dataclass(frozen=True, slots=True)
class ManifestObject:
    """A checked, defaulted object and where it was defined."""

    obj: dict[str, Any]
    path: str
    document: int
    item: int | None
    warnings: tuple[str, ...] = ()

    @property
    def key(self) -> Key:
        meta = self.obj["metadata"]
        return (self.obj["kind"], meta.get("namespace", ""), meta["name"])


class _Bad(Exception):
    def __init__(self, problem: str, kind: str = "", namespace: str = "", name: str = "",
                 refusal: Refusal | None = None) -> None:
        super().__init__(problem)
        self.problem, self.kind, self.namespace, self.name = problem, kind, namespace, name
        self.refusal = refusal


# --- parsing (pure) ------------------------------------------------------------------------------


def parse_manifests(text: str, path: str, resources: Resources | None = None
                    ) -> tuple[list[ManifestObject], list[ManifestError]]:
    """The objects of one file's text, or the errors that reject it (``path`` names it in both)."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        # Count the documents that did parse, so the error names the one that did not.
        good = 0
        try:
            for _ in yaml.safe_load_all(text):
                good += 1
        except yaml.YAMLError:
            pass
        return [], [ManifestError(path, _yaml_problem(exc), document=good + 1)]
    return check_documents(documents, path, resources)


def check_documents(documents: list[Any], path: str, resources: Resources | None = None
                    ) -> tuple[list[ManifestObject], list[ManifestError]]:
    """Check already-parsed documents (None entries are empty documents) as ``parse_manifests`` does."""
    resources = resources or load_resources()
    objects: list[ManifestObject] = []
    errors: list[ManifestError] = []
    document = 0
    try:
        for document, doc in enumerate(documents, start=1):
            if doc is None:
                continue
            for item, raw in _expand(doc):
                try:
                    obj, warnings = admitted_object(raw, resources)
                    objects.append(ManifestObject(obj, path, document, item, warnings))
                except _Bad as bad:
                    errors.append(ManifestError(path, bad.problem, document=document, item=item, kind=bad.kind,
                                                namespace=bad.namespace, name=bad.name, refusal=bad.refusal))
    except _Bad as bad:  # a malformed List
        errors.append(ManifestError(path, bad.problem, document=document, kind=bad.kind))
    seen: dict[Key, ManifestObject] = {}
    for mo in objects:
        first = seen.setdefault(mo.key, mo)
        if first is not mo and first.obj != mo.obj:
            errors.append(ManifestError(path, f"defined twice, differently, in this file (also document {first.document})",
                                        document=mo.document, item=mo.item, kind=mo.key[0],
                                        namespace=mo.key[1], name=mo.key[2]))
    return objects, errors


def _expand(doc: Any) -> Iterator[tuple[int | None, Any]]:
    if isinstance(doc, dict) and doc.get("kind") == "List":
        if doc.get("apiVersion") != "v1":
            raise _Bad(f"apiVersion must be v1 for a List, got {doc.get('apiVersion')!r}", "List")
        items = doc.get("items") or []
        if not isinstance(items, list):
            raise _Bad("items must be a list", "List")
        for i, item in enumerate(items):
            if isinstance(item, dict) and item.get("kind") == "List":
                raise _Bad(f"items[{i}] is a List; Lists do not nest", "List")
            yield i, item
    else:
        yield None, doc


def _expand_quietly(doc: Any) -> Iterator[tuple[int | None, Any]]:
    try:
        yield from _expand(doc)
    except _Bad:
        return


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"invalid YAML: {problem}"


def admitted_object(raw: Any, resources: Resources | None = None) -> tuple[dict[str, Any], tuple[str, ...]]:
    """``raw`` checked, defaulted and validated (``admit``), with the warnings to show; or ``_Bad``."""
    obj = checked_object(raw, resources)
    verdict = admit(obj, resources)
    if verdict.refusal is not None:
        meta = obj["metadata"]
        raise _Bad(verdict.refusal.message, obj["kind"], meta.get("namespace", ""), meta["name"], verdict.refusal)
    return verdict.obj, verdict.warnings


def checked_object(raw: Any, resources: Resources | None = None) -> dict[str, Any]:
    """``raw`` checked and defaulted as the API server would, or ``_Bad`` saying why not."""
    resources = resources or load_resources()
    if not isinstance(raw, dict):
        raise _Bad(f"a manifest must be an object (mapping), got {_type_name(raw)}")
    kind = raw.get("kind")
    meta = raw.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    shown = name if isinstance(name, str) else ""
    if not isinstance(kind, str) or not kind:
        raise _Bad("kind is missing or not a string", name=shown)
    api_version = raw.get("apiVersion")
    if not isinstance(api_version, str) or resources.served(api_version, kind) is None:
        rt = resources.for_kind(kind)
        hint = f"; {kind} is served at {' and '.join(rt.api_versions())}" if rt is not None else ""
        namespace = meta.get("namespace") if isinstance(meta, dict) else ""
        refusal = no_match(kind, str(api_version or ""), namespace if isinstance(namespace, str) else "", shown)
        raise _Bad(refusal.message + hint, kind, name=shown, refusal=refusal)
    if not isinstance(meta, dict):
        raise _Bad("metadata is missing or not an object", kind)
    namespace = meta.get("namespace")
    if not isinstance(name, str) or not name:
        raise _Bad("metadata.name is missing or not a string", kind, namespace if isinstance(namespace, str) else "")
    if namespace is not None and not isinstance(namespace, str):
        raise _Bad(f"metadata.namespace must be a string, got {namespace!r}", kind, name=name)

    obj = dict(raw)
    meta = obj["metadata"] = dict(meta)
    served = resources.for_kind(kind)
    if served is not None and not served.namespaced:
        # The API server ignores a namespace on a cluster-scoped object; so do we.
        meta.pop("namespace", None)
        namespace = ""
    else:
        namespace = meta["namespace"] = namespace or DEFAULT_NAMESPACE
        if not _DNS_LABEL.match(namespace) or len(namespace) > 63:
            raise _Bad("metadata.namespace must be a DNS label (lower-case letters, digits, '-'; up to 63)",
                       kind, namespace, name)
    dns_name = _DNS_LABEL if kind == KIND_NAMESPACE else DNS_SUBDOMAIN
    if not dns_name.match(name) or len(name) > (63 if kind == KIND_NAMESPACE else 253):
        raise _Bad("metadata.name must be a DNS name (lower-case letters, digits, '-', '.')",
                   kind, namespace, name)
    for field in ("labels", "annotations"):
        _string_map(meta.get(field), f"metadata.{field}", kind, namespace, name)
    for field in ("spec", "status"):
        value = obj.get(field)
        if value is not None and not isinstance(value, dict):
            raise _Bad(f"{field} must be an object, got {_type_name(value)}", kind, namespace, name)
    if kind == KIND_POD:
        _check_pod_spec(obj.get("spec") or {}, "spec", kind, namespace, name)
    elif kind == KIND_DEPLOYMENT:
        _check_deployment(obj.get("spec") or {}, kind, namespace, name)
    return obj


def _string_map(value: Any, where: str, kind: str, namespace: str, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Bad(f"{where} must be an object, got {_type_name(value)}", kind, namespace, name)
    bad = non_string_entry(value)
    if bad is not None:
        raise _Bad(f"{where} must map strings to strings; quote {bad[0]}: {bad[1]!r}", kind, namespace, name)
    return value


def _check_pod_spec(spec: dict[str, Any], where: str, kind: str, namespace: str, name: str) -> None:
    containers = spec.get("containers")
    if containers is None:
        return
    if not isinstance(containers, list) or not all(isinstance(c, dict) for c in containers):
        raise _Bad(f"{where}.containers must be a list of objects", kind, namespace, name)


def _check_deployment(spec: dict[str, Any], kind: str, namespace: str, name: str) -> None:
    replicas = spec.get("replicas")
    if replicas is not None and (not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0):
        raise _Bad(f"spec.replicas must be a non-negative integer, got {replicas!r}", kind, namespace, name)
    template = spec.get("template")
    if not isinstance(template, dict):
        raise _Bad("spec.template is missing or not an object", kind, namespace, name)
    tmeta = template.get("metadata")
    if tmeta is not None and not isinstance(tmeta, dict):
        raise _Bad("spec.template.metadata must be an object", kind, namespace, name)
    tmeta = tmeta or {}
    labels = _string_map(tmeta.get("labels"), "spec.template.metadata.labels", kind, namespace, name)
    _string_map(tmeta.get("annotations"), "spec.template.metadata.annotations", kind, namespace, name)
    tspec = template.get("spec")
    if not isinstance(tspec, dict):
        raise _Bad("spec.template.spec is missing or not an object", kind, namespace, name)
    _check_pod_spec(tspec, "spec.template.spec", kind, namespace, name)
    selector = spec.get("selector")
    if selector is not None:
        if not isinstance(selector, dict):
            raise _Bad("spec.selector must be an object", kind, namespace, name)
        match = _string_map(selector.get("matchLabels"), "spec.selector.matchLabels", kind, namespace, name)
        if not is_subset(match, labels):
            raise _Bad("spec.selector.matchLabels does not match spec.template.metadata.labels",
                       kind, namespace, name)


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number"}.get(type(value), type(value).__name__)


# --- the source (I/O) ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _FileState:
    digest: str | None  # of the bytes last read; None if they could not be read
    objects: tuple[ManifestObject, ...]  # the last good version's objects
    errors: tuple[ManifestError, ...]


def _with_deployment_pods(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add the Pods each Deployment stands for: in local mode the control plane plays the
    ReplicaSet controller, with the same names the runtime (kubelet) runs them under."""
    explicit = {object_id(o).key for o in objects if o.get("kind") == KIND_POD}
    extra = []
    for obj in objects:
        if obj.get("kind") == KIND_DEPLOYMENT:
            for pod in pods_for_deployment(obj):
                key = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
                if key not in explicit:
                    extra.append(pod)
    return objects + extra


def _spec_digest(obj: dict[str, Any]) -> str:
    """What metadata.generation follows: everything but metadata and status."""
    rest = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()


def _object_key(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return (obj["kind"], meta.get("namespace", "") or "", meta["name"])


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What ``apply_file`` did: per object "created", "configured" or "unchanged", or the errors
    that refused the whole file (then nothing changed), and the warnings to show."""

    applied: tuple[tuple[Key, str], ...] = ()
    errors: tuple[ManifestError, ...] = ()
    warnings: tuple[str, ...] = ()


def _write_atomically(path: Path, text: str) -> None:
    # A hidden temporary name: neither this source nor the runtime reads it half-written.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class LocalSource:
    """Keeps ``store``'s objects under ``source`` equal to the manifests in ``directory``."""

    def __init__(self, directory: str | Path, store: ObjectStore, *, source: str = "local",
                 resources: Resources | None = None) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise SourceError(f"manifest directory {str(self.directory)!r} does not exist or is not a directory")
        self.store = store
        self.source = source
        self.resources = resources or load_resources()
        self._files: dict[Path, _FileState] = {}
        self._errors: list[ManifestError] = []
        self._chosen: dict[Key, ManifestObject] = {}
        # key -> (spec digest, generation); key -> (object as loaded, generation, object as stored)
        self._generations: dict[Key, tuple[str, int]] = {}
        self._stamped: dict[Key, tuple[dict[str, Any], int, dict[str, Any]]] = {}

    @property
    def errors(self) -> list[ManifestError]:
        """The errors of the last load (files rejected, conflicts)."""
        return list(self._errors)

    def manifest_files(self) -> list[Path]:
        found = []
        for path in self.directory.rglob("*"):
            rel = path.relative_to(self.directory)
            if path.suffix in MANIFEST_SUFFIXES and not any(p.startswith(".") for p in rel.parts) and path.is_file():
                found.append(path)
        return sorted(found)

    def load(self) -> list[ManifestError]:
        """Read the directory and update the store; returns every current error."""
        if not self.directory.is_dir():
            error = ManifestError(str(self.directory), "manifest directory is gone; keeping the objects loaded")
            self._report([error])
            return [error]
        files: dict[Path, _FileState] = {}
        for path in self.manifest_files():
            files[path] = self._load_file(path, self._files.get(path))
        self._files = files

        errors: list[ManifestError] = []
        chosen: dict[Key, ManifestObject] = {}
        for path, state in files.items():
            errors.extend(state.errors)
            for mo in state.objects:
                first = chosen.setdefault(mo.key, mo)
                if first is not mo and first.obj != mo.obj:
                    kind, ns, name = mo.key
                    errors.append(ManifestError(
                        mo.path, f"also defined, differently, in {first.path}; keeping that one",
                        document=mo.document, item=mo.item, kind=kind, namespace=ns, name=name,
                        other_path=first.path,
                    ))
        self._chosen = chosen
        before = self.store.version
        self.store.replace(self.source, self._with_generations(_with_deployment_pods([mo.obj for mo in chosen.values()])))
        self._report(errors)
        if self.store.version != before:
            log.info("manifests loaded", directory=str(self.directory), files=len(files), objects=len(chosen),
                     errors=len(errors), version=self.store.version)
        return errors

    def _load_file(self, path: Path, previous: _FileState | None) -> _FileState:
        kept = previous.objects if previous is not None else ()
        try:
            data = path.read_bytes()
        except OSError as exc:
            return _FileState(None, kept, (ManifestError(str(path), f"cannot read: {exc.strerror or exc}"),))
        digest = hashlib.sha256(data).hexdigest()
        if previous is not None and previous.digest == digest:
            return previous
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            return _FileState(digest, kept, (ManifestError(str(path), f"not UTF-8 text: {exc.reason}"),))
        objects, errors = parse_manifests(text, str(path), self.resources)
        if errors:
            return _FileState(digest, kept, tuple(errors))
        return _FileState(digest, tuple(objects), ())

    def _with_generations(self, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``objects`` with metadata.generation as the API server keeps it (the user's value ignored)."""
        out = []
        seen: set[Key] = set()
        for obj in objects:
            key = _object_key(obj)
            seen.add(key)
            cached = self._stamped.get(key)
            if cached is not None and cached[0] is obj:
                out.append(cached[2])
                continue
            digest = _spec_digest(obj)
            held = self._generations.get(key)
            generation = 1 if held is None else held[1] if held[0] == digest else held[1] + 1
            self._generations[key] = (digest, generation)
            stamped = dict(obj, metadata=dict(obj["metadata"], generation=generation))
            self._stamped[key] = (obj, generation, stamped)
            out.append(stamped)
        for key in self._generations.keys() - seen:
            # Gone: recreating it starts again at generation 1, as a new object would.
            del self._generations[key]
            self._stamped.pop(key, None)
        return out

    # --- kubectl apply / delete ------------------------------------------------------------------

    def _target(self, relative: str) -> Path:
        rel = Path(relative)
        if (rel.is_absolute() or not rel.parts or any(p in ("..", "") or p.startswith(".") for p in rel.parts)
                or rel.suffix not in MANIFEST_SUFFIXES):
            raise SourceError(f"{relative!r} is not a manifest file name inside the manifest directory")
        return self.directory / rel

    def apply_file(self, relative: str, documents: list[Any], *, dry_run: bool = False) -> ApplyResult:
        """Make ``relative`` (a path under the directory) hold ``documents``, as ``kubectl apply``.

        Every object is checked first; any error refuses the whole file and changes nothing.
        An object defined in another file moves here (that file is rewritten without it), as
        applying a changed object updates it on a cluster. The store is loaded before returning.
        """
        target = self._target(relative)
        # Applying never deletes: objects an earlier apply left in this file and that this one
        # does not name stay (checked again with the rest, so the file loads whole).
        named = {self._raw_key(o) for doc in documents for _, o in _expand_quietly(doc)}
        kept = [o for doc in self._read_documents(target) for _, o in _expand_quietly(doc)
                if self._raw_key(o) not in named]
        documents = kept + list(documents)
        objects, errors = check_documents(documents, str(target), self.resources)
        seen: dict[Key, ManifestObject] = {}
        for mo in objects:
            seen.setdefault(mo.key, mo)  # check_documents refused differing duplicates already
        if errors:
            return ApplyResult(errors=tuple(errors))
        applied = []
        for key, mo in seen.items():
            old = self._chosen.get(key)
            applied.append((key, "created" if old is None else "unchanged" if old.obj == mo.obj else "configured"))
        warnings = tuple(w for mo in seen.values() for w in mo.warnings)
        if dry_run:
            return ApplyResult(tuple(applied), (), warnings)
        _write_atomically(target, yaml.safe_dump_all(documents, sort_keys=False))
        moved = {key for key, _ in applied}
        for path, state in list(self._files.items()):
            if path != target and any(mo.key in moved for mo in state.objects):
                self._remove_from_file(path, moved)
        self.load()
        return ApplyResult(tuple(applied), tuple(e for e in self._errors if e.path == str(target)), warnings)

    def delete_objects(self, keys: list[Key]) -> list[tuple[Key, bool]]:
        """Remove the objects under ``keys`` from every file holding them (a file left empty is
        deleted); returns each key with whether it existed. The store is loaded before returning."""
        wanted = set(keys)
        found = {key for key in wanted if key in self._chosen}
        for path, state in list(self._files.items()):
            if any(mo.key in wanted for mo in state.objects):
                self._remove_from_file(path, wanted)
        self.load()
        return [(key, key in found) for key in keys]

    @staticmethod
    def _read_documents(path: Path) -> list[Any]:
        if not path.exists():
            return []
        try:
            return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8-sig")) if d is not None]
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            log.warning("manifest not read", file=str(path), error=str(exc))
            return []

    def _remove_from_file(self, path: Path, keys: set[Key]) -> None:
        documents = self._read_documents(path)
        if not documents:
            return
        kept = []
        for doc in documents:
            if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
                items = [i for i in doc["items"] if self._raw_key(i) not in keys]
                if items:
                    kept.append(dict(doc, items=items))
            elif doc is not None and self._raw_key(doc) not in keys:
                kept.append(doc)
        if kept:
            _write_atomically(path, yaml.safe_dump_all(kept, sort_keys=False))
        else:
            path.unlink(missing_ok=True)

    def _raw_key(self, obj: Any) -> Key | None:
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
            return None
        kind, meta = obj.get("kind"), obj["metadata"]
        rt = self.resources.for_kind(kind) if isinstance(kind, str) else None
        namespace = "" if rt is not None and not rt.namespaced else (meta.get("namespace") or DEFAULT_NAMESPACE)
        return (kind, namespace, meta.get("name"))  # type: ignore[return-value]

    def _report(self, errors: list[ManifestError]) -> None:
        # Log each error once, for as long as it lasts; a fixed file is logged as fixed.
        previous = set(self._errors)
        for error in errors:
            if error not in previous:
                log.warning("bad manifest", **error.log_fields())
        current = set(errors)
        for path in sorted({e.path for e in previous} - {e.path for e in current}):
            log.info("manifest errors resolved", file=path)
        self._errors = errors

    async def watch(self, *, debounce_ms: int = 100, resync: float = 2.0, force_polling: bool | None = None) -> None:
        """Load, then reload on every change under the directory until cancelled.

        Bursts of changes within ``debounce_ms`` make one reload. Every ``resync``
        seconds without events the directory is read again anyway: that covers
        changes made before the watcher started and file systems that miss events;
        it costs a read of each file, and bumps the store only on real change.
        """
        self.load()
        async for _changes in watchfiles.awatch(
            self.directory,
            debounce=debounce_ms,
            step=min(50, debounce_ms),
            rust_timeout=max(1, int(resync * 1000)),
            yield_on_timeout=True,
            force_polling=force_polling,
        ):
            self.load()


__all__ = [
    "ApplyResult",
    "CLUSTER_SCOPED",
    "DEFAULT_NAMESPACE",
    "LocalSource",
    "ManifestError",
    "ManifestObject",
    "POD_TEMPLATE_HASH_LABEL",
    "SourceError",
    "admitted_object",
    "check_documents",
    "checked_object",
    "parse_manifests",
    "pod_template_hash",
    "pods_for_deployment",
]
