"""The node agent: one per node, wiring pod source, enrolment, ZDS server and CNI endpoint.

Start-up order matters: first view → pods annotated `enabled` get their rules re-applied and go
into the ZDS snapshot → only then ztunnel is served and the CNI endpoint opens → ready. A restart
therefore neither duplicates rules nor drops a pod from the mesh.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
import trio

from wisp.zds.node import ACK_TIMEOUT, RETRY_INTERVAL, ZdsServer

from .cni_endpoint import serve_endpoint
from .enrolment import Enroller
from .hostprobe import HostProbe
from .podnetns import NetnsLocator
from .podsource import PodSource
from .rules import PodRules

log = structlog.get_logger("cni.agent")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    node: str
    zds_socket: str
    cni_socket: str
    host_netns: str | None = None  # where the probe SNAT lives; None = the agent's own netns
    ack_timeout: float = ACK_TIMEOUT
    retry_interval: float = RETRY_INTERVAL
    pod_wait: float = 5.0
    resync_interval: float = 30.0
    dns_capture: bool = True


class NodeAgent:
    def __init__(self, config: AgentConfig, source: PodSource, locator: NetnsLocator) -> None:
        self.config = config
        self.source = source
        self.ready = trio.Event()
        self.zds = ZdsServer(config.zds_socket, ack_timeout=config.ack_timeout,
                             retry_interval=config.retry_interval)
        self.probes = HostProbe(config.host_netns)
        self.enroller = Enroller(source=source, zds=self.zds, rules=PodRules(dns_capture=config.dns_capture),
                                 probes=self.probes, locator=locator, pod_wait=config.pod_wait,
                                 resync_interval=config.resync_interval)
        self.zds.on_ack = self.enroller.ztunnel_acked

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.source.run, self.enroller.publish)
            view = await self.enroller.first_view()
            log.info("first pod view", node=self.config.node, version=view.version, pods=len(view.pods))
            await self.enroller.startup(view)
            await nursery.start(self.zds.serve)
            await nursery.start(serve_endpoint, self.config.cni_socket, self.enroller.cni_add, self.ready)
            nursery.start_soon(self.enroller.follow_acks)
            nursery.start_soon(self.enroller.follow_views)
            self.ready.set()
            log.info("node agent ready", node=self.config.node, enrolled=len(self.enroller.enrolled))
            task_status.started()
