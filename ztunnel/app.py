"""The ztunnel process: shared state every pod proxy uses, and the tasks that keep it current.

Holds the config (ProxyState, rebuilt per version, after which live inbound connections are
re-authorized), the certificate manager, metrics, live connections and the pod proxies; runs
the config subscriber, the ZDS client, the HTTP endpoints, and the drain on SIGTERM.

With `workers` > 1 this process also supervises the other worker processes (workers.py): its
ZDS client feeds them every pod and its endpoints answer for all of them. A worker itself
(`worker_fds` set) gets its pods from the main process and serves no HTTP endpoint.
"""

from __future__ import annotations

import contextlib
import signal
from dataclasses import dataclass
from pathlib import Path

import httpx
import structlog
import trio

from wisp import sockets
from wisp.controlplane.client import ConfigSubscriber, Endpoint, fetch_certificate
from wisp.identity import DEFAULT_TRUST_DOMAIN, SpiffeId
from wisp.model import ModelSnapshot
from wisp.zds.workload import ZdsClient

from . import admin
from .connections import ConnectionTracker
from .identity import CertManager
from .inpod import PodManager
from .metrics import Metrics
from .state import ProxyState
from .workers import PodFanOut, WorkerPool, serve_supervisor

log = structlog.get_logger("ztunnel")


@dataclass(slots=True, frozen=True)
class Config:
    node: str
    zds_socket: str
    control_plane: str | None
    state_dir: str = "/run/wisp/state"
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    token_file: str | None = None  # default <state_dir>/tokens/ztunnel-<node>
    root_cert: str | None = None  # default <state_dir>/root-cert.pem
    admin_address: tuple[str, int] = ("127.0.0.1", 15000)
    metrics_address: tuple[str, int] = ("0.0.0.0", 15020)
    readiness_address: tuple[str, int] = ("0.0.0.0", 15021)
    drain_seconds: float = 5.0
    certificate_ttl: int | None = None
    workers: int = 1  # processes in all, this one included
    worker_index: int = 0
    worker_fds: tuple[int, int] | None = None  # in a worker: its ZDS and status sockets
    log_level: str = "info"  # passed on to workers
    log_json: bool | None = None

    @property
    def subscriber_id(self) -> str:
        return f"ztunnel-{self.node}-w{self.worker_index}" if self.worker_index else f"ztunnel-{self.node}"

    def token_path(self) -> Path:
        return Path(self.token_file or Path(self.state_dir) / "tokens" / f"ztunnel-{self.node}")

    def root_path(self) -> Path:
        return Path(self.root_cert or Path(self.state_dir) / "root-cert.pem")


class Ztunnel:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.state = ProxyState()
        self.state_changed = trio.Event()
        self.config_version: str | None = None
        self.config_synced = False
        self.metrics = Metrics()
        self.tracker = ConnectionTracker()
        self.pods = PodManager(self)
        self.workers = WorkerPool(config, config.workers) if config.workers > 1 else None
        self.zds = ZdsClient(config.zds_socket, self.pods if self.workers is None else PodFanOut(self.pods, self.workers))
        self.certs: CertManager | None = None
        self.subscriber: ConfigSubscriber | None = None
        self.draining = False
        self.bound: dict[str, tuple[str, int]] = {}
        self._shutdown = trio.Event()
        self._started = trio.Event()

    # -- config --------------------------------------------------------------------------------
    def apply_config(self, snapshot: ModelSnapshot, version: str | None = None) -> None:
        """Install a new config version; live inbound connections it now denies are closed, and
        pooled HBONE connections to workloads that went away (or moved) are dropped."""
        gone = _vacated_addresses(self.state.snapshot, snapshot)
        if gone:
            for proxy in self.pods.proxies.values():
                if proxy.pool is not None:
                    for address in gone:
                        proxy.pool.close_to(address, "workload at this address left the mesh config")
        self.state = ProxyState(snapshot)
        self.config_version = version
        self.config_synced = True
        closed = self.tracker.recheck(self.state)
        event, self.state_changed = self.state_changed, trio.Event()
        event.set()
        log.info("config applied", version=version, workloads=len(snapshot.workloads),
                 services=len(snapshot.services), policies=len(snapshot.authorizations),
                 connections_closed=closed)

    def pending(self) -> list[str]:
        """What readiness still waits for; empty when ready."""
        pending = []
        if not self.config_synced:
            pending.append("config")
        if not self.zds.snapshot_done.is_set():
            pending.append("pod snapshot")
        if self.draining:
            pending.append("shutdown (draining)")
        return pending

    async def pending_all(self) -> list[str]:
        """`pending`, and what each worker process still waits for."""
        return self.pending() + (await self.workers.pending() if self.workers else [])

    def request_shutdown(self) -> None:
        self._shutdown.set()

    # -- running -------------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED, handle_signals: bool = True) -> None:
        """Serve until SIGTERM/SIGINT (or `request_shutdown`), drain, return."""
        endpoint = self._control_plane()
        async with (endpoint.client() if endpoint else contextlib.nullcontext()) as client:
            fetch = self._fetcher(client)
            async with CertManager(fetch) as certs:
                self.certs = certs
                async with trio.open_nursery() as nursery:
                    if self.config.worker_fds is None:
                        await self._start_http(nursery)
                    if self.workers is not None:
                        await nursery.start(self.workers.run)
                    await nursery.start(self.pods.run)
                    if endpoint is not None:
                        self.subscriber = ConfigSubscriber(
                            endpoint, self.config.subscriber_id,
                            lambda snapshot: self.apply_config(snapshot, self.subscriber.view.version),
                        )
                        nursery.start_soon(self.subscriber.run)
                    if self.config.worker_fds is None:
                        nursery.start_soon(self.zds.run)
                    else:
                        nursery.start_soon(serve_supervisor, self, *self.config.worker_fds)
                    nursery.start_soon(self.metrics.flush_periodically)
                    if handle_signals:
                        nursery.start_soon(self._watch_signals)
                    log.info("ztunnel started", node=self.config.node, **{k: f"{h}:{p}" for k, (h, p) in self.bound.items()})
                    task_status.started(self)
                    await self._shutdown.wait()
                    async with trio.open_nursery() as draining:
                        draining.start_soon(self.drain)
                        if self.workers is not None:
                            draining.start_soon(self.workers.stop)
                    nursery.cancel_scope.cancel()
        log.info("ztunnel stopped")

    async def drain(self) -> None:
        """Close listeners, GOAWAY inbound HBONE, let connections finish until the deadline."""
        self.draining = True
        deadline = self.config.drain_seconds
        log.info("draining", connections=len(self.tracker.live), deadline_seconds=deadline)
        with trio.move_on_after(deadline):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.pods.drain, deadline)
                nursery.start_soon(self.tracker.wait_empty)
        if self.tracker.live:
            log.warning("drain deadline reached; closing remaining connections",
                        connections=len(self.tracker.live))

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("shutdown signal received", signal=signal.Signals(signum).name)
                self._shutdown.set()

    async def _start_http(self, nursery: trio.Nursery) -> None:
        for name, address, handler in (
            ("readiness", self.config.readiness_address, admin.readiness_handler(self)),
            ("metrics", self.config.metrics_address, admin.metrics_handler(self)),
            ("admin", self.config.admin_address, admin.admin_handler(self)),
        ):
            # Not SO_REUSEPORT: two ztunnels answering one readiness port would hide a dead one.
            sock = sockets.listener(address, reuse_port=False)
            self.bound[name] = sock.getsockname()[:2]
            await nursery.start(admin.serve_http, sock, handler)

    def _control_plane(self) -> Endpoint | None:
        if not self.config.control_plane:
            return None
        token = self.config.token_path().read_text().strip()
        roots = self.config.root_path().read_bytes()
        return Endpoint(self.config.control_plane, roots, token)

    def _fetcher(self, client: httpx.AsyncClient | None):
        ttl = self.config.certificate_ttl

        async def fetch(identity: SpiffeId):
            if client is None:
                raise RuntimeError("no control plane configured; cannot obtain certificates")
            return await fetch_certificate(client, identity, ttl)
        return fetch


def _vacated_addresses(old: ModelSnapshot, new: ModelSnapshot) -> set[str]:
    """Addresses whose workload was removed or replaced between two config versions."""
    now = {address: uid for uid, w in new.workloads.items() for address in w.addresses}
    return {address for uid, w in old.workloads.items() for address in w.addresses if now.get(address) != uid}
