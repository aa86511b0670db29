"""A prober of new connections, run inside a pod's network namespace (`ip netns exec NS python -m
bench.reliability.probe HOST:PORT`).

Every `--interval` seconds it opens a new TCP connection, sends one HTTP/1.1 GET (the path carries
the plaintext marker that the capture looks for) and reads the whole response, then prints one JSON
line: the attempt's start on CLOCK_BOOTTIME (the clock /proc/<pid>/stat's start times count, so
process restarts can be placed on the same axis), its duration and its outcome:

| outcome | what the client saw |
| --- | --- |
| `ok` | a 200 with its whole body |
| `refused` | a reset answering the SYN (ECONNREFUSED): nothing listens on the redirect target |
| `reset` | a reset after the connection was established (ECONNRESET / EPIPE) |
| `eof` | a FIN before the whole response: the connection was closed, not reset |
| `timeout` | no answer within `--timeout` |
| `status:N` | an HTTP status other than 200 |
| `error:NAME` | any other socket error, by errno name |

Attempts run one after another (a slow one delays the next), so the lines are in time order.
SIGTERM (or SIGINT) ends it.
"""

from __future__ import annotations

import argparse
import errno
import json
import signal
import socket
import sys
import time

MARKER = "wisp-reliability-plaintext-marker-5c1e"


def now() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def attempt(host: str, port: int, path: str, timeout: float) -> str:
    """One request on a new connection; its outcome as the module docstring names them."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect((host, port))
        except ConnectionRefusedError:
            return "refused"
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return _complete(received) or "eof"
            received += chunk
            if (outcome := _complete(received)) is not None:
                return outcome
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"error:{errno.errorcode.get(exc.errno or 0, exc.errno)}"
    finally:
        sock.close()


def _complete(received: bytes) -> str | None:
    """The outcome once `received` holds a whole response, else None."""
    head, sep, body = received.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return "status:0"
    length = next((int(line.split(b":", 1)[1]) for line in lines[1:]
                   if line.lower().startswith(b"content-length:")), 0)
    if len(body) < length:
        return None
    return "ok" if status == 200 else f"status:{status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability.probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="HOST:PORT")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between attempt starts")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds an attempt may take")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"target {args.target!r} is not HOST:PORT")
    path = f"/{MARKER}"
    # SIGTERM ends it (SIGINT may be ignored: a shell's background jobs inherit it ignored).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    next_start = now()
    try:
        while True:
            started = now()
            outcome = attempt(host, int(port), path, args.timeout)
            print(json.dumps({"t": round(started, 4), "ms": round((now() - started) * 1000, 2), "outcome": outcome}),
                  flush=True)
            next_start = max(next_start + args.interval, now())
            time.sleep(max(0.0, next_start - now()))
    except (KeyboardInterrupt, BrokenPipeError):
        return 0
    except SystemExit:
        return 0


if __name__ == "__main__":
    sys.exit(main())
