"""What is wrong with a route, as data, and the route status conditions it makes.

The waypoint never writes status; the control plane does (issue 11, "HTTPRoute and GRPCRoute
status"). It calls the same parsing the waypoint uses (``parse.parse_route`` or
``RouteTable.problems``) and turns the problems into ``status.parents[].conditions`` with
``parent_conditions``, so what a user reads in status is what the proxy does.

Reasons and where they come from (kubernetes-sigs/gateway-api ``apis/v1/shared_types.go``
``RouteConditionReason``, and Istio's ``ConfigErrorReason`` for ``InvalidFilter``):

- Accepted=False ``NoMatchingParent``: the parent Service does not exist, or has no such
  ``port``, or the parentRef uses ``sectionName`` (wisp scopes Service parents by ``port`` only,
  as GEP-1294 does). Per parent.
- Accepted=False ``UnsupportedValue``: an unknown enum value, a regex RE2 refuses, a
  ``ReplacePrefixMatch`` without exactly one ``PathPrefix`` match. The whole route is unused.
- Accepted=False ``InvalidFilter``: every rule was dropped for a filter wisp does not support.
- Accepted=False ``Conflicted``: GEP-1294 "Route types": a GRPCRoute binds to the same Service
  port in the same group of routes, and GRPCRoute wins there.
- PartiallyInvalid=True: some rules were dropped; the message starts with "Dropped Rule", as
  the spec requires of implementations that drop rules.
- ResolvedRefs=False ``BackendNotFound``: a backendRef or mirror names a Service that does not
  exist; a backendRef's share of requests gets a 500, a mirror is dropped.
- ResolvedRefs=False ``InvalidKind``: a backendRef or mirror is not a core Service.
- ResolvedRefs=False ``InvalidFilter``: an ``ExtensionRef`` filter; nothing resolves it and the
  spec forbids skipping it, so the requests it would process get a 500.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

ACCEPTED = "Accepted"
RESOLVED_REFS = "ResolvedRefs"
PARTIALLY_INVALID = "PartiallyInvalid"

NO_MATCHING_PARENT = "NoMatchingParent"
UNSUPPORTED_VALUE = "UnsupportedValue"
INVALID_FILTER = "InvalidFilter"
CONFLICTED = "Conflicted"
BACKEND_NOT_FOUND = "BackendNotFound"
INVALID_KIND = "InvalidKind"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a route. ``parent``/``rule`` index ``spec.parentRefs``/``spec.rules``;
    None means it concerns every parent (or no rule in particular)."""

    condition: str
    reason: str
    message: str
    parent: int | None = None
    rule: int | None = None


def _condition(type_: str, ok: bool, reason: str, message: str) -> dict[str, str]:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason, "message": message}


def parent_conditions(problems: Iterable[Problem], parent: int, rules: int) -> list[dict[str, str]]:
    """``Accepted``, ``ResolvedRefs`` and, when rules were dropped, ``PartiallyInvalid`` for one
    parentRef (index ``parent``) of a route with ``rules`` rules.

    The control plane adds ``lastTransitionTime`` and ``observedGeneration``.
    """
    mine = [p for p in problems if p.parent is None or p.parent == parent]
    accepted = [p for p in mine if p.condition == ACCEPTED]
    resolved = [p for p in mine if p.condition == RESOLVED_REFS]
    dropped = [p for p in mine if p.condition == PARTIALLY_INVALID]
    conditions = []
    if accepted:
        conditions.append(_condition(ACCEPTED, False, accepted[0].reason, "; ".join(p.message for p in accepted)))
    else:
        conditions.append(_condition(ACCEPTED, True, "Accepted", "Route was valid"))
    if resolved:
        conditions.append(
            _condition(RESOLVED_REFS, False, resolved[0].reason, "; ".join(p.message for p in resolved))
        )
    else:
        conditions.append(_condition(RESOLVED_REFS, True, "ResolvedRefs", "All references resolved"))
    if dropped and not accepted:
        indexes = sorted({p.rule for p in dropped if p.rule is not None})
        message = f"Dropped Rule(s) {', '.join(map(str, indexes))} of {rules}: " + "; ".join(
            p.message for p in dropped
        )
        conditions.append({"type": PARTIALLY_INVALID, "status": "True", "reason": dropped[0].reason,
                           "message": message})
    return conditions
