"""`wisp waypoint` on the local mesh: the same verbs and words as against a cluster
(tests/kube/test_waypoint_cli.py), answered by the local control plane.

The namespace `wpcli` has no workloads, so what is checked here is the CLI's bookkeeping (the
Gateway, the namespace label, the tables); traffic through a waypoint is tests/e2e/test_waypoint.py.
"""

from __future__ import annotations

import json

import pytest

from .conftest import BIN, run

NAMESPACE = """
apiVersion: v1
kind: Namespace
metadata: {name: wpcli, labels: {istio.io/dataplane-mode: ambient}}
"""


@pytest.fixture(scope="module")
def wpcli(mesh):
    mesh.apply(NAMESPACE, "wpcli")
    try:
        yield "wpcli"
    finally:
        mesh.wisp("waypoint", "delete", "-n", "wpcli", "--all")
        mesh.delete(NAMESPACE, "wpcli")


def namespace_labels(mesh) -> dict[str, str]:
    listing = json.loads(mesh.wisp("get", "namespace", "wpcli", "-o", "json").stdout)
    return listing["metadata"].get("labels") or {}


def gateway(mesh, name: str) -> dict:
    result = mesh.wisp("get", "gtw", name, "-n", "wpcli", "-o", "json")
    return json.loads(result.stdout) if result.returncode == 0 else {}


def test_apply_enroll_writes_the_gateway_and_the_label(mesh, wpcli):
    result = mesh.wisp("waypoint", "apply", "-n", "wpcli", "--enroll-namespace", "--for", "all")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["✅ waypoint wpcli/waypoint applied",
                                          '✅ namespace wpcli labeled with "istio.io/use-waypoint: waypoint"']
    found = gateway(mesh, "waypoint")
    assert found["spec"]["gatewayClassName"] == "istio-waypoint"
    listener = found["spec"]["listeners"][0]
    assert (listener["name"], listener["port"], listener["protocol"]) == ("mesh", 15008, "HBONE")
    assert found["metadata"]["labels"]["istio.io/waypoint-for"] == "all"
    assert namespace_labels(mesh)["istio.io/use-waypoint"] == "waypoint"

    again = mesh.wisp("waypoint", "apply", "-n", "wpcli", "--name", "second", "--enroll-namespace")
    assert again.stdout.startswith("⚠️ Warning: namespace (wpcli) already has an enrolled Waypoint.")
    assert gateway(mesh, "second") == {}


def test_list_and_status_show_each_waypoint_and_its_programmed_condition(mesh, wpcli):
    assert mesh.wisp("waypoint", "apply", "-n", "wpcli", "--name", "reviews", "--for", "workload").returncode == 0
    listed = mesh.wisp("waypoint", "list", "-n", "wpcli").stdout.splitlines()
    assert listed[0].split() == ["NAME", "REVISION", "TRAFFIC", "TYPE", "PROGRAMMED"]
    rows = {line.split()[0]: line.split()[1:] for line in listed[1:]}
    assert rows["reviews"][:2] == ["default", "workload"] and rows["reviews"][2] in ("True", "False", "Unknown")
    everywhere = mesh.wisp("waypoint", "list", "-A").stdout.splitlines()
    assert [line.split()[:2] for line in everywhere if line.startswith("wpcli ")] == [["wpcli", "reviews"], ["wpcli", "waypoint"]]
    status = mesh.wisp("waypoint", "status", "-n", "wpcli").stdout.splitlines()
    assert status[0].split() == ["NAME", "STATUS", "TYPE", "REASON", "MESSAGE"]
    assert [line.split()[2] for line in status[1:]] == ["Programmed", "Programmed"]


def test_delete_removes_the_gateway_and_the_enrolment(mesh, wpcli):
    assert mesh.wisp("waypoint", "apply", "-n", "wpcli", "--enroll-namespace", "--overwrite").returncode == 0
    result = mesh.wisp("waypoint", "delete", "-n", "wpcli", "waypoint", "nothing")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["waypoint wpcli/nothing not found", "waypoint wpcli/waypoint deleted",
                                          '✅ namespace wpcli no longer labeled with "istio.io/use-waypoint: waypoint"']
    assert gateway(mesh, "waypoint") == {}
    assert "istio.io/use-waypoint" not in namespace_labels(mesh)


@pytest.mark.parametrize("argv, words", [
    (["apply", "-n", "no-such-namespace"], "namespace: no-such-namespace not found"),
    (["apply", "-n", "wpcli", "--name", "none"], "'none' is a reserved value"),
    (["delete", "-n", "wpcli"], "must specify a waypoint name or delete all using --all"),
])
def test_bad_requests_fail_with_one_clear_line(mesh, wpcli, argv, words):
    result = mesh.wisp("waypoint", *argv)
    assert result.returncode == 1
    assert result.stderr.startswith(f"wisp waypoint {argv[0]}: ") and words in result.stderr, result.stderr


def test_a_mesh_that_is_not_running_is_named(mesh):
    assert mesh.wisp("waypoint", "list").returncode == 0  # the shared mesh answers; an unknown prefix does not:
    missing = run([str(BIN / "wisp"), "waypoint", "--prefix", "wisp-nomesh", "list"])
    assert missing.returncode == 1
    assert missing.stderr == "wisp waypoint list: no mesh 'wisp-nomesh' is running; start one with `wisp up DIR` " \
                             "(or give --kubeconfig for a cluster)\n"
