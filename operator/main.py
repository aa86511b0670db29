"""`wisp-operator`: the control plane process, in local or Kubernetes mode.

Loads or creates the CA, issues a credential per node proxy (written to the state directory for
the local runtime to hand out), follows its source, reconciles, and serves the CA and the config
stream on 15012.

- Local mode (``--manifests DIR``): the source is a manifest directory; waypoint Gateways' objects
  are written into it (``local_waypoints``) with ``--waypoint-command`` as their container command.
- Kubernetes mode (``--kubeconfig PATH [--context NAME]``, or ``--in-cluster``): the source is
  list+watch on the API server (``wisp_operator.kube``); status, waypoint objects and the
  ``istio-ca-root-cert`` ConfigMap of every namespace are written by the replica that holds the
  ``wisp-operator`` Lease; every replica serves the stream and the
  CA; callers authenticate with projected service-account tokens checked by TokenReview and the
  CA applies Istio's impersonation rule (``kube_auth.KubeAuthenticator``, trusted node accounts
  from ``--trusted-node-accounts``); ``/healthz`` and ``/readyz`` (every kind listed, first
  reconciliation published) on ``--health-listen``. SIGTERM releases the Lease.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import socket
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from wisp import log as wisp_log
from wisp.identity import CACERTS_FILES, CertBundle, CertificateAuthority, IdentityError, SpiffeId

from .auth import LocalCredentials
from .ca_service import CaService
from .cluster import MeshSettings
from .controller import Controller
from .distributor import Distributor
from .local_api import LocalApi
from .local_source import LocalSource
from .local_waypoints import LocalWaypoints
from .server import ControlPlaneApp, serve
from .store import ObjectStore

log = structlog.get_logger("wisp.operator")

OPERATOR_NAMESPACE = "istio-system"
OPERATOR_SERVICE_ACCOUNT = "wisp-operator"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wisp-operator", description="wisp control plane")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--manifests", type=Path, help="local mode: directory of Kubernetes YAML to follow")
    mode.add_argument("--kubeconfig", type=Path, help="Kubernetes mode: the API server of this kubeconfig")
    mode.add_argument("--in-cluster", action="store_true",
                      help="Kubernetes mode: the API server of the pod's service account")
    parser.add_argument("--context", help="kubeconfig context (default: its current context)")
    parser.add_argument("--health-listen", default="0.0.0.0:8080",
                        help="Kubernetes mode: address:port of /healthz and /readyz")
    parser.add_argument("--lease-namespace", default=OPERATOR_NAMESPACE, help="Kubernetes mode: the Lease's namespace")
    parser.add_argument("--lease-name", default="wisp-operator", help="Kubernetes mode: the leader election Lease")
    parser.add_argument("--identity", help="Kubernetes mode: leader election identity (default: host name + pid)")
    parser.add_argument("--waypoint-image", default="wisp:latest", help="Kubernetes mode: image of waypoint pods")
    parser.add_argument("--waypoint-control-plane",
                        default="wisp-operator.%s.svc:15012" % (os.environ.get("POD_NAMESPACE") or OPERATOR_NAMESPACE),
                        help="Kubernetes mode: host:port waypoint pods dial for config and certificates "
                             "(default: this operator's Service in its namespace, env POD_NAMESPACE)")
    parser.add_argument("--trusted-node-accounts",
                        default=os.environ.get("CA_TRUSTED_NODE_ACCOUNTS", "istio-system/ztunnel"),
                        help="Kubernetes mode: <namespace>/<service-account>[,...] of node proxies that may "
                             "obtain certificates for pods on their node (env CA_TRUSTED_NODE_ACCOUNTS, as istiod)")
    parser.add_argument("--waypoint-otlp-endpoint", default=os.environ.get("WISP_OTLP_ENDPOINT") or None,
                        help="host:port of the OTLP/gRPC trace collector every waypoint exports to, as Istio's "
                             "meshConfig extension provider (env WISP_OTLP_ENDPOINT; docs/tracing.md)")
    parser.add_argument("--waypoint-command", default="wisp-waypoint",
                        help="local mode: the command of waypoint pods (split as a shell would)")
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


def _waypoint_env(args: argparse.Namespace) -> dict[str, str]:
    """Environment every waypoint Deployment gets from mesh-wide settings (waypoint/main.py reads it)."""
    return {"WISP_OTLP_ENDPOINT": args.waypoint_otlp_endpoint} if args.waypoint_otlp_endpoint else {}


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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("overlays not restored", path=str(path), error=str(exc))
        return None


async def _keep_overlays(store: ObjectStore, path: Path) -> None:
    """Rewrite `path` (atomically, 0600) as soon as the overlays change, and once more when
    cancelled (at shutdown)."""
    version, written = -1, None
    try:
        while True:
            version = await store.wait_for_change(version)
            current = store.overlays()
            if current != written:
                # In a thread: the loop serves the config streams and the CA meanwhile.
                await asyncio.to_thread(_write_overlays, path, current)
                written = current
            await asyncio.sleep(0.05)  # a burst of reports is one write
    finally:
        current = store.overlays()
        if current != written:
            _write_overlays(path, current)  # at shutdown, when nothing else waits on the loop


def _write_overlays(path: Path, overlays: dict) -> None:
    temporary = path.with_suffix(".tmp")
    write_secret(temporary, json.dumps(overlays))
    os.replace(temporary, path)


def read_secret(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def kube_arguments_valid(args: argparse.Namespace) -> bool:
    """Kubernetes mode's own options, checked before anything connects; logs what is wrong."""
    from .kube_auth import KubeAuthError, parse_accounts

    if not args.health_listen.rpartition(":")[2].isdigit():
        log.error("--health-listen must be address:port", health_listen=args.health_listen)
        return False
    try:
        parse_accounts(args.trusted_node_accounts)
    except KubeAuthError as exc:
        log.error("bad --trusted-node-accounts (or CA_TRUSTED_NODE_ACCOUNTS)", error=str(exc))
        return False
    return True


async def run(args: argparse.Namespace) -> int:
    if args.manifests is None and not kube_arguments_valid(args):
        return 2
    if args.manifests is None and not args.cacerts:
        # Kubernetes mode: every replica signs with the CA kept in a Secret (operator/kube/ca_secret.py).
        from .kube.ca_secret import shared_ca
        from .kube.client import KubeApi, KubeError

        try:
            api = await KubeApi.connect(args.kubeconfig, args.context)
            try:
                args.cacerts = await shared_ca(api, args.lease_namespace, args.state_dir / "shared-ca",
                                               args.trust_domain)
            finally:
                await api.close()
        except (KubeError, OSError) as exc:
            log.error("cannot get the shared CA", error=str(exc))
            return 1
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
    # A restart keeps the tokens already written: running ztunnels and node agents read theirs
    # once, at their own start, and would be refused by the CA and the config stream for good.
    def keep_or_issue(name: str, issue: Callable[[str | None], str]) -> None:
        write_secret(tokens / name, issue(read_secret(tokens / name)))

    for node in args.node:
        keep_or_issue(f"ztunnel-{node}", partial(credentials.issue_ztunnel, node))
        keep_or_issue(f"node-agent-{node}", partial(credentials.issue_node_agent, node))
    keep_or_issue("runtime", credentials.issue_runtime)
    identity = SpiffeId(args.trust_domain, OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT)
    serving = ca.issue_serving(identity, dns_names=("wisp-operator.istio-system.svc", "localhost"),
                               ip_addresses=tuple(args.advertise) + ("127.0.0.1",))

    store = ObjectStore(MeshSettings(trust_domain=args.trust_domain))
    if args.manifests is None:
        return await run_kube(args, ca, serving, store, host, int(port))
    source = LocalSource(args.manifests, store)
    source.load()  # reports each bad manifest itself
    # What the runtime reported of its pods (addresses, nodes, readiness) and labels set since:
    # a restarted control plane that forgot them would serve ztunnels a snapshot without the
    # pods' addresses until the runtime's next report, and their traffic would leave HBONE.
    overlays_file = args.state_dir / "overlays.json"
    restored = store.restore_overlays(_read_json(overlays_file))
    if restored:
        log.info("overlays restored", objects=restored, path=str(overlays_file))
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
            waypoints = LocalWaypoints(
                source, state_dir=args.state_dir, issue_token=credentials.issue_waypoint,
                control_plane=f"{args.advertise[0] if args.advertise else '127.0.0.1'}:{port}",
                trust_domain=args.trust_domain, command=shlex.split(args.waypoint_command),
                env=_waypoint_env(args))
            waypoint_writer = tasks.create_task(waypoints.run(controller))
            overlay_writer = tasks.create_task(_keep_overlays(store, overlays_file))
            await serve(app, sock, serving, shutdown,
                        unix_path=str(args.local_socket) if args.local_socket else None)
            watcher.cancel()
            reconciler.cancel()
            waypoint_writer.cancel()
            overlay_writer.cancel()
    finally:
        sock.close()
    log.info("control plane stopped")
    return 0


def _listening(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host or "0.0.0.0", port))
    sock.listen(1024)
    return sock


async def run_kube(args: argparse.Namespace, ca: CertificateAuthority, serving: CertBundle, store: ObjectStore,
                   host: str, port: int) -> int:
    """Kubernetes mode: watch the API server, write as the leader, serve as every replica."""
    from .kube.client import KubeApi, KubeError
    from .kube.health import HealthServer
    from .kube.leader import LeaderElector
    from .kube.source import KubeSource
    from .kube.writer import KubeWriter
    from .kube_auth import KubeAuthenticator

    health_host, _, health_port = args.health_listen.rpartition(":")  # checked by kube_arguments_valid
    try:
        api = await KubeApi.connect(args.kubeconfig, args.context)
    except KubeError as exc:
        log.error("cannot use the Kubernetes API", error=str(exc))
        return 1
    source = KubeSource(api, store)
    distributor = Distributor()
    controller = Controller(store, distributor)
    elector = LeaderElector(api, args.lease_namespace, args.lease_name,
                            args.identity or "%s_%d" % (socket.gethostname(), os.getpid()))
    writer = KubeWriter(api, is_leader=elector.is_leader, waypoint_image=args.waypoint_image,
                        control_plane=args.waypoint_control_plane, trust_domain=args.trust_domain,
                        root_cert=ca.roots_pem().decode("ascii"), waypoint_env=_waypoint_env(args))
    authenticator = KubeAuthenticator.for_operator(api.api_client, lambda: controller.state,
                                                   trust_domain=args.trust_domain,
                                                   trusted_node_accounts=args.trusted_node_accounts)
    app = ControlPlaneApp(CaService(ca, authorizer=authenticator.authorize), authenticator, distributor,
                          lambda: controller.state)
    health = HealthServer(lambda: source.synced.is_set() and controller.synced.is_set())
    try:
        sock = _listening(host, port)
        health_sock = _listening(health_host, int(health_port))
    except OSError as exc:
        await api.close()
        log.error("cannot listen", error=str(exc))
        return 1
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, shutdown.set)
    log.info("control plane serving", listen=args.listen, trust_domain=args.trust_domain,
             api_server=api.host, health=args.health_listen)
    try:
        async with asyncio.TaskGroup() as tasks:
            background = [
                tasks.create_task(source.run()),
                tasks.create_task(controller.run()),
                tasks.create_task(elector.run()),
                tasks.create_task(writer.run(controller)),
                tasks.create_task(health.serve(health_sock)),
            ]
            await serve(app, sock, serving, shutdown)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await elector.release()
    finally:
        sock.close()
        health_sock.close()
        await api.close()
    log.info("control plane stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wisp_log.configure(args.log_level)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
