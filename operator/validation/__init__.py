"""Validation of cluster objects, as a Kubernetes API server and istiod's webhook would do it.

Pure functions over plain dicts: no I/O beyond reading the CRD files once. The local store calls
``admit`` before it accepts a file; a ValidatingWebhookConfiguration handler can call
``admission_response`` with an AdmissionReview request.

The order is the API server's: the kind and version must be served (``no matches for kind``);
the object must fit its CRD's structural schema (unknown fields refused as ``kubectl apply``'s
default ``--validate=strict`` does; then, on the object with the schema's defaults applied, types,
enums, bounds, patterns, list sets and maps, ``x-kubernetes-validations`` CEL rules); only then do
the semantic checks of istiod's validating webhook run. See docs/configuration.md.
"""

from .admission import Verdict, admission_response, admit
from .errors import FieldError, Refusal
from .resources import ResourceType, Resources, load_resources

__all__ = [
    "FieldError",
    "Refusal",
    "ResourceType",
    "Resources",
    "Verdict",
    "admission_response",
    "admit",
    "load_resources",
]
