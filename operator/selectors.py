"""Kubernetes label selectors (matchLabels and matchExpressions) over plain dicts."""

from __future__ import annotations

from typing import Any

from wisp.kube import ObjectId, dicts, string, string_map, strings


def selector_matches(selector: dict[str, Any], labels: dict[str, str], oid: ObjectId, at: str) -> bool:
    """Whether ``labels`` satisfy a LabelSelector; an empty selector selects everything."""
    if not is_subset(string_map(selector, "matchLabels", oid, at), labels):
        return False
    for where, expr in dicts(selector, "matchExpressions", oid, at):
        key = string(expr, "key", oid, at=where)
        operator = string(expr, "operator", oid, at=where)
        values = strings(expr, "values", oid, at=where)
        present = key in labels
        if operator == "In":
            ok = present and labels[key] in values
        elif operator == "NotIn":
            ok = not present or labels[key] not in values
        elif operator == "Exists":
            ok = present
        elif operator == "DoesNotExist":
            ok = not present
        else:
            raise oid.invalid(f"{where}.operator must be In, NotIn, Exists or DoesNotExist, got {operator!r}")
        if not ok:
            return False
    return True


def is_subset(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """matchLabels-only selection (Service selectors, policy selectors)."""
    for key, value in selector.items():
        if labels.get(key) != value:
            return False
    return True
