"""The echo app the local runtime ships: tells a caller who answered, who called, and what it sent.

Listens for HTTP/1.1 and HTTP/2 (h2c), gRPC, and raw TCP; see `wisp-echo --help`. Used for demos
(which replica answered? did the mesh keep the caller's address?), tests and benchmarks.

Failure and delay switches, for tests of retries, timeouts and load balancing
(`echo.faults` has the details):

| switch                 | for the pod (flag / env)                     | for one request (header)            |
|------------------------|----------------------------------------------|-------------------------------------|
| fail the first N       | `--fail-first N` / `WISP_ECHO_FAIL_FIRST`    | `x-echo-fail-first: N` + `x-echo-fail-key: K` (counted per key) |
| fail P% (independent)  | `--fail-percent P` / `WISP_ECHO_FAIL_PERCENT`| `x-echo-fail-percent: P`            |
| status of those fails  | `--fail-status S` / `WISP_ECHO_FAIL_STATUS` (503) | `x-echo-fail-status: S`        |
| always answer status S | -                                            | `x-echo-status: S`                  |
| fixed delay            | `--delay-ms D` / `WISP_ECHO_DELAY_MS`        | `x-echo-delay-ms: D`                |
| gRPC status            | -                                            | `x-echo-grpc-status: C` (trailers-only) |

A request header overrides the pod's switch of its kind. Injected answers carry `x-echo-fault`.
A failed gRPC call answers trailers-only with the gRPC status its HTTP status maps to (503 → 14).
"""

from .cli import main
from .config import EchoConfig
from .server import echo_tcp, serve

__all__ = ["EchoConfig", "echo_tcp", "main", "serve"]
