"""Control-plane authentication holes (#15 item 8), each reproduced as the attack that found it.

Over the control plane's real HTTPS/HTTP2 endpoint (tests/test_controlplane_service.py's
`control_plane`), with the credentials the local mode issues: a node proxy's token must not
reach another node's config subscription or the operator's debug view, and the operator's
serving key must not outlive its loading.
"""

from __future__ import annotations

import contextlib
import os
import ssl

import httpx
import pytest
import pytest
import trio

from wisp.controlplane.client import ConfigSubscriber
from wisp.identity import SpiffeId
from wisp.model import ModelSnapshot

from ..test_controlplane_service import STATE, control_plane, wait_until, workload


async def test_another_nodes_token_cannot_take_over_its_config_subscription(ca):
    """node-a's ztunnel token asking for `subscriber=ztunnel-node-b` used to replace node-b's
    subscription: node-b's acks were then dropped and its real stream closed for want of them."""
    async with control_plane(ca, STATE, ack_timeout=30.0) as plane:
        plane.publish(ModelSnapshot.of([workload("shop", "w-0", "node-b")]))
        updates = []
        victim = ConfigSubscriber(plane.endpoint(plane.credentials.issue_ztunnel("node-b")), "ztunnel-node-b",
                                  updates.append)
        attacker_token = plane.credentials.issue_ztunnel("node-a")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(victim.run)
            await wait_until(lambda: len(updates) == 1)
            async with plane.client(attacker_token) as client:
                async with client.stream("GET", "/v1/config", params={"subscriber": "ztunnel-node-b"}) as response:
                    assert response.status_code == 200
                    async for _ in response.aiter_lines():
                        break
                    # While the attacker's stream is open: node-b's subscription is still node-b's,
                    # and its acks still count.
                    version = plane.publish(ModelSnapshot.of([workload("shop", "w-1", "node-b")]))
                    await wait_until(lambda: plane.subscriber("ztunnel-node-b", node="node-b").acked_version
                                     == version)
                    status = plane.subscriber("ztunnel-node-b", node="node-b")
                    assert status.connected and status.last_error is None
                    # The attacker got a subscription of its own, under its own node.
                    assert plane.subscriber("ztunnel-node-b", node="node-a").view.node == "node-a"
            # Its acks by POST name node-b's id, but reach only its own subscription.
            async with plane.client(attacker_token) as client:
                response = await client.post("/v1/config/ack", json={
                    "subscriber": "ztunnel-node-b", "version": version, "error": "forged NACK"})
            assert response.status_code == 204
            assert plane.subscriber("ztunnel-node-b", node="node-b").last_error is None
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("issue", [
    lambda c: c.issue_ztunnel("node-a"),
    lambda c: c.issue_node_agent("node-a"),
    lambda c: c.issue_waypoint(SpiffeId("cluster.local", "shop", "waypoint")),
], ids=["ztunnel", "node-agent", "waypoint"])
async def test_debug_subscribers_is_refused_to_node_proxies_and_waypoints(ca, issue):
    """It lists every node and waypoint and what each acknowledged: any authenticated caller,
    a node agent included, used to read it."""
    async with control_plane(ca, STATE) as plane:
        async with plane.client(issue(plane.credentials)) as client:
            response = await client.get("/debug/subscribers")
        assert response.status_code == 403
        assert "only the operator's admin credential" in response.json()["error"]
        async with plane.client(plane.credentials.issue_runtime()) as client:
            response = await client.get("/debug/subscribers")
        assert response.status_code == 200
        assert response.json()["version"] == plane.distributor.version
