"""The ztunnel process: shared state every pod proxy uses, and the tasks that keep it current.

Holds the config (ProxyState, rebuilt per version, after which live inbound connections are
re-authorized), the certificate manager, metrics, live connections and the pod proxies; runs
the config subscriber, the ZDS client, the HTTP endpoints, and the drain on SIGTERM. The pod
proxies get the narrow part of this as `ProxyInputs` (proxy/inputs.py), never this object.

With `workers` > 1 this process also supervises the other worker processes (inpod/): its
ZDS client feeds them every pod and its endpoints answer for all of them. A worker itself
(`worker_fds` set) gets its pods from the main process and serves no HTTP endpoint.
"""

from __future__ import annotations

import signal

import structlog
import trio

from wisp import sockets
from wisp.controlplane.client import ConfigSubscriber, Endpoint, fetch_certificate
from wisp.engine.runtime import Engine, return_freed_memory
from wisp.identity import SpiffeId
from wisp.model import ModelSnapshot, to_json
from wisp.zds.workload import ZdsClient

from . import admin
from .config import Config
from .identity import CertManager
from .inpod.fanout import PodFanOut
from .inpod.manager import PodManager
from .inpod.supervisor import WorkerPool, pending_of
from .inpod.worker import serve_supervisor
from .metrics import Metrics
from .proxy.connections import ConnectionTracker, describe
from .proxy.inputs import ProxyInputs
from .state.current import CurrentState
from .state.proxy_state import ProxyState

log = structlog.get_logger("ztunnel")


class Ztunnel:
    def __init__(self, config: Config, engine: Engine | None = None) -> None:
        self.config = config
        self.engine = engine or Engine(config.engine)
        self.current = CurrentState()
        self.config_version: str | None = None
        self.config_synced = False
        self.metrics = Metrics()
        self.tracker = ConnectionTracker(self.engine.notify)
        self.pods = PodManager()
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
        self.metrics.forget_series()
        gone = _vacated_addresses(self.state.snapshot, snapshot)
        if gone:
            for proxy in self.pods.proxies.values():
                if proxy.pool is not None:
                    for address in gone:
                        proxy.pool.close_to(address, "workload at this address left the mesh config")
        state = ProxyState(snapshot)
        self.current.replace(state)
        self.config_version = version
        self.config_synced = True
        closed = self.tracker.recheck(state)
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

    @property
    def state(self) -> ProxyState:
        """The config version in force."""
        return self.current.state

    @property
    def state_changed(self) -> trio.Event:
        """Set when the next config version is applied."""
        return self.current.changed

    # -- what the endpoints report -------------------------------------------------------------
    async def config_dump(self) -> dict:
        snapshot = self.state.snapshot
        dump = {
            "node": self.config.node,
            # Who this ztunnel is, as its pod's environment said (null outside Kubernetes).
            "pod": {"name": self.config.pod_name, "namespace": self.config.pod_namespace,
                    "ip": self.config.instance_ip, "service_account": self.config.service_account},
            "workloads": [to_json(w) for _, w in sorted(snapshot.workloads.items())],
            "services": [to_json(s) for _, s in sorted(snapshot.services.items())],
            "policies": [to_json(p) for _, p in sorted(snapshot.authorizations.items())],
            **self.process_dump(),
        }
        if self.workers is not None:
            dump["workers"] = await self.workers.statuses()
            dump["ready"] = not (self.pending() or pending_of(dump["workers"]))
        return dump

    def process_dump(self) -> dict:
        """What this process holds: the main process's part of /config_dump, a worker's status."""
        pending = self.pending()
        return {
            "version": self.config_version,
            "certificates": self.certs.dump() if self.certs else [],
            "pods": [proxy.describe() for _, proxy in sorted(self.pods.proxies.items())],
            "pending_pods": sorted(self.pods.pending),
            "connections": len(self.tracker.live),
            "connection_list": sorted((describe(t) for t in list(self.tracker.live)),
                                      key=lambda c: (c["workload"], c["direction"], c["local"], c["remote"])),
            "connections_opened": self.metrics.value("istio_tcp_connections_opened_total"),
            "pending": pending,
            "ready": not pending,
        }

    def _workers_dir(self) -> str | None:
        return self.workers.metrics_dir if self.workers else None

    # -- running -------------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED, handle_signals: bool = True) -> None:
        """Serve until SIGTERM/SIGINT (or `request_shutdown`), drain, return."""
        endpoint = self._control_plane()
        fetch = self._fetcher(endpoint)
        async with CertManager(fetch) as certs:
            self.certs = certs
            async with trio.open_nursery() as nursery:
                await nursery.start(self.engine.serve)
                if self.config.worker_fds is None:
                    await self._start_http(nursery)
                if self.workers is not None:
                    await nursery.start(self.workers.run)
                inputs = ProxyInputs(self.engine, self.current, certs, self.metrics, self.tracker,
                                     self.config.trust_domain, self.config.max_connections_per_source)
                await nursery.start(self.pods.run, inputs)
                if endpoint is not None:
                    self.subscriber = ConfigSubscriber(
                        endpoint, self.config.subscriber_id,
                        lambda snapshot: self.apply_config(snapshot, self.subscriber.view.version),
                    )
                    nursery.start_soon(self.subscriber.run)
                if self.config.worker_fds is None:
                    nursery.start_soon(self.zds.run)
                else:
                    nursery.start_soon(serve_supervisor, self.zds, self.process_dump, self.request_shutdown,
                                       *self.config.worker_fds)
                nursery.start_soon(self.metrics.flush_periodically)
                nursery.start_soon(return_freed_memory)
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
            ("readiness", self.config.readiness_address, admin.readiness_handler(self.pending_all)),
            ("metrics", self.config.metrics_address, admin.metrics_handler(self.metrics, self._workers_dir)),
            ("admin", self.config.admin_address,
             admin.admin_handler(self.config_dump, self.pending_all, self.request_shutdown)),
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

    def _fetcher(self, endpoint: Endpoint | None):
        ttl = self.config.certificate_ttl

        async def fetch(identity: SpiffeId):
            if endpoint is None:
                raise RuntimeError("no control plane configured; cannot obtain certificates")
            return await fetch_certificate(endpoint, identity, ttl)
        return fetch


def _vacated_addresses(old: ModelSnapshot, new: ModelSnapshot) -> set[str]:
    """Addresses whose workload was removed or replaced between two config versions."""
    now = {address: uid for uid, w in new.workloads.items() for address in w.addresses}
    return {address for uid, w in old.workloads.items() for address in w.addresses if now.get(address) != uid}
