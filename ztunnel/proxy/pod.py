"""One enrolled pod's proxy: its three listeners, its HBONE pool and server, its connections.

Lifecycle: `run` serves until cancelled (pod removed) and closes everything it owns, the netns
fd included; `drain` stops accepting, sends GOAWAY on inbound HBONE connections and lets live
connections finish.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable

import structlog
import trio

from wisp import sockets
from wisp.hbone import HbonePool, HboneServer
from wisp.identity import SpiffeId
from wisp.netns import NetnsId
from wisp.zds.protocol import WorkloadInfo

from . import inbound, inbound_passthrough, listeners, outbound
from .inputs import PodContext, ProxyInputs
from .listeners import PodListeners

log = structlog.get_logger("ztunnel.proxy")

Handler = Callable[[ProxyInputs, PodContext, socket.socket, tuple[str, int]], Awaitable[None]]


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
        self.scope = trio.CancelScope()
        self._accepting = trio.CancelScope()
        self._connections: trio.Nursery | None = None
        self.stopped = trio.Event()
        self._server_drained = trio.Event()

    @property
    def identity(self) -> SpiffeId:
        return self.pod.identity

    @property
    def pool(self) -> HbonePool | None:
        return self.pod.pool

    async def certificate(self):
        return await self.inputs.certs.get(self.identity)

    async def _socket_factory(self, address: tuple[str, int], source_ip: str | None) -> socket.socket:
        # HBONE leaves from the source pod, marked so its own rules do not capture it again.
        return listeners.pod_socket(self.pod.netns_fd, address[0], source=source_ip)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        certs = self.inputs.certs
        certs.track(self.identity)
        try:
            with self.scope:
                async with HbonePool(certs.get, socket_factory=self._socket_factory) as pool, \
                        HboneServer(self._inbound, trust_domain=self.identity.trust_domain) as server:
                    self.pod.pool, self.server = pool, server
                    async with trio.open_nursery() as connections:
                        self._connections = connections
                        with self._accepting:
                            async with trio.open_nursery() as accepts:
                                await server.listen(self.listeners.inbound, self.certificate)
                                accepts.start_soon(self._accept_loop, self.listeners.outbound, outbound.serve)
                                accepts.start_soon(self._accept_loop, self.listeners.inbound_plaintext,
                                                   inbound_passthrough.serve)
                                log.info("pod proxy started", uid=self.pod.uid, pod=self.pod.name,
                                         identity=str(self.identity))
                                task_status.started(self)
                                await trio.sleep_forever()
                        # Draining: connections already accepted run on until the drain deadline.
                    # Inbound HBONE streams live in the server; leave only once its drain is over.
                    await self._server_drained.wait()
        finally:
            self.listeners.close()
            certs.untrack(self.identity)
            os.close(self.pod.netns_fd)
            self.stopped.set()
            log.info("pod proxy stopped", uid=self.pod.uid, pod=self.pod.name)

    async def _accept_loop(self, sock: socket.socket, handler: Handler) -> None:
        try:
            while True:
                conn, peer = await sockets.accept(sock)
                assert self._connections is not None
                self._connections.start_soon(self._serve, handler, conn, peer)
        finally:
            sockets.close(sock)

    async def _serve(self, handler: Handler, conn: socket.socket, peer: tuple[str, int]) -> None:
        try:
            await handler(self.inputs, self.pod, conn, peer)
        except Exception:
            # A bug costs one connection, never the pod's proxy.
            log.exception("connection handler failed", pod=self.pod.name, peer=f"{peer[0]}:{peer[1]}")
            sockets.close(conn)

    async def _inbound(self, request) -> None:
        await inbound.handle(self.inputs, self.pod, request)

    async def drain(self, timeout: float) -> None:
        """Stop accepting; GOAWAY inbound HBONE; let connections run until `timeout`."""
        self._accepting.cancel()
        try:
            if self.server is not None:
                await self.server.drain(timeout)
        finally:
            self._server_drained.set()

    def stop(self) -> None:
        self.scope.cancel()

    def describe(self) -> dict:
        return {
            "uid": self.pod.uid, "name": self.pod.info.name, "namespace": self.pod.info.namespace,
            "service_account": self.pod.info.service_account, "identity": str(self.identity),
            "netns": {"dev": self.pod.netns.dev, "inode": self.pod.netns.ino},
            "state": "draining" if self._accepting.cancel_called else "up",
        }
