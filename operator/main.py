"""`wisp-operator`: the control plane process in local mode.

Loads or creates the CA, issues a credential per node proxy (written to the state directory for
the local runtime to hand out), follows a manifest directory, reconciles, and serves the CA and
the config stream on 15012.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import structlog

from wisp import log as wisp_log
from wisp.identity import CACERTS_FILES, CertificateAuthority, IdentityError, SpiffeId

from .auth import LocalCredentials
from .ca_service import CaService
from .cluster import MeshSettings
from .controller import Controller
from .distributor import Distributor
from .local_api import LocalApi
from .local_source import LocalSource
from .server import ControlPlaneApp, serve
from .store import ObjectStore

log = structlog.get_logger("wisp.operator")

OPERATOR_NAMESPACE = "istio-system"
OPERATOR_SERVICE_ACCOUNT = "wisp-operator"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wisp-operator", description="wisp control plane (local mode)")
    parser.add_argument("--manifests", required=True, type=Path, help="directory of Kubernetes YAML to follow")
    parser.add_argument("--state-dir", required=True, type=Path,
                        help="where the root certificate and node credentials are written")
    parser.add_argument("--listen", default="0.0.0.0:15012", help="address:port to serve on")
    parser.add_argument("--local-socket", type=Path,
                        help="also serve plain HTTP on this unix socket (local runtime and CLI)")
    parser.add_argument("--advertise", action="append", default=[],
                        help="IP address clients dial (repeatable); goes into the serving certificate")
    parser.add_argument("--node", action="append", default=[], help="node whose ztunnel gets a credential")
    parser.add_argument("--cacerts", type=Path, help="Istio cacerts directory to sign with (default: new root)")
    parser.add_argument("--trust-domain", default="cluster.local")
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(argv)


def load_ca(args: argparse.Namespace) -> CertificateAuthority:
    if args.cacerts:
        return CertificateAuthority.load_cacerts(args.cacerts, args.trust_domain)
    existing = args.state_dir / "ca"
    if all((existing / name).exists() for name in CACERTS_FILES):
        # Restarting keeps the root, so running proxies keep trusting us.
        return CertificateAuthority.load_cacerts(existing, args.trust_domain)
    ca = CertificateAuthority.generate(args.trust_domain)
    ca.write_cacerts(existing)
    return ca


def write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


async def run(args: argparse.Namespace) -> int:
    try:
        ca = load_ca(args)
    except (IdentityError, OSError) as exc:
        log.error("cannot load the CA", error=str(exc))
        return 1
    host, _, port = args.listen.rpartition(":")
    if not port.isdigit():
        log.error("--listen must be address:port", listen=args.listen)
        return 2
    args.state_dir.mkdir(parents=True, exist_ok=True)
    (args.state_dir / "root-cert.pem").write_bytes(ca.roots_pem())
    credentials = LocalCredentials()
    tokens = args.state_dir / "tokens"
    for node in args.node:
        write_secret(tokens / f"ztunnel-{node}", credentials.issue_ztunnel(node))
        write_secret(tokens / f"node-agent-{node}", credentials.issue_node_agent(node))
    write_secret(tokens / "runtime", credentials.issue_runtime())
    identity = SpiffeId(args.trust_domain, OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT)
    serving = ca.issue_serving(identity, dns_names=("wisp-operator.istio-system.svc", "localhost"),
                               ip_addresses=tuple(args.advertise) + ("127.0.0.1",))

    store = ObjectStore(MeshSettings(trust_domain=args.trust_domain))
    source = LocalSource(args.manifests, store)
    source.load()  # reports each bad manifest itself
    distributor = Distributor()
    controller = Controller(store, distributor)
    app = ControlPlaneApp(CaService(ca), credentials, distributor, lambda: controller.state,
                          local_api=LocalApi(store, controller, source=source))

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host or "0.0.0.0", int(port)))
    sock.listen(1024)
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, shutdown.set)
    log.info("control plane serving", listen=args.listen, trust_domain=args.trust_domain,
             manifests=str(args.manifests))
    try:
        async with asyncio.TaskGroup() as tasks:
            watcher = tasks.create_task(source.watch())
            reconciler = tasks.create_task(controller.run())
            await serve(app, sock, serving, shutdown,
                        unix_path=str(args.local_socket) if args.local_socket else None)
            watcher.cancel()
            reconciler.cancel()
    finally:
        sock.close()
    log.info("control plane stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wisp_log.configure(args.log_level)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
