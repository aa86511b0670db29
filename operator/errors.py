"""The control plane's exceptions.

``InvalidObject`` is the one most code meets: a cluster object (a plain dict) is
malformed. It subclasses ``wisp.kube.InvalidObject`` so code shared with the
node agent and code of the operator raise one catchable type. ``object_id`` is
``wisp.kube.object_id`` raising it (and every read through the id it returns), so the
operator's callers can catch it as an ``OperatorError``.
"""

from __future__ import annotations

from typing import Any

import wisp.kube


class OperatorError(Exception):
    """Base of every error the control plane raises on purpose."""


class InvalidObject(OperatorError, wisp.kube.InvalidObject):
    """A cluster object is malformed: kind, namespace, name and what is wrong."""


def object_id(obj: Any, kind: str = "") -> wisp.kube.ObjectId:
    """``wisp.kube.object_id`` raising the operator's ``InvalidObject``."""
    return wisp.kube.object_id(obj, kind, InvalidObject)
