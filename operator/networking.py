"""VirtualService and DestinationRule (``networking.istio.io``) on the control plane: the status we write.

Waypoints receive both kinds as ConfigObjects (``gateways.config_objects``; which waypoint gets
which: ``distributor``) and compile them with the same code this module runs, so what status
says is what the proxy does: VirtualServices with the waypoint's route table
(``waypoint.route.compile_table``, ``waypoint/route/virtualservice.py``), DestinationRules with
the balancer's reader (``waypoint.balance.rules.compile_destination_rules``).

Conditions (``status.conditions``, the list Istio's own status writer uses on these kinds; each
carries ``observedGeneration``; the writers add ``lastTransitionTime``):

- VirtualService ``Accepted``: True ``Accepted`` with where it is in force ("applied to Service
  shop/web port 80 (waypoint shop/waypoint)", or "no waypoint: nothing applies it until the
  Service uses one"); False with ``UnsupportedValue`` (a value the waypoint cannot use: an RE2
  refusal, a bad duration), ``NoMatchingParent`` (no host names a Service), ``NotForMesh``
  (``gateways`` without ``mesh``) or ``Conflicted`` (on every Service port an HTTPRoute or
  GRPCRoute is bound, or an older VirtualService for the same host applies: the APIs and the
  objects are not merged; the HTTPRoute's own status says which VirtualService it overrides).
- VirtualService ``ResolvedRefs``: False ``BackendNotFound`` when a destination names no Service
  or a ``subset`` no DestinationRule of its host defines (its requests get a 503).
- ``UnsupportedFields`` on both kinds: True ``FieldIgnored`` naming each field the waypoint does
  not carry out (``gateways``, ``tcp``, ``tls``, ``corsPolicy``, ``delegate``, a DestinationRule's
  ``tls``, ``tunnel``, ...), False ``AllFieldsSupported`` otherwise.
- DestinationRule ``Accepted``: True with the Service it applies to and its waypoint; False
  ``NoMatchingParent`` when ``host`` names no Service.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from waypoint.balance.rules import compile_destination_rules
from waypoint.route import RouteTable
from waypoint.route.status import ACCEPTED, BACKEND_NOT_FOUND, NO_MATCHING_PARENT, RESOLVED_REFS, Problem
from waypoint.route.virtualservice import IGNORED, UNSUPPORTED_FIELDS, status_conditions
from wisp.istio_hosts import resolve_host
from wisp.kube import ObjectId
from wisp.model import Service
from wisp_operator.cluster import ClusterState
from wisp_operator.errors import InvalidObject, object_id
from wisp_operator.gateways import route_table

VIRTUAL_SERVICE = "VirtualService"
DESTINATION_RULE = "DestinationRule"
KINDS = (VIRTUAL_SERVICE, DESTINATION_RULE)
CONDITION_TYPES = (ACCEPTED, RESOLVED_REFS, UNSUPPORTED_FIELDS)

Condition = tuple[dict[str, Any], ObjectId, str, dict[str, Any]]


def _condition(type_: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason, "message": message}


def _waypoint_of(services: Mapping[tuple[str, str], Service], namespace: str, name: str) -> str:
    service = services.get((namespace, name))
    if service is None or service.waypoint is None or not service.waypoint.gateway:
        return "no waypoint: nothing applies it until the Service uses one"
    return f"waypoint {service.waypoint.gateway}"


def _with_waypoints(applied: list[str], services: Mapping[tuple[str, str], Service]) -> list[str]:
    out = []
    for where in applied:  # "Service ns/name port N"
        namespace, _, rest = where.removeprefix("Service ").partition("/")
        out.append(f"{where} ({_waypoint_of(services, namespace, rest.partition(' ')[0])})")
    return out


def _subset_problems(vs: dict[str, Any], namespace: str, subsets: Mapping[tuple[str, str], frozenset[str]],
                     by_name: Any, by_hostname: Any) -> list[Problem]:
    """A destination ``subset`` that no DestinationRule of its host defines."""
    spec = vs.get("spec") if isinstance(vs.get("spec"), dict) else {}
    problems = []
    for i, rule in enumerate(spec.get("http") or []):
        for j, item in enumerate((rule.get("route") or []) if isinstance(rule, dict) else []):
            destination = item.get("destination") if isinstance(item, dict) else None
            if not isinstance(destination, dict) or not destination.get("subset"):
                continue
            host, subset = destination.get("host"), destination["subset"]
            service = resolve_host(host, namespace, by_name, by_hostname) if isinstance(host, str) else None
            if service is None:
                continue  # reported by the route parse (BackendNotFound)
            if subset not in subsets.get((service.namespace, service.name), frozenset()):
                problems.append(Problem(
                    RESOLVED_REFS, BACKEND_NOT_FOUND,
                    f"spec.http[{i}].route[{j}].destination.subset: subset {subset!r} of Service "
                    f"{service.namespace}/{service.name} is defined by no DestinationRule; its requests get a 503",
                    rule=i))
    return problems


def networking_conditions(state: ClusterState, services: Iterable[Service],
                          table: RouteTable | None = None) -> tuple[list[Condition], list[InvalidObject]]:
    """(object, id, condition type, condition) for every VirtualService and DestinationRule.

    ``table`` is the route table of every mesh route and VirtualService of ``state`` (compiled
    here when not given)."""
    virtual_services = state.of_kind(VIRTUAL_SERVICE)
    rules = state.of_kind(DESTINATION_RULE)
    out: list[Condition] = []
    errors: list[InvalidObject] = []
    if not virtual_services and not rules:
        return out, errors
    services = list(services)
    by_key = {(s.namespace, s.name): s for s in services}
    by_hostname = {s.hostname.lower(): s for s in services}

    def by_name(namespace: str, name: str) -> Service | None:
        return by_key.get((namespace, name))

    policies = compile_destination_rules(rules, services)
    subsets = {}
    for policy_key, policy in policies.by_service.items():
        namespace, _, hostname = policy_key.partition("/")
        service = by_hostname.get(hostname.lower())
        if service is not None:
            subsets[(service.namespace, service.name)] = frozenset(policy.subsets)

    if virtual_services:
        if table is None:
            table = route_table(state, services)
        for vs in virtual_services:
            try:
                oid = object_id(vs, VIRTUAL_SERVICE)
            except InvalidObject as exc:
                errors.append(exc)
                continue
            problems = list(table.problems(VIRTUAL_SERVICE, oid.namespace, oid.name))
            problems += _subset_problems(vs, oid.namespace, subsets, by_name, by_hostname.get)
            applied = _with_waypoints(table.applied(oid.namespace, oid.name), by_key)
            for condition in status_conditions(problems, applied):
                out.append((vs, oid, condition["type"], condition))

    notes: dict[str, list[str]] = {}
    for note in policies.notes:
        ref, _, message = note.removeprefix("DestinationRule ").partition(": ")
        notes.setdefault(ref, []).append(message)
    for rule in rules:
        try:
            oid = object_id(rule, DESTINATION_RULE)
        except InvalidObject as exc:
            errors.append(exc)
            continue
        mine = notes.get(f"{oid.namespace}/{oid.name}", [])
        spec = rule.get("spec") if isinstance(rule.get("spec"), dict) else {}
        host = spec.get("host")
        service = resolve_host(host, oid.namespace, by_name, by_hostname.get) if isinstance(host, str) else None
        if service is None:
            accepted = _condition(ACCEPTED, False, NO_MATCHING_PARENT,
                                  f"spec.host {host!r} names no Service of the mesh (wildcards are not supported "
                                  "on a waypoint)")
            mine = [m for m in mine if not m.startswith("spec.host")]
        else:
            accepted = _condition(ACCEPTED, True, "Accepted",
                                  f"applied to Service {service.namespace}/{service.name} "
                                  f"({_waypoint_of(by_key, service.namespace, service.name)})")
        if mine:
            ignored = _condition(UNSUPPORTED_FIELDS, True, IGNORED, "; ".join(mine))
        else:
            ignored = _condition(UNSUPPORTED_FIELDS, False, "AllFieldsSupported",
                                 "every field is carried out by the waypoint")
        out.append((rule, oid, ACCEPTED, accepted))
        out.append((rule, oid, UNSUPPORTED_FIELDS, ignored))
    return out, errors

