"""`wisp rollout restart ztunnel`: each node's ztunnel replaced by a new process, dropping nothing.

What a DaemonSet rolling update with maxSurge 1 and maxUnavailable 0 does on a cluster
(deploy/ztunnel.yaml), node after node: a new ztunnel starts beside the old one, takes every pod
from the node agent and opens its SO_REUSEPORT listeners next to the old ones; once ready it has
the old one hand over (ztunnel/app.py: POST /handoff, then it takes the HTTP ports) and the old
one drains: it accepts nothing more and serves its established connections until they end or
its drain deadline passes, then exits (docs/architecture.md, "Zero-drop ztunnel restart").

The CLI and the daemon share only files, as the rest of the local runtime does: `request()`
writes `<run dir>/rollouts/<id>.json`; the daemon's `Rollouts.serve` picks requests up, runs
them one at a time and reports each under `rollouts` in status.json; `wait()` follows that.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio

from . import probes
from wisp.runpaths import RuntimePaths
from .processes import Supervised, signal_group

log = structlog.get_logger("runtime.rollout")

COMPONENTS = ("ztunnel",)
# How long a new ztunnel may take to be ready and take over; it is stopped after that, and the
# old one, which never stopped serving, stays.
READY_TIMEOUT = 60.0
ADMIN = ("127.0.0.1", 15000)


class RolloutError(Exception):
    """A rollout request that cannot be carried out; the message says why."""


@dataclass(slots=True)
class NodeRollout:
    node: str
    state: str = "pending"  # pending → starting → draining → done | failed
    old_pid: int | None = None
    new_pid: int | None = None
    old_exit: int | None = None
    takeover_seconds: float | None = None  # start of the new process → it serves the node
    drain_seconds: float | None = None  # its takeover → the old process exited
    error: str = ""


@dataclass(slots=True)
class Rollout:
    id: str
    component: str
    nodes: list[NodeRollout]
    state: str = "running"  # running → done | failed
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- the CLI's side ----------------------------------------------------------------------------------
def request(paths: RuntimePaths, component: str, nodes: list[str]) -> str:
    """Ask the mesh's daemon for a rollout restart; returns the request's id."""
    if component not in COMPONENTS:
        raise RolloutError(f"cannot restart {component!r}; components: {', '.join(COMPONENTS)}")
    directory = paths.root / "rollouts"
    directory.mkdir(mode=0o700, exist_ok=True)
    rollout_id = f"{int(time.time())}-{secrets.token_hex(3)}"
    tmp = directory / f".{rollout_id}.tmp"
    tmp.write_text(json.dumps({"component": component, "nodes": nodes}))
    os.replace(tmp, directory / f"{rollout_id}.json")
    return rollout_id


def wait(read_status: Callable[[], dict[str, Any]], rollout_id: str, timeout: float,
         on_change: Callable[[dict[str, Any]], None] = lambda rollout: None, *,
         drained: bool = False) -> dict[str, Any]:
    """Follow the rollout in status.json until it is done or failed (or `timeout`); with
    `drained`, until every old process exited too."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        status = read_status()
        rollout = (status.get("rollouts") or {}).get(rollout_id)
        if rollout is not None and rollout != last:
            on_change(rollout)
            last = rollout
        if rollout is not None and rollout["state"] != "running" and not (
                drained and rollout["state"] == "done" and any(n["state"] == "draining" for n in rollout["nodes"])):
            return rollout
        if not status or status.get("phase") in ("stopping", "stopped", "failed"):
            raise RolloutError("the mesh is not running")
        if time.monotonic() > deadline:
            raise RolloutError(f"rollout {rollout_id} not finished after {timeout:g} s")
        time.sleep(0.2)


# -- the daemon's side -------------------------------------------------------------------------------
@dataclass(slots=True)
class Rollouts:
    """Runs the rollout requests the CLI leaves in the run directory, one at a time."""

    paths: RuntimePaths
    components: dict[str, Supervised]
    nodes: Callable[[], list[Any]]  # the runtime's nodes (topology.Node: name, netns)
    drain_seconds: float
    done: dict[str, Rollout] = field(default_factory=dict)

    def status(self) -> dict[str, Any]:
        return {rollout_id: rollout.to_json() for rollout_id, rollout in self.done.items()}

    async def serve(self) -> None:
        directory = self.paths.root / "rollouts"
        while True:
            await trio.sleep(0.2)
            # File work goes to a thread: the daemon's loop also supervises and probes.
            for path in await trio.to_thread.run_sync(_pending, directory):
                rollout_id = path.stem
                try:
                    rollout = self._plan(rollout_id, await trio.to_thread.run_sync(_take, path))
                except (OSError, ValueError, RolloutError) as exc:
                    self.done[rollout_id] = Rollout(rollout_id, "?", [], "failed", str(exc))
                    log.warning("rollout request refused", id=rollout_id, error=str(exc))
                    continue
                self.done[rollout_id] = rollout
                await self._run(rollout)

    def _plan(self, rollout_id: str, wanted: Any) -> Rollout:
        if not isinstance(wanted, dict) or wanted.get("component") not in COMPONENTS:
            raise RolloutError(f"a rollout names one of: {', '.join(COMPONENTS)}")
        names = [node.name for node in self.nodes()]
        asked = wanted.get("nodes") or names
        if not isinstance(asked, list) or not all(isinstance(n, str) for n in asked):
            raise RolloutError("nodes must be a list of node names")
        unknown = [n for n in asked if n not in names]
        if unknown:
            raise RolloutError(f"no node {', '.join(unknown)}; nodes: {', '.join(names)}")
        return Rollout(rollout_id, wanted["component"], [NodeRollout(n) for n in names if n in asked])

    async def _run(self, rollout: Rollout) -> None:
        log.info("rollout restart", id=rollout.id, component=rollout.component,
                 nodes=[n.node for n in rollout.nodes])
        async with trio.open_nursery() as draining:
            for step in rollout.nodes:
                node = next(n for n in self.nodes() if n.name == step.node)
                try:
                    old = await restart_ztunnel(self.components[f"ztunnel-{node.name}"], node.netns, step)
                except RolloutError as exc:
                    step.state, step.error = "failed", str(exc)
                    rollout.state, rollout.error = "failed", f"{node.name}: {exc}"
                    log.warning("rollout stopped", id=rollout.id, node=node.name, error=str(exc))
                    break
                # The old process drains in the background; the next node goes on meanwhile, as
                # a DaemonSet moves on once the new pod is ready.
                draining.start_soon(self._retire, old, step)
            if rollout.state == "running":
                rollout.state = "done"
            log.info("rollout finished; old processes drain", id=rollout.id, state=rollout.state)

    async def _retire(self, old: trio.Process, step: NodeRollout) -> None:
        """Wait for the old ztunnel to finish draining; kill it if it overstays its deadline."""
        started = time.monotonic()
        try:
            with trio.move_on_after(self.drain_seconds + 10):
                step.old_exit = await old.wait()
            if old.returncode is None:
                log.warning("old ztunnel still running after its drain deadline; killing it", pid=old.pid)
                signal_group(old, signal.SIGKILL)
                step.old_exit = await old.wait()
        finally:
            if old.returncode is None:  # the daemon is stopping: leave nothing behind
                signal_group(old, signal.SIGKILL)
        step.drain_seconds = round(time.monotonic() - started, 3)
        step.state = "done"
        log.info("old ztunnel exited", node=step.node, pid=old.pid, code=step.old_exit,
                 drained_seconds=step.drain_seconds)


def _pending(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.json")) if directory.is_dir() else []


def _take(path: Path) -> Any:
    """A request's contents; the file is removed once read (an unreadable one stays)."""
    wanted = json.loads(path.read_text())
    path.unlink()
    return wanted


async def restart_ztunnel(supervised: Supervised, netns: str, step: NodeRollout,
                          ready_timeout: float = READY_TIMEOUT) -> trio.Process:
    """Start a new ztunnel beside `supervised`'s, wait until it serves the node (its admin port
    answers with its pid and ready), make it the supervised process; returns the old process,
    now draining. On failure the new process is stopped and the old one keeps serving."""
    old = supervised.process
    if old is None or old.returncode is not None:
        raise RolloutError("ztunnel is not running (it is being restarted); try again in a moment")
    step.old_pid, step.state = old.pid, "starting"
    started = time.monotonic()
    new = await supervised.spawn()
    # Supervised from the start: the old one exits as soon as the new one has it drain, and may
    # have drained already (no connections) before we see the new one ready; the supervisor
    # must not take that exit for a crash and start a third process.
    supervised.replace_process(new)
    step.new_pid = new.pid
    log.info("new ztunnel started beside the old one", name=supervised.name, old=old.pid, new=new.pid)
    try:
        with trio.move_on_after(ready_timeout):
            while not await serving(netns, new.pid):
                if new.returncode is not None:
                    raise RolloutError(f"the new ztunnel exited with {new.returncode}; see {supervised.log_path}")
                await trio.sleep(0.2)
            step.takeover_seconds = round(time.monotonic() - started, 3)
            step.state = "draining"
            log.info("new ztunnel serves the node; the old one drains", name=supervised.name,
                     new=new.pid, old=old.pid, seconds=step.takeover_seconds)
            return old
        raise RolloutError(f"the new ztunnel was not ready within {ready_timeout:g} s; see {supervised.log_path}")
    except BaseException:
        with trio.CancelScope(shield=True):
            if old.returncode is None:
                supervised.replace_process(old)  # it still serves; it stays the supervised one
            signal_group(new, signal.SIGKILL)
            await new.wait()
        raise


async def serving(netns: str, pid: int) -> bool:
    """Whether the ztunnel answering on the node's admin port is `pid` and ready."""
    status, body = await probes.http_get(netns, ADMIN, "/config_dump", timeout=2)
    if status != 200:
        return False
    try:
        dump = json.loads(body)
    except ValueError:
        return False
    return isinstance(dump, dict) and dump.get("pid") == pid and dump.get("ready") is True


def node_rollouts_summary(rollout: dict[str, Any]) -> list[str]:
    """One line per node, for the CLI."""
    lines = []
    for step in rollout["nodes"]:
        line = f"  {step['node']}: {step['state']}"
        if step["new_pid"]:
            line += f" (pid {step['old_pid']} → {step['new_pid']}"
            if step["takeover_seconds"] is not None:
                line += f", serving after {step['takeover_seconds']:.1f} s"
            if step["drain_seconds"] is not None:
                line += f", old one drained in {step['drain_seconds']:.1f} s"
            line += ")"
        if step["error"]:
            line += f": {step['error']}"
        lines.append(line)
    return lines

