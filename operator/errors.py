"""The control plane's exceptions.

``InvalidObject`` is the one most code meets: a cluster object (a plain dict) is
malformed. It subclasses ``wisp.enrolment.InvalidObject`` so code shared with the
node agent and code of the operator raise one catchable type.
"""

from __future__ import annotations

import wisp.enrolment


class OperatorError(Exception):
    """Base of every error the control plane raises on purpose."""


class InvalidObject(OperatorError, wisp.enrolment.InvalidObject):
    """A cluster object is malformed: kind, namespace, name and what is wrong."""
