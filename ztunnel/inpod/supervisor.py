"""Worker processes, the main process's side: a ztunnel that uses N cores, every process serving every pod.

CPython runs one core per process, so `wisp-ztunnel --workers N` is N processes. The main process
is worker 0 and also the supervisor of workers 1..N-1, which run this program in worker mode.
For each worker it holds two socketpairs:

- ZDS (SOCK_SEQPACKET): the main process is the worker's node agent. It sends the pods it holds
  (an Add with a duplicate of each netns fd), SnapshotSent, then every Add and Del the real agent
  sends; the agent's ack waits for every running worker's. A worker runs the ordinary ZdsClient
  and PodManager, so it opens its own SO_REUSEPORT listeners in each pod's netns and the kernel
  spreads new connections over the processes.
- status (SOCK_STREAM): `status <n>` → one JSON line (readiness, pods, certificates, connections),
  for the main process's readiness and /config_dump.

A worker stops when either socket closes, so none outlives the main process (also after SIGKILL;
PR_SET_PDEATHSIG would follow the thread that spawned it, and trio spawns from worker threads).
A worker that exits is started again after a second (longer if it keeps exiting at once) and
given the current pods; the others are not touched. Workers subscribe to the config stream and
fetch certificates themselves, with the node's token. Their counters are files in a directory the main
process owns, named to them in WISP_METRICS_DIR (see wisp/metrics.py).

Here: `WorkerPool` and `Worker` (start, feed, restart, stop). `fanout.py` has the main process
act on its own pods and every worker's; `worker.py` is a worker's end of the two sockets.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from wisp.metrics import METRICS_DIR_ENV
from wisp.zds import protocol, transport
from wisp.zds.node import NodeSession
from wisp.zds.protocol import Add, Del, SnapshotSent, WorkloadInfo, ZdsError

from ..config import Config

log = structlog.get_logger("ztunnel.workers")

RESTART_DELAY = 1.0
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 10.0  # a worker that ran this long restarts after RESTART_DELAY again
HELLO_TIMEOUT = 30.0  # a fresh interpreter importing ztunnel on a busy machine
# The node agent waits ACK_TIMEOUT for our ack, which includes the workers'.
WORKER_ACK_TIMEOUT = protocol.ACK_TIMEOUT - 1.0
STATUS_TIMEOUT = 2.0


def _metrics_dir(node: str) -> str:
    """A fresh directory for the workers' metric files, on tmpfs, named for our pid; those of
    ztunnels that died without removing theirs (SIGKILL) are removed first. The name leaves out
    `node` so that the workers' unix socket paths in it stay under 108 bytes."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    prefix = "wisp-ztunnel-metrics-"
    for path in glob.glob(os.path.join(base, prefix + "*")):
        pid = os.path.basename(path)[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(path, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=base)


def default_count() -> int:
    """Istio's ztunnel runs two worker threads by default; fewer if we are given one core."""
    return min(2, len(os.sched_getaffinity(0)))


def worker_argv(config: Config, index: int, zds_fd: int, status_fd: int) -> list[str]:
    """The command line of worker `index`: the main process's settings, no HTTP endpoints."""
    argv = [
        sys.executable, "-m", "ztunnel.main", "--node", config.node, "--workers", "1",
        "--worker-index", str(index), "--worker-fds", f"{zds_fd},{status_fd}",
        "--state-dir", config.state_dir, "--token-file", str(config.token_path()),
        "--root-cert", str(config.root_path()), "--trust-domain", config.trust_domain,
        "--drain-seconds", str(config.drain_seconds), "--log-level", config.log_level,
        "--max-connections-per-source", str(config.max_connections_per_source),
    ]
    if config.control_plane:
        argv += ["--control-plane", config.control_plane]
    if config.log_json is not None:
        argv.append("--log-json" if config.log_json else "--no-log-json")
    return argv


def pending_of(statuses: list[dict]) -> list[str]:
    """What the workers with these `statuses` still wait for; empty when all are ready."""
    pending = []
    for entry in statuses:
        status = entry["status"]
        if status is None:
            pending.append(f"worker {entry['worker']} ({entry['state']})")
        elif status["pending"]:
            pending.append(f"worker {entry['worker']}: {', '.join(status['pending'])}")
    return pending


@dataclass(slots=True)
class _Pod:
    info: WorkloadInfo
    fd: int  # our duplicate of the netns fd, for workers that start later


class WorkerPool:
    """Workers 1..count-1 of a ztunnel, and the pods they all serve. Run `run` in a nursery."""

    def __init__(self, config: Config, count: int) -> None:
        self.config = config
        self.pods: dict[str, _Pod] = {}
        self.workers = [Worker(self, index) for index in range(1, count)]
        self.metrics_dir: str | None = None
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.metrics_dir = _metrics_dir(self.config.node)
        log.info("starting worker processes", workers=len(self.workers), metrics_dir=self.metrics_dir)
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    for worker in self.workers:
                        nursery.start_soon(worker.supervise)
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            for pod in self.pods.values():
                transport.close_fd(pod.fd)
            self.pods.clear()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            self._stopped.set()

    async def stop(self) -> None:
        """Drain and end every worker (each gets SIGTERM and its drain deadline)."""
        self._scope.cancel()
        await self._stopped.wait()

    # -- pod events, called through PodFanOut (fanout.py) ------------------------------------------------------
    async def add(self, uid: str, info: WorkloadInfo, fd: int) -> list[str]:
        """Remember the pod (owning `fd`, kept for workers that start later) and give it to
        every running worker."""
        self._forget(uid)
        pod = self.pods[uid] = _Pod(info, fd)
        # Built when a worker's turn comes: by then a Del may have closed the fd.
        return await self._forward(lambda: (Add(uid, info), fd) if self.pods.get(uid) is pod else None)

    async def remove(self, uid: str) -> list[str]:
        self._forget(uid)
        return await self._forward(lambda: (Del(uid), None))

    async def retain(self, uids: set[str]) -> list[str]:
        errors = []
        for uid in [uid for uid in self.pods if uid not in uids]:
            errors += await self.remove(uid)
        return errors

    def _forget(self, uid: str) -> None:
        pod = self.pods.pop(uid, None)
        if pod is not None:
            transport.close_fd(pod.fd)

    async def _forward(self, message: Callable[[], tuple[Any, int | None] | None]) -> list[str]:
        errors: list[str] = []

        async def one(worker: Worker) -> None:
            error = await worker.forward(message)
            if error:
                errors.append(f"worker {worker.index}: {error}")

        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                nursery.start_soon(one, worker)
        return sorted(errors)

    # -- readiness and dumps -----------------------------------------------------------------------
    async def statuses(self) -> list[dict]:
        """One entry per worker: what the supervisor knows, plus the worker's own status."""
        results: dict[int, dict] = {}

        async def one(worker: Worker) -> None:
            status = await worker.status()
            results[worker.index] = {"worker": worker.index, "pid": worker.pid, "restarts": worker.restarts,
                                     "state": worker.state(status), "status": status}

        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                nursery.start_soon(one, worker)
        return [results[index] for index in sorted(results)]

    async def pending(self) -> list[str]:
        return pending_of(await self.statuses())


class Worker:
    """One worker process: started, fed the pods, restarted when it exits, stopped on request."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.restarts = 0
        self.process: trio.Process | None = None
        self._zds: socket.socket | None = None  # set once the worker said Hello
        self._session = NodeSession()
        self._zds_lock = trio.Lock()
        self._status: trio.SocketStream | None = None
        self._status_lock = trio.Lock()
        self._status_buffer = b""
        self._seq = itertools.count(1)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.returncode is None else None

    def state(self, status: dict | None) -> str:
        if self.pid is None:
            return "not running"
        if self._zds is None:
            return "starting"
        return "not answering" if status is None else "running"

    async def supervise(self) -> None:
        """Run the worker, and again whenever it exits, until cancelled (which stops it)."""
        delay = RESTART_DELAY
        while True:
            started = trio.current_time()
            code = await self._run_once()
            self.restarts += 1
            delay = RESTART_DELAY if trio.current_time() - started > STABLE_AFTER else delay
            log.warning("ztunnel worker exited; restarting it with the current pods", worker=self.index,
                        code=code, restart_in=delay)
            await trio.sleep(delay)
            delay = min(delay * 2, RESTART_DELAY_MAX)

    async def _run_once(self) -> int:
        zds_ours, zds_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        status_ours, status_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            argv = worker_argv(self.pool.config, self.index, zds_theirs.fileno(), status_theirs.fileno())
            env = {**os.environ, METRICS_DIR_ENV: self.pool.metrics_dir or ""}
            self.process = await trio.lowlevel.open_process(
                argv, pass_fds=(zds_theirs.fileno(), status_theirs.fileno()), env=env)
        except BaseException:
            for sock in (zds_ours, status_ours):
                sock.close()
            raise
        finally:
            zds_theirs.close()
            status_theirs.close()
        log.info("ztunnel worker started", worker=self.index, pid=self.process.pid)
        zds_ours.setblocking(False)
        self._status = trio.SocketStream(trio.socket.from_stdlib_socket(status_ours))
        self._status_buffer = b""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._open_session, zds_ours)
                code = await self.process.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                # Stopped with SIGTERM, not by closing its sockets: that would say we died.
                await self._terminate()
                self._zds = None
                trio.lowlevel.notify_closing(zds_ours)
                zds_ours.close()
                await self._status.aclose()
                self._status = None
        return code

    async def _open_session(self, sock: socket.socket) -> None:
        """Take the worker's Hello, then give it every pod and SnapshotSent."""
        try:
            self._session = NodeSession()
            with trio.fail_after(HELLO_TIMEOUT):
                self._session.receive(*await _receive(sock))
            async with self._zds_lock:
                self._zds = sock
                for uid in list(self.pool.pods):
                    pod = self.pool.pods.get(uid)
                    if pod is None:  # a Del came while we waited for an ack
                        continue
                    error = await self._exchange(Add(uid, pod.info), pod.fd)
                    if error:
                        log.warning("worker could not start a pod; it retries", worker=self.index, error=error)
                await self._exchange(SnapshotSent(), None)
            log.info("ztunnel worker given the pods", worker=self.index, pods=len(self.pool.pods))
        except (OSError, ZdsError, trio.TooSlowError, _WorkerError) as exc:
            self._kill(f"ZDS session with the worker failed: {exc}")

    async def forward(self, message: Callable[[], tuple[Any, int | None] | None]) -> str | None:
        """Send one request (built now, None if it is stale) and wait for the ack.

        A worker that has not said Hello yet is skipped: it gets every pod when it does. One that
        breaks the protocol or does not ack in time is killed, and so restarted.
        """
        async with self._zds_lock:
            built = message() if self._zds is not None else None
            if built is None:
                return None
            request, fd = built
            try:
                return await self._exchange(request, fd)
            except (OSError, ZdsError, trio.TooSlowError) as exc:
                self._kill(f"did not ack {type(request).__name__}: {exc}")
                return f"did not ack {type(request).__name__} ({exc}); restarting it"
            except _WorkerError as exc:
                return str(exc)

    async def _exchange(self, request, fd: int | None) -> str | None:
        """One request and its ack; the ack's error text (None when it succeeded)."""
        assert self._zds is not None
        with trio.fail_after(WORKER_ACK_TIMEOUT):
            await transport.send(self._zds, self._session.send(request), fd)
            ack = self._session.receive(*await _receive(self._zds))
        if not ack.ok and isinstance(request, SnapshotSent):
            raise _WorkerError(f"refused the snapshot: {ack.error}")
        return ack.error or None

    async def status(self) -> dict | None:
        """The worker's own status, or None if it is not running, has not said Hello yet or does
        not answer in time."""
        async with self._status_lock:
            stream = self._status
            if stream is None or self._zds is None:
                return None
            seq = next(self._seq)
            with trio.move_on_after(STATUS_TIMEOUT):
                try:
                    await stream.send_all(f"status {seq}\n".encode())
                    while True:
                        while b"\n" not in self._status_buffer:
                            data = await stream.receive_some(65536)
                            if not data:
                                return None
                            self._status_buffer += data
                        line, self._status_buffer = self._status_buffer.split(b"\n", 1)
                        reply = json.loads(line)
                        if reply.get("seq") == seq:  # older replies are answers we gave up waiting for
                            return reply
                except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError, AttributeError):
                    return None
            return None

    def _kill(self, reason: str) -> None:
        if self.pid is not None:
            log.warning("killing ztunnel worker", worker=self.index, reason=reason)
            self.process.kill()

    async def _terminate(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.pool.config.drain_seconds + 5):
            await process.wait()
        if process.returncode is None:
            log.warning("ztunnel worker did not stop in time; killing it", worker=self.index)
            process.kill()
            await process.wait()


class _WorkerError(Exception):
    """A worker answered, but not as a worker must (refused its snapshot)."""


async def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    data, fds = await transport.receive(sock)
    for fd in fds:
        # Workers never send descriptors: NodeSession refuses such a message; nothing keeps these.
        transport.close_fd(fd)
    if not data:
        raise OSError("the worker closed its ZDS socket")
    return data, fds
