"""The plan and its execution: rounds of every measure, contenders alternating within each.

A round runs each measure for every contender in turn (fixed A B C, saturation A B C, …), so a
slow drift on the shared machine spreads over all contenders instead of favouring one; the
fixed-rate measure runs `fixed_runs` times per round (A B C A B C …), so its latencies have a
spread even in one round. During the fixed-rate runs the load generator, the server pod and each
proxy are pinned to cores by the plan's layout (bench/mesh/pinning.py); the throughput measures
fill both cores and run unpinned, so the scheduler balances them. Around every measurement the
runner reads each proxy's process tree (CPU seconds, memory), the load generator's CPU, and the
machine's busy time, so that other programs' load shows next to the figures. With `profile` set,
one extra fixed-rate run per Python contender after the rounds has py-spy recording that node's
ztunnel (bench/mesh/profile.py); its figures are not part of the results. The idle-connection
measure runs once per contender after the rounds: it is slow and leaves the proxies' memory high.
"""

from __future__ import annotations

import json
import select
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import idle, layers, loadgen, pinning, procstat, profile
from .contenders import Contender, Route
from .mesh import VENV_BIN, Mesh, established, wait_for

MEASURES = ("fixed", "saturation", "connect", "bulk1", "bulk8", "idle")
RSS_SAMPLE_INTERVAL = 0.5
# Other programs' CPU, as a share of one core, below which the machine counts as quiet.
QUIET_SHARE = 0.15


@dataclass(slots=True, frozen=True)
class Plan:
    rounds: int
    fixed_seconds: float
    saturation_seconds: float
    connect_seconds: float
    bulk_seconds: float
    idle_connections: int
    # Seconds the whole run may wait for other programs to go quiet (0: never wait).
    quiet_budget: float = 0.0
    fixed_rate: int = 1000
    fixed_connections: int = 4
    saturation_connections: int = 16
    ztunnel_workers: int = 1
    contenders: tuple[str, ...] = ()
    measures: tuple[str, ...] = MEASURES
    # Fixed-rate runs per contender per round, alternating; each gives its own percentiles.
    fixed_runs: int = 1
    # The core layout of the fixed-rate runs (a name in pinning.LAYOUTS).
    pin: str = pinning.DEFAULT_LAYOUT
    # ztunnel engines, each its own contender ("" = ztunnel's default engine).
    engines: tuple[str, ...] = ("",)
    # The node whose ztunnel py-spy records in an extra run ("" = no profile), and of which measure.
    profile: str = ""
    profile_measure: str = "fixed"
    # One more extra run of `profile_measure` per contender with proxies, perf recording them all.
    layers: bool = False


@dataclass(slots=True)
class Sample:
    round: int
    contender: str
    measure: str
    result: dict
    # Per proxy (e.g. "node1"): cpu_s over the measurement, rss_peak_kib sampled during it,
    # hwm_kib (VmHWM, peak since start) at its end, rss_before_kib / rss_after_kib.
    proxies: dict[str, dict]
    wall: float
    # Which fixed-rate run of the round (0 for the other measures), and the core layout it ran in.
    run: int = 0
    layout: str = "none"
    generator_cpu: float = 0.0
    # The server pod's processes (nginx, iperf3).
    server_cpu: float = 0.0
    # CPU seconds the rest of the machine used meanwhile: busy minus generator, proxies and server
    # (so it includes the mesh's control plane and node agents, and other people's programs).
    other_cpu: float = 0.0
    waited: float = 0.0


class BenchError(Exception):
    """A contender or a load generator failed; the message says which and why."""


class RssSampler:
    """Samples each proxy tree's RSS on a thread while a measurement runs; keeps the peak."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak = {name: 0 for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_INTERVAL):
            self._sample()

    def _sample(self) -> None:
        for name, pid in self.pids.items():
            try:
                self.peak[name] = max(self.peak[name], procstat.tree_usage(pid).rss_kib)
            except ProcessLookupError:
                pass


def run(plan: Plan, contenders: list[Contender], meshes: dict[str, Mesh], progress: Callable[[Sample], None],
        keep: Path | None = None) -> tuple[list[Sample], dict[str, dict], dict[str, dict]]:
    """Every measurement of the plan, the py-spy profiles ({contender: summary}) and the perf
    layers ({contender: figures}) if asked for; `keep` is where py-spy's raw output is saved
    (file names start with it)."""
    samples: list[Sample] = []
    profiles: dict[str, dict] = {}
    cpu_layers: dict[str, dict] = {}
    budget = plan.quiet_budget
    timed = [m for m in plan.measures if m != "idle"]
    fixed_layout = pinning.layout(plan.pin)
    with tempfile.TemporaryDirectory(prefix=f"{next(iter(meshes.values())).prefix}-logs-") as scratch:
        for contender in contenders:
            warm_up(contender.route(meshes[contender.key]))
        for round_ in range(plan.rounds):
            for measure in timed:
                runs = plan.fixed_runs if measure == "fixed" else 1
                layout = fixed_layout if measure == "fixed" else pinning.LAYOUTS["none"]
                for run_ in range(runs):
                    for contender in contenders:
                        waited = _wait_quiet(budget) if budget > 0 else 0.0
                        budget -= waited
                        sample = measure_one(plan, round_, measure, contender, meshes[contender.key], Path(scratch),
                                          layout=layout, run=run_)
                        sample.waited = waited
                        samples.append(sample)
                        progress(sample)
        if plan.profile:
            for contender in contenders:
                if contender.profiled:
                    profiles[contender.key] = _profile(plan, contender, meshes[contender.key], Path(scratch),
                                                       fixed_layout, keep)
        if plan.layers:
            for contender in contenders:
                if contender.proxies(meshes[contender.key]):
                    cpu_layers[contender.key] = _layers(plan, contender, meshes[contender.key], Path(scratch))
        if "idle" in plan.measures:
            for contender in contenders:
                sample = _idle(plan, contender, meshes[contender.key])
                samples.append(sample)
                progress(sample)
    return samples, profiles, cpu_layers


def _profile(plan: Plan, contender: Contender, mesh: Mesh, scratch: Path, layout: pinning.Layout,
             keep: Path | None) -> dict:
    """One unmeasured run of `plan.profile_measure` with py-spy recording the busiest process of
    one node's ztunnel."""
    root = contender.proxies(mesh)[plan.profile]
    pid = profile.busiest(root)
    raw = scratch / f"pyspy-{contender.key}.txt"
    py_spy = str(VENV_BIN / "py-spy")
    seconds = _command(plan, plan.profile_measure, contender.route(mesh), scratch)[1]
    try:
        with profile.Recording(py_spy, pid, seconds, raw) as recording:
            measure_one(plan, 0, plan.profile_measure, contender, mesh, scratch, layout=layout, run=0)
        stacks = recording.stacks()
    except (OSError, profile.ProfileError, BenchError) as exc:
        raise BenchError(f"{contender.key} profile: {exc}") from exc
    out = profile.summary(stacks, profile.RATE)
    out.update({"node": plan.profile, "pid": pid, "root_pid": root, "measure": plan.profile_measure})
    if keep is not None:
        saved = keep.parent / f"{keep.name}-{contender.key}-pyspy.txt"
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(raw.read_text())
        out["raw"] = saved.name
    return out


def _layers(plan: Plan, contender: Contender, mesh: Mesh, scratch: Path) -> dict:
    """One unmeasured run of `plan.profile_measure` with perf recording every process of every
    proxy of `contender`: its CPU per request per proxy by layer (bench/mesh/layers.py)."""
    roots = contender.proxies(mesh)
    parents, _ = procstat.processes()
    pids = [pid for root in roots.values() for pid in (procstat.descendants(root, parents) if root in parents else [root])]
    seconds = _command(plan, plan.profile_measure, contender.route(mesh), scratch)[1]
    output = scratch / f"perf-{contender.key}.data"
    try:
        with layers.Recording(pids, seconds, output) as recording:
            sample = measure_one(plan, 0, plan.profile_measure, contender, mesh, scratch,
                                 layout=pinning.LAYOUTS["none"], run=0)
        counts = recording.layers()
    except (OSError, layers.LayerError, BenchError) as exc:
        raise BenchError(f"{contender.key} perf layers: {exc}") from exc
    unit, units = (("MiB", sample.result.get("bytes", 0) / 2**20) if plan.profile_measure.startswith("bulk")
                   else ("request", sample.result.get("requests", 0)))
    if units <= 0:
        raise BenchError(f"{contender.key} perf layers: the {plan.profile_measure} run did no work")
    return {"measure": plan.profile_measure, "unit": unit, "units": units, "proxies": len(roots),
            "samples": sum(counts.values()), "frequency": layers.FREQUENCY,
            "us_per_unit": layers.per_unit(counts, units, len(roots))}


def warm_up(route: Route) -> None:
    """Two seconds of load so pools, caches and the proxies' first connections exist."""
    loadgen.run_in(route.netns, loadgen.wrk_argv(route.url, connections=4, seconds=2), 60)


def _command(plan: Plan, measure: str, route: Route, scratch: Path) -> tuple[list[str], float]:
    """The load generator's command line and how long it runs."""
    if measure == "fixed":
        return loadgen.h2load_argv(route.url, rate=plan.fixed_rate, connections=plan.fixed_connections,
                                   seconds=plan.fixed_seconds, log_file=scratch / "h2load.log"), plan.fixed_seconds
    if measure in ("saturation", "connect"):
        seconds = plan.saturation_seconds if measure == "saturation" else plan.connect_seconds
        return loadgen.wrk_argv(route.url, connections=plan.saturation_connections, seconds=seconds,
                                close=measure == "connect"), seconds
    streams = {"bulk1": 1, "bulk8": 8}[measure]
    return loadgen.iperf3_argv(*route.iperf, streams=streams, seconds=plan.bulk_seconds), plan.bulk_seconds


def measure_one(plan: Plan, round_: int, measure: str, contender: Contender, mesh: Mesh, scratch: Path, *,
             layout: pinning.Layout, run: int = 0) -> Sample:
    route = contender.route(mesh)
    pids = contender.proxies(mesh)
    servers = mesh.container_pids(contender.namespace.name, "server")
    argv, seconds = _command(plan, measure, route, scratch)
    try:
        cpus = pinning.usable_cpus()
        argv = pinning.generator_prefix(layout, cpus) + argv
        placement = pinning.placement(layout, cpus, servers, pids)
    except pinning.PinError as exc:
        raise BenchError(str(exc)) from exc
    before = {name: procstat.tree_usage(pid) for name, pid in pids.items()}
    server0 = _cpu(servers)
    busy0 = procstat.machine_busy()
    try:
        with pinning.Pinned(placement, layout.realtime), RssSampler(pids) as sampler:
            finished = loadgen.run_in(route.netns, argv, timeout=seconds + 120)
    except loadgen.LoadError as exc:
        raise BenchError(f"{contender.key} {measure}: {exc}") from exc
    busy = procstat.machine_busy() - busy0
    server_cpu = _cpu(servers) - server0
    after = {name: procstat.tree_usage(pid) for name, pid in pids.items()}
    if measure == "fixed":
        result = loadgen.parse_h2load(finished.stdout)
        latencies = loadgen.parse_h2load_log((scratch / "h2load.log").read_text())
        result.update({f"p{q:g}_us".replace(".", ""): loadgen.percentile(latencies, q) for q in (50, 90, 99, 99.9)})
        result["logged"] = len(latencies)
    elif measure in ("saturation", "connect"):
        result = loadgen.parse_wrk(finished.stdout)
    else:
        result = loadgen.parse_iperf3(finished.stdout)
    proxies = {name: {"cpu_s": after[name].cpu_s - before[name].cpu_s, "rss_peak_kib": sampler.peak[name],
                      "hwm_kib": after[name].hwm_kib, "rss_before_kib": before[name].rss_kib,
                      "rss_after_kib": after[name].rss_kib, "processes": after[name].processes}
               for name in pids}
    proxy_cpu = sum(p["cpu_s"] for p in proxies.values())
    return Sample(round_, contender.key, measure, result, proxies, wall=finished.wall, run=run, layout=layout.name,
                  generator_cpu=finished.cpu_s, server_cpu=server_cpu,
                  other_cpu=max(0.0, busy - finished.cpu_s - proxy_cpu - server_cpu))


def _cpu(pids: list[int]) -> float:
    return sum(procstat.tree_usage(pid).cpu_s for pid in pids)


def _idle(plan: Plan, contender: Contender, mesh: Mesh) -> Sample:
    """Open idle connections from the client pod through the contender and read what they cost."""
    count = min(plan.idle_connections, contender.idle_limit or plan.idle_connections)
    route = contender.route(mesh)
    server = mesh.pod(contender.namespace.name, "server")
    contender.allow_open_files(mesh, count)
    pids = contender.proxies(mesh)
    time.sleep(1.0)  # let memory freed by the last measurement settle
    before = {name: procstat.tree_usage(pid) for name, pid in pids.items()}
    start = time.perf_counter()
    with idle.holding(route.netns, route.http[0], route.http[1], count) as holder:
        line = _read_line(holder, timeout=600)
        opened = json.loads(line)
        # Connected at the client is not yet connected at the server: wait until the server
        # holds them all, so both proxies carry every connection.
        wait_for(lambda: established(server.netns) >= opened["opened"], 300,
                 f"{opened['opened']} connections established at the server ({contender.key})", interval=1.0)
        established_after = time.perf_counter() - start
        time.sleep(2.0)
        after = {name: procstat.tree_usage(pid) for name, pid in pids.items()}
        at_server = established(server.netns)
    # Let the closes reach the server before the next contender counts its own connections.
    wait_for(lambda: established(server.netns) < 50, 120, "idle connections closed", interval=1.0)
    proxies = {name: {"rss_before_kib": before[name].rss_kib, "rss_after_kib": after[name].rss_kib,
                      "hwm_kib": after[name].hwm_kib, "processes": after[name].processes}
               for name in pids}
    result = {"asked": count, "opened": opened["opened"], "failed": opened["failed"],
              "connect_seconds": opened["seconds"], "established_seconds": established_after,
              "established": at_server}
    return Sample(0, contender.key, "idle", result, proxies, wall=time.perf_counter() - start)


def _read_line(process: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise BenchError(f"the idle-connection holder said nothing within {timeout:g} s")
    line = process.stdout.readline()
    if not line:
        raise BenchError(f"the idle-connection holder exited with {process.wait()}")
    return line


def _wait_quiet(budget: float, window: float = 0.3) -> float:
    """Wait, at most `budget` s, for a moment when other programs leave the CPUs alone
    (between measurements nothing of ours is busy, so what runs is someone else's work)."""
    start = time.monotonic()
    while True:
        busy = procstat.machine_busy()
        time.sleep(window)
        waited = time.monotonic() - start
        if (procstat.machine_busy() - busy) / window < QUIET_SHARE or waited >= budget:
            return waited

