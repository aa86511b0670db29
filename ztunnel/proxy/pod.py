"""One enrolled pod's proxy: its three listeners, its HBONE pool and server, in the engine's loop.

Lifecycle: `run` registers the listeners, the pool and the HBONE server with the engine and
serves until cancelled (pod removed), then closes everything it owns, the netns fd included;
`drain` stops accepting, sends GOAWAY on inbound HBONE connections and lets live connections
finish. Connections themselves are handled in the loop (outbound.py, inbound.py,
inbound_passthrough.py); this object is the trio side of the pod.
"""

from __future__ import annotations

import functools
import os
import socket
import ssl
from collections.abc import Callable

import structlog
import trio

from wisp.engine.accept import Acceptor
from wisp.engine.pool import Pool
from wisp.engine.server import HboneServer
from wisp.hbone.tls import ContextCache
from wisp.identity import SpiffeId
from wisp.netns import NetnsId
from wisp.zds.protocol import WorkloadInfo

from . import inbound, inbound_passthrough, listeners, outbound
from .inputs import PodContext, ProxyInputs
from .listeners import PodListeners

log = structlog.get_logger("ztunnel.proxy")

# SSL contexts per certificate and side, shared by every pod of the process.
_contexts = ContextCache()


class PodProxy:
    def __init__(self, inputs: ProxyInputs, uid: str, info: WorkloadInfo, netns: NetnsId, netns_fd: int,
                 pod_listeners: PodListeners) -> None:
        self.inputs = inputs
        self.listeners = pod_listeners
        workload = inputs.state.state.local_workload(info.namespace, info.name)
        trust_domain = workload.trust_domain if workload else inputs.trust_domain
        identity = SpiffeId(trust_domain, info.namespace, info.service_account or "default")
        self.pod = PodContext(uid, info, netns, netns_fd, identity)
        self.server: HboneServer | None = None
        self._acceptors: list[Acceptor] = []
        self.scope = trio.CancelScope()
        self.stopped = trio.Event()
        self._drained = trio.Event()
        self.draining = False

    @property
    def identity(self) -> SpiffeId:
        return self.pod.identity

    @property
    def pool(self) -> Pool | None:
        return self.pod.pool

    def _context(self, identity: SpiffeId, *, server_side: bool) -> ssl.SSLContext | None:
        bundle = self.inputs.certs.current(identity)
        return _contexts.get(bundle, server_side=server_side) if bundle is not None else None

    def _fetch_certificate(self, identity: SpiffeId, then: Callable[[], None]) -> None:
        """The certificate is not there yet: fetch it on trio's side, then carry on in the loop."""
        async def fetch() -> None:
            try:
                await self.inputs.certs.get(identity)
            except Exception as exc:  # the caller reports the missing certificate
                log.warning("certificate unavailable", identity=str(identity), error=str(exc))
            then()

        self.inputs.engine.spawn(fetch)

    def _socket_factory(self, address: tuple[str, int], source_ip: str | None) -> socket.socket:
        # HBONE leaves from the source pod, marked so its own rules do not capture it again.
        return listeners.pod_socket(self.pod.netns_fd, address[0], source=source_ip)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        certs = self.inputs.certs
        certs.track(self.identity)
        loop = self.inputs.engine.loop
        inputs, pod = self.inputs, self.pod
        try:
            with self.scope:
                pod.pool = Pool(loop, functools.partial(self._context, server_side=False), self._socket_factory,
                                on_missing_certificate=self._fetch_certificate,
                                connect_timeout=listeners.CONNECT_TIMEOUT)
                self.server = HboneServer(
                    loop, self.listeners.inbound, functools.partial(self._context, self.identity, server_side=True),
                    on_request=functools.partial(inbound.handle, inputs, pod),
                    trust_domain=self.identity.trust_domain, name=f"{pod.name}:15008",
                    fetch_certificate=functools.partial(self._fetch_certificate, self.identity),
                    per_source=inputs.max_connections_per_source,
                )
                self._acceptors = [
                    Acceptor(loop, self.listeners.outbound, functools.partial(outbound.serve, inputs, pod),
                             name=f"{pod.name}:15001", per_source=inputs.max_connections_per_source),
                    Acceptor(loop, self.listeners.inbound_plaintext,
                             functools.partial(inbound_passthrough.serve, inputs, pod), name=f"{pod.name}:15006",
                             per_source=inputs.max_connections_per_source),
                ]
                log.info("pod proxy started", uid=pod.uid, pod=pod.name, identity=str(self.identity))
                task_status.started(self)
                await self._drained.wait()
        finally:
            for acceptor in self._acceptors:
                acceptor.close()
            if self.server is not None:
                self.server.close("pod removed")
            if pod.pool is not None:
                pod.pool.close("pod removed")
            self.listeners.close()
            certs.untrack(self.identity)
            os.close(pod.netns_fd)
            self.stopped.set()
            log.info("pod proxy stopped", uid=pod.uid, pod=pod.name)

    async def drain(self, timeout: float) -> None:
        """Stop accepting; GOAWAY inbound HBONE; let the pod's connections run until `timeout`."""
        self.draining = True
        for acceptor in self._acceptors:
            acceptor.close()
        try:
            if self.server is not None:
                self.server.drain()
            tracker = self.inputs.tracker
            with trio.move_on_after(timeout):
                while tracker.count(self.pod) or (self.server is not None and self.server.open_streams):
                    await trio.sleep(0.05)
        finally:
            self._drained.set()

    def stop(self) -> None:
        self.scope.cancel()

    def describe(self) -> dict:
        return {
            "uid": self.pod.uid, "name": self.pod.info.name, "namespace": self.pod.info.namespace,
            "service_account": self.pod.info.service_account, "identity": str(self.identity),
            "netns": {"dev": self.pod.netns.dev, "inode": self.pod.netns.ino},
            "state": "draining" if self.draining else "up",
        }
