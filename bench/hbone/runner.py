"""The parent process: starts the server and client processes, runs the plan, cleans up.

Contenders alternate within every round (bulk A B C, bidir A B C, echo A B C, then the next
round), so slow drift on a shared machine spreads over all of them instead of favouring one.
The parent reads each child's CPU clock around every measurement, and the whole machine's busy
time, so that load from other programs on a shared machine shows up next to the figures.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import client, identities, server

# The benchmark's apps are trio code in the same processes as the engine: with trio owning the
# thread they wait on their sockets directly, where shape "epoll" would put every trio wait on
# its guest-mode I/O thread and charge that hop to the contenders, anchors included.
DEFAULT_SHAPE = "trio-epoll"
STARTUP_TIMEOUT = 60.0
MEASURE_TIMEOUT = 300.0
# Other programs' CPU, as a share of one core, below which the machine counts as quiet.
QUIET_SHARE = 0.15
_QUIET_WINDOW = 0.3
_TICKS = os.sysconf("SC_CLK_TCK")
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(slots=True, frozen=True)
class Plan:
    rounds: int
    bulk_size: int
    bidir_size: int
    echo_seconds: float
    warmup_seconds: float
    # Total seconds the run may spend waiting for other programs to quiet down before a measurement.
    quiet_budget: float = 0.0
    contenders: tuple[str, ...] = client.CONTENDERS
    measures: tuple[str, ...] = client.MEASURES
    # The data-path engine's shape in both processes (None: a run from before HBONE ran on it).
    engine: str | None = None

    def commands(self) -> list[tuple[int, client.Command]]:
        out = []
        for round_ in range(self.rounds):
            for measure in self.measures:
                for contender in self.contenders:
                    out.append((round_, client.Command(
                        contender, measure,
                        size={"bulk": self.bulk_size, "bidir": self.bidir_size}.get(measure, 0),
                        duration=self.echo_seconds if measure == "echo" else 0.0,
                        warmup=self.warmup_seconds if measure == "echo" else 0.0,
                    )))
        return out


@dataclass(slots=True)
class Sample:
    round: int
    contender: str
    measure: str
    result: dict
    client_cpu: float
    server_cpu: float
    wall: float
    # CPU seconds the rest of the machine used meanwhile (all CPUs busy minus our two children),
    # and seconds the hypervisor stole.
    other_cpu: float = 0.0
    steal: float = 0.0
    # Seconds spent waiting for a quiet machine before the measurement.
    waited: float = 0.0


class BenchError(Exception):
    """A child process failed or stopped answering."""


@dataclass(slots=True)
class Run:
    server_pid: int = 0
    client_pid: int = 0
    samples: list[Sample] = field(default_factory=list)


def run(plan: Plan, progress: Callable[[Sample], None], started: Callable[[Run], None]) -> Run:
    ctx = multiprocessing.get_context("spawn")
    server_pem, client_pem = identities.issue()
    server_pipe, server_end = ctx.Pipe()
    client_pipe, client_end = ctx.Pipe()
    parent = os.getpid()
    procs: list[multiprocessing.process.BaseProcess] = []
    try:
        shape = plan.engine or DEFAULT_SHAPE
        srv = ctx.Process(target=server.main, args=(server_end, server_pem, parent, shape),
                          name="bench-hbone-server", daemon=True)
        srv.start()
        procs.append(srv)
        hello = _receive(server_pipe, procs, STARTUP_TIMEOUT, "server start-up")
        cli = ctx.Process(target=client.main, args=(client_end, client_pem, hello["ports"], parent, shape),
                          name="bench-hbone-client", daemon=True)
        cli.start()
        procs.append(cli)
        outcome = Run(server_pid=srv.pid, client_pid=cli.pid)
        started(outcome)
        clocks = CpuClock(srv.pid), CpuClock(cli.pid)
        budget = plan.quiet_budget
        for round_, command in plan.commands():
            waited = _wait_quiet(budget) if budget > 0 else 0.0
            budget -= waited
            sample = _measure(round_, command, client_pipe, procs, clocks)
            sample.waited = waited
            outcome.samples.append(sample)
            progress(sample)
        client_pipe.send(None)
        return outcome
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for end in (server_pipe, server_end, client_pipe, client_end):
            end.close()


def _measure(round_: int, command: client.Command, pipe, procs, clocks: tuple[CpuClock, CpuClock]) -> Sample:
    """One command to the client, with both processes' CPU and the machine's around it."""
    server_clock, client_clock = clocks
    server0, client0, machine0, start = (server_clock.seconds(), client_clock.seconds(),
                                         _machine_cpu(), time.perf_counter())
    pipe.send(command)
    result = _receive(pipe, procs, MEASURE_TIMEOUT, f"{command.contender} {command.measure}")
    wall = time.perf_counter() - start
    server_cpu, client_cpu = server_clock.seconds() - server0, client_clock.seconds() - client0
    machine1 = _machine_cpu()
    if "error" in result:
        raise BenchError(f"{command.contender} {command.measure} failed in the client: "
                         f"{result['error']}\n{result.get('traceback', '')}")
    return Sample(
        round_, command.contender, command.measure, result, client_cpu=client_cpu,
        server_cpu=server_cpu, wall=wall,
        other_cpu=max(0.0, machine1[0] - machine0[0] - server_cpu - client_cpu),
        steal=machine1[1] - machine0[1],
    )


def _receive(pipe, procs, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while not pipe.poll(0.2):
        for proc in procs:
            if not proc.is_alive():
                raise BenchError(f"{proc.name} exited with code {proc.exitcode} during {what}")
        if time.monotonic() > deadline:
            raise BenchError(f"no answer within {timeout:g} s during {what}")
    return pipe.recv()


def _stop(proc: multiprocessing.process.BaseProcess) -> None:
    if proc.is_alive():
        proc.terminate()
        proc.join(3)
    if proc.is_alive():
        proc.kill()
    proc.join(3)


def _wait_quiet(budget: float) -> float:
    """Wait, at most `budget` s, for a moment when other programs leave the CPUs alone.

    Our children are idle between measurements, so whatever the machine does meanwhile is
    someone else's work (tests, builds) that would otherwise land in the next measurement.
    """
    start = time.monotonic()
    while True:
        busy = _machine_cpu()[0]
        time.sleep(_QUIET_WINDOW)
        share = (_machine_cpu()[0] - busy) / _QUIET_WINDOW
        waited = time.monotonic() - start
        if share < QUIET_SHARE or waited >= budget:
            return waited


def _machine_cpu() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat", "rb") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq) / _TICKS, steal / _TICKS


class CpuClock:
    """CPU seconds of another process, to the nanosecond (its POSIX CPU-time clock).

    /proc/<pid>/stat counts in 10 ms ticks, too coarse for a 0.1 s measurement; it remains
    the fallback where the clock cannot be read.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._clock: int | None = None
        clock = ctypes.c_int()
        if _libc.clock_getcpuclockid(pid, ctypes.byref(clock)) == 0:
            self._clock = clock.value

    def seconds(self) -> float:
        if self._clock is not None:
            try:
                return time.clock_gettime(self._clock)
            except OSError:
                self._clock = None
        with open(f"/proc/{self.pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        # Fields after the command name start at field 3 (state); utime and stime are 14 and 15.
        return (int(fields[11]) + int(fields[12])) / _TICKS
