"""New connections at a fixed rate with h2load, and the rate the client pod really achieved.

h2load's `-r N --rate-period P` starts N new clients every P, up to `-c` clients in all; with
`-n` equal to `-c` each client sends one request and closes its connection, so `-c` is the
number of connections and N / P their rate (checked on loopback: 4,000 in 2.00 s at 2,000/s).
A 10 ms period spreads each second's connections over 100 small batches instead of one burst.
What the pod achieved is read from its namespace's `ActiveOpens` counter (probe.Sampler), not
from h2load's own summary, whose duration includes the slowest connection's tail.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from bench.mesh.loadgen import LoadError

PERIOD_MS = 10
# A connection that sees nothing for this long is given up (and counted as failed).
INACTIVITY_TIMEOUT_S = 10


@dataclass(slots=True, frozen=True)
class Paced:
    """How h2load is told to open `total` connections at `rate` per second."""

    rate: int
    total: int
    per_period: int
    period_ms: int

    @property
    def seconds(self) -> float:
        return self.total / self.rate


def pace(rate: int, total: int, period_ms: int = PERIOD_MS) -> Paced:
    """The h2load batch that gives `rate` connections per second with a `period_ms` period."""
    if rate < 1 or total < 1:
        raise ValueError(f"a rate ({rate}/s) and a count ({total}) must both be at least 1")
    per_period = rate * period_ms / 1000
    if per_period < 1 or per_period != int(per_period):
        # Fall back to the shortest period that gives a whole number of connections per batch.
        period_ms = next((p for p in range(1, 1001) if rate * p % 1000 == 0), 1000)
        per_period = rate * period_ms / 1000
    return Paced(rate, total, int(per_period), period_ms)


def h2load_argv(url: str, paced: Paced) -> list[str]:
    """HTTP/1.1, one request per connection, connections started at `paced.rate` per second."""
    return ["h2load", "--h1", "-t", "1", "-c", str(paced.total), "-n", str(paced.total),
            "-r", str(paced.per_period), "--rate-period", f"{paced.period_ms}ms",
            "-N", str(INACTIVITY_TIMEOUT_S), url]


_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout")
_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")


def parse_h2load(stdout: str) -> dict:
    """Counts of h2load's one-request-per-connection run: every request is a connection, so
    the ones not succeeded (failed, errored, timed out or never done) are failed connections."""
    counts, finished = _REQUESTS.search(stdout), _FINISHED.search(stdout)
    if not counts or not finished:
        raise LoadError(f"h2load printed no summary:\n{stdout[-800:]}")
    total, started, done, succeeded, failed, errored, timeout = map(int, counts.groups())
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    return {"asked": total, "started": started, "succeeded": succeeded, "failed": total - succeeded,
            "errored": errored, "timeout": timeout, "seconds": seconds}


@dataclass(slots=True, frozen=True)
class Achieved:
    """Connects per second the pod achieved while the generator ran (from `ActiveOpens`)."""

    mean: float
    low: float  # the slowest whole interval
    high: float  # the fastest
    opened: int
    seconds: float


def achieved(samples: list[tuple[float, int]], start: float, end: float) -> Achieved:
    """Rates from (time, ActiveOpens) samples taken every ~0.5 s, over the samples inside
    [start, end]: the window the generator was asked to pace (not its tail, where it only waits
    for the last answers and a falling count would read as a dip)."""
    inside = [(t, n) for t, n in samples if start <= t <= end]
    if len(inside) < 2:
        # A window shorter than two sample intervals: the samples just around it instead.
        before = [s for s in samples if s[0] <= start][-1:]
        after = [s for s in samples if s[0] >= end][:1]
        inside = sorted(set(before + inside + after))
    if len(inside) < 2:
        raise ValueError("fewer than two counter samples around the generator's run")
    seconds = inside[-1][0] - inside[0][0]
    opened = inside[-1][1] - inside[0][1]
    # Rates over whole seconds: half-second intervals are too short for a steady figure.
    per_second = []
    anchor = inside[0]
    for t, n in inside[1:]:
        if t - anchor[0] >= 1.0:
            per_second.append((n - anchor[1]) / (t - anchor[0]))
            anchor = (t, n)
    if not per_second:
        per_second = [opened / seconds]
    return Achieved(opened / seconds if seconds > 0 else math.nan, min(per_second), max(per_second), opened, seconds)
