"""`python -m bench.mesh.idle HOST PORT COUNT`: hold COUNT idle TCP connections open.

Run inside the client pod's network namespace. Opens the connections one after another, prints
one JSON line (`{"opened": n, "failed": m, "seconds": s}`), then holds them, sending nothing,
until its standard input closes or says anything, and closes them all.
"""

from __future__ import annotations

import json
import resource
import socket
import sys
import time

CONNECT_TIMEOUT = 10.0


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
