"""`wisp-echo`: the echo app's command line; runs until SIGTERM or SIGINT, then exits 0."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys
from functools import partial

import structlog
import trio

from wisp import log, sockets

from .config import EchoConfig
from .faults import Faults, SwitchError, Switches
from .server import serve

logger = structlog.get_logger("wisp.echo")

_USAGE_EXAMPLES = """\
examples:
  wisp-echo --http 8080
  wisp-echo --http 8080 --grpc 9090 --tcp 9000 --name web-0
  wisp-echo --bind :: --http 8080 --log-requests
  wisp-echo --http 8080 --fail-first 2 --fail-status 503
  wisp-echo --http 8080 --fail-percent 50 --delay-ms 100

failure and delay switches (flags, or WISP_ECHO_FAIL_FIRST, WISP_ECHO_FAIL_PERCENT,
WISP_ECHO_FAIL_STATUS, WISP_ECHO_DELAY_MS; flags win), and per request the headers
x-echo-status, x-echo-fail-percent, x-echo-fail-status, x-echo-fail-first with
x-echo-fail-key, x-echo-delay-ms, x-echo-grpc-status: see `pydoc echo.faults`.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="wisp-echo", epilog=_USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Echo app: answers HTTP/1.1, HTTP/2 (h2c), gRPC and raw TCP with who called.")
    parser.add_argument("--http", type=_port, metavar="PORT",
                        help="HTTP/1.1 and HTTP/2 with prior knowledge (gRPC too) on this port")
    parser.add_argument("--grpc", type=_port, metavar="PORT",
                        help="gRPC (HTTP/2 without TLS) on this port: /wisp.echo.Echo/Echo")
    parser.add_argument("--tcp", type=_port, metavar="PORT",
                        help="raw TCP echo on this port")
    parser.add_argument("--name", help="name to report (default: $HOSTNAME, else the host name)")
    parser.add_argument("--bind", type=_address, default="0.0.0.0", metavar="ADDR",
                        help="address to listen on (default 0.0.0.0; :: for IPv6 and IPv4)")
    parser.add_argument("--log-requests", action="store_true",
                        help="log one line per request or TCP connection")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--fail-first", type=int, metavar="N",
                        help="fail the first N requests (status --fail-status)")
    parser.add_argument("--fail-percent", type=float, metavar="P",
                        help="fail each request with probability P%% (0-100)")
    parser.add_argument("--fail-status", type=int, metavar="S",
                        help="status of the failures above (default 503)")
    parser.add_argument("--delay-ms", type=int, metavar="D",
                        help="answer every request D milliseconds late")
    args = parser.parse_args(argv)
    if args.http is None and args.grpc is None and args.tcp is None:
        parser.error("give at least one of --http, --grpc, --tcp")
    try:
        switches = _switches(args, os.environ)
    except SwitchError as exc:
        parser.error(str(exc))
    log.configure(args.log_level)
    config = EchoConfig(name=args.name or os.environ.get("HOSTNAME") or socket.gethostname(),
                        log_requests=args.log_requests, faults=Faults(switches))
    listeners: dict[str, socket.socket] = {}
    try:
        for kind in ("http", "grpc", "tcp"):
            port = getattr(args, kind)
            if port is not None:
                listeners[kind] = sockets.listener((args.bind, port), reuse_port=False)
    except OSError as exc:
        print(f"wisp-echo: cannot listen on {args.bind} port {port}: {exc.strerror}",
              file=sys.stderr)
        for sock in listeners.values():
            sock.close()
        return 1
    return trio.run(_run, config, listeners)


async def _run(config: EchoConfig, listeners: dict[str, socket.socket]) -> int:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve, config, **listeners))
            logger.info("echo app listening", name=config.name,
                        switches=str(config.faults.switches) if config.faults.switches.active else None,
                        **{kind: sock.getsockname()[1] for kind, sock in listeners.items()})
            async for signum in signals:
                logger.info("echo app stopping", signal=signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    return 0


def _switches(args: argparse.Namespace, env: dict[str, str]) -> Switches:
    """The pod's failure and delay switches: the environment's, each overridden by its flag."""
    base = Switches.from_environment(env)
    return Switches(
        fail_first=base.fail_first if args.fail_first is None else args.fail_first,
        fail_percent=base.fail_percent if args.fail_percent is None else args.fail_percent,
        fail_status=base.fail_status if args.fail_status is None else args.fail_status,
        delay_ms=base.delay_ms if args.delay_ms is None else args.delay_ms)


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None
