"""SO_PEERCRED checks at the node sockets' accept (wisp/peercred.py; issue 15 item 9).

The attack: a process that is neither root nor the component's own user connects to the node
agent's ZDS socket (whose newest peer is handed pods' network namespaces), its CNI endpoint
(which enrols any netns it is told) or a worker's metrics socket. The sockets are made
reachable here on purpose (mode 0666 in a world-writable directory) to show the peer check
alone refuses the connection; the peer is a pod's process (runtime/sandbox.py: its own uid,
no capabilities), which needs root to start.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile

import pytest
import structlog
import trio

from cni.cni_endpoint import serve_endpoint
from wisp import peercred
from wisp.metrics import Registry, WorkerWriter
from wisp.runpaths import RUN_ROOT
from runtime.sandbox import plan, program_paths
from wisp.zds import protocol
from wisp.zds.node import ZdsServer

STRANGER = 2_000_000_042  # an unprivileged uid no process of the machine uses

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="starting a peer as another uid needs root")

# Connects, says something, and reports whether the server closed the connection on it.
PEER = r"""
import json, socket, sys
path, kind, payload = sys.argv[1], getattr(socket, sys.argv[2]), bytes.fromhex(sys.argv[3])
sock = socket.socket(socket.AF_UNIX, kind)
sock.settimeout(5)
try:
    sock.connect(path)
except OSError as exc:
    print(json.dumps({"connected": False, "error": type(exc).__name__}))
    sys.exit()
try:
    sock.send(payload)
    reply = sock.recv(65536)
    print(json.dumps({"connected": True, "closed": reply == b"", "reply": reply.hex()}))
except socket.timeout:
    print(json.dumps({"connected": True, "closed": False, "reply": ""}))
except OSError as exc:
    print(json.dumps({"connected": True, "closed": True, "error": type(exc).__name__}))
"""


async def _peer(path: str, kind: str, payload: bytes, uid: int | None) -> dict:
    def run() -> dict:
        argv = [sys.executable, "-c", PEER, path, kind, payload.hex()]
        if uid is not None:
            # A pod's process: its own uid, no capabilities (the socket's directory stays visible).
            argv = plan(uid, uid, run_root=str(RUN_ROOT), needed=program_paths(os.path.dirname(sys.executable))).wrap(argv)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    return await trio.to_thread.run_sync(run)


@pytest.fixture
def open_directory():
    # Reachable by anyone, so only the peer check stands in the way.
    directory = tempfile.mkdtemp(prefix="wisp-peercred-")
    os.chmod(directory, 0o777)
    yield directory
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    os.rmdir(directory)


def test_peer_credentials_name_the_process_at_the_other_end():
    a, b = socket.socketpair()
    with a, b:
        assert peercred.peer_credentials(a) == peercred.PeerCredentials(os.getpid(), os.geteuid(), os.getegid())


def test_a_peer_whose_uid_is_not_allowed_is_refused_and_logged_with_its_pid_and_uid():
    a, b = socket.socketpair()
    with a, b, structlog.testing.capture_logs() as logs:
        assert not peercred.admit(a, {os.geteuid() + 1}, what="test socket")
        assert peercred.admit(a, {os.geteuid()}, what="test socket")
    (refusal,) = [e for e in logs if e["event"].startswith("peer refused")]
    assert (refusal["pid"], refusal["uid"], refusal["socket"]) == (os.getpid(), os.geteuid(), "test socket")


@needs_root
async def test_zds_refuses_an_unprivileged_peer_and_keeps_serving_root(open_directory):
    path = os.path.join(open_directory, "ztunnel.sock")
    server = ZdsServer(path, ack_timeout=3)
    hello = protocol.encode(protocol.Hello())
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        os.chmod(path, 0o666)
        with structlog.testing.capture_logs() as logs:
            stranger = await _peer(path, "SOCK_SEQPACKET", hello, STRANGER)
            assert stranger["connected"] and stranger["closed"], stranger
            assert server.connections_seen == 0
            refused = [e for e in logs if e["event"].startswith("peer refused")]
            assert [(e["uid"], e["socket"]) for e in refused] == [(STRANGER, "ZDS")]
            # Root (a ztunnel) is still served: its Hello is answered with the (empty) snapshot's end.
            ztunnel = await _peer(path, "SOCK_SEQPACKET", hello, None)
            assert ztunnel["connected"] and not ztunnel["closed"] and ztunnel["reply"], ztunnel
            assert server.connections_seen == 1
        nursery.cancel_scope.cancel()


@needs_root
async def test_the_cni_endpoint_refuses_an_unprivileged_peer(open_directory):
    path = os.path.join(open_directory, "cni.sock")
    asked = []

    async def add(request):
        asked.append(request)
        return {"enrolled": False}

    body = json.dumps({"netns": "/proc/1/ns/net", "pod_name": "victim", "pod_namespace": "default"}).encode()
    request = (b"POST /v1/cni/add HTTP/1.1\r\nhost: agent\r\ncontent-type: application/json\r\n"
               b"content-length: %d\r\n\r\n%s" % (len(body), body))
    async with trio.open_nursery() as nursery:
        ready = trio.Event()
        ready.set()
        await nursery.start(serve_endpoint, path, add, ready)
        os.chmod(path, 0o666)
        with structlog.testing.capture_logs() as logs:
            stranger = await _peer(path, "SOCK_STREAM", request, STRANGER)
            assert stranger["connected"] and stranger["closed"], stranger
            assert asked == []
            assert [(e["uid"], e["socket"]) for e in logs if e["event"].startswith("peer refused")] == \
                [(STRANGER, "CNI endpoint")]
        root = await _peer(path, "SOCK_STREAM", request, None)
        assert bytes.fromhex(root["reply"]).startswith(b"HTTP/1.1 200"), root
        assert [r.pod_name for r in asked] == ["victim"]
        nursery.cancel_scope.cancel()


@needs_root
async def test_a_worker_metrics_socket_answers_only_its_own_uid(open_directory):
    writer = WorkerWriter(open_directory, Registry())
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run, 60.0)
        os.chmod(writer.socket_path, 0o666)
        with structlog.testing.capture_logs() as logs:
            stranger = await _peer(writer.socket_path, "SOCK_STREAM", b"write\n", STRANGER)
        assert stranger["connected"] and stranger["closed"], stranger
        assert [(e["uid"], e["socket"]) for e in logs if e["event"].startswith("peer refused")] == \
            [(STRANGER, "worker metrics")]
        ours = await _peer(writer.socket_path, "SOCK_STREAM", b"write\n", None)
        assert bytes.fromhex(ours["reply"]) == b"ok\n"
        nursery.cancel_scope.cancel()
