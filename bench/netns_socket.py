"""`python -m bench.netns_socket [-n 2000] [--rounds 5]`: time to make one pod connect socket.

What ztunnel pays per new connection before connect(): a marked TCP socket created in the pod's
network namespace. Compared, in a scratch namespace this run creates and removes (`wisp-bnetns…`):

- `thread`: `wisp.netns.run_in_netns` (a trio worker thread enters the netns; the old way),
- `loop`: `wisp.netns.socket_in_netns` on the event-loop thread (setns, socket(), setns back),
- `host`: the same socket made without any namespace switch, as the floor.

Prints microseconds per socket (median of the rounds, and the spread). Needs root.
"""

from __future__ import annotations

import argparse
import functools
import os
import secrets
import statistics
import subprocess
import sys
import time

import trio

from wisp import netns, sockets
from ztunnel.proxy.listeners import MARK

HOST = "10.244.0.10"


def _make() -> None:
    sockets.new_tcp_socket(HOST, mark=MARK).close()


def _loop_round(fd: int, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        netns.socket_in_netns(fd, sockets.new_tcp_socket, HOST, mark=MARK).close()
    return time.perf_counter() - start


def _host_round(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        _make()
    return time.perf_counter() - start


async def _thread_round(fd: int, n: int) -> float:
    make = functools.partial(sockets.new_tcp_socket, HOST, mark=MARK)
    start = time.perf_counter()
    for _ in range(n):
        (await netns.run_in_netns(fd, make)).close()
    return time.perf_counter() - start


def measure(fd: int, n: int, rounds: int) -> dict[str, list[float]]:
    """Microseconds per socket, per round, for each way."""
    results: dict[str, list[float]] = {"thread": [], "loop": [], "host": []}

    async def run() -> None:
        for _ in range(rounds):
            results["thread"].append(await _thread_round(fd, n) / n * 1e6)
            results["loop"].append(_loop_round(fd, n) / n * 1e6)
            results["host"].append(_host_round(n) / n * 1e6)

    trio.run(run)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.netns_socket", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=2000, help="sockets per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.netns_socket: needs root (it creates a network namespace)", file=sys.stderr)
        return 1
    name = f"wisp-bnetns{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        fd = netns.open_netns(netns.path_of(name))
        try:
            results = measure(fd, args.n, args.rounds)
        finally:
            os.close(fd)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
    print(f"µs per pod socket, {args.n} per round, {args.rounds} rounds (median, min–max):")
    for way, values in results.items():
        print(f"  {way:<6} {statistics.median(values):8.1f}  ({min(values):.1f}–{max(values):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
