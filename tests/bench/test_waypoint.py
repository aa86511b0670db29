"""bench.waypoint: the nginx anchor's configuration, the waypoint's manifests and the figures."""

from __future__ import annotations

import math
import shutil
import subprocess

import pytest

from bench.mesh.runner import Sample
from bench.waypoint import report
from bench.waypoint.contenders import RESILIENT_VIP, WAYPOINT_VIP, WispWaypoint, WispWaypointResilient, nginx_proxy_conf


def sample(contender: str, measure: str, requests: int, proxies: dict[str, float], round_: int = 0) -> Sample:
    result = {"requests": requests, "seconds": 10.0, "req_s": requests / 10.0}
    if measure == "fixed":
        result.update({"p50_us": 200.0, "p90_us": 300.0, "p99_us": 500.0, "p999_us": 900.0})
    return Sample(round_, contender, measure, result,
                  {name: {"cpu_s": cpu, "rss_peak_kib": 20_000} for name, cpu in proxies.items()}, wall=10.0)


def test_nginx_anchor_proxies_with_keepalive_upstream_and_http11():
    text = nginx_proxy_conf("/tmp/p", "10.244.1.1:8081", "10.244.2.5:8080")
    assert "server 10.244.2.5:8080;" in text and "keepalive 64;" in text
    assert "proxy_http_version 1.1;" in text and 'proxy_set_header Connection "";' in text
    assert "listen 10.244.1.1:8081" in text and "pid /tmp/p/nginx.pid;" in text


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_the_anchor_configuration(tmp_path):
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / sub).mkdir()
    config = tmp_path / "nginx.conf"
    config.write_text(nginx_proxy_conf(tmp_path, "127.0.0.1:18081", "127.0.0.1:18080"))
    done = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-e", "stderr", "-c", str(config)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_waypoint_contender_binds_its_service_to_an_istio_waypoint_gateway():
    gateway, service = WispWaypoint().manifests()
    assert gateway["spec"]["gatewayClassName"] == "istio-waypoint"
    assert gateway["spec"]["listeners"] == [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]
    assert service["metadata"]["labels"]["istio.io/use-waypoint"] == gateway["metadata"]["name"]
    assert service["spec"]["clusterIP"] == WAYPOINT_VIP


def test_resilient_waypoint_contender_adds_a_retry_route_a_destination_rule_and_a_second_server(tmp_path):
    from waypoint.balance.rules import compile_destination_rules
    from wisp.model import PortMapping, Service

    contender = WispWaypointResilient()
    contender.prepare(tmp_path)
    gateway, service, server_2, route, rule = contender.manifests()
    assert service["spec"]["clusterIP"] == RESILIENT_VIP != WAYPOINT_VIP
    assert gateway["metadata"]["namespace"] == service["metadata"]["namespace"] == "wpr"
    assert server_2["metadata"]["labels"] == {"app": "server"} and (tmp_path / "nginx-wpr-2.conf").exists()
    assert "nginx-wpr-2.pid" in (tmp_path / "nginx-wpr-2.conf").read_text()
    retry = route["spec"]["rules"][0]["retry"]
    assert retry["attempts"] == 2 and retry["codes"] == [502, 503, 504]
    server = Service("server", "wpr", "server.wpr.svc.cluster.local", (RESILIENT_VIP,), (PortMapping(8080, 8080),))
    compiled = compile_destination_rules([rule], [server])
    assert compiled.notes == () and compiled.get("wpr/server.wpr.svc.cluster.local").resolve(8080, None).outlier


def test_cpu_per_thousand_requests_at_saturation_is_per_proxy_and_summed_over_the_path():
    samples = [sample("waypoint", "saturation", 100_000, {"node1": 2.0, "node2": 2.0, "waypoint": 6.0}),
               sample("waypoint", "saturation", 100_000, {"node1": 4.0, "node2": 2.0, "waypoint": 8.0}, 1)]
    summary = report.summarise(samples, ("waypoint",))
    assert summary["waypoint"]["sat_cpu_per_1k_waypoint"]["median"] == pytest.approx(0.07)
    assert report.path_cpu(summary, "waypoint") == pytest.approx(0.03 + 0.02 + 0.07)


def test_targets_compare_saturation_with_nginx_and_bound_the_waypoint_process_alone():
    samples = [sample("nginx", "saturation", 300_000, {"nginx": 6.0}),
               sample("waypoint", "saturation", 120_000, {"node1": 3.0, "node2": 3.0, "waypoint": 9.0}),
               sample("nginx", "fixed", 10_000, {"nginx": 0.4}),
               sample("waypoint", "fixed", 10_000, {"node1": 1.0, "node2": 1.0, "waypoint": 2.5})]
    results = {r["target"]: r for r in report.evaluate(report.summarise(samples, ("nginx", "waypoint")))}
    rps = results["saturation req/s ≥ 0.5× nginx"]
    assert rps["value"] == pytest.approx(0.4) and not rps["pass"]
    cpu = results["waypoint ≤ 0.30 vCPU per 1,000 rps"]
    assert cpu["value"] == pytest.approx(0.25) and cpu["pass"]


def test_no_targets_without_a_waypoint_run():
    samples = [sample("nginx", "saturation", 300_000, {"nginx": 6.0})]
    assert report.evaluate(report.summarise(samples, ("nginx",))) == []


def test_table_gives_ratios_to_nginx_for_every_other_contender():
    samples = [sample("direct", "saturation", 700_000, {}), sample("nginx", "saturation", 350_000, {"nginx": 7.0})]
    summary = report.summarise(samples, ("direct", "nginx"))
    head, rows = report.table(summary, {"direct": "direct", "nginx": "nginx"})
    assert head[-1] == "direct ÷ nginx"
    saturation = next(r for r in rows if r[0].startswith("saturation"))
    assert saturation[-1] == "2.00×"
    assert math.isnan(report.path_cpu(summary, "direct"))
