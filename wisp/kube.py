"""Kubernetes-shaped objects (plain dicts with camelCase keys): the one home for reading them.

Shared by the control plane, the node agent and the local runtime. ``InvalidObject`` says an
object is malformed (kind, namespace, name, problem); ``object_id`` checks the envelope and
names the object; the typed reads (``string``, ``integer``, ``string_map``, ``labels``, ...)
name the object and the field path, so a malformed manifest ends in one ``InvalidObject`` that
says what to fix, never a KeyError or TypeError deep in a caller. Absent fields read as the
given default, as in the API.

A component that wants its own subclass of ``InvalidObject`` raised (the operator's is also an
``OperatorError``) passes it as ``error`` to ``object_id`` or ``ObjectId``; every read through
that id raises it. ``non_string_entry`` is the string-map check for callers that word their
own message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any


class InvalidObject(ValueError):
    """A Kubernetes-shaped object (a plain dict) is malformed.

    Carries what is needed to find and fix it: kind, namespace, name and the problem.
    """

    def __init__(self, kind: str, namespace: str, name: str, problem: str) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.problem = problem
        shown = name or "<unnamed>"
        where = f"{namespace}/{shown}" if namespace else shown
        super().__init__(f"invalid {kind or 'object'} {where}: {problem}")


# Kubernetes names: RFC 1123 subdomains (most objects, label prefixes).
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class ObjectId:
    """Who an object is, for keys and error messages; ``error`` is the exception its reads raise."""

    kind: str
    namespace: str
    name: str
    error: type[InvalidObject] = field(default=InvalidObject, compare=False, repr=False)

    def invalid(self, problem: str) -> InvalidObject:
        return self.error(self.kind, self.namespace, self.name, problem)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


def object_id(obj: Any, kind: str = "", error: type[InvalidObject] = InvalidObject) -> ObjectId:
    """Check the envelope (dict, kind, metadata.name) and return the object's id."""
    if not isinstance(obj, dict):
        raise error(kind, "", "", f"expected an object (dict), got {type(obj).__name__}")
    actual_kind = obj.get("kind", kind) or kind
    if not isinstance(actual_kind, str):
        raise error(kind, "", "", f"kind must be a string, got {actual_kind!r}")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise error(actual_kind, "", "", "metadata is missing or not an object")
    name = meta.get("name")
    namespace = meta.get("namespace", "") or ""
    if not isinstance(namespace, str):
        raise error(actual_kind, "", str(name), f"metadata.namespace must be a string, got {namespace!r}")
    if not isinstance(name, str) or not name:
        raise error(actual_kind, namespace, "", "metadata.name is missing or not a string")
    return ObjectId(actual_kind, namespace, name, error)


def non_string_entry(value: dict[Any, Any]) -> tuple[Any, Any] | None:
    """The first entry of ``value`` whose key or value is not a string, or None."""
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            return k, v
    return None


@lru_cache(maxsize=512)
def _split(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


_TYPE_NAMES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
}


def get(obj: dict[str, Any], path: str, oid: ObjectId, expect: type, default: Any, at: str = "") -> Any:
    """The value at dotted ``path`` if present (and not null), else ``default``; wrong type raises."""
    value: Any = obj
    parts = _split(path)
    for i, part in enumerate(parts):
        if not isinstance(value, dict):
            return _wrong(oid, at, ".".join(parts[:i]), dict, value)
        value = value.get(part, _MISSING)
        if value is _MISSING or value is None:
            return default
    if expect is int:
        ok = isinstance(value, int) and not isinstance(value, bool)  # YAML's true is not a port
    else:
        ok = isinstance(value, expect)
    if not ok:
        _wrong(oid, at, path, expect, value)
    return value


def _wrong(oid: ObjectId, at: str, path: str, expect: type, value: Any) -> Any:
    full = f"{at}.{path}" if at else path
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    raise oid.invalid(f"{full} must be {_TYPE_NAMES.get(expect, expect.__name__)}, got {shown}")


def mapping(obj: dict[str, Any], path: str, oid: ObjectId, at: str = "") -> dict[str, Any]:
    return get(obj, path, oid, dict, {}, at)  # type: ignore[no-any-return]


def items(obj: dict[str, Any], path: str, oid: ObjectId, at: str = "") -> list[Any]:
    return get(obj, path, oid, list, [], at)  # type: ignore[no-any-return]


def dicts(obj: dict[str, Any], path: str, oid: ObjectId, at: str = "") -> list[tuple[str, dict[str, Any]]]:
    """A list of objects, each paired with its path for nested error messages."""
    out = []
    base = f"{at}.{path}" if at else path
    for i, item in enumerate(items(obj, path, oid, at)):
        where = f"{base}[{i}]"
        if not isinstance(item, dict):
            raise oid.invalid(f"{where} must be an object, got {type(item).__name__}")
        out.append((where, item))
    return out


def string(obj: dict[str, Any], path: str, oid: ObjectId, default: str = "", at: str = "") -> str:
    return get(obj, path, oid, str, default, at)  # type: ignore[no-any-return]


def integer(obj: dict[str, Any], path: str, oid: ObjectId, default: int = 0, at: str = "") -> int:
    return get(obj, path, oid, int, default, at)  # type: ignore[no-any-return]


def boolean(obj: dict[str, Any], path: str, oid: ObjectId, default: bool = False, at: str = "") -> bool:
    return get(obj, path, oid, bool, default, at)  # type: ignore[no-any-return]


def strings(obj: dict[str, Any], path: str, oid: ObjectId, at: str = "") -> list[str]:
    values = items(obj, path, oid, at)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            base = f"{at}.{path}" if at else path
            raise oid.invalid(f"{base}[{i}] must be a string, got {v!r}")
    return values


def string_map(obj: dict[str, Any], path: str, oid: ObjectId, at: str = "") -> dict[str, str]:
    value = mapping(obj, path, oid, at)
    for k, v in value.items():
        if not isinstance(v, str):
            base = f"{at}.{path}" if at else path
            raise oid.invalid(f"{base}[{k!r}] must be a string, got {v!r}")
    return value


def labels(obj: dict[str, Any], oid: ObjectId) -> dict[str, str]:
    return string_map(obj, "metadata.labels", oid)


def annotations(obj: dict[str, Any], oid: ObjectId) -> dict[str, str]:
    return string_map(obj, "metadata.annotations", oid)


def condition_true(obj: dict[str, Any], oid: ObjectId, condition_type: str) -> bool:
    """Whether ``status.conditions`` has ``condition_type`` with status "True"."""
    for where, cond in dicts(obj, "status.conditions", oid):
        if cond.get("type") == condition_type:
            return cond.get("status") == "True"
    return False


@dataclass(frozen=True, slots=True)
class Response:
    """One API server answer: its HTTP status and decoded JSON body (``{}`` when it had none)."""

    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def message(self) -> str:
        """The Status message the API server gave, for logs and errors."""
        text = self.body.get("message") if isinstance(self.body, dict) else None
        return text if isinstance(text, str) else "HTTP %d" % self.status
