"""Structural-schema validation of one object against its CRD version's ``openAPIV3Schema``.

What the API server does for a custom resource, in its order:

1. prune: ``null`` for a field that is not ``nullable`` is dropped (as the API server drops it);
2. unknown fields: a field the schema does not declare (and no ``additionalProperties`` or
   ``x-kubernetes-preserve-unknown-fields`` admits) is reported by path. ``kubectl apply``
   asks for strict field validation by default, so these refuse the object;
3. defaults: a missing property whose schema has a ``default`` gets it, then its own
   properties' defaults, as the API server's structural defaulting does before it validates.
   The checks below see the defaulted object (the Gateway API's CEL rules rely on it:
   ``self[0].matches.size()`` reads the defaulted ``matches``); the object handed back
   (``SchemaResult.pruned``) is the one sent, not defaulted, because the local store keeps
   what the user wrote (see docs/configuration.md);
4. the OpenAPI schema proper (types, enums, required, bounds, patterns, oneOf/anyOf/not):
   checked by ``jsonschema`` (Draft 4, the dialect of OpenAPI v3 schemas) on a copy of the
   schema with the Kubernetes extensions translated (``nullable``,
   ``x-kubernetes-int-or-string``), and ``x-kubernetes-list-type`` ``set``/``map``: no two
   items (or map keys) alike;
5. ``x-kubernetes-validations`` CEL rules, where the value has the declared type, with
   property names escaped as Kubernetes escapes them (``cel.to_cel``).

Errors carry Kubernetes' field paths (``spec.rules[0].to[0].operation.ports[0]``) and wording.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema

from . import cel
from .errors import DUPLICATE, INVALID_VALUE, REQUIRED, TOO_LONG, TOO_MANY, UNSUPPORTED, FieldError

_ENVELOPE = ("apiVersion", "kind", "metadata")
_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}


def type_name(value: Any) -> str:
    return _JSON_TYPES.get(type(value), "null" if value is None else type(value).__name__)


@dataclass(frozen=True, slots=True)
class SchemaResult:
    pruned: dict[str, Any]
    unknown: tuple[str, ...]
    errors: tuple[FieldError, ...]


def validate(obj: dict[str, Any], schema: dict[str, Any]) -> SchemaResult:
    """Check ``obj`` against ``schema``; the object itself is not modified."""
    unknown: list[str] = []
    pruned = _prune(_as_json(obj), schema, "", unknown, root=True)
    defaulted = apply_defaults(copy.deepcopy(pruned), schema)
    errors = _schema_errors(defaulted, schema)
    _list_types(defaulted, schema, "", errors)
    if not errors:
        _cel(defaulted, schema, "", errors)
    return SchemaResult(pruned, tuple(unknown), tuple(errors))


# --- 1 and 2: pruning nulls, finding unknown fields -------------------------------------------


def _as_json(value: Any) -> Any:
    """A copy as the API server receives it from kubectl: JSON, so every mapping key a string."""
    if isinstance(value, dict):
        return {(k if isinstance(k, str) else json.dumps(k)): _as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _prune(value: Any, schema: dict[str, Any], path: str, unknown: list[str], root: bool = False) -> Any:
    if isinstance(value, dict) and (schema.get("type") == "object" or "properties" in schema
                                    or "additionalProperties" in schema):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields", False)
        for key in list(value):
            child = value[key]
            sub = props.get(key)
            if sub is None and isinstance(extra, dict):
                sub = extra
            if child is None and not (sub or {}).get("nullable", False):
                del value[key]
                continue
            if root and key in _ENVELOPE:
                # ObjectMeta is the API server's own type, checked apart from the CRD schema (which
                # may declare ``metadata: {type: object}``, as the Gateway API CRDs do).
                continue
            if sub is not None:
                value[key] = _prune(child, sub, _join(path, key), unknown)
            elif not preserve and extra is not True:
                unknown.append(_join(path, key))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            value[i] = _prune(item, schema["items"], f"{path}[{i}]", unknown)
    return value


# --- 3: defaults -----------------------------------------------------------------------------


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """``value`` with its schema's defaults filled in (in place), as k8s structural defaulting."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if key not in value and isinstance(sub, dict) and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        extra = schema.get("additionalProperties")
        for key, child in value.items():
            sub = props.get(key) or (extra if isinstance(extra, dict) else None)
            if sub is not None:
                value[key] = apply_defaults(child, sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            value[i] = apply_defaults(item, schema["items"])
    return value


# --- 4: the OpenAPI schema, through jsonschema -------------------------------------------------


def _to_json_schema(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _to_json_schema(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    out.pop("nullable", None)
    out.pop("format", None)  # int32/double/date-time/binary: not checked by the API server's schema either
    out.pop("default", None)
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    elif schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


# Keyed by the schema's identity: schemas live as long as the loaded resource types.
_validators: dict[int, tuple[dict[str, Any], jsonschema.Draft4Validator]] = {}


def _validator(schema: dict[str, Any]) -> jsonschema.Draft4Validator:
    held = _validators.get(id(schema))
    if held is None or held[0] is not schema:
        held = _validators[id(schema)] = (schema, jsonschema.Draft4Validator(_to_json_schema(schema)))
    return held[1]


def _schema_errors(obj: dict[str, Any], schema: dict[str, Any]) -> list[FieldError]:
    validator = _validator(schema)
    errors = sorted(validator.iter_errors(obj), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    out: list[FieldError] = []
    for error in errors:
        field_error = _field_error(error)
        if field_error not in out:
            out.append(field_error)
    return out


def path_of(parts: Iterable[Any]) -> str:
    path = ""
    for part in parts:
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, str(part))
    return path


def _field_error(error: jsonschema.ValidationError) -> FieldError:
    path = path_of(error.absolute_path)
    kind, limit, value = error.validator, error.validator_value, error.instance
    where = path or "body"
    if kind == "enum":
        return FieldError(path, UNSUPPORTED, "supported values: " + ", ".join(json.dumps(v) for v in limit), value)
    if kind == "type":
        expected = limit if isinstance(limit, str) else " or ".join(limit)
        actual = type_name(value)
        return FieldError(path, INVALID_VALUE, f'{where} in body must be of type {expected}: "{actual}"', actual, True)
    if kind == "required":
        missing = next((name for name in limit if name not in value), str(limit))
        return FieldError(_join(path, missing), REQUIRED)
    if kind == "pattern":
        return FieldError(path, INVALID_VALUE, f"{where} in body should match '{limit}'", value, True)
    if kind == "maxLength":
        return FieldError(path, TOO_LONG, f"may not be more than {limit} bytes")
    if kind == "minLength":
        return FieldError(path, INVALID_VALUE, f"{where} in body should be at least {limit} chars long", value, True)
    if kind == "maxItems":
        return FieldError(path, TOO_MANY, f"must have at most {limit} items", len(value), True)
    if kind == "minItems":
        return FieldError(path, INVALID_VALUE, f"{where} in body should have at least {limit} items", len(value), True)
    if kind in ("maxProperties", "minProperties"):
        bound = "at most" if kind == "maxProperties" else "at least"
        return FieldError(path, INVALID_VALUE, f"{where} in body should have {bound} {limit} properties",
                          len(value), True)
    if kind in ("minimum", "maximum"):
        relation = "greater than or equal to" if kind == "minimum" else "less than or equal to"
        return FieldError(path, INVALID_VALUE, f"{where} in body should be {relation} {limit}", value, True)
    if kind == "oneOf":
        return FieldError(path, INVALID_VALUE, f"{where} in body must validate one and only one schema (oneOf)",
                          type_name(value), True)
    if kind == "anyOf":
        return FieldError(path, INVALID_VALUE, f"{where} in body must validate at least one schema (anyOf)",
                          type_name(value), True)
    if kind == "not":
        return FieldError(path, INVALID_VALUE, f"{where} in body must not validate the schema (not)",
                          type_name(value), True)
    return FieldError(path, INVALID_VALUE, error.message, type_name(value), True)


def _fields(value: dict[str, Any], schema: dict[str, Any], path: str) -> Iterator[tuple[Any, dict[str, Any], str]]:
    """Each field of an object that its schema describes: (value, schema, path)."""
    props = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    for key, child in value.items():
        sub = props.get(key) or (extra if isinstance(extra, dict) else None)
        if sub is not None:
            yield child, sub, _join(path, key)


def _go_value(value: Any) -> str:
    """A map key set as field.Duplicate prints it (Go's %#v of map[string]interface{})."""
    inner = ", ".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in sorted(value.items()))
    return "map[string]interface {}{" + inner + "}"


def _list_types(value: Any, schema: dict[str, Any], path: str, errors: list[FieldError]) -> None:
    """``x-kubernetes-list-type: set|map``: k8s structurallisttype.ValidateListSetsAndMaps."""
    if isinstance(value, dict):
        for child, sub, child_path in _fields(value, schema, path):
            _list_types(child, sub, child_path, errors)
    elif isinstance(value, list):
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        list_type = schema.get("x-kubernetes-list-type")
        seen: set[str] = set()
        for i, item in enumerate(value):
            if list_type == "set":
                key = _key_of(item)
                shown = json.dumps(item) if isinstance(item, str) else (_go_value(item) if isinstance(item, dict)
                                                                         else json.dumps(item))
            elif list_type == "map" and isinstance(item, dict):
                keys = {k: item.get(k) for k in schema.get("x-kubernetes-list-map-keys") or () if k in item}
                key, shown = _key_of(keys), _go_value(keys)
            else:
                key = None
            if key is not None:
                if key in seen:
                    errors.append(FieldError(f"{path}[{i}]", DUPLICATE, shown))
                seen.add(key)
            _list_types(item, items, f"{path}[{i}]", errors)


def _key_of(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


# --- 5: CEL rules ------------------------------------------------------------------------------


def _cel(value: Any, schema: dict[str, Any], path: str, errors: list[FieldError]) -> None:
    if isinstance(value, dict):
        for child, sub, child_path in _fields(value, schema, path):
            _cel(child, sub, child_path, errors)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _cel(item, schema["items"], f"{path}[{i}]", errors)
    for rule in schema.get("x-kubernetes-validations") or ():
        outcome = cel.evaluate(rule["rule"], value, schema)
        if outcome is None or outcome.passed:
            continue
        message = rule.get("message") or f"failed rule: {rule['rule']}"
        if outcome.error:
            message = f"{message} (evaluation error: {outcome.error})"
        errors.append(FieldError(_join(path, rule["fieldPath"].lstrip(".")) if rule.get("fieldPath") else path,
                                 INVALID_VALUE, message, type_name(value), True))
