"""Pod lifecycle facts the reconciler needs: phase, readiness, termination."""

from __future__ import annotations

from typing import Any

from wisp.kube import ObjectId, condition_true, get, string

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


def phase(pod: dict[str, Any], oid: ObjectId) -> str:
    return string(pod, "status.phase", oid)


def is_terminating(pod: dict[str, Any], oid: ObjectId) -> bool:
    return get(pod, "metadata.deletionTimestamp", oid, str, None) is not None


def is_ready(pod: dict[str, Any], oid: ObjectId) -> bool:
    """Serving traffic: Running, condition Ready=True, and not being deleted."""
    return (
        phase(pod, oid) == "Running"
        and not is_terminating(pod, oid)
        and condition_true(pod, oid, "Ready")
    )
