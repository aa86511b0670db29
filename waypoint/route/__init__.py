"""Request routing for waypoints: Gateway API HTTPRoute and GRPCRoute, mesh (GAMMA) profile.

Pure functions and frozen data, no I/O. The control plane's routes and Services go in once per
config version (``compile_table``); the HTTP shells ask the table once per request
(``RouteTable.route``) and apply the returned decision (``decision``), using the helpers in
``filters`` for header modifiers. The control plane reads the same parse for route status
(``parse_route``, ``RouteTable.problems``/``parent_status``, ``status``).

Modules, in the order a request meets them: ``request`` (what is read of a request), ``table``
(which routes apply: the dialled Service VIP and port, producer and consumer routes), ``match``
(precedence-ordered matching), ``backends`` (weighted choice), ``filters`` (header modifiers,
redirects, rewrites, mirrors), ``decision`` (the result). ``parse`` turns route objects into the
compiled rules, ``regex`` is the RE2 choice, ``status`` the problems and conditions.

Semantics follow kubernetes-sigs/gateway-api ``apis/v1/httproute_types.go`` and
``grpcroute_types.go`` and GEP-1294 (xRoutes Mesh Binding, published earlier as GEP-1426);
where the spec leaves a choice, Istio's behaviour is the reference and each module says so.
Measured cost per request: see ``table``. User-facing summary: docs/routing.md.
"""

from .backends import Backend, choose
from .decision import Decision, DefaultService, DirectResponse, Forward, Redirect
from .filters import HeaderModifier, RequestMirror, apply_header_modifiers, redirect_location, replace_prefix
from .parse import ParsedRoute, RouteRef, parse_route
from .request import HttpRequest, header_map
from .status import Problem, parent_conditions
from .table import RouteTable, compile_table

__all__ = [
    "Backend",
    "Decision",
    "DefaultService",
    "DirectResponse",
    "Forward",
    "HeaderModifier",
    "HttpRequest",
    "ParsedRoute",
    "Problem",
    "Redirect",
    "RequestMirror",
    "RouteRef",
    "RouteTable",
    "apply_header_modifiers",
    "choose",
    "compile_table",
    "header_map",
    "parent_conditions",
    "parse_route",
    "redirect_location",
    "replace_prefix",
]
