"""`wisp-waypoint`: the waypoint process's command line.

    wisp-waypoint --namespace NS --name GATEWAY --control-plane HOST:PORT [--state-dir DIR]

Each setting Istio's waypoint pods get from their environment is the default of its flag
(flags win): POD_NAMESPACE (--namespace), GATEWAY_NAME (--name), SERVICE_ACCOUNT
(--service-account, default the Gateway's name, as operator/ deploys it), XDS_ADDRESS
(--control-plane), AUTH_TOKEN (--token-file: a file holding the bearer token; default
<state-dir>/tokens/waypoint-<ns>-<name>), CA_ROOT_CA (--root-cert; default
<state-dir>/root-cert.pem), TRUST_DOMAIN, WISP_LOG_LEVEL, WISP_ENGINE.

Tracing (waypoint/tracing.py, docs/tracing.md): --otlp-endpoint HOST:PORT (env
WISP_OTLP_ENDPOINT; the OTLP/gRPC collector, an IP or a Service hostname of the mesh; none: no
spans exported) and --trace-sampling PERCENT (env WISP_TRACE_SAMPLING, default 1 as Istio's;
the mesh-wide rate when no Telemetry object sets randomSamplingPercentage).

Without a control plane, for tests and benchmarks: `--static-config FILE` (JSON with
"workloads" and "services" as wisp.model.to_json writes them and "objects": Kubernetes
HTTPRoute/GRPCRoute/AuthorizationPolicy/Gateway objects) and `--certificate-dir DIR` (key.pem,
cert-chain.pem, root-cert.pem).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from wisp import log as wisp_log
from wisp.controlplane.client import check_address
from wisp.engine.accept import raise_file_limit
from wisp.engine.runtime import DEFAULT_SHAPE, SHAPES, Engine
from wisp.identity import DEFAULT_TRUST_DOMAIN
from wisp.model import ModelError, ModelSnapshot, config_object, from_json

from .app import Waypoint
from .config import MESH_PORT, METRICS_PORT, READINESS_PORT, WaypointSettings
from .identity import from_directory


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


def _host_port(text: str) -> str:
    try:
        return check_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _percentage(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"the sampling percentage must be from 0 to 100, not {text}")
    return value


def load_static_config(path: str) -> ModelSnapshot:
    """A ModelSnapshot from a static config file (see the module docstring); ValueError says what is wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read static config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"static config {path}: expected a JSON object")
    try:
        resources = [from_json("workload", w) for w in data.get("workloads", [])]
        resources += [from_json("service", s) for s in data.get("services", [])]
        resources += [config_object(o) for o in data.get("objects", [])]
    except (ModelError, TypeError, AttributeError) as exc:
        raise ValueError(f"static config {path}: {exc}") from None
    return ModelSnapshot.of(resources)


def parse_args(argv: list[str] | None = None) -> tuple[WaypointSettings, argparse.Namespace]:
    env = os.environ
    parser = argparse.ArgumentParser(prog="wisp-waypoint", description="wisp's per-service L7 proxy (waypoint)")
    parser.add_argument("--namespace", default=env.get("POD_NAMESPACE"), help="the Gateway's namespace (env POD_NAMESPACE)")
    parser.add_argument("--name", default=env.get("GATEWAY_NAME"), help="the Gateway's name (env GATEWAY_NAME)")
    parser.add_argument("--service-account", default=env.get("SERVICE_ACCOUNT"),
                        help="identity's service account (env SERVICE_ACCOUNT; default the Gateway's name)")
    parser.add_argument("--control-plane", type=_host_port, default=env.get("XDS_ADDRESS") or None,
                        help="host:port of the control plane (env XDS_ADDRESS)")
    parser.add_argument("--state-dir", default="/run/wisp/state")
    parser.add_argument("--token-file", default=env.get("AUTH_TOKEN"), help="bearer token file (env AUTH_TOKEN)")
    parser.add_argument("--root-cert", default=env.get("CA_ROOT_CA"), help="mesh roots (env CA_ROOT_CA)")
    parser.add_argument("--trust-domain", default=env.get("TRUST_DOMAIN") or DEFAULT_TRUST_DOMAIN)
    parser.add_argument("--mesh-address", type=_address, default=("0.0.0.0", MESH_PORT))
    parser.add_argument("--metrics-address", type=_address, default=("0.0.0.0", METRICS_PORT))
    parser.add_argument("--readiness-address", type=_address, default=("0.0.0.0", READINESS_PORT))
    parser.add_argument("--drain-seconds", type=float, default=5.0)
    parser.add_argument("--engine", choices=SHAPES, default=env.get("WISP_ENGINE") or DEFAULT_SHAPE)
    parser.add_argument("--static-config", help="config from this file instead of the control plane")
    parser.add_argument("--certificate-dir", help="key.pem, cert-chain.pem, root-cert.pem instead of the CA")
    parser.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                        help="one log line per request (default on)")
    parser.add_argument("--otlp-endpoint", default=env.get("WISP_OTLP_ENDPOINT") or None,
                        help="host:port of the OTLP/gRPC trace collector (env WISP_OTLP_ENDPOINT)")
    parser.add_argument("--trace-sampling", type=_percentage, default=env.get("WISP_TRACE_SAMPLING") or "1",
                        help="percent of requests sampled without a Telemetry setting (env WISP_TRACE_SAMPLING; "
                             "default 1)")
    parser.add_argument("--log-level", default=env.get("WISP_LOG_LEVEL", "info"))
    parser.add_argument("--log-json", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args(argv)
    if args.engine not in SHAPES:
        parser.error(f"WISP_ENGINE={args.engine!r} is not an engine shape; choose one of {', '.join(SHAPES)}")
    if not args.namespace or not args.name:
        parser.error("--namespace and --name (or POD_NAMESPACE and GATEWAY_NAME) name the waypoint's Gateway")
    if not args.control_plane and not (args.static_config and args.certificate_dir):
        parser.error("--control-plane (or XDS_ADDRESS) is required without --static-config and --certificate-dir")
    wisp_log.configure(args.log_level, json=args.log_json)
    settings = WaypointSettings(
        namespace=args.namespace, name=args.name, control_plane=args.control_plane,
        service_account=args.service_account, trust_domain=args.trust_domain, state_dir=args.state_dir,
        token_file=args.token_file, root_cert=args.root_cert, mesh_address=args.mesh_address,
        metrics_address=args.metrics_address, readiness_address=args.readiness_address,
        drain_seconds=args.drain_seconds, engine=args.engine, log_level=args.log_level, log_json=args.log_json,
        trace_sampling=args.trace_sampling, otlp_endpoint=args.otlp_endpoint,
    )
    return settings, args


def main(argv: list[str] | None = None) -> int:
    settings, args = parse_args(argv)
    static = None
    if args.static_config:
        try:
            static = load_static_config(args.static_config)
        except ValueError as exc:
            print(f"wisp-waypoint: {exc}", file=sys.stderr)
            return 2
    fetch = from_directory(args.certificate_dir) if args.certificate_dir else None
    raise_file_limit()
    engine = Engine(settings.engine)
    try:
        engine.run(Waypoint(settings, engine, fetch=fetch, static_config=static, access_log=args.access_log).run)
    except OSError as exc:
        print(f"wisp-waypoint: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
