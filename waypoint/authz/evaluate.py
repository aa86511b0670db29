"""The decision for one request: `authorize(policy_set, attributes) -> Decision`.

Istio's order at a waypoint (the filters ``buildWaypointHTTPFilters`` installs, and the
AuthorizationPolicy reference):

1. CUSTOM policies (enforced here as DENY rules, see `compile`): a match denies.
2. AUDIT policies: a match marks the request (``audit_policy``); it never decides.
3. DENY policies, those of the root namespace first: a match denies.
4. If any ALLOW policy applies, the request must match one of them, else it is denied.
5. Otherwise it is allowed.

Dry-run policies (``istio.io/dry-run: "true"``) are evaluated on every request and reported in
``Decision.dry_run`` as Envoy's shadow rules report them, and never change the decision. The
request's path is normalised first (`normalize`; a path Istio rejects gives a 400 decision).

A denied request is answered ``403`` with the body ``RBAC: access denied``; ``Decision.details``
is Envoy's response code detail for the access log (``rbac_access_denied_matched_policy[...]``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .attributes import RequestAttributes
from .compile import CompiledRule, PolicySet
from .normalize import match_path, normalize_path

DENIED_STATUS = 403
DENIED_BODY = b"RBAC: access denied"
BAD_PATH_STATUS = 400


@dataclass(frozen=True, slots=True)
class DryRun:
    """What the dry-run policies would have decided (Envoy's shadow engine result).

    ``denied`` when a dry-run DENY matched (``rule`` names it), or when dry-run ALLOW policies
    exist and none matched; ``rule`` is then None, or the dry-run ALLOW rule that matched.
    """

    denied: bool
    policy: str | None = None
    rule: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    # The policy ("ns/name") and rule that decided; None when allowed without any policy
    # matching, or denied because no ALLOW policy matched.
    policy: str | None = None
    rule: str | None = None
    action: str | None = None
    reason: str = ""
    status: int = 0  # 0 when allowed
    audit_policy: str | None = None
    dry_run: DryRun | None = None

    @property
    def body(self) -> bytes:
        return DENIED_BODY if self.status == DENIED_STATUS else b""

    @property
    def details(self) -> str:
        """Envoy's response code details for a denial ("" when allowed)."""
        if self.allowed:
            return ""
        if self.status == BAD_PATH_STATUS:
            return "path_normalization_failed"
        return f"rbac_access_denied_matched_policy[{self.rule or 'none'}]"


ALLOWED = Decision(True)


def _first_match(rules: tuple[CompiledRule, ...], attrs: RequestAttributes) -> CompiledRule | None:
    for rule in rules:
        for predicate in rule.predicates:
            if not predicate(attrs):
                break
        else:
            return rule
    return None


def _dry_run(policies: PolicySet, attrs: RequestAttributes) -> DryRun:
    denied = _first_match(policies.dry_run_deny, attrs)
    if denied is not None:
        return DryRun(True, denied.policy, denied.name)
    if policies.has_dry_run_allow:
        allowed = _first_match(policies.dry_run_allow, attrs)
        if allowed is None:
            return DryRun(True)
        return DryRun(False, allowed.policy, allowed.name)
    return DryRun(False)


def authorize(policies: PolicySet, attrs: RequestAttributes) -> Decision:
    """Istio's decision for ``attrs`` under the policies that apply to it."""
    if policies.empty:
        return ALLOWED
    if policies.uses_path:
        normalized = normalize_path(attrs.path, policies.normalization)
        if normalized is None:
            return Decision(False, reason="path rejected by normalisation", status=BAD_PATH_STATUS)
        attrs.match_path = match_path(normalized)
    dry_run = _dry_run(policies, attrs) if policies.has_dry_run else None

    custom = _first_match(policies.custom, attrs)
    if custom is not None:
        return Decision(False, custom.policy, custom.name, "CUSTOM",
                        "matched a CUSTOM policy, which this waypoint cannot delegate", DENIED_STATUS,
                        dry_run=dry_run)
    audited = _first_match(policies.audit, attrs)
    audit_policy = audited.policy if audited is not None else None
    denied = _first_match(policies.deny, attrs)
    if denied is not None:
        return Decision(False, denied.policy, denied.name, "DENY", "matched a DENY policy", DENIED_STATUS,
                        audit_policy, dry_run)
    if policies.has_allow:
        allowed = _first_match(policies.allow, attrs)
        if allowed is None:
            return Decision(False, None, None, None, "no ALLOW policy matched", DENIED_STATUS, audit_policy, dry_run)
        return Decision(True, allowed.policy, allowed.name, "ALLOW", "matched an ALLOW policy",
                        audit_policy=audit_policy, dry_run=dry_run)
    if audit_policy is None and dry_run is None:
        return ALLOWED
    return Decision(True, audit_policy=audit_policy, dry_run=dry_run)
