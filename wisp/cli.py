"""The `wisp` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from wisp import log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wisp", description="wisp, an ambient service mesh")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the example shop on a local mesh and show traffic crossing it")
    demo.add_argument("directory", nargs="?", type=Path, default=Path("examples/shop"))
    demo.add_argument("--prefix", default="wisp-demo")
    demo.add_argument("--keep", action="store_true", help="leave the mesh running afterwards")
    demo.add_argument("--kubernetes", action="store_true",
                      help="run it on the test bed's real Kubernetes control plane, installed and applied with kubectl")
    demo.add_argument("--tunnel-only", action="store_true",
                      help="only show one HBONE tunnel between two identities (no root needed)")
    demo.add_argument("--bytes", type=int, default=64 * 1024 * 1024,
                      help="with --tunnel-only: bytes to send through the tunnel (default 64 MiB)")
    ca = sub.add_parser("ca", help="certificate authority tools")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    init = ca_sub.add_parser("init", help="write a new root and intermediate in Istio's cacerts layout")
    init.add_argument("directory")
    init.add_argument("--trust-domain", default="cluster.local")
    from wisp import commands

    for module in commands.modules():
        module.add_commands(sub)
    argv = sys.argv[1:] if argv is None else list(argv)
    # `wisp exec POD -- CMD ...`: everything after `--` is the command, whatever it looks like.
    after_dashes = None
    if "--" in argv:
        split = argv.index("--")
        argv, after_dashes = argv[:split], argv[split + 1:]
    args = parser.parse_args(argv)
    if after_dashes is not None:
        if args.command != "exec":
            parser.error("`--` is only used by `wisp exec POD -- COMMAND`")
        args.argv = after_dashes
    log.configure(args.log_level)
    handler = getattr(args, "handler", None)
    if handler is not None:
        return handler(args)
    if args.command == "demo":
        if args.tunnel_only:
            if args.bytes <= 0:
                parser.error("--bytes must be positive")
            from wisp.demo import run_demo

            return run_demo(args.bytes)
        if os.geteuid() != 0:
            parser.error("the mesh demo needs root (network namespaces); --tunnel-only does not")
        if not args.directory.is_dir():
            parser.error(f"{args.directory} is not a directory (run from the repository root)")
        if args.kubernetes:
            from runtime.demo import run_kubernetes_demo

            return run_kubernetes_demo(args.directory, args.prefix, args.keep)
        from runtime.demo import run_demo as run_mesh_demo

        return run_mesh_demo(args.directory, args.prefix, args.keep)
    if args.command == "ca" and args.ca_command == "init":
        return _ca_init(args.directory, args.trust_domain)
    parser.error(f"unknown command {args.command}")
    return 2


def _ca_init(directory: str, trust_domain: str) -> int:
    from wisp.identity import CertificateAuthority, IdentityError

    try:
        root = CertificateAuthority.generate(trust_domain)
        root.issue_intermediate().write_cacerts(directory)
    except (IdentityError, OSError) as exc:
        print(f"wisp ca init: {exc}", file=sys.stderr)
        return 1
    print(f"wrote ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem to {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
