"""The ztunnel process: shared state every pod proxy uses, and the tasks that keep it current.

Holds the config (ProxyState, rebuilt per version, after which live inbound connections are
re-authorized), the certificate manager, metrics, live connections and the pod proxies; runs
the config subscriber, the ZDS client, the HTTP endpoints, and the drain on SIGTERM. The pod
proxies get the narrow part of this as `ProxyInputs` (proxy/inputs.py), never this object.

Restart without dropping connections (docs/architecture.md, "Zero-drop ztunnel restart"): pods
are asked for over ZDS only once the config is in, so a new ztunnel opens its SO_REUSEPORT
listeners beside the old one's only when it can route what they accept. Draining (SIGTERM,
POST /quitquitquit) closes the pods' listeners and the ZDS connection and lets established
connections run until they end or `drain_seconds` pass. With `replace`, ports held by another
ztunnel do not stop this one: once ready it asks that one to hand over (POST /handoff: drain,
and let go of the HTTP ports) and takes the ports.

With `workers` > 1 this process also supervises the other worker processes (inpod/): its
ZDS client feeds them every pod and its endpoints answer for all of them. A worker itself
(`worker_fds` set) gets its pods from the main process and serves no HTTP endpoint.
"""

from __future__ import annotations

import errno
import os
import signal
import socket

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
        self._configured = trio.Event()  # the first config version is in
        self._zds_scope = trio.CancelScope()
        self._http_scopes: list[trio.CancelScope] = []
        self._release_ports = False

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
        self._configured.set()
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

    def request_handoff(self) -> None:
        """Drain for a successor: as `request_shutdown`, and the HTTP ports close at once."""
        self._release_ports = True
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
            "pid": os.getpid(),
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
                busy: list[tuple[str, tuple[str, int], admin.Handler]] = []
                if self.config.worker_fds is None:
                    busy = await self._start_http(nursery)
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
                else:
                    self._configured.set()  # nothing to wait for (tests without a control plane)
                if self.config.worker_fds is None:
                    nursery.start_soon(self._serve_zds)
                else:
                    nursery.start_soon(serve_supervisor, self.zds, self.process_dump, self.request_shutdown,
                                       *self.config.worker_fds, self._configured)
                if busy:
                    nursery.start_soon(self._take_over, nursery, busy)
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
        """Close listeners, GOAWAY inbound HBONE, let connections finish until the deadline.

        The ZDS connection closes first, so the node agent gives new pods to the ztunnel that
        replaces this one and this one never reconnects. In a handoff the HTTP ports close a
        moment later (the answer to the /handoff goes out first), so the successor can take them;
        otherwise they stay, readiness saying "draining"."""
        self.draining = True
        deadline = self.config.drain_seconds
        log.info("draining", connections=len(self.tracker.live), deadline_seconds=deadline,
                 handoff=self._release_ports)
        self._zds_scope.cancel()
        if self._release_ports:
            await trio.sleep(0.2)
            for scope in self._http_scopes:
                scope.cancel()
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

    async def _serve_zds(self) -> None:
        """Take pods from the node agent once the config is in (a pod's listeners accept at once,
        and a connection accepted without config could not be routed); stop when draining."""
        with self._zds_scope:
            await self._configured.wait()
            await self.zds.run()

    async def _start_http(self, nursery: trio.Nursery) -> list[tuple[str, tuple[str, int], admin.Handler]]:
        """Open the readiness, metrics and admin ports; with `replace`, return those another
        process holds (the ztunnel this one replaces) instead of failing."""
        busy = []
        for name, address, handler in (
            ("readiness", self.config.readiness_address, admin.readiness_handler(self.pending_all)),
            ("metrics", self.config.metrics_address, admin.metrics_handler(self.metrics, self._workers_dir)),
            ("admin", self.config.admin_address,
             admin.admin_handler(self.config_dump, self.pending_all, self.request_shutdown, self.request_handoff)),
        ):
            try:
                # Not SO_REUSEPORT: two ztunnels answering one readiness port would hide a dead one.
                sock = sockets.listener(address, reuse_port=False)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or not self.config.replace:
                    raise
                busy.append((name, address, handler))
                continue
            await self._serve_http(nursery, name, sock, handler)
        return busy

    async def _serve_http(self, nursery: trio.Nursery, name: str, sock: socket.socket, handler: admin.Handler) -> None:
        self.bound[name] = sock.getsockname()[:2]

        scope = trio.CancelScope()
        self._http_scopes.append(scope)

        async def serve(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await admin.serve_http(sock, handler, task_status=task_status)
        await nursery.start(serve)

    async def _take_over(self, nursery: trio.Nursery, busy: list[tuple[str, tuple[str, int], admin.Handler]]) -> None:
        """Replace the ztunnel holding our ports: once this one is ready (config, every pod's
        listeners open beside the old ones, workers too), ask it to drain, then take the ports it
        lets go. If they stay taken, this process is no use to anyone: it stops with the reason."""
        log.info("ports held by another process; taking over from it once ready",
                 ports=[f"{host}:{port}" for _, (host, port), _ in busy])
        while await self.pending_all():
            await trio.sleep(0.1)
        host, port = self.config.admin_address
        answer = await _post(("127.0.0.1" if host in ("0.0.0.0", "") else host, port), "/handoff")
        log.info("asked the ztunnel being replaced to drain", answer=answer)
        with trio.move_on_after(TAKEOVER_PORT_WAIT):
            while busy:
                name, address, handler = busy[0]
                try:
                    sock = sockets.listener(address, reuse_port=False)
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise
                    await trio.sleep(0.05)
                    continue
                await self._serve_http(nursery, name, sock, handler)
                busy.pop(0)
            log.info("took over from the previous ztunnel", **{k: f"{h}:{p}" for k, (h, p) in self.bound.items()})
            return
        raise OSError(errno.EADDRINUSE, f"ports {', '.join(f'{h}:{p}' for _, (h, p), _ in busy)} stayed taken "
                                        f"{TAKEOVER_PORT_WAIT:g} s after asking their holder to drain")

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


TAKEOVER_PORT_WAIT = 30.0


async def _post(address: tuple[str, int], path: str) -> str:
    """POST `path` with no body to a local HTTP endpoint; what came back, or why nothing did."""
    try:
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream(*address)
            async with stream:
                await stream.send_all(f"POST {path} HTTP/1.1\r\nhost: {address[0]}\r\ncontent-length: 0\r\n"
                                      "connection: close\r\n\r\n".encode())
                reply = b""
                while chunk := await stream.receive_some(4096):
                    reply += chunk
        return reply.split(b"\r\n", 1)[0].decode("ascii", "replace")
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        return f"no answer: {exc}"


def _vacated_addresses(old: ModelSnapshot, new: ModelSnapshot) -> set[str]:
    """Addresses whose workload was removed or replaced between two config versions."""
    now = {address: uid for uid, w in new.workloads.items() for address in w.addresses}
    return {address for uid, w in old.workloads.items() for address in w.addresses if now.get(address) != uid}
