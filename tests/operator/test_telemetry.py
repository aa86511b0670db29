"""Telemetry (telemetry.istio.io) on the control plane: admitted against Istio's CRD and webhook
rules, and sent to the waypoints it concerns (mesh- and namespace-wide ones to every waypoint,
which sorts out its own; targetRefs ones to their Gateway's or Service's waypoint)."""

from __future__ import annotations

import yaml

from wisp.model import ModelSnapshot, config_object
from wisp_operator.distributor import ROLE_WAYPOINT, Distributor, View
from wisp_operator.validation import admit
from wisp_operator.validation.errors import INVALID

from .test_distributor_waypoints import gateway, service, snapshot_for

NAMESPACE_WIDE = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: tracing, namespace: shop}
spec:
  tracing:
  - providers: [{name: otel}]
    randomSamplingPercentage: 10
"""


def _telemetry(ns: str, name: str, spec: dict):
    return {"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry", "metadata": {"name": name, "namespace": ns},
            "spec": spec}


def test_a_tracing_telemetry_is_admitted_unchanged():
    obj = yaml.safe_load(NAMESPACE_WIDE)
    verdict = admit(obj)
    assert verdict.refusal is None, verdict.refusal.message
    assert verdict.obj["spec"]["tracing"][0]["randomSamplingPercentage"] == 10


def test_a_sampling_percentage_above_100_is_refused_by_the_schema():
    obj = yaml.safe_load(NAMESPACE_WIDE)
    obj["spec"]["tracing"][0]["randomSamplingPercentage"] = 150
    verdict = admit(obj)
    assert verdict.refusal is not None and verdict.refusal.reason == INVALID
    assert "randomSamplingPercentage" in verdict.refusal.message


def test_a_target_that_is_not_a_gateway_or_service_is_refused_by_the_webhook_rules():
    obj = _telemetry("shop", "bad", {"targetRefs": [{"group": "apps", "kind": "Deployment", "name": "x"}],
                                     "tracing": [{"randomSamplingPercentage": 5}]})
    verdict = admit(obj)
    assert verdict.refusal is not None and "targetRef must be to one of" in verdict.refusal.message


def test_several_tracing_entries_are_a_warning():
    obj = _telemetry("shop", "two", {"tracing": [{"randomSamplingPercentage": 5}, {"randomSamplingPercentage": 6}]})
    verdict = admit(obj)
    assert verdict.refusal is None and "multiple tracing is not currently supported" in verdict.warnings


def test_waypoints_receive_the_telemetry_that_concerns_them():
    mesh = config_object(_telemetry("istio-system", "mesh", {"tracing": [{"randomSamplingPercentage": 1}]}))
    on_web = config_object(_telemetry("shop", "web", {"targetRefs": [{"group": "", "kind": "Service", "name": "web"}],
                                                      "tracing": [{"randomSamplingPercentage": 100}]}))
    on_other = config_object(_telemetry("shop", "other", {
        "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "other"}],
        "tracing": [{"randomSamplingPercentage": 50}]}))
    distributor = Distributor()
    distributor.publish(ModelSnapshot.of([service("shop", "web", "shop/waypoint"), gateway("shop", "waypoint"),
                                          gateway("shop", "other"), mesh, on_web, on_other]))
    got = snapshot_for(distributor, View(ROLE_WAYPOINT, gateway="shop/waypoint"))
    names = {obj.name for obj in got.objects.values() if obj.kind == "Telemetry"}
    assert names == {"mesh", "web"}


def test_the_mesh_wide_collector_reaches_every_waypoint_deployment_and_its_process(tmp_path, monkeypatch):
    """`--waypoint-otlp-endpoint` (Istio's meshConfig extension provider) → each waypoint
    Deployment's WISP_OTLP_ENDPOINT → the waypoint's --otlp-endpoint default."""
    from waypoint.main import parse_args as waypoint_args
    from wisp_operator.local_source import LocalSource
    from wisp_operator.local_waypoints import LocalWaypoints
    from wisp_operator.main import _waypoint_env
    from wisp_operator.main import parse_args as operator_args
    from wisp_operator.store import ObjectStore

    monkeypatch.delenv("WISP_OTLP_ENDPOINT", raising=False)
    assert _waypoint_env(operator_args(["--manifests", str(tmp_path), "--state-dir", str(tmp_path)])) == {}
    args = operator_args(["--manifests", str(tmp_path), "--state-dir", str(tmp_path / "state"),
                          "--waypoint-otlp-endpoint", "jaeger.observability:4317"])
    gateway = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "waypoint", "namespace": "shop"},
               "spec": {"gatewayClassName": "istio-waypoint",
                        "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}
    waypoints = LocalWaypoints(LocalSource(tmp_path, ObjectStore()), state_dir=tmp_path / "state",
                               control_plane="10.0.0.1:15012", issue_token=lambda identity: "t",
                               env=_waypoint_env(args))
    deployment = next(o for o in waypoints.objects_for(gateway, "10.96.0.9") if o["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["WISP_OTLP_ENDPOINT"] == "jaeger.observability:4317"
    monkeypatch.setenv("WISP_OTLP_ENDPOINT", env["WISP_OTLP_ENDPOINT"])
    settings, _ = waypoint_args(container["args"])
    assert settings.otlp_endpoint == "jaeger.observability:4317" and settings.trace_sampling == 1.0
