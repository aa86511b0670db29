"""`wisp waypoint` against the test bed's API server, run as the installed `wisp` command with
`--kubeconfig`, as a user would run it against a cluster.

No operator runs here, so nothing programs the Gateways: where `--wait` needs `Programmed`, the
test writes that condition on the Gateway's status subresource, as the control plane would.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.testbed.cluster import Cluster

from .conftest import wait_for

WISP = str(Path(sys.executable).parent / "wisp")
GATEWAY_CRD = Path(__file__).resolve().parents[2] / "deploy" / "crds" / "gateway.networking.k8s.io.gateways.yaml"
GATEWAYS = "/apis/gateway.networking.k8s.io/v1/namespaces/%s/gateways"


@pytest.fixture(scope="module")
def gateway_crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(GATEWAY_CRD), timeout=120)
    with cluster.client() as client:
        wait_for(lambda: client.get("/apis/gateway.networking.k8s.io/v1").status_code == 200,
                 "gateway.networking.k8s.io/v1 served")


def waypoint(cluster: Cluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WISP, "waypoint", *args, "--kubeconfig", str(cluster.kubeconfig)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def shop(cluster: Cluster, gateway_crd: None, namespace: str) -> Iterator[str]:
    yield namespace


def gateway(cluster: Cluster, namespace: str, name: str = "waypoint") -> dict:
    with cluster.client() as client:
        response = client.get(GATEWAYS % namespace + "/" + name)
        return response.json() if response.status_code == 200 else {}


def namespace_labels(cluster: Cluster, namespace: str) -> dict[str, str]:
    with cluster.client() as client:
        return client.get("/api/v1/namespaces/%s" % namespace).json()["metadata"].get("labels") or {}


def program(cluster: Cluster, namespace: str, name: str = "waypoint", status: str = "True") -> None:
    """Write the Programmed condition as the control plane does once the waypoint is ready."""
    with cluster.client() as client:
        response = client.patch(GATEWAYS % namespace + "/" + name + "/status", headers={"content-type": "application/merge-patch+json"},
                                json={"status": {"conditions": [{
                                    "type": "Programmed", "status": status, "reason": "Programmed" if status == "True" else "Pending",
                                    "message": "" if status == "True" else "waiting for the deployment",
                                    "lastTransitionTime": "2026-12-04T00:00:00Z", "observedGeneration": 1}]}})
        assert response.status_code == 200, response.text


def test_apply_creates_the_waypoint_gateway_and_says_so(cluster: Cluster, shop: str) -> None:
    result = waypoint(cluster, "apply", "-n", shop, "--for", "all")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "✅ waypoint %s/waypoint applied\n" % shop
    found = gateway(cluster, shop)
    assert found["spec"]["gatewayClassName"] == "istio-waypoint"
    assert found["spec"]["listeners"] == [{"name": "mesh", "port": 15008, "protocol": "HBONE",
                                           "allowedRoutes": {"namespaces": {"from": "Same"}}}]
    assert found["metadata"]["labels"] == {"istio.io/waypoint-for": "all"}
    assert "wisp" in [m["manager"] for m in found["metadata"]["managedFields"]]


def test_apply_enroll_namespace_warns_when_the_namespace_is_not_ambient_and_labels_it(cluster: Cluster, shop: str) -> None:
    result = waypoint(cluster, "apply", "-n", shop, "--name", "edge", "--enroll-namespace")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "⚠️ Warning: namespace is not enrolled in ambient. Consider running\t"
        "`kubectl label namespace %s istio.io/dataplane-mode=ambient`" % shop,
        "✅ waypoint %s/edge applied" % shop,
        '✅ namespace %s labeled with "istio.io/use-waypoint: edge"' % shop,
    ]
    assert namespace_labels(cluster, shop)["istio.io/use-waypoint"] == "edge"


def test_an_enrolled_namespace_is_not_re_enrolled_without_overwrite(cluster: Cluster, shop: str) -> None:
    assert waypoint(cluster, "apply", "-n", shop, "--enroll-namespace").returncode == 0
    again = waypoint(cluster, "apply", "-n", shop, "--name", "other", "--enroll-namespace")
    assert again.returncode == 0, again.stderr
    assert again.stdout == ("⚠️ Warning: namespace (%s) already has an enrolled Waypoint. Consider adding the "
                            "`--overwrite` flag to your apply command.\n" % shop)
    assert gateway(cluster, shop, "other") == {}
    assert namespace_labels(cluster, shop)["istio.io/use-waypoint"] == "waypoint"
    overwritten = waypoint(cluster, "apply", "-n", shop, "--name", "other", "--enroll-namespace", "--overwrite")
    assert overwritten.returncode == 0, overwritten.stderr
    assert namespace_labels(cluster, shop)["istio.io/use-waypoint"] == "other"


def test_apply_wait_returns_once_the_gateway_is_programmed(cluster: Cluster, shop: str) -> None:
    def control_plane() -> None:
        wait_for(lambda: gateway(cluster, shop), "the Gateway to exist")
        time.sleep(1.5)
        program(cluster, shop)

    thread = threading.Thread(target=control_plane)
    thread.start()
    started = time.monotonic()
    result = waypoint(cluster, "apply", "-n", shop, "--wait", "--enroll-namespace")
    thread.join()
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == ["✅ waypoint %s/waypoint is ready!" % shop,
                                               '✅ namespace %s labeled with "istio.io/use-waypoint: waypoint"' % shop]
    assert time.monotonic() - started >= 1.5


def test_apply_wait_gives_up_after_the_timeout_with_the_reason(cluster: Cluster, shop: str) -> None:
    result = waypoint(cluster, "apply", "-n", shop, "--wait", "--waypoint-timeout", "2s", "--enroll-namespace")
    assert result.returncode == 1
    assert "timed out while waiting for waypoint\t%s/waypoint" % shop in result.stderr
    # The Gateway CRD's default status, which no controller replaced.
    assert result.stderr.endswith("/waypoint: Pending: Waiting for controller\n")
    # Enrolment comes after readiness: a namespace is never pointed at a waypoint that did not come up.
    assert "istio.io/use-waypoint" not in namespace_labels(cluster, shop)


def test_list_prints_istioctls_columns(cluster: Cluster, shop: str) -> None:
    assert waypoint(cluster, "list", "-n", shop).stdout == "No waypoints found.\n"
    assert waypoint(cluster, "apply", "-n", shop).returncode == 0
    assert waypoint(cluster, "apply", "-n", shop, "--name", "reviews-waypoint", "--for", "workload").returncode == 0
    program(cluster, shop)
    result = waypoint(cluster, "list", "-n", shop)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("NAME                 REVISION     TRAFFIC TYPE     PROGRAMMED\n"
                             "reviews-waypoint     default      workload         Unknown\n"
                             "waypoint             default      service          True\n")
    everywhere = waypoint(cluster, "list", "-A").stdout.splitlines()
    assert everywhere[0].split() == ["NAMESPACE", "NAME", "REVISION", "TRAFFIC", "TYPE", "PROGRAMMED"]
    assert [line.split()[:2] for line in everywhere if line.startswith(shop)] == [[shop, "reviews-waypoint"], [shop, "waypoint"]]


def test_status_shows_the_programmed_condition(cluster: Cluster, shop: str) -> None:
    assert waypoint(cluster, "apply", "-n", shop).returncode == 0
    program(cluster, shop, status="False")
    result = waypoint(cluster, "status", "-n", shop)
    assert result.stdout == ("NAME         STATUS     TYPE           REASON      MESSAGE\n"
                             "waypoint     False      Programmed     Pending     waiting for the deployment\n")
    late = waypoint(cluster, "status", "-n", shop, "--wait", "--waypoint-timeout", "1s")
    assert late.returncode == 1
    assert "timed out while retrieving status for waypoint\t%s/waypoint" % shop in late.stderr


def test_delete_removes_the_waypoint_and_the_namespace_enrolment(cluster: Cluster, shop: str) -> None:
    assert waypoint(cluster, "apply", "-n", shop, "--enroll-namespace").returncode == 0
    with cluster.client() as client:
        response = client.post("/api/v1/namespaces/%s/services" % shop, json={
            "metadata": {"name": "reviews", "labels": {"istio.io/use-waypoint": "waypoint"}},
            "spec": {"ports": [{"port": 80}]}})
        assert response.status_code == 201, response.text
    result = waypoint(cluster, "delete", "-n", shop, "waypoint", "missing")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "waypoint %s/missing not found" % shop,
        "waypoint %s/waypoint deleted" % shop,
        '✅ namespace %s no longer labeled with "istio.io/use-waypoint: waypoint"' % shop,
        '⚠️ Warning: service %s/reviews is still labeled "istio.io/use-waypoint: waypoint"; its traffic is refused '
        "until the label is removed or the waypoint exists again" % shop,
    ]
    assert gateway(cluster, shop) == {}
    assert "istio.io/use-waypoint" not in namespace_labels(cluster, shop)


def test_delete_all_deletes_only_waypoints(cluster: Cluster, shop: str) -> None:
    for name in ("a", "b"):
        assert waypoint(cluster, "apply", "-n", shop, "--name", name).returncode == 0
    with cluster.client() as client:
        response = client.post(GATEWAYS % shop, json={
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "ingress"},
            "spec": {"gatewayClassName": "other", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}})
        assert response.status_code == 201, response.text
    result = waypoint(cluster, "delete", "-n", shop, "--all")
    assert result.stdout == "waypoint %s/a deleted\nwaypoint %s/b deleted\n" % (shop, shop)
    assert gateway(cluster, shop, "ingress")


@pytest.mark.parametrize("argv, words", [
    (["delete"], "must specify a waypoint name or delete all using --all"),
    (["delete", "--all", "x"], "cannot specify waypoint names when deleting all waypoints"),
    (["apply", "--name", "none"], "'none' is a reserved value"),
    (["apply", "--name", "Big_Name"], "invalid waypoint name 'Big_Name'"),
    (["apply", "-n", "no-such-namespace"], "namespace: no-such-namespace not found"),
    (["list", "--context", "nowhere"], "cannot load the Kubernetes configuration from"),
])
def test_bad_requests_fail_with_one_clear_line(cluster: Cluster, gateway_crd: None, argv: list[str], words: str) -> None:
    result = waypoint(cluster, *argv)
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith("wisp waypoint %s: " % argv[0]) and words in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1


def test_an_unreachable_api_server_is_named(tmp_path: Path, cluster: Cluster) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(cluster.kubeconfig.read_text().replace(cluster.server, "https://127.0.0.1:1"))
    result = subprocess.run([WISP, "waypoint", "list", "--kubeconfig", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "cannot reach the Kubernetes API server at https://127.0.0.1:1" in result.stderr
