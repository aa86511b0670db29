"""The L4 mesh end to end: real pod namespaces, in-pod iptables rules, node agents and ztunnels.

Every test runs on the shared mesh from conftest.py and leaves it as it found it (policies it
applies are deleted, labels restored), so the order of tests does not matter.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

MARKER = "wisp-plaintext-marker-7f3a"
POD_NETWORKS = "tcp and net 10.244.0.0/16"


def tcp_peers(summary: str) -> list[tuple[str, str]]:
    """(source, destination) ip.port pairs of every TCP packet in a tcpdump summary."""
    return re.findall(r"IP (\S+) > (\S+?):", summary)


def only_hbone(summary: str) -> bool:
    peers = tcp_peers(summary)
    return bool(peers) and all(src.endswith(".15008") or dst.endswith(".15008") for src, dst in peers)


def without_comments(ruleset: str) -> list[str]:
    """What an iptables-save ruleset says: its rules, user chains and non-default policies, per
    table. Empty tables and ACCEPT policies of built-in chains are what the kernel shows once a
    table was touched, and mean no rule."""
    meaning, table = [], ""
    for line in ruleset.splitlines():
        if line.startswith("*"):
            table = line
        elif line.startswith("-A") or (line.startswith(":") and not line.split()[1] == "ACCEPT"):
            meaning.append(f"{table} {line.split(' [')[0]}")
    return sorted(meaning)


# -- 1. traffic crosses the mesh encrypted, with the client's address preserved --------------------


def test_request_to_a_service_on_another_node_is_mutual_tls_and_keeps_the_client_ip(mesh):
    client = mesh.pod("ambient", "client")
    with mesh.capture(f"{mesh.prefix}-net", "n2", POD_NETWORKS) as cap:
        code, body = mesh.curl("ambient", "client", f"http://far.ambient/{MARKER}")
    assert code == 200, body
    assert "hostname=server-far" in body
    assert f"peer={client['ip']}:" in body
    assert MARKER not in cap["text"]
    assert only_hbone(cap["summary"]), cap["summary"][:2000]


def test_same_node_traffic_also_goes_through_hbone(mesh):
    client, server = mesh.pod("ambient", "client"), mesh.pod("ambient", "server-near")
    with mesh.capture(mesh.node("node1")["netns"], "cni0", f"tcp and host {client['ip']} and host {server['ip']}") as cap:
        code, body = mesh.curl("ambient", "client", f"http://near.ambient/{MARKER}")
    assert code == 200, body
    assert f"peer={client['ip']}:" in body
    assert MARKER not in cap["text"]
    assert only_hbone(cap["summary"]), cap["summary"][:2000]


# -- 2. enrolment follows the namespace label at runtime ------------------------------------------------


def test_labelling_a_namespace_enrols_running_pods_and_unlabelling_restores_them(mesh):
    before = without_comments(mesh.iptables("late", "client"))
    assert not any("ISTIO" in line for line in before)
    client_ip = mesh.pod("late", "client")["ip"]
    try:
        mesh.label("namespace", "late", "istio.io/dataplane-mode=ambient")
        mesh.wait_for(lambda: mesh.annotation("late", "client") == "enabled"
                      and mesh.annotation("late", "server") == "enabled", what="both pods enrolled")
        assert "ISTIO_OUTPUT" in mesh.iptables("late", "client")
        # Give ztunnels the new config (the pods are HBONE destinations now), then look at the wire.
        mesh.wait_for(lambda: mesh.curl("late", "client", "http://server.late/")[0] == 200, what="traffic flows")
        with mesh.capture(f"{mesh.prefix}-net", "n2", f"tcp and host {client_ip}") as cap:
            code, body = mesh.curl("late", "client", f"http://server.late/{MARKER}")
        assert code == 200 and f"peer={client_ip}:" in body
        assert MARKER not in cap["text"] and only_hbone(cap["summary"])
    finally:
        mesh.label("namespace", "late", "istio.io/dataplane-mode-")
    mesh.wait_for(lambda: mesh.annotation("late", "client") is None and mesh.annotation("late", "server") is None,
                  what="both pods released")
    assert without_comments(mesh.iptables("late", "client")) == before
    assert "32764" not in mesh.in_pod("late", "client", "ip", "rule").stdout
    with mesh.capture(f"{mesh.prefix}-net", "n2", f"tcp and host {client_ip}") as cap:
        code, _ = mesh.curl("late", "client", f"http://server.late/{MARKER}")
    assert code == 200
    assert MARKER in cap["text"], "after leaving the mesh the request travels in plaintext again"


# -- 3. non-mesh clients, STRICT, passthrough -------------------------------------------------------------


def test_non_mesh_client_reaches_an_ambient_pod(mesh):
    client = mesh.pod("legacy", "client")
    code, body = mesh.curl("legacy", "client", "http://far.ambient/")
    assert code == 200, body
    assert f"peer={client['ip']}:" in body


STRICT = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: ambient}
spec: {mtls: {mode: STRICT}}
"""


def test_strict_peer_authentication_refuses_non_mesh_clients_only(mesh):
    mesh.apply(STRICT, "strict")
    try:
        mesh.wait_for(lambda: mesh.curl("legacy", "client", "http://far.ambient/", timeout=2)[0] == 0,
                      what="plaintext refused")
        assert mesh.curl("ambient", "client", "http://far.ambient/")[0] == 200
    finally:
        mesh.delete(STRICT, "strict")
    mesh.wait_for(lambda: mesh.curl("legacy", "client", "http://far.ambient/", timeout=2)[0] == 200,
                  what="plaintext accepted again")


def test_ambient_pod_reaches_a_non_mesh_destination_by_passthrough(mesh):
    client = mesh.pod("ambient", "client")
    code, body = mesh.curl("ambient", "client", "http://server.legacy/")
    assert code == 200, body
    assert f"peer={client['ip']}:" in body


# -- 4. L4 authorization -------------------------------------------------------------------------------


def policy(name: str, action: str, rule: str) -> str:
    return f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: ambient}}
spec:
  selector: {{matchLabels: {{app: server-far}}}}
  action: {action}
  rules: [{rule}]
"""


def _enforced(mesh, pod: str, want: int, url: str = "http://far.ambient/") -> None:
    mesh.wait_for(lambda: mesh.curl("ambient", pod, url, timeout=2)[0] == want, what=f"{pod} gets {want}")


@pytest.mark.parametrize("name,rule", [
    ("allow-client-principal", "{from: [{source: {principals: [cluster.local/ns/ambient/sa/client]}}]}"),
    ("allow-client-wildcard", "{from: [{source: {principals: ['*/sa/client']}}]}"),
])
def test_allow_by_principal_admits_only_that_identity(mesh, name, rule):
    text = policy(name, "ALLOW", rule)
    mesh.apply(text, name)
    try:
        _enforced(mesh, "other", 0)
        assert mesh.curl("ambient", "client", "http://far.ambient/")[0] == 200
    finally:
        mesh.delete(text, name)
    _enforced(mesh, "other", 200)


def test_allow_by_namespace_refuses_clients_without_an_identity(mesh):
    text = policy("allow-ambient-ns", "ALLOW", "{from: [{source: {namespaces: [ambient]}}]}")
    mesh.apply(text, "allow-ambient-ns")
    try:
        mesh.wait_for(lambda: mesh.curl("legacy", "client", "http://far.ambient/", timeout=2)[0] == 0,
                      what="non-mesh client refused")
        assert mesh.curl("ambient", "other", "http://far.ambient/")[0] == 200
    finally:
        mesh.delete(text, "allow-ambient-ns")
    mesh.wait_for(lambda: mesh.curl("legacy", "client", "http://far.ambient/", timeout=2)[0] == 200,
                  what="non-mesh client admitted again")


def _tcp_echo(mesh, pod: str, target: str, timeout: float = 3) -> bool:
    script = (f"import socket;s=socket.create_connection(('{target}',9000),timeout={timeout});"
              "s.sendall(b'ping');print(s.recv(10).decode())")
    return mesh.in_pod("ambient", pod, sys.executable, "-c", script, timeout=timeout + 5).stdout.strip() == "ping"


def test_deny_by_port_resets_that_port_only_and_is_counted(mesh):
    text = policy("deny-tcp-port", "DENY", "{to: [{operation: {ports: ['9000']}}]}")
    far_ip = mesh.pod("ambient", "server-far")["ip"]
    denied_before = _deny_count(mesh)
    mesh.apply(text, "deny-tcp-port")
    try:
        mesh.wait_for(lambda: not _tcp_echo(mesh, "client", "far.ambient"), what="port 9000 denied")
        assert mesh.curl("ambient", "client", "http://far.ambient/")[0] == 200
        assert _deny_count(mesh) > denied_before
    finally:
        mesh.delete(text, "deny-tcp-port")
    mesh.wait_for(lambda: _tcp_echo(mesh, "client", far_ip), what="port 9000 open again")


def _deny_count(mesh) -> float:
    """Connections the server's ztunnel closed because policy denied them."""
    total = 0.0
    for line in mesh.metrics("node2").splitlines():
        if line.startswith("istio_tcp_connections_closed_total{") and 'response_flags="DENY"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_policy_change_closes_live_connections_that_became_denied(mesh):
    script = ("import socket,sys;s=socket.create_connection(('far.ambient',9000),timeout=5);"
              "s.sendall(b'hi');assert s.recv(10)==b'hi';print('open',flush=True);s.settimeout(30)\n"
              "try:\n data=s.recv(10)\n print('closed' if not data else 'data',flush=True)\n"
              "except OSError as e:\n print('closed',flush=True)\n")
    netns = mesh.pod("ambient", "client")["netns"]
    process = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", script],
                               stdout=subprocess.PIPE, text=True)
    text = policy("deny-live", "DENY", "{to: [{operation: {ports: ['9000']}}]}")
    try:
        assert process.stdout.readline().strip() == "open"
        mesh.apply(text, "deny-live")
        started = time.monotonic()
        assert process.stdout.readline().strip() == "closed"
        assert time.monotonic() - started < 15
    finally:
        process.kill()
        process.wait()
        mesh.delete(text, "deny-live")
    mesh.wait_for(lambda: _tcp_echo(mesh, "client", "far.ambient"), what="port 9000 open again")


# -- 5. telemetry -------------------------------------------------------------------------------------------


def _samples(text: str, name: str) -> list[tuple[dict, float]]:
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line[len(name):].rsplit("}", 1)[0]))
            out.append((labels, float(line.rsplit(" ", 1)[1])))
    return out


def test_tcp_metrics_carry_source_destination_and_mtls_labels(mesh):
    assert mesh.curl("ambient", "client", "http://far.ambient/")[0] == 200
    want = {"source_workload": "client", "source_workload_namespace": "ambient", "destination_workload": "server-far",
            "destination_workload_namespace": "ambient", "connection_security_policy": "mutual_tls",
            "source_principal": "spiffe://cluster.local/ns/ambient/sa/client",
            "destination_principal": "spiffe://cluster.local/ns/ambient/sa/server", "request_protocol": "tcp"}
    for node, reporter in (("node1", "source"), ("node2", "destination")):
        text = mesh.metrics(node)
        opened = [v for labels, v in _samples(text, "istio_tcp_connections_opened_total")
                  if labels.get("reporter") == reporter and all(labels.get(k) == v for k, v in want.items())]
        assert opened and opened[0] >= 1, f"{node}: no {reporter} sample with {want}"
        sent = [v for labels, v in _samples(text, "istio_tcp_sent_bytes_total")
                if labels.get("reporter") == reporter and labels.get("destination_workload") == "server-far"]
        assert sent and sent[0] > 0


# -- 6. failure: ztunnel and node agent restarts ---------------------------------------------------------


def _running(pid: str) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_ztunnel_down_fails_closed_and_traffic_recovers_after_restart(mesh):
    component = mesh.component("ztunnel-node1")
    restarts = component["restarts"]
    workers = subprocess.run(["pgrep", "-P", str(component["pid"])], capture_output=True, text=True).stdout.split()
    subprocess.run(["kill", "-9", str(component["pid"])], check=True)
    # Its worker processes see the main process go and stop serving within moments.
    mesh.wait_for(lambda: not any(_running(pid) for pid in workers), timeout=10, what="ztunnel's workers gone")
    # Redirection stays in place, so the pod's traffic has nowhere to go: it fails, never bypasses.
    code, _ = mesh.curl("ambient", "client", "http://far.ambient/", timeout=1)
    assert code == 0
    mesh.wait_for(lambda: mesh.component("ztunnel-node1")["restarts"] > restarts, timeout=20, what="ztunnel restarted")
    mesh.wait_for(lambda: mesh.curl("ambient", "client", "http://far.ambient/", timeout=2)[0] == 200,
                  timeout=30, what="traffic recovered")


def test_node_agent_restart_keeps_pods_enrolled_without_duplicate_rules(mesh):
    before = without_comments(mesh.iptables("ambient", "client"))
    component = mesh.component("node-agent-node1")
    restarts = component["restarts"]
    # The agent says "node agent ready" once it has reconciled what it found (cni/agent.py); its
    # log is appended to across restarts.
    log = Path(component["log"])
    ready = log.read_bytes().count(b"node agent ready")
    subprocess.run(["kill", "-9", str(component["pid"])], check=True)
    mesh.wait_for(lambda: mesh.component("node-agent-node1")["restarts"] > restarts
                  and mesh.component("node-agent-node1")["running"], timeout=20, what="node agent restarted")
    mesh.wait_for(lambda: log.read_bytes().count(b"node agent ready") > ready, timeout=20,
                  what="the restarted node agent ready")
    assert mesh.annotation("ambient", "client") == "enabled"
    assert without_comments(mesh.iptables("ambient", "client")) == before
    assert mesh.in_pod("ambient", "client", "ip", "rule").stdout.count("32764") == 1
    assert mesh.curl("ambient", "client", "http://far.ambient/")[0] == 200


# -- 7. bad input to the CNI plugin and the ZDS socket -------------------------------------------------------


# Codes from the CNI spec: 6 failed to decode content, 4 invalid environment variables,
# 1 incompatible CNI version.
@pytest.mark.parametrize("stdin,env,code", [
    ("{not json", {"CNI_COMMAND": "ADD", "CNI_ARGS": "K8S_POD_NAME=x;K8S_POD_NAMESPACE=ambient"}, 6),
    ('{"cniVersion": "1.0.0", "name": "wisp", "type": "wisp-cni"}', {"CNI_COMMAND": "ADD"}, 4),
    ('{"cniVersion": "0.1.0", "name": "wisp", "type": "wisp-cni"}',
     {"CNI_COMMAND": "ADD", "CNI_ARGS": "K8S_POD_NAME=x;K8S_POD_NAMESPACE=ambient"}, 1),
])
def test_bad_cni_input_gets_a_cni_error_and_the_agent_keeps_serving(mesh, stdin, env, code):
    import os

    socket_path = str(mesh.paths.cni_socket("node1"))
    full_env = {"PATH": os.environ["PATH"], "CNI_CONTAINERID": "x", "CNI_NETNS": "/var/run/netns/none",
                "CNI_IFNAME": "eth0", **env}
    stdin = stdin.replace('"type": "wisp-cni"', f'"type": "wisp-cni", "agent_socket": "{socket_path}"')
    result = subprocess.run([f"{sys.prefix}/bin/wisp-cni"], input=stdin, capture_output=True, text=True,
                            env=full_env, timeout=15)
    assert result.returncode != 0
    error = json.loads(result.stdout)
    assert error["code"] == code and error["msg"]
    assert "Traceback" not in result.stderr
    assert mesh.component("node-agent-node1")["running"]
    _new_pod_is_enrolled_and_reachable(mesh, f"fresh-{code}")


def test_garbage_on_the_zds_socket_drops_that_connection_only(mesh):
    import socket

    for payload in (b"\xff" * 40, b"\x0a\x02\x0a\x00", b"hello, agent"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(5)
        sock.connect(str(mesh.paths.zds_socket("node1")))
        sock.send(payload)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
        sock.close()
    assert mesh.component("node-agent-node1")["running"]
    _new_pod_is_enrolled_and_reachable(mesh, "after-garbage")


def _new_pod_is_enrolled_and_reachable(mesh, name: str) -> None:
    text = f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: ambient, labels: {{app: {name}}}}}
spec:
  serviceAccountName: server
  nodeName: node1
  containers:
    - name: echo
      command: [wisp-echo, --http, "8080"]
      readinessProbe: {{tcpSocket: {{port: 8080}}}}
"""
    mesh.apply(text, name)
    try:
        mesh.wait_for(lambda: any(p["name"] == name and p["ready"] for p in mesh.status()["pods"]), timeout=30,
                      what=f"pod {name} ready")
        mesh.wait_for(lambda: mesh.annotation("ambient", name) == "enabled", what=f"pod {name} enrolled")
        ip = mesh.pod("ambient", name)["ip"]
        mesh.wait_for(lambda: mesh.curl("ambient", "client", f"http://{ip}:8080/", timeout=2)[0] == 200,
                      what=f"pod {name} reachable through the mesh")
    finally:
        mesh.delete(text, name)


# -- 8. the runtime ------------------------------------------------------------------------------------


def test_every_pod_resolves_every_service_name(mesh):
    """`wisp up` returns only once each pod's /etc/hosts names every service (with its short
    name in the pod's own namespace), so a first request by name never falls through to DNS."""
    for pod in mesh.status()["pods"]:
        result = mesh.in_pod(pod["namespace"], pod["name"], "getent", "hosts", "far.ambient.svc.cluster.local",
                             timeout=5)
        assert result.returncode == 0, f"{pod['namespace']}/{pod['name']} cannot resolve far.ambient"
    assert mesh.in_pod("ambient", "client", "getent", "hosts", "far", timeout=5).returncode == 0
    assert mesh.in_pod("legacy", "client", "getent", "hosts", "far", timeout=5).returncode != 0


def test_each_ztunnel_spreads_connections_over_its_worker_processes(mesh):
    """The suite's mesh runs two processes per ztunnel (`wisp up --ztunnel-workers 2`): both
    serve every pod of the node, and new connections land on both."""
    for _ in range(20):
        assert mesh.curl("ambient", "client", "http://far.ambient/")[0] == 200
    result = mesh.in_node("node1", "curl", "-s", "-m", "5", "http://127.0.0.1:15000/config_dump")
    dump = json.loads(result.stdout)
    (worker,) = dump["workers"]
    assert worker["status"]["ready"] and dump["ready"]
    assert {p["uid"] for p in worker["status"]["pods"]} == {p["uid"] for p in dump["pods"]}
    assert dump["connections_opened"] > 0 and worker["status"]["connections_opened"] > 0
