"""Supervised processes: start inside a network namespace, restart when they exit, stop cleanly.

What a DaemonSet or a pod's restartPolicy does on a cluster: the operator, node agents,
ztunnels and pod containers are restarted after a delay when they exit, until stopped.

The mesh's own processes (operator, node agents, ztunnels) run as root, as their privileged
host-network DaemonSets do on a cluster; a pod's container is given a `Sandbox` and runs
confined to it (`sandbox.py`), started anew inside it on every restart.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import trio

from .sandbox import Sandbox

log = structlog.get_logger("runtime.processes")


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

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.returncode is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Keep the process running until cancelled; then stop it (SIGTERM, then SIGKILL)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        first = True
        try:
            while True:
                self.process = await self.spawn()
                if first:
                    task_status.started(self)
                    first = False
                while True:
                    process = self.process
                    code = await process.wait()
                    if self.process is process:
                        break
                    # Replaced while it ran (rollout.py): the new process is the one to watch.
                log.warning("process exited; restarting", name=self.name, code=code, delay=self.restart_delay)
                self.restarts += 1
                await trio.sleep(self.restart_delay)
        finally:
            with trio.CancelScope(shield=True):
                await self.stop()

    async def spawn(self) -> trio.Process:
        """A new process of this command, in its namespace (and sandbox), writing to its log;
        `run` starts each one so, and a rollout its replacement beside the current one."""
        argv = self.sandbox.wrap(self.argv) if self.sandbox is not None else self.argv
        with open(self.log_path, "ab") as out:
            return await trio.lowlevel.open_process(
                ["ip", "netns", "exec", self.netns, *argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **self.env}, start_new_session=True,
            )

    def replace_process(self, process: trio.Process) -> None:
        """`process` (started beside the current one, rollout.py) is the one supervised from now
        on; whoever replaced the old one stops it."""
        self.process = process

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        signal_group(process, signal.SIGTERM)
        with trio.move_on_after(self.stop_timeout):
            await process.wait()
        if process.returncode is None:
            signal_group(process, signal.SIGKILL)
            await process.wait()


def signal_group(process: trio.Process, signum: int) -> None:
    """Signal the process's group; one that has exited already is left alone."""
    # `ip netns exec` (and a sandbox) exec the command, so the group holds it and anything it started.
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass
