"""`wisp ztunnel-config` on the shared local mesh: what each view prints is checked against state
recorded elsewhere — the runtime's own record of its pods (status.json), the control plane's
Services (`wisp get svc`), a policy the test applies, the identities of the pods on the node,
and a TCP connection the test holds open across nodes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone

from .conftest import BIN, run

ISTIO_COLUMNS = {
    "workloads": ["NAMESPACE", "POD NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL"],
    "services": ["NAMESPACE", "SERVICE NAME", "SERVICE VIP", "WAYPOINT", "ENDPOINTS"],
    "policies": ["NAMESPACE", "POLICY NAME", "ACTION", "SCOPE"],
    "certificates": ["CERTIFICATE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE"],
    "connections": ["WORKLOAD", "DIRECTION", "LOCAL", "REMOTE", "REMOTE TARGET", "PROTOCOL"],
}


def config(mesh, view: str, *args: str) -> subprocess.CompletedProcess:
    return mesh.wisp("ztunnel-config", view, *args)


def rows(mesh, view: str, *args: str) -> list[dict]:
    done = config(mesh, view, "-o", "json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_each_view_prints_istioctls_columns(mesh):
    for view, columns in ISTIO_COLUMNS.items():
        done = config(mesh, view)
        assert done.returncode == 0, done.stderr
        header = done.stdout.splitlines()[0]
        positions = [header.find(column) for column in columns]
        assert -1 not in positions and positions == sorted(positions), (view, header)
        assert header.split() == " ".join(columns).split(), (view, header)


def test_workloads_are_the_pods_the_runtime_runs(mesh):
    recorded = {(p["namespace"], p["name"], p["ip"], p["node"]) for p in mesh.status()["pods"] if p["ip"]}
    for node in mesh.status()["nodes"]:
        shown = rows(mesh, "workloads", "--node", node["name"])
        assert {(r["namespace"], r["pod_name"], r["address"], r["node"]) for r in shown} == recorded
        protocols = {(r["namespace"], r["pod_name"]): r["protocol"] for r in shown}
        assert protocols[("ambient", "client")] == "HBONE"
        assert protocols[("legacy", "server")] == "TCP"
        assert {r["waypoint"] for r in shown} == {"None"}


def test_a_namespace_flag_keeps_that_namespaces_rows(mesh):
    shown = rows(mesh, "workloads", "-n", "legacy")
    assert {r["pod_name"] for r in shown} == {"client", "server"}
    assert {r["namespace"] for r in rows(mesh, "workloads", "-A")} >= {"ambient", "late", "legacy"}


def test_services_show_the_control_planes_vips_and_ready_endpoints(mesh):
    listing = json.loads(mesh.wisp("get", "svc", "-A", "-o", "json").stdout)["items"]
    vips = {(s["metadata"]["namespace"], s["metadata"]["name"]): s["spec"]["clusterIP"] for s in listing}
    shown = {(r["namespace"], r["service_name"]): r for r in rows(mesh, "services")}
    assert {key: r["service_vip"] for key, r in shown.items()} == vips
    assert shown[("ambient", "far")]["endpoints"] == "1/1"
    assert shown[("late", "server")]["endpoints"] == "1/1"


def test_an_applied_policy_appears_with_istios_action_and_scope(mesh):
    text = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: zc-allow, namespace: ambient}
spec:
  selector: {matchLabels: {app: server-far}}
  action: ALLOW
  rules: [{from: [{source: {namespaces: [ambient]}}]}]
"""
    mesh.apply(text, "zc-allow")
    try:
        found = mesh.wait_for(lambda: [r for r in rows(mesh, "policies") if r["policy_name"] == "zc-allow"],
                              what="the policy in ztunnel's config")
        assert found == [{"namespace": "ambient", "policy_name": "zc-allow", "action": "Allow",
                          "scope": "WorkloadSelector"}]
    finally:
        mesh.delete(text, "zc-allow")
    mesh.wait_for(lambda: not [r for r in rows(mesh, "policies") if r["policy_name"] == "zc-allow"],
                  what="the policy gone from ztunnel's config")


def _enrolled_identities(mesh, node: str) -> set[str]:
    """The SPIFFE identities of the pods on `node` in namespaces labelled ambient (control-plane state)."""
    namespaces = json.loads(mesh.wisp("get", "namespaces", "-o", "json").stdout)["items"]
    ambient = {n["metadata"]["name"] for n in namespaces
               if (n["metadata"].get("labels") or {}).get("istio.io/dataplane-mode") == "ambient"}
    on_node = {(p["namespace"], p["name"]) for p in mesh.status()["pods"] if p["node"] == node}
    pods = json.loads(mesh.wisp("get", "pods", "-A", "-o", "json").stdout)["items"]
    return {"spiffe://cluster.local/ns/%s/sa/%s" % (p["metadata"]["namespace"],
                                                   p["spec"].get("serviceAccountName") or "default")
            for p in pods if p["metadata"]["namespace"] in ambient
            and (p["metadata"]["namespace"], p["metadata"]["name"]) in on_node}


def test_certificates_are_those_of_the_enrolled_pods_on_the_node(mesh):
    now = datetime.now(timezone.utc)
    for node in mesh.status()["nodes"]:
        expected = _enrolled_identities(mesh, node["name"])
        assert expected, "the mesh has ambient pods on every node"
        shown = mesh.wait_for(lambda node=node: [r for r in rows(mesh, "certificates", "--node", node["name"])
                                                 if r["status"] == "Available"],
                              what="certificates on %s" % node["name"])
        assert {r["certificate_name"] for r in shown} == expected
        for row in shown:
            assert row["type"] == "Leaf" and row["valid_cert"] == "true"
            int(row["serial_number"], 16)
            not_before = datetime.strptime(row["not_before"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
            not_after = datetime.strptime(row["not_after"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
            assert not_before <= now < not_after


def test_a_held_connection_shows_outbound_on_the_clients_node_and_inbound_on_the_servers(mesh):
    script = ("import socket,sys;s=socket.create_connection(('far.ambient',9000),timeout=5);"
              "s.sendall(b'hi');assert s.recv(10)==b'hi';print('open %s:%d' % s.getsockname(),flush=True);"
              "sys.stdin.readline()")
    client = mesh.pod("ambient", "client")
    server = mesh.pod("ambient", "server-far")
    process = subprocess.Popen(["ip", "netns", "exec", client["netns"], sys.executable, "-c", script],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline().split()
        assert line[:1] == ["open"], line
        local = line[1]
        far_vip = {(r["namespace"], r["service_name"]): r["service_vip"] for r in rows(mesh, "services")}[
            ("ambient", "far")]
        outbound = mesh.wait_for(lambda: [r for r in rows(mesh, "connections", "--node", client["node"])
                                          if r["direction"] == "Outbound" and r["local"] == local],
                                 what="the outbound connection on the client's node")
        assert outbound == [{"workload": "client.ambient", "direction": "Outbound", "local": local,
                             "remote": outbound[0]["remote"], "remote_target": "%s:9000" % far_vip,
                             "protocol": "HBONE"}]
        assert outbound[0]["remote"].endswith(":15008")
        inbound = mesh.wait_for(lambda: [r for r in rows(mesh, "connections", "--node", server["node"])
                                         if r["direction"] == "Inbound" and r["workload"] == "server-far.ambient"
                                         and r["local"] == "%s:9000" % server["ip"]],
                                what="the inbound connection on the server's node")
        assert [(r["protocol"], r["remote"]) for r in inbound] == [("HBONE", client["ip"])]
        only_ambient = rows(mesh, "connections", "--node", client["node"], "-n", "ambient")
        assert all(r["workload"].endswith(".ambient") for r in only_ambient) and only_ambient
    finally:
        process.stdin.close()
        process.wait(10)


def test_a_saved_dump_reads_as_the_live_one(mesh, tmp_path):
    node = mesh.status()["nodes"][0]
    dump = mesh.in_node(node["name"], "curl", "-s", "-m", "5", "http://127.0.0.1:15000/config_dump").stdout
    (tmp_path / "dump.json").write_text(dump)
    done = run([str(BIN / "wisp"), "ztunnel-config", "workloads", "--file", str(tmp_path / "dump.json"),
                "-o", "json"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == rows(mesh, "workloads", "--node", node["name"])


def test_bad_requests_say_what_is_wrong(mesh, tmp_path):
    done = config(mesh, "workloads", "--node", "nowhere")
    assert done.returncode == 1 and "no node 'nowhere' in mesh" in done.stderr
    done = config(mesh, "workloads", "-n", "x", "-A")
    assert done.returncode == 2 and "-n and -A exclude each other" in done.stderr
    done = run([str(BIN / "wisp"), "ztunnel-config", "workloads", "--prefix", "wisp-nothing-here"])
    assert done.returncode == 1 and "no local mesh with prefix 'wisp-nothing-here'" in done.stderr
    (tmp_path / "bad.json").write_text("{\"workloads\": 3}")
    done = run([str(BIN / "wisp"), "ztunnel-config", "services", "--file", str(tmp_path / "bad.json")])
    assert done.returncode == 1 and "is not a ztunnel config dump" in done.stderr
    done = run([str(BIN / "wisp"), "ztunnel-config", "services", "--admin-address", "127.0.0.1:1"])
    assert done.returncode == 1 and "cannot read the ztunnel admin endpoint 127.0.0.1:1" in done.stderr
