"""What a new config version does to a running ztunnel's connections (#15 item 11).

The lab and in-process mesh of test_netns.py: pod a's pooled HBONE connections to pod b are
closed when b leaves the config (ztunnel/app.py `apply_config`), not left to idle out.
"""

from __future__ import annotations

import pytest

from .test_netns import (  # noqa: F401  (lab and mesh are fixtures)
    A_IP,
    APP_PORT,
    B_IP,
    CLIENT,
    WEB_SVC,
    closed_by_peer,
    connect_from,
    lab,
    mesh,
    read_line,
    receive_exactly,
)

pytestmark = pytest.mark.root


async def test_pooled_connections_to_a_workload_that_left_the_config_are_closed(mesh):
    finished = await connect_from(mesh.lab, "a", (B_IP, APP_PORT))
    assert await read_line(finished) == A_IP
    await finished.aclose()
    held = await connect_from(mesh.lab, "a", (B_IP, APP_PORT))
    assert await read_line(held) == A_IP
    pool = mesh.ztunnel.pods.proxies[CLIENT.uid].pool
    to_b = [c for c in pool.connections() if c.peer_address[0] == B_IP]
    assert to_b and not any(c.closed for c in to_b)
    await held.send_all(b"ping")
    assert await receive_exactly(held, 4) == b"ping"

    await mesh.publish(CLIENT, WEB_SVC)  # pod b's workload is gone

    assert all(c.closed for c in to_b)
    assert [c for c in pool.connections() if c.peer_address[0] == B_IP] == []
    # The tunnel in use went with its connection: pod a's app sees its connection end.
    assert await closed_by_peer(held)
