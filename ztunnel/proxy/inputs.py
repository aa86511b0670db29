"""What a connection handler is given: the process's narrow inputs and the pod it serves.

Like istio/ztunnel's `ProxyInputs`: handlers see the config in force, the certificate source,
the metrics, the connection tracker and the engine whose loop runs them — never the
application object — and, per pod, its
identity, netns and HBONE pool.
"""

from __future__ import annotations

from dataclasses import dataclass

from wisp.engine.accept import DEFAULT_PER_SOURCE
from wisp.engine.pool import Pool
from wisp.engine.runtime import Engine
from wisp.identity import SpiffeId
from wisp.model import Workload
from wisp.netns import NetnsId
from wisp.zds.protocol import WorkloadInfo

from ..identity import CertManager
from ..metrics import Metrics
from ..state.current import CurrentState
from ..state.proxy_state import ProxyState
from .connections import ConnectionTracker


@dataclass(slots=True, frozen=True)
class ProxyInputs:
    """Shared by every pod proxy of one process."""

    engine: Engine
    state: CurrentState
    certs: CertManager
    metrics: Metrics
    tracker: ConnectionTracker
    trust_domain: str  # for a pod the config does not name yet
    max_connections_per_source: int = DEFAULT_PER_SOURCE  # on each listener of a pod


@dataclass(slots=True)
class PodContext:
    """One enrolled pod, as its handlers need it."""

    uid: str
    info: WorkloadInfo
    netns: NetnsId
    netns_fd: int  # owned by the pod's proxy, closed when it stops
    identity: SpiffeId
    pool: Pool | None = None  # set while the proxy runs

    def workload(self, state: ProxyState) -> Workload | None:
        return state.local_workload(self.info.namespace, self.info.name)

    @property
    def name(self) -> str:
        return f"{self.info.namespace}/{self.info.name}"
