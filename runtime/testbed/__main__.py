"""`python -m runtime.testbed build|up|env`: the test bed's command line (`./run testbed ...`).

- `build [--kubernetes-version V]`: builds the binaries (the control plane's, helm, and Jaeger for
  the tracing e2e test) or reuses the cached ones; progress on stderr, the binary directory on
  stdout.
- `up [--nodes N] [--timeout S]`: starts the control plane and N simulated nodes, prints the admin
  kubeconfig path, runs until Ctrl-C or SIGTERM, then stops everything and removes its directory.
- `env`: prints shell `export` lines: the cache and binary directory, PATH with the built kubectl
  first, and KUBECONFIG of a running `up` if there is one.
Exit status: 0 on success, 1 when something fails (the message says what), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time

from wisp import log

from . import build, helm, jaeger
from .cluster import TestbedError, leftovers, owner_alive, start
from .nodes import Nodes

# Marks the directory of an `up` for `env` (its owner.pid says whether it still runs).
UP_MARK = "up"


def _progress(message: str) -> None:
    print("wisp testbed: %s" % message, file=sys.stderr, flush=True)


def _positive_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a whole number" % text) from None
    if not 0 <= value <= 200:
        raise argparse.ArgumentTypeError("the node count must be between 0 and 200, not %d" % value)
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number of seconds" % text) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the timeout must be positive")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.testbed",
        description="A real Kubernetes control plane on 127.0.0.1 built from upstream (docs/testbed.md)",
    )
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)
    build_cmd = sub.add_parser("build", help="build the binaries from the Go module proxy, or reuse the cache")
    build_cmd.add_argument("--kubernetes-version", default=build.K8S_VERSION,
                           help="k8s.io/kubernetes release to build (default %(default)s)")
    up = sub.add_parser("up", help="run a control plane with simulated nodes until Ctrl-C")
    up.add_argument("--nodes", type=_positive_count, default=2, help="simulated nodes (default 2)")
    up.add_argument("--timeout", type=_seconds, default=90.0, help="seconds to wait for readiness")
    sub.add_parser("env", help="print shell exports for the built binaries and a running `up`")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log.configure(args.log_level)
    try:
        if args.command == "build":
            binaries, _ = build.build(args.kubernetes_version, progress=_progress)
            helm.build_helm(k8s_version=args.kubernetes_version, progress=_progress)
            jaeger.build_jaeger(progress=_progress)
            print(binaries.directory)
            return 0
        if args.command == "up":
            return _up(args.nodes, args.timeout)
        return _env()
    except (build.BuildError, build.MissingBinaries, TestbedError) as error:
        print("wisp testbed: error: %s" % error, file=sys.stderr)
        return 1


def _up(count: int, timeout: float) -> int:
    binaries = build.installed()

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    cluster = start(binaries, timeout=timeout)
    try:
        (cluster.workdir / UP_MARK).write_text("")
        with Nodes(cluster, count) as nodes:
            _progress("ready in %.1f s: %s, nodes %s" % (
                cluster.start_seconds, cluster.server, ", ".join(nodes.names) or "none"))
            print(cluster.kubeconfig, flush=True)
            _progress("kubectl: %s --kubeconfig %s get nodes" % (binaries.kubectl, cluster.kubeconfig))
            _progress("Ctrl-C stops it")
            while cluster.running():
                time.sleep(1)
            failed = [c.name for c in cluster.components if c.process.poll() is not None]
            raise TestbedError("%s exited; see its log in %s" % (", ".join(failed), cluster.workdir / "logs"))
    except KeyboardInterrupt:
        _progress("stopping")
        return 0
    finally:
        cluster.stop()


def _env() -> int:
    root = build.cache_root()
    lines = ["export %s=%s" % (build.CACHE_ENV, shlex.quote(str(root)))]
    try:
        binaries = build.installed()
    except build.MissingBinaries as error:
        print("# %s" % error)
    else:
        lines.append("export WISP_TESTBED_BIN=%s" % shlex.quote(str(binaries.directory)))
        lines.append('export PATH=%s:"$PATH"' % shlex.quote(str(binaries.directory)))
    for directory in leftovers().directories:
        kubeconfig = directory / "admin.kubeconfig"
        if (directory / UP_MARK).is_file() and owner_alive(directory) and kubeconfig.is_file():
            lines.append("export KUBECONFIG=%s" % shlex.quote(str(kubeconfig)))
            break
    else:
        lines.append("# no running test bed: start one with ./run testbed up")
    print("\n".join(lines))
    return 0



if __name__ == "__main__":
    sys.exit(main())
