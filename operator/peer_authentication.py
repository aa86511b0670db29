"""PeerAuthentication -> DENY Authorizations for ztunnel, the way Istio converts them.

ztunnel has no notion of "mTLS mode"; Istio expresses STRICT as a DENY of
connections without a peer identity. The pieces:
- one static policy ``<root>/istio_converted_static_strict`` (DENY, ``not_principals:
  presence``), sent whenever any PeerAuthentication exists, and listed on every
  workload whose effective mode is STRICT;
- for a workload-selector PeerAuthentication with ``portLevelMtls``, a policy
  ``<ns>/converted_peer_authentication_<name>`` carrying the port exceptions: STRICT on a
  port under a non-STRICT parent denies that port without identity; PERMISSIVE on a
  port under a STRICT parent denies identity-less connections on every *other* port
  (``not_destination_ports``), in place of the static policy, because any matching DENY
  wins and an ALLOW exception could not punch a hole in it.
Precedence: the oldest mesh-wide (root namespace, no selector) policy, then the oldest
namespace-wide one, then the oldest matching workload one; UNSET inherits. DISABLE is
treated as PERMISSIVE (ambient never turns mTLS off for HBONE).

Deviation: Istio's conversion mis-groups one boolean condition and ignores a namespace
policy whose mode is UNSET when deciding whether the parent is STRICT, which can leave a
workload listing a policy that was never generated. We evaluate "parent is STRICT" once,
the same way for the workload's key list and for the converted policy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from wisp.model import Authorization, Clause, Match, Rule, StringMatch
from wisp.kube import ObjectId, get, mapping, string, string_map
from wisp_operator.errors import object_id
from wisp_operator.selectors import is_subset

STATIC_STRICT_POLICY_NAME = "istio_converted_static_strict"
CONVERTED_PREFIX = "converted_peer_authentication_"

UNSET, DISABLE, PERMISSIVE, STRICT = "UNSET", "DISABLE", "PERMISSIVE", "STRICT"
_MODES = (UNSET, DISABLE, PERMISSIVE, STRICT)

_NO_IDENTITY = Match(not_principals=(StringMatch("presence"),))


@dataclass(frozen=True, slots=True)
class PeerAuth:
    namespace: str
    name: str
    created: str
    selector: dict[str, str] | None  # None (or empty) = namespace- or mesh-wide
    mode: str
    port_modes: tuple[tuple[int, str], ...]  # sorted by port

    @property
    def age_key(self) -> tuple[str, str]:
        # Oldest wins; RFC 3339 timestamps in UTC sort as strings. Name breaks ties.
        return (self.created, self.name)


def _mode(obj: dict[str, Any], oid: ObjectId, at: str) -> str:
    mode = string(obj, "mode", oid, UNSET, at=at)
    if mode not in _MODES:
        raise oid.invalid(f"{at}.mode must be one of {', '.join(_MODES)}, got {mode!r}")
    return mode


def parse_peer_authentication(pa: dict[str, Any]) -> PeerAuth:
    oid = object_id(pa, "PeerAuthentication")
    spec = mapping(pa, "spec", oid)
    selector_obj = get(spec, "selector", oid, dict, None, at="spec")
    selector = string_map(selector_obj, "matchLabels", oid, at="spec.selector") if selector_obj else None
    mode = _mode(mapping(spec, "mtls", oid, at="spec"), oid, "spec.mtls")
    ports = []
    for port, port_mtls in mapping(spec, "portLevelMtls", oid, at="spec").items():
        where = f"spec.portLevelMtls[{port!r}]"
        number = port if isinstance(port, int) else int(port) if isinstance(port, str) and port.isdigit() else None
        if number is None or not 0 < number <= 65535:
            raise oid.invalid(f"{where}: the key must be a port number")
        if not isinstance(port_mtls, dict):
            raise oid.invalid(f"{where} must be an object")
        ports.append((number, _mode(port_mtls, oid, where)))
    created = string(pa, "metadata.creationTimestamp", oid)
    return PeerAuth(oid.namespace, oid.name, created, selector or None, mode, tuple(sorted(ports)))


def static_strict_policy(root_namespace: str) -> Authorization:
    return Authorization(
        name=STATIC_STRICT_POLICY_NAME,
        namespace=root_namespace,
        scope="WORKLOAD_SELECTOR",
        action="DENY",
        rules=(Rule((Clause((_NO_IDENTITY,)),)),),
    )


def _strictish(mode: str) -> bool:
    return mode == STRICT


def _lenient(mode: str) -> bool:
    return mode in (PERMISSIVE, DISABLE)


class PeerAuthIndex:
    """Effective PeerAuthentication per workload, and the converted policies."""

    def __init__(self, policies: Iterable[PeerAuth], root_namespace: str) -> None:
        self.root_namespace = root_namespace
        self.mesh: PeerAuth | None = None
        self.namespace_wide: dict[str, PeerAuth] = {}
        self.workload: dict[str, list[PeerAuth]] = {}
        self.count = 0
        for pa in policies:
            self.count += 1
            if pa.selector is None:
                if pa.namespace == root_namespace:
                    if self.mesh is None or pa.age_key < self.mesh.age_key:
                        self.mesh = pa
                else:
                    cur = self.namespace_wide.get(pa.namespace)
                    if cur is None or pa.age_key < cur.age_key:
                        self.namespace_wide[pa.namespace] = pa
            elif pa.namespace != root_namespace:
                self.workload.setdefault(pa.namespace, []).append(pa)
        for lst in self.workload.values():
            lst.sort(key=lambda p: p.age_key)

    def parent_strict(self, namespace: str) -> bool:
        """Whether mesh and namespace policies together make ``namespace`` STRICT."""
        ns = self.namespace_wide.get(namespace)
        if ns is not None and ns.mode != UNSET:
            return ns.mode == STRICT
        return self.mesh is not None and self.mesh.mode == STRICT

    def workload_policy(self, namespace: str, pod_labels: dict[str, str]) -> PeerAuth | None:
        for pa in self.workload.get(namespace, ()):  # sorted oldest first
            assert pa.selector is not None
            if is_subset(pa.selector, pod_labels):
                return pa
        return None

    def keys_for(self, namespace: str, pod_labels: dict[str, str]) -> list[str]:
        """The PeerAuthentication-derived policy keys a workload must list."""
        if not self.count:
            return []
        strict = self.parent_strict(namespace)
        port_key = ""
        wl = self.workload_policy(namespace, pod_labels)
        if wl is not None:
            if _strictish(wl.mode):
                strict = True
            elif _lenient(wl.mode):
                strict = False
            port_modes = [m for _, m in wl.port_modes]
            if port_modes:
                key = f"{wl.namespace}/{CONVERTED_PREFIX}{wl.name}"
                if (wl.mode == UNSET and not strict) or _lenient(wl.mode):
                    # Lenient parent: only STRICT ports need a policy.
                    strict = False
                    if any(_strictish(m) for m in port_modes):
                        port_key = key
                elif any(_lenient(m) for m in port_modes):
                    # STRICT (own or inherited) with lenient ports: the converted policy
                    # carries STRICT itself, so the static one must not be listed.
                    port_key = key
                    strict = False
        keys = []
        if strict:
            keys.append(f"{self.root_namespace}/{STATIC_STRICT_POLICY_NAME}")
        if port_key:
            keys.append(port_key)
        return sorted(keys)

    def policies(self) -> list[Authorization]:
        """Every Authorization PeerAuthentications give ztunnel, sorted by key."""
        if not self.count:
            return []
        out = [static_strict_policy(self.root_namespace)]
        for ns in sorted(self.workload):
            for pa in self.workload[ns]:
                converted = self.convert(pa)
                if converted is not None:
                    out.append(converted)
        return out

    def convert(self, pa: PeerAuth) -> Authorization | None:
        """The port-level policy for a workload PeerAuthentication, or None if it needs none."""
        if pa.namespace == self.root_namespace or pa.selector is None or not pa.port_modes:
            return None
        parent_strict = self.parent_strict(pa.namespace)
        clauses: list[Clause] = []
        rules: list[Rule] = []
        if pa.mode == STRICT:
            clauses.append(Clause((_NO_IDENTITY,)))
        found_lenient = False
        for port, port_mode in pa.port_modes:
            if _strictish(port_mode):
                if pa.mode == STRICT or (pa.mode == UNSET and parent_strict):
                    continue  # already enforced by the workload's or the parent's STRICT
                rules.append(
                    Rule((Clause((Match(not_principals=(StringMatch("presence"),), destination_ports=(port,)),)),))
                )
            elif _lenient(port_mode):
                if _lenient(pa.mode) or (pa.mode == UNSET and not parent_strict):
                    continue  # nothing to relax
                found_lenient = True
                clauses.append(Clause((Match(not_destination_ports=(port,)),)))
        if pa.mode == STRICT and not found_lenient:
            return None  # plain STRICT: the static policy covers it
        if not clauses and not rules:
            return None
        if parent_strict and found_lenient and Clause((_NO_IDENTITY,)) not in clauses:
            clauses.append(Clause((_NO_IDENTITY,)))
        if clauses:
            rules.append(Rule(tuple(clauses)))
        return Authorization(
            name=f"{CONVERTED_PREFIX}{pa.name}",
            namespace=pa.namespace,
            scope="WORKLOAD_SELECTOR",
            action="DENY",
            rules=tuple(rules),
        )
