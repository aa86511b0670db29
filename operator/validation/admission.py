"""``admit``: the API server's and istiod's verdict on one object, as one pure function.

Order as on a cluster: the kind must be served at the object's apiVersion, strict decoding must
find no unknown field, the structural schema and its CEL rules must pass, then istiod's
validating webhook (``validation.istio.io``) checks the semantics. The first stage that refuses
decides the answer, as the API server stops at the first stage that fails.

``admission_response`` wraps ``admit`` for a ValidatingWebhookConfiguration: it takes an
``admission.k8s.io/v1`` AdmissionReview and returns the review to send back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import structural
from .errors import Refusal, invalid, no_match, unknown_fields, webhook_denied
from .istio import SEMANTIC, WEBHOOK
from .resources import Resources, load_resources


@dataclass(frozen=True, slots=True)
class Verdict:
    """``refusal`` is None when the object is admitted; ``obj`` is it as stored (nulls pruned)."""

    obj: dict[str, Any]
    refusal: Refusal | None = None
    warnings: tuple[str, ...] = field(default=())

    @property
    def admitted(self) -> bool:
        return self.refusal is None


def admit(obj: dict[str, Any], resources: Resources | None = None) -> Verdict:
    """Validate one object (a dict with apiVersion, kind and metadata.name) as a cluster would."""
    resources = resources or load_resources()
    kind = str(obj.get("kind", ""))
    api_version = str(obj.get("apiVersion", ""))
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name, namespace = str(meta.get("name", "")), str(meta.get("namespace", "") or "")
    rt = resources.served(api_version, kind)
    if rt is None:
        return Verdict(obj, no_match(kind, api_version, namespace, name))
    schema = rt.schema(api_version)
    if schema is None:
        return Verdict(obj)
    result = structural.validate(obj, schema)
    if result.unknown:
        return Verdict(obj, unknown_fields(kind, api_version, namespace, name, list(result.unknown)))
    if result.errors:
        return Verdict(obj, invalid(kind, api_version, namespace, name, list(result.errors)))
    semantic = SEMANTIC.get(kind)
    if semantic is None:
        return Verdict(result.pruned)
    errors, warnings = semantic(result.pruned)
    if errors:
        return Verdict(obj, webhook_denied(WEBHOOK, kind, api_version, namespace, name, errors), tuple(warnings))
    return Verdict(result.pruned, None, tuple(warnings))


def admission_response(review: dict[str, Any], resources: Resources | None = None) -> dict[str, Any]:
    """The AdmissionReview answer for a CREATE or UPDATE request (others are allowed)."""
    request = review.get("request") if isinstance(review.get("request"), dict) else {}
    response: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": True}
    obj = request.get("object")
    if request.get("operation") in ("CREATE", "UPDATE") and isinstance(obj, dict):
        verdict = admit(obj, resources)
        if verdict.warnings:
            response["warnings"] = list(verdict.warnings)
        if verdict.refusal is not None:
            code = 422 if verdict.refusal.reason == "Invalid" else 400
            response.update(allowed=False, status={"code": code, "message": verdict.refusal.message,
                                                   "reason": verdict.refusal.reason})
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
