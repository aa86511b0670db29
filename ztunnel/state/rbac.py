"""L4 authorization: does a policy set allow one inbound connection? (ztunnel's rbac.rs, pure.)

Decision: any matching DENY denies; with no ALLOW policy the connection is allowed; otherwise
some ALLOW policy must match. A policy matches if any rule matches; a rule if all its clauses
do (no clauses: matches); a clause if any of its matches does; a Match if every field it sets
matches, and an empty Match never matches. `not_*` fields pass only if none of their values
match. Principals are compared without `spiffe://`; the source namespace and service account
come from the peer identity, so a connection without one (plaintext) matches no positive
identity field and passes every negative one.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from wisp.identity import SpiffeId
from wisp.model import Authorization, Clause, Match, Rule, ServiceAccountMatch, StringMatch


@dataclass(slots=True, frozen=True)
class Connection:
    """What authorization sees of a connection; `src_identity` is None for plaintext."""

    src_identity: SpiffeId | None
    src_ip: str
    dst_ip: str
    dst_port: int


@dataclass(slots=True, frozen=True)
class Decision:
    allowed: bool
    # "ns/name" of the DENY that matched, or of nothing when no ALLOW matched.
    policy: str | None = None
    reason: str = ""


ALLOWED = Decision(True)


def authorize(policies: Iterable[Authorization], conn: Connection) -> Decision:
    """The decision for `conn` under the policies that apply to its destination."""
    allows = []
    for policy in policies:
        if policy.dry_run:
            continue
        if policy.action == "DENY":
            if matches_policy(policy, conn):
                return Decision(False, f"{policy.namespace}/{policy.name}", "explicitly denied")
        else:
            allows.append(policy)
    if not allows:
        return ALLOWED
    for policy in allows:
        if matches_policy(policy, conn):
            return ALLOWED
    return Decision(False, None, "allow policy exists but none matched")


def matches_policy(policy: Authorization, conn: Connection) -> bool:
    return any(_matches_rule(rule, conn) for rule in policy.rules)


def _matches_rule(rule: Rule, conn: Connection) -> bool:
    return all(_matches_clause(clause, conn) for clause in rule.clauses)


def _matches_clause(clause: Clause, conn: Connection) -> bool:
    return any(matches(m, conn) for m in clause.matches)


def matches(m: Match, conn: Connection) -> bool:
    """One Match: every field it sets must pass; an empty Match never matches."""
    if m.is_empty():
        return False
    identity = conn.src_identity
    namespace = identity.namespace if identity else None
    principal = identity.principal if identity else None
    checks = (
        (m.namespaces, m.not_namespaces, lambda v: _string(v, namespace)),
        (m.principals, m.not_principals, lambda v: _string(v, principal)),
        (m.source_ips, m.not_source_ips, lambda v: _in_cidr(conn.src_ip, v)),
        (m.destination_ips, m.not_destination_ips, lambda v: _in_cidr(conn.dst_ip, v)),
        (m.destination_ports, m.not_destination_ports, lambda v: v == conn.dst_port),
        (m.service_accounts, m.not_service_accounts, lambda v: _service_account(v, identity)),
    )
    for positive, negative, test in checks:
        if positive and not any(test(v) for v in positive):
            return False
        if negative and any(test(v) for v in negative):
            return False
    return True


def _string(match: StringMatch, value: str | None) -> bool:
    return value is not None and match.matches(value)


def _service_account(match: ServiceAccountMatch, identity: SpiffeId | None) -> bool:
    return (
        identity is not None
        and identity.namespace == match.namespace
        and identity.service_account == match.service_account
    )


@functools.lru_cache(maxsize=4096)
def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None


@functools.lru_cache(maxsize=65536)
def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        return None


def _in_cidr(ip: str, cidr: str) -> bool:
    network, address = _network(cidr), _address(ip)
    # A CIDR we cannot parse matches nothing: the control plane already fails closed on bad input.
    return network is not None and address is not None and address in network
