"""`wisp-node-agent`: the node agent process (local mode: pods from the operator's pods stream)."""

from __future__ import annotations

import argparse
import os
import signal
import sys

import structlog
import trio

from wisp import log as wlog
from wisp.controlplane.http import make_client
from wisp.runtime.paths import RuntimePaths

from .agent import AgentConfig, NodeAgent
from .podnetns import LocalNetnsLocator
from .podsource import LocalPodSource

log = structlog.get_logger("cni.main")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="wisp-node-agent", description="wisp CNI node agent")
    p.add_argument("--node", required=True, help="this node's name (local mode: node1, node2, …)")
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
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    wlog.configure(args.log_level)
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


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("stopping", signal=signal.Signals(signum).name)
            scope.cancel()
            return


if __name__ == "__main__":
    main()
