"""The echo app the local runtime ships: tells a caller who answered, who called, and what it sent.

Listens for HTTP/1.1 and HTTP/2 (h2c), gRPC, and raw TCP; see `wisp-echo --help`. Used for demos
(which replica answered? did the mesh keep the caller's address?), tests and benchmarks.
"""

from .cli import main
from .config import EchoConfig
from .server import echo_tcp, serve

__all__ = ["EchoConfig", "echo_tcp", "main", "serve"]
