"""A pod of the local runtime cannot reach the mesh's secrets or its node sockets (issue 15 item 9).

On the shared mesh, from inside pod `ambient/client` (through `wisp exec`, which runs a command
as the pod's containers run), the attacks that worked while pods ran as root on the machine's
file system: read the CA key, read another component's token, connect to each node's ZDS socket
(whose peer is handed every pod's netns) and CNI endpoint, and reach them through a mesh
process's `/proc/<pid>/root`. Each must fail. The same script run as root in the pod's network
namespace without the sandbox (how every pod ran before) succeeds at each, so the test can fail.
"""

from __future__ import annotations

import json
from pathlib import Path

from runtime.sandbox import POD_UID_BASE

ATTACK = r"""
import json, os, socket, sys
targets = json.loads(sys.argv[1])
results = {}
for path in targets["files"]:
    try:
        with open(path, "rb") as f:
            f.read(1)
        results[path] = "read"
    except OSError as exc:
        results[path] = type(exc).__name__
for path, kind in targets["sockets"]:
    sock = socket.socket(socket.AF_UNIX, getattr(socket, kind))
    try:
        sock.connect(path)
        results[path] = "connected"
    except OSError as exc:
        results[path] = type(exc).__name__
    finally:
        sock.close()
print(json.dumps(results))
"""


def _targets(mesh) -> dict:
    state = mesh.paths.state
    keys = sorted(str(p) for p in (state / "ca").glob("*key*"))
    assert keys, f"no CA key under {state / 'ca'}"
    operator_pid = mesh.component("operator")["pid"]
    files = [*keys, str(mesh.paths.token("ztunnel-node1")), str(mesh.paths.token("node-agent-node2")),
             f"/proc/{operator_pid}/root{keys[0]}", f"/proc/{operator_pid}/root{mesh.paths.token('ztunnel-node1')}"]
    sockets = []
    for node in ("node1", "node2"):
        sockets += [(str(mesh.paths.zds_socket(node)), "SOCK_SEQPACKET"), (str(mesh.paths.cni_socket(node)), "SOCK_STREAM")]
    return {"files": files, "sockets": sockets}


def _attack_from_pod(mesh, targets: dict) -> dict[str, str]:
    result = mesh.wisp("exec", "-n", "ambient", "client", "--", "python", "-c", ATTACK, json.dumps(targets))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_pod_cannot_read_the_ca_key_or_tokens_nor_connect_to_node_sockets(mesh):
    targets = _targets(mesh)
    results = _attack_from_pod(mesh, targets)
    assert set(results) == set(targets["files"]) | {path for path, _ in targets["sockets"]}
    succeeded = {path: outcome for path, outcome in results.items() if outcome in ("read", "connected")}
    assert succeeded == {}, f"reached from inside a pod: {succeeded}"


def test_the_same_attack_succeeds_as_root_without_the_sandbox(mesh):
    # How every pod ran before: root, all capabilities, the machine's files. The paths through
    # the operator's /proc/<pid>/root are left out: as root they are the same files again.
    targets = _targets(mesh)
    targets["files"] = [f for f in targets["files"] if not f.startswith("/proc/")]
    result = mesh.in_pod("ambient", "client", "python", "-c", ATTACK, json.dumps(targets))
    assert result.returncode == 0, result.stderr
    outcomes = set(json.loads(result.stdout).values())
    assert outcomes == {"read", "connected"}, outcomes


def test_a_pod_runs_as_its_own_unprivileged_user_with_no_capabilities(mesh):
    script = ("import os; s = dict(l.split(':', 1) for l in open('/proc/self/status'));"
              "print(os.getuid(), os.getgid(), os.getgroups(), s['CapEff'].strip(), s['CapBnd'].strip(),"
              " s['NoNewPrivs'].strip())")
    result = mesh.wisp("exec", "-n", "ambient", "client", "--", "python", "-c", script)
    assert result.returncode == 0, result.stderr
    uid, gid, groups, cap_eff, cap_bnd, nnp = result.stdout.split(maxsplit=5)
    assert int(uid) >= POD_UID_BASE and int(gid) == int(uid)
    assert groups in ("[]", f"[{gid}]")
    assert (cap_eff, cap_bnd, nnp.strip()) == ("0000000000000000", "0000000000000000", "1")


def test_the_containers_the_runtime_started_are_confined_too(mesh):
    uids = {}
    for name in ("client", "server-near"):
        pod = mesh.pod("ambient", name)
        (container,) = pod["containers"]
        status = dict(line.split(":", 1) for line in open(f"/proc/{container['pid']}/status"))
        real, effective, *_ = status["Uid"].split()
        assert int(real) == int(effective) >= POD_UID_BASE
        assert status["CapEff"].strip() == "0000000000000000"
        uids[name] = int(real)
        # Its view of the files, seen through /proc as root: the run directory is not in it.
        assert mesh.paths.root.exists()
        assert not (Path(f"/proc/{container['pid']}/root") / mesh.paths.root.relative_to("/")).exists()
    # Each pod its own user: one pod cannot signal, trace or read another.
    assert uids["client"] != uids["server-near"]


def test_a_pod_cannot_change_its_redirection_rules(mesh):
    # As root in its own netns a pod could flush the in-pod rules and leave the mesh; a harmless
    # change (a new empty chain) stands for any. The rules are there to be changed: ztunnel's.
    assert "ISTIO_OUTPUT" in mesh.iptables("ambient", "client")
    result = mesh.wisp("exec", "-n", "ambient", "client", "--", "iptables", "-t", "nat", "-N", "WISP-ISOLATION-PROBE")
    assert result.returncode != 0
    assert "WISP-ISOLATION-PROBE" not in mesh.iptables("ambient", "client")


HIJACK = r"""
import socket
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
try:
    sock.bind(("0.0.0.0", 15006))
    print("bound")
except OSError as exc:
    print(type(exc).__name__)
"""


def test_a_pod_cannot_share_ztunnels_in_pod_listener_with_so_reuseport(mesh):
    # ztunnel's inbound listener in the pod's netns is SO_REUSEPORT (its workers share it); a root
    # pod could join the group and take a share of the mesh's inbound connections.
    listening = mesh.in_pod("ambient", "client", "ss", "-Hltn", "sport = :15006").stdout
    assert "15006" in listening
    result = mesh.wisp("exec", "-n", "ambient", "client", "--", "python", "-c", HIJACK)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OSError"  # EADDRINUSE: a reuseport group is one user's
