"""What one ztunnel process is told (its command line, as `Config`) and the ports it owns in every pod.

Plain data read by every part of ztunnel; it imports nothing of ztunnel's, so any part may use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wisp.engine.accept import DEFAULT_PER_SOURCE
from wisp.identity import DEFAULT_TRUST_DOMAIN

# The listeners of every pod proxy (reference §2–§4).
OUTBOUND_PORT = 15001
INBOUND_PLAINTEXT_PORT = 15006
INBOUND_PORT = 15008
# Connecting to one of these would loop traffic back into ztunnel.
ILLEGAL_PORTS = frozenset({OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, INBOUND_PORT})


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
    # Take over from a ztunnel holding our HTTP ports (docs/architecture.md, "Zero-drop ztunnel restart").
    replace: bool = False
    certificate_ttl: int | None = None
    workers: int = 1  # processes in all, this one included
    worker_index: int = 0
    worker_fds: tuple[int, int] | None = None  # in a worker: its ZDS and status sockets
    log_level: str = "info"  # passed on to workers
    log_json: bool | None = None
    engine: str = "epoll"  # the data-path engine's shape (wisp.engine.runtime.SHAPES)
    # Live connections one source IP may hold on each listener of a pod (docs/hbone.md, "Hostile peers").
    max_connections_per_source: int = DEFAULT_PER_SOURCE
    # Who this ztunnel is, as its pod's environment says on Kubernetes (ztunnel/environment.py).
    pod_name: str | None = None
    pod_namespace: str | None = None
    instance_ip: str | None = None
    service_account: str | None = None

    @property
    def subscriber_id(self) -> str:
        return f"ztunnel-{self.node}-w{self.worker_index}" if self.worker_index else f"ztunnel-{self.node}"

    def token_path(self) -> Path:
        return Path(self.token_file or Path(self.state_dir) / "tokens" / f"ztunnel-{self.node}")

    def root_path(self) -> Path:
        return Path(self.root_cert or Path(self.state_dir) / "root-cert.pem")
