"""Retry and fault-injection policies as plain data, and the pure decisions made from them.

A route's `Forward` carries `retry: RetryPolicy | None` and `fault: FaultPolicy | None`
(`waypoint.route.decision`); HTTPRoute rules fill them in `waypoint.route.parse`, VirtualService
routes in `waypoint.route.virtualservice`. The shells (`waypoint.http1.downstream`,
`waypoint.http2.exchange`) ask the functions here what to do; nothing here does I/O.

**Retry** follows Envoy's route retry policy, which is what Istio programs for both APIs:

- `attempts` is the number of *retries* after the first try (Envoy `num_retries`, Gateway API
  `retry.attempts` — "the maximum number of times an individual request ... should be retried" —,
  VirtualService `retries.attempts`); 0 disables retries.
- `on` is a set of Envoy `retry_on` conditions (`RETRY_ON`): `connect-failure`,
  `refused-stream`, `reset`, `5xx`, `gateway-error`, `retriable-4xx`,
  `retriable-status-codes` (with `codes`), and the gRPC ones `cancelled`, `deadline-exceeded`,
  `internal`, `resource-exhausted`, `unavailable` (read from `grpc-status` in the response
  headers, i.e. trailers-only answers). What each covers is in `retry_on_response` and
  `retry_on_failure`, in Envoy's words (router_filter docs, `x-envoy-retry-on`).
- `per_try_timeout` bounds each attempt (VirtualService `perTryTimeout`; an HTTPRoute's
  `timeouts.backendRequest` is the rule's `backend_timeout`, which wins when both are set).
- Backoff between attempts: Envoy's fully jittered exponential backoff — retry N waits a uniform
  draw from [0, (2^N - 1) × base], capped at `max_backoff` (default 10 × base), base 25 ms by
  default — unless `backoff_floor` is set: GEP-1731's `retry.backoff` is a *minimum* ("MUST not be
  retried before the configured minimum duration"), so then retry N waits base × 2^(N-1) plus up to
  as much again of jitter, capped at `max_backoff` but never below base.

`DEFAULT_RETRY` is what Istio gives a route with no retry policy (`retry.DefaultPolicy()` in
pilot/pkg/networking/core/route/retry/retry.go): 2 retries on
`connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` with code 503, to a
host other than the ones tried (`previous_hosts`). `http_route_retry` is Istio's translation of
an HTTPRoute `retry` stanza (pilot/pkg/config/kube/gateway/conversion.go), plus `reset`: the
stanza's own text says implementations "SHOULD retry on connection errors (disconnect, reset,
timeout, TCP failure)", and without `reset` a `backendRequest` timeout would never be retried.

**Fault** follows Istio's VirtualService `fault` (HTTPFaultInjection): a fixed `delay` applied to
`delay_percent` of requests, and an `abort` (HTTP status, or gRPC status for gRPC: HTTP 200
with `grpc-status` trailers-only, as Envoy's fault filter answers) for `abort_percent` of
requests; each draw is independent per request, the delay comes first (Envoy's fault filter
delays, then aborts). `decide_fault` makes the draws; the shell waits on the loop's timer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Envoy retry_on conditions (router_filter docs, x-envoy-retry-on / x-envoy-retry-grpc-on).
CONNECT_FAILURE = "connect-failure"
REFUSED_STREAM = "refused-stream"
RESET = "reset"
FIVE_XX = "5xx"
GATEWAY_ERROR = "gateway-error"
RETRIABLE_4XX = "retriable-4xx"
RETRIABLE_STATUS_CODES = "retriable-status-codes"
GRPC_CANCELLED = "cancelled"
GRPC_DEADLINE_EXCEEDED = "deadline-exceeded"
GRPC_INTERNAL = "internal"
GRPC_RESOURCE_EXHAUSTED = "resource-exhausted"
GRPC_UNAVAILABLE = "unavailable"
RETRY_ON = frozenset({
    CONNECT_FAILURE, REFUSED_STREAM, RESET, FIVE_XX, GATEWAY_ERROR, RETRIABLE_4XX, RETRIABLE_STATUS_CODES,
    GRPC_CANCELLED, GRPC_DEADLINE_EXCEEDED, GRPC_INTERNAL, GRPC_RESOURCE_EXHAUSTED, GRPC_UNAVAILABLE,
})
_GRPC_CODES = {GRPC_CANCELLED: 1, GRPC_DEADLINE_EXCEEDED: 4, GRPC_RESOURCE_EXHAUSTED: 8, GRPC_INTERNAL: 13,
               GRPC_UNAVAILABLE: 14}

# Why an attempt ended without a response head, for `retry_on_failure`.
FAILED_CONNECT = "connect"  # the stream to the endpoint could not be opened
FAILED_REFUSED = "refused"  # HTTP/2 REFUSED_STREAM (or a GOAWAY that left the stream unprocessed)
FAILED_RESET = "reset"  # the endpoint reset or closed before the response head
FAILED_TIMEOUT = "timeout"  # the per-try timeout passed

DEFAULT_BACKOFF = 0.025  # Envoy's base_interval default
MAX_BACKOFF_FACTOR = 10  # Envoy: max_interval defaults to 10 × base_interval


class PolicyError(ValueError):
    """A policy value out of range; the message names the field."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int
    on: frozenset[str]
    codes: frozenset[int] = frozenset()
    per_try_timeout: float | None = None  # seconds
    backoff: float = DEFAULT_BACKOFF  # seconds; the base interval
    max_backoff: float | None = None  # seconds; None: 10 × backoff
    backoff_floor: bool = False  # GEP-1731: `backoff` is a minimum, not a base for full jitter
    previous_hosts: bool = True  # retry on an endpoint not tried yet when there is one

    def __post_init__(self) -> None:
        if self.attempts < 0:
            raise PolicyError(f"retry attempts must be 0 or more, not {self.attempts}")
        unknown = self.on - RETRY_ON
        if unknown:
            raise PolicyError(f"unknown retry conditions {sorted(unknown)}; known: {sorted(RETRY_ON)}")
        if self.backoff <= 0:
            raise PolicyError(f"retry backoff must be positive, not {self.backoff}")

    @property
    def enabled(self) -> bool:
        return self.attempts > 0 and bool(self.on)

    @property
    def backoff_cap(self) -> float:
        return self.max_backoff if self.max_backoff is not None else self.backoff * MAX_BACKOFF_FACTOR


DEFAULT_RETRY = RetryPolicy(
    attempts=2,
    on=frozenset({CONNECT_FAILURE, REFUSED_STREAM, GRPC_UNAVAILABLE, GRPC_CANCELLED, RETRIABLE_STATUS_CODES}),
    codes=frozenset({503}),
)


def http_route_retry(attempts: int | None, codes: tuple[int, ...] | frozenset[int], backoff: float | None) -> RetryPolicy:
    """An HTTPRoute rule's `retry` stanza (GEP-1731) as the policy the waypoint runs.

    `attempts` unset → 2, Istio's choice ("the default retry if none are set is 2"); codes are
    retried on top of connection errors, resets and timeouts (see the module docstring)."""
    on = {CONNECT_FAILURE, REFUSED_STREAM, GRPC_UNAVAILABLE, GRPC_CANCELLED, RESET}
    if codes:
        on.add(RETRIABLE_STATUS_CODES)
    return RetryPolicy(
        attempts=2 if attempts is None else attempts,
        on=frozenset(on),
        codes=frozenset(codes),
        backoff=backoff if backoff else DEFAULT_BACKOFF,
        backoff_floor=bool(backoff),
    )


def parse_retry_on(text: str) -> tuple[frozenset[str], frozenset[int], tuple[str, ...]]:
    """An Istio `retryOn` string (VirtualService): the conditions, the status codes, and the
    tokens this waypoint does not support (to report). Numbers are status codes and imply
    `retriable-status-codes`, as Istio's `parseRetryOn` makes them."""
    on: set[str] = set()
    codes: set[int] = set()
    unsupported: list[str] = []
    for part in text.split(","):
        token = part.strip()
        if not token:
            continue
        if token.isdigit() and 100 <= int(token) <= 599:
            codes.add(int(token))
        elif token in RETRY_ON:
            on.add(token)
        else:
            unsupported.append(token)
    if codes:
        on.add(RETRIABLE_STATUS_CODES)
    return frozenset(on), frozenset(codes), tuple(unsupported)


def retry_on_response(policy: RetryPolicy, status: int, grpc_status: int | None) -> bool:
    """Whether a response head with `status` (and `grpc-status` in the head, if any) is retried."""
    on = policy.on
    if status >= 500 and FIVE_XX in on:
        return True
    if status in (502, 503, 504) and GATEWAY_ERROR in on:
        return True
    if status == 409 and RETRIABLE_4XX in on:
        return True
    if status in policy.codes and RETRIABLE_STATUS_CODES in on:
        return True
    if grpc_status is not None:
        for condition, code in _GRPC_CODES.items():
            if grpc_status == code and condition in on:
                return True
    return False


def retry_on_failure(policy: RetryPolicy, failure: str) -> bool:
    """Whether an attempt that ended without a response head (`FAILED_*`) is retried.

    Envoy: `reset`, `5xx` and `gateway-error` cover every upstream reset, disconnect and
    per-try timeout; `connect-failure` only a failed connect, `refused-stream` only REFUSED_STREAM."""
    on = policy.on
    if RESET in on or FIVE_XX in on or GATEWAY_ERROR in on:
        return True
    if failure == FAILED_CONNECT:
        return CONNECT_FAILURE in on
    if failure == FAILED_REFUSED:
        return REFUSED_STREAM in on
    return False


def backoff_delay(policy: RetryPolicy, retry: int, rng: random.Random) -> float:
    """Seconds to wait before retry number `retry` (1 for the first retry); see the module docstring."""
    cap = policy.backoff_cap
    if policy.backoff_floor:
        low = min(policy.backoff * (1 << min(retry - 1, 30)), cap)
        low = max(low, policy.backoff)
        return low + rng.random() * (max(min(2 * low, cap), low) - low)
    high = min(policy.backoff * ((1 << min(retry, 30)) - 1), cap)
    return rng.random() * high


@dataclass(frozen=True, slots=True)
class FaultPolicy:
    """VirtualService `fault`: percentages are 0-100 (Istio's `percentage.value`)."""

    delay: float = 0.0  # seconds (fixedDelay)
    delay_percent: float = 0.0
    abort_status: int | None = None  # httpStatus
    abort_grpc_status: int | None = None  # grpcStatus, as its number
    abort_percent: float = 0.0

    def __post_init__(self) -> None:
        for name in ("delay_percent", "abort_percent"):
            value = getattr(self, name)
            if not 0 <= value <= 100:
                raise PolicyError(f"fault {name} must be from 0 to 100, not {value}")
        if self.delay < 0:
            raise PolicyError(f"fault delay must not be negative, not {self.delay}")
        if self.abort_status is not None and not 200 <= self.abort_status <= 599:
            raise PolicyError(f"fault abort status must be from 200 to 599, not {self.abort_status}")
        if self.abort_grpc_status is not None and not 0 <= self.abort_grpc_status <= 16:
            raise PolicyError(f"fault abort gRPC status must be from 0 to 16, not {self.abort_grpc_status}")


@dataclass(frozen=True, slots=True)
class Injected:
    """What the fault policy decided for one request."""

    delay: float = 0.0  # seconds to wait before going on
    abort_status: int | None = None  # answer this status instead of forwarding
    abort_grpc_status: int | None = None  # a gRPC request: answer trailers-only with this grpc-status

    @property
    def aborts(self) -> bool:
        return self.abort_status is not None or self.abort_grpc_status is not None


def decide_fault(policy: FaultPolicy, rng: random.Random) -> Injected | None:
    """The draws for one request: None when neither delay nor abort applies this time."""
    delay = 0.0
    if policy.delay > 0 and policy.delay_percent > 0 and (
            policy.delay_percent >= 100 or rng.random() * 100 < policy.delay_percent):
        delay = policy.delay
    aborts = (policy.abort_status is not None or policy.abort_grpc_status is not None) and policy.abort_percent > 0 and (
        policy.abort_percent >= 100 or rng.random() * 100 < policy.abort_percent)
    if not delay and not aborts:
        return None
    if not aborts:
        return Injected(delay)
    return Injected(delay, policy.abort_status, policy.abort_grpc_status)


# Envoy response flags for the access log (telemetry.RequestRecord).
FLAG_FAULT_ABORT = "FI"  # the request was aborted by fault injection
