"""The echo app's failure and delay switches, as plain decisions: what to do to one request.

Tests of retries, timeouts and load balancing need a server that fails or is slow on demand. A
switch is set for the whole pod (flags, or environment for a manifest) or for one request (request
headers). `Faults.plan(headers)` says how to answer a request: `Plan.status` replaces the normal
answer's status (None: answer normally), `Plan.delay_s` is waited before answering.

Pod switches (flag / environment variable):
- `--fail-first N` / `WISP_ECHO_FAIL_FIRST`: the first N requests this process serves fail.
- `--fail-percent P` / `WISP_ECHO_FAIL_PERCENT`: each request fails with probability P% (0-100),
  drawn independently per request.
- `--fail-status S` / `WISP_ECHO_FAIL_STATUS`: the status of those failures (default 503).
- `--delay-ms D` / `WISP_ECHO_DELAY_MS`: every request is answered D ms late.

Request headers (each overrides the pod's switch of the same kind for that request):
- `x-echo-status: S`: answer with status S (200-599).
- `x-echo-fail-percent: P`: fail with probability P%, status `x-echo-fail-status` (default 503).
- `x-echo-fail-first: N` with `x-echo-fail-key: K`: the first N requests carrying key K fail
  (status `x-echo-fail-status`); a retry of a request carries the same key, so a proxy's retry
  after one failure succeeds. Counted per process: a retry that lands on another replica meets
  that replica's own count. At most `MAX_KEYS` keys are remembered (the oldest are forgotten).
- `x-echo-delay-ms: D`: answer D ms late (at most `MAX_DELAY_MS`).
- `x-echo-grpc-status: C`: a gRPC call answers trailers-only with grpc-status C (0-16).

`/healthz` (the readiness probe) and `/stats` are never failed, delayed or counted. `GET /stats`
answers `{"served": N, "failed": M, "hostname": ...}`: the requests this process answered since it
started and how many of them a switch failed, so a test can count the attempts a proxy made.

Failures of a gRPC call answer trailers-only with the gRPC status an HTTP status maps to
(gRPC's HTTP-to-gRPC mapping: 503 → 14 UNAVAILABLE, 504 → 14, 429 → 14, 500 → 13 ... see
`grpc_status_for`), so gRPC clients see a failure they understand. Every failure or delayed answer
carries `x-echo-fault: <what>` so a test can tell an injected failure from a real one. A header with
an invalid value gets a 400 naming it. Each answered request increments `Faults.served`.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

MAX_KEYS = 10_000
UNCOUNTED = frozenset({"/healthz", "/stats"})  # probes and the counters themselves
MAX_DELAY_MS = 600_000

STATUS = "x-echo-status"
FAIL_PERCENT = "x-echo-fail-percent"
FAIL_STATUS = "x-echo-fail-status"
FAIL_FIRST = "x-echo-fail-first"
FAIL_KEY = "x-echo-fail-key"
DELAY_MS = "x-echo-delay-ms"
GRPC_STATUS = "x-echo-grpc-status"
_HEADERS = frozenset({STATUS, FAIL_PERCENT, FAIL_STATUS, FAIL_FIRST, FAIL_KEY, DELAY_MS,
                      GRPC_STATUS})


class SwitchError(ValueError):
    """A switch's value is out of range or not a number; the message names the switch."""


@dataclass(slots=True, frozen=True)
class Switches:
    """The pod's switches, from flags or environment; all off by default."""

    fail_first: int = 0
    fail_percent: float = 0.0
    fail_status: int = 503
    delay_ms: int = 0

    def __post_init__(self) -> None:
        if self.fail_first < 0:
            raise SwitchError(f"fail-first must be 0 or more, not {self.fail_first}")
        if not 0 <= self.fail_percent <= 100:
            raise SwitchError(f"fail-percent must be from 0 to 100, not {self.fail_percent}")
        if not 200 <= self.fail_status <= 599:
            raise SwitchError(f"fail-status must be from 200 to 599, not {self.fail_status}")
        if not 0 <= self.delay_ms <= MAX_DELAY_MS:
            raise SwitchError(f"delay-ms must be from 0 to {MAX_DELAY_MS}, not {self.delay_ms}")

    @property
    def active(self) -> bool:
        return bool(self.fail_first or self.fail_percent or self.delay_ms)

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> Switches:
        """The switches set by `WISP_ECHO_*` variables (unset ones keep their default)."""
        def number(name: str, kind: type, default):
            text = env.get(name, "").strip()
            if not text:
                return default
            try:
                return kind(text)
            except ValueError:
                raise SwitchError(f"{name}={text!r} is not a number") from None
        return cls(fail_first=number("WISP_ECHO_FAIL_FIRST", int, 0),
                   fail_percent=number("WISP_ECHO_FAIL_PERCENT", float, 0.0),
                   fail_status=number("WISP_ECHO_FAIL_STATUS", int, 503),
                   delay_ms=number("WISP_ECHO_DELAY_MS", int, 0))


@dataclass(slots=True, frozen=True)
class Plan:
    status: int | None = None  # replaces the answer's status; None answers normally
    delay_s: float = 0.0
    grpc_status: int | None = None  # for a gRPC call: answer trailers-only with this status
    fault: str = ""  # what was injected, for the x-echo-fault header
    error: str = ""  # a bad switch header: answer 400 with this text

    @property
    def fails(self) -> bool:
        return self.status is not None or self.grpc_status is not None


NORMAL = Plan()


@dataclass(slots=True)
class Faults:
    """The pod's switches and the counts they need; one per echo process."""

    switches: Switches = field(default_factory=Switches)
    rng: random.Random = field(default_factory=random.Random)
    served: int = 0  # requests answered (for fail-first), /healthz and /stats aside
    failed: int = 0  # of them, failed by a switch
    keys: OrderedDict[str, int] = field(default_factory=OrderedDict)  # fail key → requests seen

    def plan(self, headers: Iterable[tuple[str, str]], path: str = "/") -> Plan:
        """How to answer the next request, given its (lower-case) headers and path; counts it."""
        if path in UNCOUNTED:
            return NORMAL
        self.served += 1
        asked = {name: value for name, value in headers if name in _HEADERS}
        if not asked and not self.switches.active:
            return NORMAL
        try:
            plan = self._plan(asked)
        except SwitchError as exc:
            return Plan(error=str(exc))
        if plan.fails:
            self.failed += 1
        return plan

    def _plan(self, asked: dict[str, str]) -> Plan:
        pod = self.switches
        delay_ms = _number(asked, DELAY_MS, 0, MAX_DELAY_MS, pod.delay_ms)
        delay_s = delay_ms / 1000
        delayed = f"delay={delay_ms}ms" if delay_ms else ""
        grpc_status = _number(asked, GRPC_STATUS, 0, 16, None)
        if grpc_status is not None:
            return Plan(delay_s=delay_s, grpc_status=grpc_status,
                        fault=_join(f"grpc-status={grpc_status}", delayed))
        status = _number(asked, STATUS, 200, 599, None)
        if status is not None:
            return Plan(status=status, delay_s=delay_s, fault=_join(f"status={status}", delayed))
        fail_status = _number(asked, FAIL_STATUS, 200, 599, pod.fail_status)
        first = _number(asked, FAIL_FIRST, 0, 1_000_000, None)
        if first is not None:
            key = asked.get(FAIL_KEY, "")
            seen = self.keys.pop(key, 0) + 1
            self.keys[key] = seen
            if len(self.keys) > MAX_KEYS:
                self.keys.popitem(last=False)
            if seen <= first:
                return Plan(status=fail_status, delay_s=delay_s,
                            fault=_join(f"fail-first={seen}/{first}", delayed))
        elif self.served <= pod.fail_first:
            return Plan(status=fail_status, delay_s=delay_s,
                        fault=_join(f"fail-first={self.served}/{pod.fail_first}", delayed))
        percent = _number(asked, FAIL_PERCENT, 0, 100, pod.fail_percent, float)
        if percent and self.rng.random() * 100 < percent:
            return Plan(status=fail_status, delay_s=delay_s,
                        fault=_join(f"fail-percent={percent:g}", delayed))
        return Plan(delay_s=delay_s, fault=delayed) if delay_ms else NORMAL


def grpc_status_for(http_status: int) -> int:
    """The gRPC status a client derives from an HTTP status (gRPC's http-grpc-status-mapping.md)."""
    return {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}.get(
        http_status, 0 if http_status == 200 else 2)


def _number(asked: dict[str, str], name: str, low: int, high: int, default, kind: type = int):
    text = asked.get(name)
    if text is None:
        return default
    try:
        value = kind(text.strip())
    except ValueError:
        raise SwitchError(f"{name}: {text!r} is not a number") from None
    if not low <= value <= high:
        raise SwitchError(f"{name}: {text!r} is not from {low} to {high}")
    return value


def _join(*parts: str) -> str:
    return " ".join(part for part in parts if part)

