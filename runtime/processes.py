"""Supervised processes: start inside a network namespace, restart when they exit, stop cleanly.

What a DaemonSet or a pod's restartPolicy does on a cluster: the operator, node agents,
ztunnels and pod containers are restarted after a delay when they exit, until stopped.

A container follows its pod's `restart_policy` (Kubernetes' Always, OnFailure, Never): once it
exits and the policy says no more, `run` returns and `terminated` holds how it ended. The delay
before a restart doubles after each one up to `max_restart_delay` (kubelet's crash-loop back-off;
the mesh's own processes keep a fixed delay), and `waiting` says so meanwhile. `restart()` ends
the current process so `run` starts another (a failed liveness probe, with the pod's grace
period as its own timeout: `stop_timeout` stays what the pod's deletion or `wisp down` set); a
crash-loop back-off starts over once a run outlasts twice `max_restart_delay` (kubelet forgets a
container's back-off after twice its maximum without a restart); every run's start, end
and exit code are kept (`started_at`, `last_exit`) for the pod's container status. A process
with `cgroups` is moved into those directories as soon as it exists (a Kubernetes pod's
`pod<uid>` cgroup, runtime/cgroups.py), before its command runs.

The mesh's own processes (operator, node agents, ztunnels) run as root, as their privileged
host-network DaemonSets do on a cluster; a pod's container is given a `Sandbox` and runs
confined to it (`sandbox.py`), started anew inside it on every restart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import trio

from . import cgroups
from .sandbox import Sandbox

log = structlog.get_logger("runtime.processes")

RESTART_POLICIES = ("Always", "OnFailure", "Never")


@dataclass(slots=True, frozen=True)
class Exit:
    """How one run of a process ended: its exit code as Kubernetes reports it (128 + the signal
    for one killed by a signal) and when it started and ended (Unix time)."""

    code: int
    started: float
    finished: float
    signal: int = 0


@dataclass(slots=True)
class Supervised:
    name: str
    netns: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    restart_delay: float = 1.0
    stop_timeout: float = 5.0
    sandbox: Sandbox | None = None  # None: a mesh process, unconfined
    process: trio.Process | None = None
    restarts: int = 0
    restart_policy: str = "Always"
    max_restart_delay: float | None = None  # None: every restart waits restart_delay
    inherit_env: bool = True  # False: the process gets `env` only (a Kubernetes container)
    cgroups: tuple[str, ...] = ()  # directories each new process is moved into (runtime/cgroups.py)
    started_at: float | None = None  # of the current run
    last_exit: Exit | None = None
    terminated: Exit | None = None  # set when the policy let it end for good
    waiting: bool = False  # between an exit and the restart

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.returncode is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Keep the process running as the restart policy says until cancelled; then stop it
        (SIGTERM, then SIGKILL after `stop_timeout`)."""
        if self.restart_policy not in RESTART_POLICIES:
            raise ValueError(f"restart policy {self.restart_policy!r} is not one of {', '.join(RESTART_POLICIES)}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        first = True
        delay = self.restart_delay
        try:
            while True:
                self.process = await self.spawn()
                self.started_at = time.time()
                self.waiting = False
                if first:
                    task_status.started(self)
                    first = False
                while True:
                    process = self.process
                    code = await process.wait()
                    if self.process is process:
                        break
                    # Replaced while it ran (rollout.py): the new process is the one to watch.
                ended = exit_of(code, self.started_at, time.time())
                self.last_exit = ended
                if not restarts_after(self.restart_policy, ended.code):
                    self.terminated = ended
                    log.info("process exited; not restarted", name=self.name, code=ended.code,
                             policy=self.restart_policy)
                    return
                delay = restart_delay_after(delay, base=self.restart_delay, maximum=self.max_restart_delay,
                                            ran=ended.finished - ended.started)
                log.warning("process exited; restarting", name=self.name, code=code, delay=delay)
                self.restarts += 1
                self.waiting = True
                await trio.sleep(delay)
                if self.max_restart_delay is not None:
                    delay = min(delay * 2, self.max_restart_delay)
        finally:
            with trio.CancelScope(shield=True):
                await self.stop()

    async def spawn(self) -> trio.Process:
        """A new process of this command, in its namespace (and sandbox), writing to its log;
        `run` starts each one so, and a rollout its replacement beside the current one."""
        argv = self.sandbox.wrap(self.argv) if self.sandbox is not None else self.argv
        env = {**os.environ, **self.env} if self.inherit_env else dict(self.env)
        with open(self.log_path, "ab") as out:
            process = await trio.lowlevel.open_process(
                ["ip", "netns", "exec", self.netns, *argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )
        if self.cgroups:
            # Moved at once: `ip netns exec` and the sandbox step take milliseconds before the
            # command runs, so the command and whatever it starts are in the pod's cgroup.
            try:
                cgroups.join(list(self.cgroups), process.pid)
            except OSError as exc:
                log.warning("cannot move the process into its cgroup", name=self.name, error=str(exc))
        return process

    def replace_process(self, process: trio.Process) -> None:
        """`process` (started beside the current one, rollout.py) is the one supervised from now
        on; whoever replaced the old one stops it."""
        self.process = process

    async def restart(self, timeout: float | None = None) -> None:
        """End the current process (SIGTERM, SIGKILL after `timeout`, default `stop_timeout`);
        `run` then starts the next one as the restart policy says."""
        await self.stop(timeout)

    async def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, then SIGKILL after `timeout` (default `stop_timeout`)."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        signal_group(process, signal.SIGTERM)
        with trio.move_on_after(self.stop_timeout if timeout is None else timeout):
            await process.wait()
        if process.returncode is None:
            signal_group(process, signal.SIGKILL)
            await process.wait()


def exit_of(returncode: int, started: float | None, finished: float) -> Exit:
    """An exit as Kubernetes reports it: a process killed by signal N exited with 128 + N."""
    if returncode < 0:
        return Exit(128 - returncode, started or finished, finished, signal=-returncode)
    return Exit(returncode, started or finished, finished)


def restart_delay_after(delay: float, *, base: float, maximum: float | None, ran: float) -> float:
    """The wait before the next restart, `delay` being the one the back-off has reached: back to
    `base` when the run lasted over twice `maximum` (kubelet's back-off entry expires after
    twice its maximum without a restart, so a container that crashes once a day is not held
    at the maximum forever)."""
    if maximum is not None and ran > 2 * maximum:
        return base
    return delay


def restarts_after(policy: str, code: int) -> bool:
    """Does a container under `policy` start again after exiting with `code`?"""
    return policy == "Always" or (policy == "OnFailure" and code != 0)


def signal_group(process: trio.Process, signum: int) -> None:
    """Signal the process's group; one that has exited already is left alone."""
    # `ip netns exec` (and a sandbox) exec the command, so the group holds it and anything it started.
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass
