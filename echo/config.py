"""Settings shared by the echo app's listeners."""

from __future__ import annotations

from dataclasses import dataclass, field

from .faults import Faults

# Bytes asked of the socket per read: large reads keep Python work per chunk, not per packet.
READ_SIZE = 256 * 1024


@dataclass(slots=True, frozen=True)
class EchoConfig:
    name: str  # reported as `hostname`; the local runtime sets it to the pod's name
    log_requests: bool = False  # one log line per request or TCP connection (off for benchmarks)
    # The failure and delay switches and their counts (echo.faults); shared by every listener.
    faults: Faults = field(default_factory=Faults, compare=False)
