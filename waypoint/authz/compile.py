"""AuthorizationPolicy objects → the policy sets one waypoint evaluates, built once per config.

Input: ``security.istio.io/v1`` AuthorizationPolicy objects as the Kubernetes API returns them
(dicts, already admitted by ``operator/validation``). Output: `WaypointPolicies`, which gives
the `PolicySet` for a request's Service (`targets` says which policies apply where) and the
`Note` list the waypoint logs once per config version.

Each rule becomes a tuple of predicates over `RequestAttributes` that must all hold, following
Istio's translation into Envoy RBAC (``pilot/pkg/security/authz/model``): ``from`` entries OR,
``to`` entries OR, every ``when`` condition AND; inside an entry the fields AND; a field's values
OR; ``not*`` fields and ``notValues`` pass only if none of their values match. ``rules: [{}]``
matches every request; a policy without rules matches none (an ALLOW without rules allows
nothing).

What the waypoint cannot evaluate, and what happens then (Istio's rule for a value its
generator rejects, ``model.go`` ``checkError``): an ALLOW rule that uses it is dropped, so the
policy allows less; in DENY, AUDIT and CUSTOM rules the value is ignored, so the rule matches
more. Unsupported here: ``experimental.envoy.filters.*``; unknown ``when`` keys are treated the
same way (Istio skips such a rule whatever its action, which would silently weaken a DENY;
validation refuses them before they get here).

JWT attributes (the authn stage's `RequestAuth`, see waypoint/authn): ``requestPrincipals`` and
``request.auth.principal`` match ``<iss>/<sub>`` with the string forms (``*`` needs a verified
token); ``request.auth.audiences`` matches if any ``aud`` value does; ``request.auth.presenter``
matches ``azp``; ``request.auth.claims[name]`` (nested: ``[a][b]``) matches a string claim, or
any string of a list claim (``scope`` and ``permission`` are split on spaces first, as Istio's
payload normalisation does); a claim of another type, or a request without a valid token,
matches no value (so ``notValues`` and ``notRequestPrincipals`` pass).

TCP: the waypoint passes non-HTTP traffic through, and Istio authorizes those connections with
the same policies built for TCP; every policy is compiled a second time that way. HTTP-only
fields (hosts, methods, paths, request principals, ``request.*`` conditions) then follow the rule
above: an ALLOW rule using one is dropped, a DENY rule ignores it, so a DENY with only
``methods: [POST]`` denies every TCP connection, as Istio's reference warns.

Actions: CUSTOM needs an external authorizer wisp does not have; as Istio does when a CUSTOM
policy names a provider it cannot find, its rules are enforced as DENY rules (requests they match
are denied, never silently allowed), and a `Note` says so. A dry-run CUSTOM or AUDIT policy does
nothing. ``istio.io/dry-run`` is read as Go's ``strconv.ParseBool`` reads it (an unreadable value
means not dry-run).

A policy that cannot be read at all fails closed where it applies: an ALLOW allows nothing,
anything else denies every request.

Where this differs from Istio, deliberately: a ``*suffix`` principal is a plain suffix (Istio
builds the unescaped regex ``spiffe://.*suffix``, so a ``.`` in it matches any character; ztunnel
uses a plain suffix too); a namespace glob is matched against the namespace alone (Istio's
``.*/ns/<glob>/.*`` runs over the whole SPIFFE ID). Trust-domain aliases are not applied.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import matchers
from .attributes import RequestAttributes
from .matchers import BadValue
from .normalize import PathNormalization
from .targets import DEFAULT_ROOT_NAMESPACE, BadTarget, ServiceRef, WaypointRef, attachment

Predicate = Callable[[RequestAttributes], bool]

DRY_RUN_ANNOTATION = "istio.io/dry-run"
ACTIONS = ("ALLOW", "DENY", "AUDIT", "CUSTOM")
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})



class InvalidPolicy(ValueError):
    """An AuthorizationPolicy whose shape cannot be read."""


class _Unsupported(Exception):
    """A value this waypoint cannot evaluate (ALLOW: drop the rule; otherwise ignore the value)."""


@dataclass(frozen=True, slots=True)
class Note:
    """Something an operator should know about one policy at this waypoint."""

    policy: str
    message: str


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One rule: all predicates must hold (none: matches everything)."""

    name: str  # Envoy's policy name: ns[<ns>]-policy[<name>]-rule[<i>]
    policy: str  # "<ns>/<name>"
    action: str
    predicates: tuple[Predicate, ...] = ()
    uses_path: bool = False


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    namespace: str
    name: str
    action: str
    dry_run: bool
    rules: tuple[CompiledRule, ...]
    root: bool = False  # in the root namespace (Istio enforces its DENYs in a filter of their own, first)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Every policy that applies to one kind of traffic at the waypoint, ready to evaluate.

    Rules are grouped by the filter Istio puts them in and ordered as Envoy's RBAC engine visits
    them (by policy name), so the policy reported for a decision is the one Istio would report.
    """

    custom: tuple[CompiledRule, ...] = ()
    audit: tuple[CompiledRule, ...] = ()
    deny: tuple[CompiledRule, ...] = ()
    allow: tuple[CompiledRule, ...] = ()
    # An enforced ALLOW policy applies, even if none of its rules could be kept: then nothing
    # is allowed.
    has_allow: bool = False
    dry_run_deny: tuple[CompiledRule, ...] = ()
    dry_run_allow: tuple[CompiledRule, ...] = ()
    has_dry_run_allow: bool = False
    uses_path: bool = False
    normalization: PathNormalization = PathNormalization.BASE
    policies: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.policies

    @property
    def has_dry_run(self) -> bool:
        return bool(self.dry_run_deny) or self.has_dry_run_allow


@dataclass(frozen=True, slots=True)
class WaypointPolicies:
    """The policy sets of one waypoint: for traffic to each targeted Service, and the rest.

    Each comes twice: for HTTP requests, and for connections the waypoint passes through as TCP
    (``tcp=True``), where HTTP-only fields cannot be evaluated.
    """

    waypoint: WaypointRef
    default: PolicySet = field(default_factory=PolicySet)
    by_service: Mapping[ServiceRef, PolicySet] = field(default_factory=dict)
    default_tcp: PolicySet = field(default_factory=PolicySet)
    by_service_tcp: Mapping[ServiceRef, PolicySet] = field(default_factory=dict)
    notes: tuple[Note, ...] = ()

    def for_service(self, service: ServiceRef | None, *, tcp: bool = False) -> PolicySet:
        """The set for traffic addressed to ``service`` (None: straight to a pod IP)."""
        default, by_service = (self.default_tcp, self.by_service_tcp) if tcp else (self.default, self.by_service)
        if service is None:
            return default
        return by_service.get(service, default)


def compile_policies(
    objects: Iterable[Mapping[str, Any]],
    waypoint: WaypointRef,
    *,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
    normalization: PathNormalization = PathNormalization.BASE,
) -> WaypointPolicies:
    """The policies in ``objects`` that apply at ``waypoint``, compiled for evaluation."""
    notes: list[Note] = []
    # (HTTP, TCP) compilations of each policy that applies.
    whole: list[tuple[CompiledPolicy, CompiledPolicy]] = []
    per_service: dict[ServiceRef, list[tuple[CompiledPolicy, CompiledPolicy]]] = {}
    for obj in objects:
        where = _identity(obj)
        if where is None:
            notes.append(Note("?", "ignored: an AuthorizationPolicy without metadata.namespace and metadata.name"))
            continue
        namespace, name = where
        key = f"{namespace}/{name}"
        spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
        try:
            attached = attachment(namespace, dict(spec), waypoint, root_namespace)
        except BadTarget as exc:
            notes.append(Note(key, f"ignored: {exc}"))
            continue
        if not attached.applies:
            continue
        try:
            http, policy_notes = compile_policy(obj, root_namespace)
            # A TCP rule drops or ignores the HTTP fields, which is expected, not worth a note.
            tcp, _ = compile_policy(obj, root_namespace, tcp=True)
        except (InvalidPolicy, TypeError, AttributeError, ValueError) as exc:
            http, policy_notes = _fail_closed(namespace, name, spec, root_namespace, str(exc))
            tcp = http
        notes.extend(policy_notes)
        if attached.whole_waypoint:
            whole.append((http, tcp))
        else:
            for service in attached.services:
                per_service.setdefault(service, []).append((http, tcp))

    def sets(pairs: list[tuple[CompiledPolicy, CompiledPolicy]]) -> tuple[PolicySet, PolicySet]:
        return build_set([h for h, _ in pairs], normalization), build_set([t for _, t in pairs], normalization)

    default, default_tcp = sets(whole)
    by_service: dict[ServiceRef, PolicySet] = {}
    by_service_tcp: dict[ServiceRef, PolicySet] = {}
    for service, pairs in per_service.items():
        by_service[service], by_service_tcp[service] = sets(whole + pairs)
    return WaypointPolicies(waypoint, default, by_service, default_tcp, by_service_tcp, tuple(notes))


def build_set(policies: Iterable[CompiledPolicy], normalization: PathNormalization = PathNormalization.BASE) -> PolicySet:
    """Group compiled policies into the filters Istio builds, in Envoy's evaluation order."""
    groups: dict[str, list[CompiledRule]] = {g: [] for g in (
        "custom", "audit", "root_deny", "deny", "allow", "dry_run_deny", "dry_run_allow")}
    has_allow = has_dry_run_allow = False
    keys: list[str] = []
    for policy in policies:
        keys.append(policy.key)
        if policy.dry_run:
            if policy.action == "DENY":
                groups["dry_run_deny"].extend(policy.rules)
            elif policy.action == "ALLOW":
                groups["dry_run_allow"].extend(policy.rules)
                has_dry_run_allow = True
            continue
        if policy.action == "ALLOW":
            has_allow = True
            groups["allow"].extend(policy.rules)
        elif policy.action == "DENY":
            groups["root_deny" if policy.root else "deny"].extend(policy.rules)
        elif policy.action == "AUDIT":
            groups["audit"].extend(policy.rules)
        else:
            groups["custom"].extend(policy.rules)
    for rules in groups.values():
        rules.sort(key=lambda rule: rule.name)
    uses_path = any(rule.uses_path for rules in groups.values() for rule in rules)
    return PolicySet(
        custom=tuple(groups["custom"]),
        audit=tuple(groups["audit"]),
        deny=tuple(groups["root_deny"] + groups["deny"]),
        allow=tuple(groups["allow"]),
        has_allow=has_allow,
        dry_run_deny=tuple(groups["dry_run_deny"]),
        dry_run_allow=tuple(groups["dry_run_allow"]),
        has_dry_run_allow=has_dry_run_allow,
        uses_path=uses_path,
        normalization=normalization,
        policies=tuple(sorted(set(keys))),
    )


def _identity(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping):
        return None
    namespace, name = meta.get("namespace"), meta.get("name")
    if not (isinstance(namespace, str) and namespace and isinstance(name, str) and name):
        return None
    return namespace, name


def is_dry_run(obj: Mapping[str, Any]) -> bool:
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    value = annotations.get(DRY_RUN_ANNOTATION) if isinstance(annotations, Mapping) else None
    return isinstance(value, str) and value in _TRUE


def rule_name(namespace: str, name: str, index: int) -> str:
    return f"ns[{namespace}]-policy[{name}]-rule[{index}]"


def compile_policy(obj: Mapping[str, Any], root_namespace: str = DEFAULT_ROOT_NAMESPACE, *,
                   tcp: bool = False) -> tuple[CompiledPolicy, list[Note]]:
    """One AuthorizationPolicy, whatever its target, for HTTP requests or (``tcp``) TCP connections.

    Raises InvalidPolicy if it cannot be read.
    """
    where = _identity(obj)
    if where is None:
        raise InvalidPolicy("metadata.namespace and metadata.name are required")
    namespace, name = where
    key = f"{namespace}/{name}"
    spec = obj.get("spec", {})
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise InvalidPolicy("spec must be an object")
    action = spec.get("action") or "ALLOW"
    if action not in ACTIONS:
        raise InvalidPolicy(f"spec.action must be one of {', '.join(ACTIONS)}, got {action!r}")
    dry_run = is_dry_run(obj)
    rules_in = spec.get("rules") or []
    if not isinstance(rules_in, list):
        raise InvalidPolicy("spec.rules must be a list")
    notes: list[Note] = []
    if action == "CUSTOM":
        if dry_run:
            notes.append(Note(key, "dry-run CUSTOM policy has no effect: wisp's waypoint has no external "
                                   "authorization providers"))
        else:
            provider = spec.get("provider", {}).get("name", "") if isinstance(spec.get("provider"), Mapping) else ""
            notes.append(Note(key, f"CUSTOM action (provider {provider!r}) is not supported: wisp's waypoint has no "
                                   "external authorization providers, so requests matching the policy's rules "
                                   "are denied, as Istio does when a CUSTOM provider is unknown"))
    rules: list[CompiledRule] = []
    for index, rule in enumerate(rules_in):
        if rule is None:
            continue  # Istio skips a nil rule
        if not isinstance(rule, Mapping):
            raise InvalidPolicy(f"spec.rules[{index}] must be an object")
        built = _RuleCompiler(namespace, action, tcp).compile(rule, f"spec.rules[{index}]")
        if built.problems:
            effect = ("the rule is dropped, so the policy allows less" if built.predicates is None
                      else "those values are ignored, so the rule matches more")
            notes.append(Note(key, f"rule {index}: {'; '.join(built.problems)}: {effect}"))
        if built.predicates is None:
            continue
        rules.append(CompiledRule(rule_name(namespace, name, index), key, action, tuple(built.predicates),
                                  built.uses_path))
    policy = CompiledPolicy(namespace, name, action, dry_run, tuple(rules), root=namespace == root_namespace)
    return policy, notes


def _fail_closed(namespace: str, name: str, spec: Mapping[str, Any], root_namespace: str,
                 problem: str) -> tuple[CompiledPolicy, list[Note]]:
    action = spec.get("action") if isinstance(spec, Mapping) else None
    key = f"{namespace}/{name}"
    if action in (None, "", "ALLOW"):
        policy = CompiledPolicy(namespace, name, "ALLOW", False, ())
        effect = "allows nothing"
    else:
        policy = CompiledPolicy(namespace, name, "DENY", False,
                                (CompiledRule(rule_name(namespace, name, 0), key, "DENY"),),
                                root=namespace == root_namespace)
        effect = "denies every request"
    return policy, [Note(key, f"invalid policy, enforced as one that {effect}: {problem}")]


@dataclass(slots=True)
class _BuiltRule:
    predicates: list[Predicate] | None  # None: dropped
    problems: list[str]
    uses_path: bool


# A request value a predicate reads: an attribute of `RequestAttributes`, or a function of it.
# Predicates on attributes read them directly and test exact values with an inline set lookup:
# with an attrgetter and a test call per predicate, evaluation took 10-30% longer.
Reader = str | Callable[[RequestAttributes], Any]

_ATTRIBUTES = ("principal", "namespace", "host_lower", "method", "match_path", "destination_port", "sni")
_source = operator.methodcaller("source_address")
_request_principal = operator.attrgetter("request_principal")


def _presenter(a: RequestAttributes) -> str | None:
    auth = a.request_auth
    return auth.presenter if auth is not None else None


def _audiences(a: RequestAttributes) -> tuple[str, ...]:
    auth = a.request_auth
    return auth.audiences if auth is not None else ()


def claim_path(brackets: str) -> tuple[str, ...] | None:
    """``[a][b]`` → ("a", "b") (Istio's extractNameInNestedBrackets); None if malformed."""
    if not brackets.startswith("[") or not brackets.endswith("]") or len(brackets) < 3:
        return None
    parts = brackets[1:-1].split("][")
    if any(not part or "[" in part or "]" in part for part in parts):
        return None
    return tuple(parts)


def _claim_reader(path: tuple[str, ...]) -> Callable[[RequestAttributes], Any]:
    def read(a: RequestAttributes) -> Any:
        auth = a.request_auth
        if auth is None:
            return None
        value: Any = auth.claims
        for part in path:
            if not isinstance(value, Mapping) or part not in value:
                return None
            value = value[part]
        return value

    return read


def _any_of(values: list[Any]) -> Callable[[Any], bool]:
    """A string test applied to a string, or to each string of a list (a JWT claim's forms)."""
    test = matchers.strings(values)

    def match(value: Any) -> bool:
        if isinstance(value, str):
            return test(value)
        if isinstance(value, (list, tuple)):
            return any(isinstance(item, str) and test(item) for item in value)
        return False

    return match
_remote = operator.methodcaller("remote_address")
_destination = operator.methodcaller("destination_address")


def _exact_set(test: Callable[[Any], bool]) -> frozenset[Any] | None:
    owner = getattr(test, "__self__", None)
    return owner if isinstance(owner, frozenset) and test.__name__ == "__contains__" else None


def _predicate(read: Reader, test: Callable[[Any], bool], negate: bool) -> Predicate:
    """``test(value)`` (``not test(value)`` if ``negate``) of the value ``read`` names."""
    if not isinstance(read, str):
        get = read
        return (lambda a: not test(get(a))) if negate else (lambda a: test(get(a)))
    values = _exact_set(test)
    factories = _BY_SET if values is not None else _BY_TEST
    return factories[read][negate](values if values is not None else test)


def _direct(attr: str) -> tuple[tuple[Callable[[Any], Predicate], Callable[[Any], Predicate]],
                                tuple[Callable[[Any], Predicate], Callable[[Any], Predicate]]]:
    # Each factory's code reads one named attribute; see _ATTRIBUTES for the names.
    if attr == "principal":
        return ((lambda t: lambda a: t(a.principal), lambda t: lambda a: not t(a.principal)),
                (lambda s: lambda a: a.principal in s, lambda s: lambda a: a.principal not in s))
    if attr == "namespace":
        return ((lambda t: lambda a: t(a.namespace), lambda t: lambda a: not t(a.namespace)),
                (lambda s: lambda a: a.namespace in s, lambda s: lambda a: a.namespace not in s))
    if attr == "host_lower":
        return ((lambda t: lambda a: t(a.host_lower), lambda t: lambda a: not t(a.host_lower)),
                (lambda s: lambda a: a.host_lower in s, lambda s: lambda a: a.host_lower not in s))
    if attr == "method":
        return ((lambda t: lambda a: t(a.method), lambda t: lambda a: not t(a.method)),
                (lambda s: lambda a: a.method in s, lambda s: lambda a: a.method not in s))
    if attr == "match_path":
        return ((lambda t: lambda a: t(a.match_path), lambda t: lambda a: not t(a.match_path)),
                (lambda s: lambda a: a.match_path in s, lambda s: lambda a: a.match_path not in s))
    if attr == "destination_port":
        return ((lambda t: lambda a: t(a.destination_port), lambda t: lambda a: not t(a.destination_port)),
                (lambda s: lambda a: a.destination_port in s, lambda s: lambda a: a.destination_port not in s))
    if attr == "sni":
        return ((lambda t: lambda a: t(a.sni), lambda t: lambda a: not t(a.sni)),
                (lambda s: lambda a: a.sni in s, lambda s: lambda a: a.sni not in s))
    raise AssertionError(attr)


_BY_TEST = {attr: _direct(attr)[0] for attr in _ATTRIBUTES}
_BY_SET = {attr: _direct(attr)[1] for attr in _ATTRIBUTES}


def _any_entry(entries: list[tuple[Predicate, ...]]) -> Predicate:
    frozen = tuple(entries)

    def any_entry(a: RequestAttributes) -> bool:
        for entry in frozen:
            for predicate in entry:
                if not predicate(a):
                    break
            else:
                return True
        return False

    return any_entry


class _RuleCompiler:
    """One rule's predicates, applying Istio's rule for values that cannot be evaluated."""

    def __init__(self, policy_namespace: str, action: str, tcp: bool = False) -> None:
        self.policy_namespace = policy_namespace
        self.drop_on_problem = action == "ALLOW"
        self.tcp = tcp
        self.problems: list[str] = []
        self.uses_path = False

    def compile(self, rule: Mapping[str, Any], at: str) -> _BuiltRule:
        predicates: list[Predicate] = []
        dropped = False
        try:
            for clause, entries in (("from", self._entries(rule, "from", "source", at, self._source)),
                                    ("to", self._entries(rule, "to", "operation", at, self._operation))):
                if not entries or any(not entry for entry in entries):
                    continue  # absent, or one entry matches anything: the clause constrains nothing
                if len(entries) == 1:
                    predicates.extend(entries[0])
                else:
                    predicates.append(_any_entry(entries))
            when = rule.get("when") or []
            if not isinstance(when, list):
                raise InvalidPolicy(f"{at}.when must be a list")
            for i, condition in enumerate(when):
                predicates.extend(self._condition(condition, f"{at}.when[{i}]"))
        except _Unsupported:
            dropped = True
        return _BuiltRule(None if dropped else predicates, self.problems, self.uses_path)

    # --- values -------------------------------------------------------------------------------

    def _unsupported(self, what: str) -> None:
        self.problems.append(what)
        if self.drop_on_problem:
            raise _Unsupported(what)

    def _http_only(self, values: list[Any], not_values: list[Any]) -> bool:
        """True when the traffic is TCP, so these values of an HTTP-only field cannot be read."""
        if not self.tcp or not (values or not_values):
            return False
        if self.drop_on_problem:
            raise _Unsupported("HTTP-only field on TCP")
        return True

    def _values(self, obj: Mapping[str, Any], key: str, at: str) -> list[Any]:
        values = obj.get(key) or []
        if not isinstance(values, list):
            raise InvalidPolicy(f"{at}.{key} must be a list")
        return values

    def _usable(self, values: list[Any], build: Callable[[list[Any]], Any], what: str) -> Any:
        """``build(values)``; a value it refuses is unsupported (ALLOW: raises; else skipped)."""
        if not values:
            return None
        try:
            return build(values)
        except (BadValue, TypeError, AttributeError) as exc:
            if self.drop_on_problem:
                self._unsupported(f"{what}: {exc}")
        good = []
        for value in values:
            try:
                build([value])
            except (BadValue, TypeError, AttributeError) as exc:
                self.problems.append(f"{what}: {exc}")
            else:
                good.append(value)
        return build(good) if good else None

    def _field(self, out: list[Predicate], get: Reader,
               build: Callable[[list[Any]], Callable[[Any], bool]], values: list[Any], not_values: list[Any],
               what: str) -> None:
        positive = self._usable(values, build, what)
        if positive is not None:
            out.append(_predicate(get, positive, negate=False))
        negative = self._usable(not_values, build, f"not {what}")
        if negative is not None:
            out.append(_predicate(get, negative, negate=True))

    def _entries(self, rule: Mapping[str, Any], key: str, inner: str, at: str,
                 compile_entry: Callable[[Mapping[str, Any], str], list[Predicate]]) -> list[tuple[Predicate, ...]]:
        entries = []
        for i, item in enumerate(self._values(rule, key, at)):
            where = f"{at}.{key}[{i}]"
            if not isinstance(item, Mapping):
                raise InvalidPolicy(f"{where} must be an object")
            body = item.get(inner)
            if body is None:
                entries.append(())  # Istio: a nil source/operation constrains nothing
                continue
            if not isinstance(body, Mapping):
                raise InvalidPolicy(f"{where}.{inner} must be an object")
            entries.append(tuple(compile_entry(body, f"{where}.{inner}")))
        return entries

    # --- from.source ---------------------------------------------------------------------------

    def _source(self, src: Mapping[str, Any], at: str) -> list[Predicate]:
        out: list[Predicate] = []
        values = lambda key: self._values(src, key, at)  # noqa: E731
        # Istio's order inside a source: principals, request principals, namespaces, remote and source IPs.
        self._field(out, "principal", matchers.strings, values("principals"), values("notPrincipals"), "principals")
        self._service_accounts(out, values("serviceAccounts"), values("notServiceAccounts"))
        if not self._http_only(values("requestPrincipals"), values("notRequestPrincipals")):
            self._field(out, _request_principal, matchers.strings, values("requestPrincipals"),
                        values("notRequestPrincipals"), "requestPrincipals")
        self._field(out, "namespace", matchers.namespaces, values("namespaces"), values("notNamespaces"), "namespaces")
        self._field(out, _remote, matchers.cidrs, values("remoteIpBlocks"), values("notRemoteIpBlocks"),
                    "remoteIpBlocks")
        self._field(out, _source, matchers.cidrs, values("ipBlocks"), values("notIpBlocks"), "ipBlocks")
        return out

    def _service_accounts(self, out: list[Predicate], values: list[Any], not_values: list[Any]) -> None:
        def build(items: list[Any]) -> Callable[[tuple[str | None, str | None]], bool]:
            pairs = set()
            for item in items:
                if not isinstance(item, str) or not item or "*" in item or item.count("/") > 1:
                    raise BadValue(f"{item!r} is not 'serviceAccount' or 'namespace/serviceAccount'")
                ns, slash, sa = item.partition("/")
                pairs.add((ns, sa) if slash else (self.policy_namespace, item))
            return frozenset(pairs).__contains__

        def get(a: RequestAttributes) -> tuple[str | None, str | None]:
            return a.namespace, a.service_account

        self._field(out, get, build, values, not_values, "serviceAccounts")

    # --- to.operation --------------------------------------------------------------------------

    def _operation(self, op: Mapping[str, Any], at: str) -> list[Predicate]:
        out: list[Predicate] = []
        values = lambda key: self._values(op, key, at)  # noqa: E731
        if not self._http_only(values("hosts"), values("notHosts")):
            self._field(out, "host_lower", lambda v: matchers.strings(v, ignore_case=True, present_if_empty=True),
                        values("hosts"), values("notHosts"), "hosts")
        if not self._http_only(values("methods"), values("notMethods")):
            self._field(out, "method", lambda v: matchers.strings(v, present_if_empty=True),
                        values("methods"), values("notMethods"), "methods")
        if not self._http_only(values("paths"), values("notPaths")):
            if values("paths") or values("notPaths"):
                self.uses_path = True
            self._field(out, "match_path", matchers.paths, values("paths"), values("notPaths"), "paths")
        self._field(out, "destination_port", matchers.ports, values("ports"), values("notPorts"), "ports")
        return out

    # --- when -----------------------------------------------------------------------------------

    def _condition(self, condition: Any, at: str) -> list[Predicate]:
        if not isinstance(condition, Mapping):
            raise InvalidPolicy(f"{at} must be an object")
        key = condition.get("key")
        if not isinstance(key, str) or not key:
            raise InvalidPolicy(f"{at}.key is required")
        values, not_values = self._values(condition, "values", at), self._values(condition, "notValues", at)
        out: list[Predicate] = []
        strings = matchers.strings
        if key.startswith("request.") and self._http_only(values, not_values):
            pass  # request headers and JWT attributes do not exist on TCP
        elif key.startswith("request.headers[") and key.endswith("]") and len(key) > len("request.headers[]"):
            name = key[len("request.headers["):-1].lower()
            self._field(out, lambda a: a.header(name), lambda v: strings(v, present_if_empty=True),
                        values, not_values, key)
        elif key == "source.ip":
            self._field(out, _source, matchers.cidrs, values, not_values, key)
        elif key == "remote.ip":
            self._field(out, _remote, matchers.cidrs, values, not_values, key)
        elif key == "source.namespace":
            self._field(out, "namespace", matchers.namespaces, values, not_values, key)
        elif key == "source.principal":
            self._field(out, "principal", strings, values, not_values, key)
        elif key == "source.serviceAccount":
            self._service_accounts(out, values, not_values)
        elif key == "destination.ip":
            self._field(out, _destination, matchers.cidrs, values, not_values, key)
        elif key == "destination.port":
            self._field(out, "destination_port", matchers.ports, values, not_values, key)
        elif key == "connection.sni":
            self._field(out, "sni", strings, values, not_values, key)
        elif key == "request.auth.principal":
            self._field(out, _request_principal, strings, values, not_values, key)
        elif key == "request.auth.audiences":
            self._field(out, _audiences, _any_of, values, not_values, key)
        elif key == "request.auth.presenter":
            self._field(out, _presenter, strings, values, not_values, key)
        elif key.startswith("request.auth.claims["):
            path = claim_path(key[len("request.auth.claims"):])
            if path is None:
                self._unsupported(f"when {key} (a claim is named as request.auth.claims[name], nested [a][b])")
            else:
                self._field(out, _claim_reader(path), _any_of, values, not_values, key)
        elif key.startswith("experimental.envoy.filters."):
            self._unsupported(f"when {key} (Envoy filter metadata does not exist in wisp)")
        else:
            self._unsupported(f"when {key} (unknown attribute)")
        return out
