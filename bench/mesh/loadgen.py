"""The native load generators: their command lines and what their output means.

h2load (nghttp2) drives the fixed-rate run because `--rps` paces each connection and
`--log-file` records every request's latency; wrk drives saturation and new connections; iperf3
drives bulk transfer. Each runs inside the client pod's network namespace (`ip netns exec`), one
at a time, and its CPU is read from the kernel's accounting of reaped children.
"""

from __future__ import annotations

import json
import math
import re
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


class LoadError(RuntimeError):
    """A load generator failed or printed something we cannot read; the message has its output."""


@dataclass(slots=True, frozen=True)
class Finished:
    stdout: str
    wall: float
    cpu_s: float


def run_in(netns: str, argv: list[str], timeout: float) -> Finished:
    """Run `argv` in `netns` to completion: its output, wall time and CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        done = subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"{argv[0]} did not finish within {timeout:g} s") from exc
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise LoadError(f"{' '.join(argv)} exited with {done.returncode}: "
                        f"{(done.stderr or done.stdout).strip()[-800:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return Finished(done.stdout, wall, cpu)


# -- h2load: fixed request rate ------------------------------------------------------------------------
def h2load_argv(url: str, *, rate: int, connections: int, seconds: float, log_file: Path) -> list[str]:
    """HTTP/1.1, `connections` connections sharing `rate` requests/s between them."""
    if rate % connections:
        raise ValueError(f"h2load paces each connection: {rate} req/s does not split over {connections}")
    return ["h2load", "--h1", "-c", str(connections), "-t", "1", "--rps", str(rate // connections),
            "-D", str(int(seconds)), "--log-file", str(log_file), url]


_H2LOAD_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout")
_H2LOAD_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")


def parse_h2load(stdout: str) -> dict:
    """Counts and rate from h2load's summary."""
    counts, finished = _H2LOAD_REQUESTS.search(stdout), _H2LOAD_FINISHED.search(stdout)
    if not counts or not finished:
        raise LoadError(f"h2load printed no summary:\n{stdout[-800:]}")
    total, _started, done, succeeded, failed, errored, timeout = map(int, counts.groups())
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    return {"requests": succeeded, "done": done, "failed": failed + errored + timeout, "seconds": seconds,
            "req_s": float(finished.group(3))}


def parse_h2load_log(text: str) -> list[float]:
    """Latencies in µs of the successful (2xx) requests in an h2load --log-file."""
    latencies = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[1].startswith("2"):
            latencies.append(float(fields[2]))
    return latencies


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0 < q ≤ 100) by the nearest-rank method: a latency some request saw."""
    if not values:
        return math.nan
    ordered = sorted(values)
    # Rounded first: 99.9 / 100 * 1000 is 999.0000000000001 in binary floating point.
    rank = math.ceil(round(q / 100 * len(ordered), 9))
    return ordered[max(rank, 1) - 1]


# -- wrk: saturation and new connections --------------------------------------------------------------
def wrk_argv(url: str, *, connections: int, seconds: float, close: bool = False) -> list[str]:
    """One thread (the machine has two cores to share with the proxies), `connections` connections;
    with `close`, every request asks the server to close, so each is a new TCP connection."""
    argv = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds:g}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    return [*argv, url]


_WRK_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b")
_WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_WRK_LATENCY = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def parse_wrk(stdout: str) -> dict:
    """Requests, seconds, rate, errors and latency percentiles (µs) from wrk's report."""
    total, rate = _WRK_TOTAL.search(stdout), _WRK_RATE.search(stdout)
    if not total or not rate:
        raise LoadError(f"wrk printed no summary:\n{stdout[-800:]}")
    errors = _WRK_ERRORS.search(stdout)
    non2xx = _WRK_NON2XX.search(stdout)
    out = {
        "requests": int(total.group(1)),
        "seconds": float(total.group(2)) * _UNIT_S[total.group(3)],
        "req_s": float(rate.group(1)),
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }
    for q, value, unit in _WRK_LATENCY.findall(stdout):
        out[f"p{q}_us"] = float(value) * _UNIT_S[unit] * 1e6
    return out


# -- iperf3: bulk transfer ------------------------------------------------------------------------------
def iperf3_argv(host: str, port: int, *, streams: int, seconds: float) -> list[str]:
    return ["iperf3", "-c", host, "-p", str(port), "-P", str(streams), "-t", f"{seconds:g}", "-J"]


def parse_iperf3(stdout: str) -> dict:
    """Received Gb/s (what crossed the whole path) and retransmits from iperf3's JSON."""
    try:
        data = json.loads(stdout)
    except ValueError as exc:
        raise LoadError(f"iperf3 printed no JSON:\n{stdout[-800:]}") from exc
    if "error" in data:
        raise LoadError(f"iperf3: {data['error']}")
    end = data["end"]
    received = end["sum_received"]
    return {"gbps": received["bits_per_second"] / 1e9, "bytes": received["bytes"],
            "seconds": received["seconds"], "retransmits": end["sum_sent"].get("retransmits", 0)}
