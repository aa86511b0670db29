"""What a refused object reports, worded as the Kubernetes API server and kubectl word it.

``FieldError`` is one problem at one field path (k8s.io/apimachinery's ``field.Error``):
``spec.action: Unsupported value: "deny": supported values: "ALLOW", "DENY", "AUDIT", "CUSTOM"``.
``Refusal`` is one object turned away, with the reason class the API server would answer with:

- ``NoMatch``: the kind/version is not served (kubectl: ``resource mapping not found``);
- ``BadRequest``: strict decoding found unknown fields, or a validating webhook denied it;
- ``Invalid``: the CRD's structural schema or its CEL rules refused it (HTTP 422).

``Refusal.kubectl(file)`` renders the line kubectl prints for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

NO_MATCH, BAD_REQUEST, INVALID = "NoMatch", "BadRequest", "Invalid"

UNSUPPORTED = "Unsupported value"
REQUIRED = "Required value"
INVALID_VALUE = "Invalid value"
TOO_LONG = "Too long"
TOO_MANY = "Too many"
FORBIDDEN = "Forbidden"
DUPLICATE = "Duplicate value"


def show_value(value: Any) -> str:
    """A value as field.Error prints it: strings quoted, numbers bare, objects by type."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    if value is None:
        return "null"
    return json.dumps(str(value))


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem at one field (``path`` as Kubernetes writes it: ``spec.rules[0].to``)."""

    path: str
    type: str
    detail: str = ""
    value: Any = None
    has_value: bool = False

    def body(self) -> str:
        if self.type == UNSUPPORTED:
            return f"{self.type}: {show_value(self.value)}: {self.detail}"
        if self.type == INVALID_VALUE or (self.type == TOO_MANY and self.has_value):
            shown = show_value(self.value) if self.has_value else '"null"'
            return f"{self.type}: {shown}: {self.detail}" if self.detail else f"{self.type}: {shown}"
        return f"{self.type}: {self.detail}" if self.detail else self.type

    def __str__(self) -> str:
        return f"{self.path}: {self.body()}" if self.path else self.body()


@dataclass(frozen=True, slots=True)
class Refusal:
    """One object the API server (or its webhook) would not take, and why."""

    reason: str  # NO_MATCH, BAD_REQUEST or INVALID
    kind: str
    api_version: str
    namespace: str
    name: str
    message: str  # the server's message, without kubectl's framing
    errors: tuple[FieldError, ...] = field(default=())

    def kubectl(self, source: str, verb: str = "creating") -> str:
        """The line ``kubectl apply -f source`` prints for this refusal."""
        if self.reason == NO_MATCH:
            return (f'error: resource mapping not found for name: "{self.name}" namespace: "{self.namespace}" '
                    f'from "{source}": {self.message}\nensure CRDs are installed first')
        if self.reason == INVALID:
            return self.message
        return f'Error from server (BadRequest): error when {verb} "{source}": {self.message}'

    def as_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "kind": self.kind, "apiVersion": self.api_version,
                "namespace": self.namespace, "name": self.name, "message": self.message,
                "causes": [{"field": e.path, "message": e.body()} for e in self.errors]}


def invalid(kind: str, api_version: str, namespace: str, name: str, errors: list[FieldError]) -> Refusal:
    """The 422 refusal: ``The Kind "name" is invalid: err`` or ``...: [err1, err2]``."""
    shown = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(map(str, errors)) + "]"
    return Refusal(INVALID, kind, api_version, namespace, name, f'The {kind} "{name}" is invalid: {shown}',
                   tuple(errors))


def no_match(kind: str, api_version: str, namespace: str, name: str) -> Refusal:
    return Refusal(NO_MATCH, kind, api_version, namespace, name,
                   f'no matches for kind "{kind}" in version "{api_version}"')


def unknown_fields(kind: str, api_version: str, namespace: str, name: str, paths: list[str]) -> Refusal:
    version = api_version.rpartition("/")[2]
    fields = ", ".join(f'unknown field "{p}"' for p in paths)
    return Refusal(BAD_REQUEST, kind, api_version, namespace, name,
                   f'{kind} in version "{version}" cannot be handled as a {kind}: strict decoding error: {fields}')


def webhook_denied(webhook: str, kind: str, api_version: str, namespace: str, name: str,
                   problems: list[str]) -> Refusal:
    """istiod's webhook answer: one error plainly, several as hashicorp/go-multierror lists them."""
    if len(problems) == 1:
        text = problems[0]
    else:
        text = f"{len(problems)} errors occurred:\n" + "\n".join(f"\t* {p}" for p in problems)
    return Refusal(BAD_REQUEST, kind, api_version, namespace, name,
                   f'admission webhook "{webhook}" denied the request: configuration is invalid: {text}')
