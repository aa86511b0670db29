"""`wisp-node-agent`: the node agent process.

Local mode (the default): pods from the local runtime operator's pods stream, pod netns by name.
Kubernetes mode (`--kubeconfig PATH` or `--in-cluster`): pods of this node and namespaces from the
API server (`cni.kube`), pod netns through /proc (`CgroupNetnsLocator`), the node name from
`--node` or `NODE_NAME`; with `--install-cni` the plugin and its chained entry are installed into
the host CNI configuration once the agent is ready and removed again when it stops (`cni.install`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import structlog
import trio

from wisp import log as wlog
from wisp.controlplane.http import make_client
from wisp.runpaths import RuntimePaths

from .agent import AgentConfig, NodeAgent
from . import install as cni_install
from .errors import CniAgentError
from .kube import KubeConfig, KubePodSource, in_cluster, load_kubeconfig
from .kube import make_client as make_kube_client
from .podnetns import CgroupNetnsLocator, LocalNetnsLocator
from .podsource import LocalPodSource

log = structlog.get_logger("cni.main")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="wisp-node-agent", description="wisp CNI node agent")
    p.add_argument("--node", "--node-name", dest="node", default=os.environ.get("NODE_NAME"),
                   help="this node's name (local mode: node1, node2, …; default: $NODE_NAME)")
    p.add_argument("--prefix", default="wisp", help="local runtime prefix (netns and /run/wisp names)")
    p.add_argument("--zds-socket", help="ZDS socket ztunnel connects to "
                   "(default /run/wisp/<prefix>/<node>/ztunnel.sock)")
    p.add_argument("--cni-socket", help="socket the CNI plugin calls (default /run/wisp/<prefix>/<node>/cni.sock)")
    p.add_argument("--control-plane", default="10.250.0.1:15012", metavar="ADDR:PORT")
    p.add_argument("--token-file", help="bearer token (default /run/wisp/<prefix>/state/tokens/node-agent-<node>)")
    p.add_argument("--root-cert", help="mesh root certificate (default /run/wisp/<prefix>/state/root-cert.pem)")
    p.add_argument("--host-netns", help="netns path for the probe SNAT rule (default: this process's netns)")
    p.add_argument("--no-dns-capture", action="store_true", help="leave out the in-pod DNS (port 53) redirect")
    p.add_argument("--log-level", default="info")
    kube = p.add_argument_group("Kubernetes mode")
    kube.add_argument("--kubeconfig", help="follow the API server of this kubeconfig (Kubernetes mode)")
    kube.add_argument("--context", help="kubeconfig context (default: current-context)")
    kube.add_argument("--in-cluster", action="store_true",
                      help="follow the API server with the pod's service account (Kubernetes mode)")
    kube.add_argument("--install-cni", action="store_true",
                      help="chain wisp-cni into the host CNI configuration while running")
    kube.add_argument("--cni-conf-dir", default=cni_install.DEFAULT_CONF_DIR)
    kube.add_argument("--cni-bin-dir", default=cni_install.DEFAULT_BIN_DIR)
    kube.add_argument("--cni-conf-name", help="the primary CNI configuration file (default: the runtime's choice)")
    args = p.parse_args(argv)
    if not args.node:
        p.error("the node name is required: --node NAME or the NODE_NAME environment variable")
    if args.kubeconfig and args.in_cluster:
        p.error("--kubeconfig and --in-cluster exclude each other")
    if args.install_cni and not (args.kubeconfig or args.in_cluster):
        p.error("--install-cni is for Kubernetes mode (--kubeconfig or --in-cluster)")
    return args


KUBE_ZDS_SOCKET = "/var/run/ztunnel/ztunnel.sock"  # where Istio's ztunnel looks for it
KUBE_CNI_SOCKET = "/var/run/wisp-cni/cni.sock"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    wlog.configure(args.log_level)
    if args.kubeconfig or args.in_cluster:
        _main_kube(args)
        return
    paths = RuntimePaths(args.prefix)
    token_file = args.token_file or paths.token(f"node-agent-{args.node}")
    root_cert = args.root_cert or paths.root_cert
    try:
        with open(token_file, encoding="ascii") as f:
            token = f.read().strip()
        with open(root_cert, "rb") as f:
            roots = f.read()
    except OSError as exc:
        sys.exit(f"wisp-node-agent: cannot read credentials: {exc}")
    config = AgentConfig(
        node=args.node,
        zds_socket=args.zds_socket or str(paths.zds_socket(args.node)),
        cni_socket=args.cni_socket or str(paths.cni_socket(args.node)),
        host_netns=args.host_netns,
        dns_capture=not args.no_dns_capture,
    )
    try:
        trio.run(_run, config, args, token, roots)
    except KeyboardInterrupt:
        pass


async def _run(config: AgentConfig, args: argparse.Namespace, token: str, roots: bytes) -> None:
    async with make_client(args.control_plane, roots, token) as client, trio.open_nursery() as nursery:
        agent = NodeAgent(config, LocalPodSource(client), LocalNetnsLocator(args.prefix))
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        log.info("node agent starting", node=config.node, pid=os.getpid(), control_plane=args.control_plane)
        await agent.run()


def _main_kube(args: argparse.Namespace) -> None:
    try:
        kube = load_kubeconfig(args.kubeconfig, args.context) if args.kubeconfig else in_cluster()
    except CniAgentError as exc:
        sys.exit(f"wisp-node-agent: {exc}")
    config = AgentConfig(
        node=args.node,
        zds_socket=args.zds_socket or KUBE_ZDS_SOCKET,
        cni_socket=args.cni_socket or KUBE_CNI_SOCKET,
        host_netns=args.host_netns,
        dns_capture=not args.no_dns_capture,
    )
    try:
        for socket_path in (config.zds_socket, config.cni_socket):
            os.makedirs(os.path.dirname(socket_path), exist_ok=True)
    except OSError as exc:
        sys.exit(f"wisp-node-agent: cannot create the socket directory: {exc}")
    host = None
    if args.install_cni:
        host = cni_install.HostPaths(args.cni_conf_dir, args.cni_bin_dir, args.cni_conf_name)
    failures: list[str] = []
    try:
        trio.run(_run_kube, config, kube, host, failures)
    except KeyboardInterrupt:
        pass
    if failures:
        sys.exit(f"wisp-node-agent: {failures[0]}")


async def _run_kube(config: AgentConfig, kube: KubeConfig, host: cni_install.HostPaths | None,
                    failures: list[str]) -> None:
    async with make_kube_client(kube) as client, trio.open_nursery() as nursery:
        agent = NodeAgent(config, KubePodSource(client, config.node), CgroupNetnsLocator())
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        log.info("node agent starting", node=config.node, pid=os.getpid(), api_server=kube.server)
        nursery.start_soon(agent.run)
        if host is None:
            return
        # The plugin goes in only once the agent answers it, and out when the agent stops: a
        # runtime calling a plugin whose agent is gone would fail every pod start on the node.
        await agent.ready.wait()
        try:
            installed = cni_install.install(host, config.cni_socket)
        except cni_install.InstallError as exc:
            log.error("cannot chain the CNI plugin; stopping", error=str(exc))
            failures.append(str(exc))
            nursery.cancel_scope.cancel()
            return
        log.info("CNI plugin chained", conflist=installed.conflist)
        try:
            await trio.sleep_forever()
        finally:
            cni_install.uninstall(host)
            log.info("CNI plugin removed", conf_dir=host.conf_dir)


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("stopping", signal=signal.Signals(signum).name)
            scope.cancel()
            return


if __name__ == "__main__":
    main()
