"""What a ztunnel does for the one replacing it (docs/architecture.md, "Zero-drop restart").

The lab and in-process mesh of test_netns.py: the pods' namespaces migrate a closed listener's
queued connections, a draining ztunnel leaves the node agent at once, and a handoff lets go of
the HTTP ports while established connections go on (a plain drain keeps them, readiness saying
"draining": test_netns.py). The whole restart, two processes and the node agent, is
tests/e2e/test_ztunnel_rollout.py.
"""

from __future__ import annotations

import errno
import socket
import subprocess

import httpx
import pytest
import trio

from tests.support.wait import wait_until
from wisp.zds import transport

from .test_netns import (  # noqa: F401  (lab and mesh are fixtures)
    A_IP,
    APP_PORT,
    B_IP,
    closed_by_peer,
    connect_from,
    lab,
    mesh,
    read_line,
    receive_exactly,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]


def sysctl_in(netns_name: str, name: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns_name, "sysctl", "-n", name], check=True,
                          capture_output=True, text=True).stdout.strip()


async def test_enrolled_pods_migrate_a_closed_listeners_queue_instead_of_resetting_it(mesh):
    for pod in ("a", "b"):
        assert sysctl_in(mesh.lab.ns(pod), "net.ipv4.tcp_migrate_req") == "1"
    # Not enrolled, not touched.
    assert sysctl_in(mesh.lab.ns("c"), "net.ipv4.tcp_migrate_req") == "0"


async def test_a_draining_ztunnel_closes_its_zds_connection_at_once(mesh):
    stream = await connect_from(mesh.lab, "a", (B_IP, APP_PORT))
    assert await read_line(stream) == A_IP
    mesh.ztunnel.request_shutdown()
    with trio.fail_after(3):
        while True:
            try:
                data, fds = transport.recv_datagram(mesh.agent.conn)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(mesh.agent.conn)
                continue
            assert (data, fds) == (b"", [])  # the node agent sees it leave; nothing else came
            break
    # Its connection is still served while it drains.
    await stream.send_all(b"after zds")
    assert await receive_exactly(stream, 9) == b"after zds"


def port_free(address: tuple[str, int]) -> bool:
    probe = socket.socket()
    # As ztunnel's own listeners: connections it served may linger in TIME_WAIT on the port.
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind(address)
        return True
    except OSError as exc:
        assert exc.errno == errno.EADDRINUSE
        return False
    finally:
        probe.close()


async def test_a_handoff_lets_go_of_the_http_ports_while_connections_go_on(mesh):
    stream = await connect_from(mesh.lab, "a", (B_IP, APP_PORT))
    assert await read_line(stream) == A_IP
    ports = dict(mesh.ztunnel.bound)
    assert not any(port_free(address) for address in ports.values())
    host, port = ports["admin"]
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"http://{host}:{port}/handoff")
    assert answer.status_code == 200 and answer.text == "draining\n"
    await wait_until(lambda: all(port_free(address) for address in ports.values()), timeout=5,
                     what="readiness, metrics and admin ports released")
    assert mesh.ztunnel.draining
    await stream.send_all(b"after handoff")
    assert await receive_exactly(stream, 13) == b"after handoff"
    # Past the 1 s drain deadline ztunnel closes what is left.
    assert await closed_by_peer(stream)
