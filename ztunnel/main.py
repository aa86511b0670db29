"""`wisp-ztunnel`: the node proxy's command line.

Every setting Istio's chart passes through the environment (NODE_NAME, XDS_ADDRESS, CA_ADDRESS,
AUTH_TOKEN, CA_ROOT_CA, TRUST_DOMAIN, ...: ztunnel/environment.py) is the default of its flag;
a flag given wins. A bad flag or variable is a usage error (exit 2) naming it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import structlog

from wisp import log as wisp_log
from wisp.controlplane.client import check_address
from wisp.engine.accept import DEFAULT_PER_SOURCE, raise_file_limit
from wisp.engine.runtime import DEFAULT_SHAPE, SHAPES, Engine
from wisp.identity import DEFAULT_TRUST_DOMAIN
from wisp.zds.protocol import DEFAULT_SOCKET_PATH

from .app import Ztunnel
from .config import Config
from .environment import EnvironmentProblem, read as read_environment
from .inpod.supervisor import default_count

MAX_WORKERS = 64


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


def _host_port(text: str) -> str:
    try:
        return check_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _worker_count(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers from 1 to {MAX_WORKERS}")
    return int(text)


def _positive(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def _fd_pair(text: str) -> tuple[int, int]:
    first, sep, second = text.partition(",")
    if not sep or not first.isdigit() or not second.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not ZDS_FD,STATUS_FD")
    return int(first), int(second)


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(prog="wisp-ztunnel", description="wisp's per-node L4 proxy (ztunnel)")
    parser.add_argument("--node", help="this node's name (env NODE_NAME)")
    parser.add_argument("--zds-socket", help=f"the node agent's ZDS socket (env INPOD_UDS; default {DEFAULT_SOCKET_PATH})")
    parser.add_argument("--control-plane", type=_host_port,
                        help="host:port of the control plane, config stream and CA "
                             "(env WISP_CONTROL_PLANE, or XDS_ADDRESS/CA_ADDRESS as Istio's chart sets them)")
    parser.add_argument("--state-dir", default="/run/wisp/state",
                        help="holds root-cert.pem and tokens/ztunnel-<node>")
    parser.add_argument("--token-file",
                        help="bearer token (env AUTH_TOKEN; default <state-dir>/tokens/ztunnel-<node>)")
    parser.add_argument("--root-cert", help="mesh roots (env CA_ROOT_CA or XDS_ROOT_CA; default <state-dir>/root-cert.pem)")
    parser.add_argument("--trust-domain", help=f"env TRUST_DOMAIN; default {DEFAULT_TRUST_DOMAIN}")
    parser.add_argument("--admin-address", type=_address, default=("127.0.0.1", 15000))
    parser.add_argument("--metrics-address", type=_address, default=("0.0.0.0", 15020))
    parser.add_argument("--readiness-address", type=_address, default=("0.0.0.0", 15021))
    parser.add_argument("--drain-seconds", type=_seconds, default=5.0,
                        help="how long established connections may run on after SIGTERM (Istio: the "
                             "pod's terminationGracePeriodSeconds)")
    parser.add_argument("--replace", action="store_true",
                        help="if another ztunnel holds the readiness/metrics/admin ports, serve the pods beside "
                             "it, and once ready have it drain and take the ports (a zero-drop restart)")
    parser.add_argument("--workers", type=_worker_count, default=None,
                        help="processes serving the pods, each on its own core "
                             f"(env WISP_ZTUNNEL_WORKERS; default min(2, usable cores) = {default_count()})")
    # Set by the main process on the workers it starts (ztunnel/inpod/supervisor.py).
    parser.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--worker-fds", type=_fd_pair, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=SHAPES, default=os.environ.get("WISP_ZTUNNEL_ENGINE") or DEFAULT_SHAPE,
                        help="how the data path's loop is driven (env WISP_ZTUNNEL_ENGINE; default "
                             f"{DEFAULT_SHAPE}; docs/architecture.md, 'The data-path engine')")
    parser.add_argument("--max-connections-per-source", type=_positive, default=DEFAULT_PER_SOURCE,
                        help="live connections one source IP may hold on each listener of a pod; more are "
                             f"reset at once (default {DEFAULT_PER_SOURCE})")
    parser.add_argument("--log-level", default=os.environ.get("WISP_LOG_LEVEL", "info"))
    parser.add_argument("--log-json", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args(argv)
    given = {name for name in ("node", "zds_socket", "control_plane", "token_file", "root_cert", "trust_domain",
                               "log_json") if getattr(args, name) is not None}
    try:
        env = read_environment(os.environ, given)
    except EnvironmentProblem as exc:
        parser.error(f"environment: {exc}")
    for name in ("node", "zds_socket", "control_plane", "token_file", "root_cert", "trust_domain", "log_json"):
        if name not in given:
            setattr(args, name, getattr(env, name))
    if args.engine not in SHAPES:
        parser.error(f"WISP_ZTUNNEL_ENGINE={args.engine!r} is not an engine shape; choose one of {', '.join(SHAPES)}")
    if not args.node:
        parser.error("--node (or NODE_NAME) is required")
    workers = args.workers
    if workers is None:
        text = os.environ.get("WISP_ZTUNNEL_WORKERS", "")
        try:
            workers = _worker_count(text) if text else default_count()
        except argparse.ArgumentTypeError as exc:
            parser.error(f"WISP_ZTUNNEL_WORKERS: {exc}")
    if (args.worker_fds is None) != (args.worker_index == 0):
        parser.error("--worker-index and --worker-fds go together (they are set by the main process)")
    wisp_log.configure(args.log_level, json=args.log_json)
    if args.worker_index:
        structlog.contextvars.bind_contextvars(worker=args.worker_index)
    return Config(
        node=args.node, zds_socket=args.zds_socket or DEFAULT_SOCKET_PATH, control_plane=args.control_plane,
        state_dir=args.state_dir, trust_domain=args.trust_domain or DEFAULT_TRUST_DOMAIN, token_file=args.token_file,
        root_cert=args.root_cert, admin_address=args.admin_address,
        metrics_address=args.metrics_address, readiness_address=args.readiness_address,
        drain_seconds=args.drain_seconds, replace=args.replace, workers=1 if args.worker_fds else workers,
        worker_index=args.worker_index, worker_fds=args.worker_fds, log_level=args.log_level,
        log_json=args.log_json, engine=args.engine, max_connections_per_source=args.max_connections_per_source,
        pod_name=env.pod_name, pod_namespace=env.pod_namespace, instance_ip=env.instance_ip,
        service_account=env.service_account, certificate_ttl=env.certificate_ttl,
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    # File descriptors are what a busy (or hostile) node exhausts first; Istio's ztunnel also
    # raises its limit at start.
    raise_file_limit()
    engine = Engine(config.engine)
    try:
        engine.run(Ztunnel(config, engine).run)
    except OSError as exc:
        print(f"wisp-ztunnel: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
