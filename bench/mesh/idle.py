"""`python -m bench.mesh.idle HOST PORT COUNT`: hold COUNT idle TCP connections open.

Run inside the client pod's network namespace. Opens the connections one after another, prints
one JSON line (`{"opened": n, "failed": m, "seconds": s}`), then holds them, sending nothing,
until its standard input closes or says anything, and closes them all. `holding(...)` is the
benchmark's side: it runs the holder in a namespace and always releases it.
"""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CONNECT_TIMEOUT = 10.0
ROOT = Path(__file__).resolve().parents[2]
# How long the holder may take to close its connections and exit once released.
RELEASE_TIMEOUT = 60.0


@contextmanager
def holding(netns: str, host: str, port: int, count: int) -> Iterator[subprocess.Popen]:
    """The holder running in `netns` against host:port (its first stdout line is the JSON result);
    on exit its stdin is closed so it closes every connection, and it is killed if it has not
    exited within RELEASE_TIMEOUT."""
    holder = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "bench.mesh.idle", host, str(port), str(count)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        yield holder
    finally:
        if holder.poll() is None:
            holder.stdin.close()
            try:
                holder.wait(RELEASE_TIMEOUT)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()


def main(argv: list[str]) -> int:
    host, port, count = argv[0], int(argv[1]), int(argv[2])
    # One descriptor per connection plus a few; root may raise the hard limit too.
    need = count + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
    held: list[socket.socket] = []
    failed = 0
    start = time.perf_counter()
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect((host, port))
        except OSError:
            sock.close()
            failed += 1
            continue
        held.append(sock)
    print(json.dumps({"opened": len(held), "failed": failed, "seconds": time.perf_counter() - start}), flush=True)
    sys.stdin.readline()
    for sock in held:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
