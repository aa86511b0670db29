"""The three phases of the storm benchmark, each run against one contender (a proxy pair).

- `concurrent`: COUNT connections opened from the client pod and held, idle, through the pair
  (bench.mesh.idle holds them); each process's RSS and descriptors before, while held and after
  they close. Per-connection bytes are (RSS held − RSS before) ÷ connections, per node.
- `paced`: TOTAL short connections (one HTTP/1.1 request each) started at RATE per second by
  h2load (pacing.py), in one or more batches, each followed by a settle time once the server
  holds no more of them than before; each process's RSS and descriptors before, at peak, and
  after every batch. The leak check (100,000 at a rate the pair sustains) and the storm
  (2,000/s for 30 s) are both this phase with different numbers.

Every phase also says whether a proxy process crashed: the pids of its roles before and after,
and the runtime's restart counts.
"""

from __future__ import annotations

import json
import select
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.mesh import idle
from bench.mesh.contenders import Contender
from bench.mesh.loadgen import LoadError, run_in
from bench.mesh.mesh import HTTP_PORT, Mesh, established, wait_for

from . import events, pacing, probe

HOLD_SECONDS = 2.0
CLOSE_TIMEOUT = 120.0
# Connections of other phases still closing at the server when a phase starts.
LEFTOVER = 50
MAX_OPEN = 15_000


class PhaseError(RuntimeError):
    """A phase could not run (a generator failed, connections never arrived); the message says which."""


@dataclass(slots=True)
class Target:
    """One contender in its mesh: where the client runs, what it dials, whose processes count."""

    contender: Contender
    mesh: Mesh

    @property
    def key(self) -> str:
        return self.contender.key

    def roots(self) -> dict[str, int]:
        return self.contender.proxies(self.mesh)

    def client_pid(self) -> int:
        return self.mesh.container_pids(self.contender.namespace.name, "client")[0]

    def server_netns(self) -> str:
        return self.mesh.pod(self.contender.namespace.name, "server").netns

    def readings(self) -> dict[str, list[dict]]:
        # A process in each pod's namespace, whose TCP tables hold the pod's ztunnel sockets.
        pods = [self.client_pid(), *self.mesh.container_pids(self.contender.namespace.name, "server")[:1]]
        return {node: [asdict(r) for r in probe.read_tree(root, netns_pids=pods)] for node, root in self.roots().items()}

    def log_files(self) -> list[Path]:
        """The runtime's log files of the pair's supervised processes (ztunnel's, workers included)."""
        return [self.mesh.paths.logs / f"{name}.log" for name in self.restarts()]

    def restarts(self) -> dict[str, int]:
        """Runtime restarts of the pair's supervised processes (ztunnel); none for the others."""
        nodes = set(self.roots())
        return {name: n for name, n in self.mesh.restarts().items()
                if name.startswith("ztunnel-") and name.removeprefix("ztunnel-") in nodes}


def settle(target: Target, baseline: int, seconds: float) -> float:
    """Wait until the server holds no more connections than `baseline` (+ a few), then `seconds`
    more so closing connections are freed; returns how long it took in all."""
    start = time.monotonic()
    wait_for(lambda: established(target.server_netns(), HTTP_PORT) <= baseline + 5, CLOSE_TIMEOUT,
             f"{target.key}: the server's connections back to {baseline}", interval=0.5)
    time.sleep(seconds)
    return time.monotonic() - start


def drain_time_wait(target: Target, log, limit: int = 500, timeout: float = 75.0) -> float:
    """Wait until the server pod and the nodes hold fewer than `limit` TIME_WAIT sockets (each
    keeps a port for 60 s), so a phase does not start short of ports the one before used."""
    start = time.monotonic()
    spaces = [target.server_netns(), *(target.mesh.node(n)["netns"] for n in target.roots())]
    left = {ns: probe.time_wait(ns) for ns in spaces}
    while max(left.values()) >= limit and time.monotonic() - start < timeout:
        time.sleep(2.0)
        left = {ns: probe.time_wait(ns) for ns in spaces}
    waited = time.monotonic() - start
    log(f"{target.key}: waited {waited:.0f} s for the last phase's TIME_WAIT sockets to expire "
        f"({max(left.values())} left)")
    return waited


def _crashes(before: dict[str, list[dict]], after: dict[str, list[dict]]) -> list[str]:
    """Roles whose process changed or vanished between two readings."""
    out = []
    for node, processes in before.items():
        now = {p["role"]: p["pid"] for p in after.get(node, [])}
        for p in processes:
            if now.get(p["role"]) != p["pid"]:
                out.append(f"{node} {p['role']} (pid {p['pid']} → {now.get(p['role'], 'gone')})")
    return out


def concurrent(target: Target, count: int, settle_s: float, log) -> dict:
    """Hold `count` idle connections through the pair; readings before, held and after."""
    target.contender.allow_open_files(target.mesh, count)
    route = target.contender.route(target.mesh)
    netns = target.server_netns()
    baseline = established(netns, HTTP_PORT)
    restarts0 = target.restarts()
    marks = events.Marks(target.log_files())
    before = target.readings()
    start = time.monotonic()
    with idle.holding(route.netns, route.http[0], route.http[1], count) as holder:
        ready, _, _ = select.select([holder.stdout], [], [], 600)
        line = holder.stdout.readline() if ready else ""
        if not line:
            raise PhaseError(f"{target.key}: the connection holder said nothing (exit {holder.poll()})")
        opened = json.loads(line)
        # Connected at the client is not yet connected at the server: wait until the server
        # holds them all, so both proxies carry every connection.
        wait_for(lambda: established(netns, HTTP_PORT) >= baseline + opened["opened"], 300,
                 f"{target.key}: {opened['opened']} connections established at the server", interval=1.0)
        established_s = time.monotonic() - start
        time.sleep(HOLD_SECONDS)
        held = target.readings()
        at_server = established(netns, HTTP_PORT) - baseline
    settled_s = settle(target, baseline, settle_s)
    after = target.readings()
    log(f"{target.key} concurrent: {opened['opened']:,} held, {opened['failed']} failed")
    return {"asked": count, "opened": opened["opened"], "failed": opened["failed"],
            "connect_seconds": opened["seconds"], "established_seconds": established_s,
            "at_server": at_server, "settle_seconds": settled_s, "before": before, "held": held, "after": after,
            "logged": marks.since(), "crashed": _crashes(before, after) + _restarted(restarts0, target.restarts())}


def _restarted(before: dict[str, int], after: dict[str, int]) -> list[str]:
    return [f"{name} restarted {after[name] - n} time(s)" for name, n in before.items() if after.get(name, n) != n]


def paced(target: Target, *, rate: int, total: int, batches: int, settle_s: float, log) -> dict:
    """`total` short connections at `rate`/s in `batches` equal batches; readings before, at
    peak and after each batch's settle."""
    route = target.contender.route(target.mesh)
    # What the pair may hold at once if it falls behind, within the open-file limit we have.
    target.contender.allow_open_files(target.mesh, min(total, rate * 30, MAX_OPEN))
    netns = target.server_netns()
    baseline = established(netns, HTTP_PORT)
    restarts0 = target.restarts()
    marks = events.Marks(target.log_files())
    before = target.readings()
    out_batches = []
    for index in range(batches):
        plan = pacing.pace(rate, total // batches)
        argv = pacing.h2load_argv(route.url, plan)
        with probe.Sampler(target.roots(), target.client_pid()) as sampler:
            start = time.monotonic()
            try:
                finished = run_in(route.netns, argv, timeout=plan.seconds + 120)
            except LoadError as exc:
                raise PhaseError(f"{target.key}: {exc}") from exc
            wall = time.monotonic() - start
        # Read before settling, while the batch's closed connections still hold their ports.
        waiting = {"client pod": probe.time_wait(route.netns), "server pod": probe.time_wait(netns)}
        result = pacing.parse_h2load(finished.stdout)
        try:
            rate_seen = asdict(pacing.achieved(sampler.opens, start, start + plan.seconds))
        except ValueError as exc:
            raise PhaseError(f"{target.key}: {exc}") from exc
        peak = {node: [{"pid": pid, "role": s.roles[pid], "rss_kib": s.peak_rss_kib[pid], "fds": s.peak_fds[pid]}
                       for pid in s.roles] for node, s in sampler.series.items()}
        settled_s = settle(target, baseline, settle_s)
        after = target.readings()
        out_batches.append({"h2load": result, "achieved": rate_seen, "wall": wall, "generator_cpu_s": finished.cpu_s,
                            "peak": peak, "settle_seconds": settled_s, "after": after,
                            "time_wait": waiting})
        log(f"{target.key} paced batch {index + 1}/{batches}: {result['succeeded']:,} of {result['asked']:,} "
            f"connections, {result['failed']} failed, {rate_seen['mean']:.0f}/s achieved "
            f"({rate_seen['low']:.0f}–{rate_seen['high']:.0f}) for {rate}/s asked")
    return {"rate": rate, "total": total, "batches": out_batches, "before": before, "logged": marks.since(),
            "crashed": _crashes(before, out_batches[-1]["after"]) + _restarted(restarts0, target.restarts())}
