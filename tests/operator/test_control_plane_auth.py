"""Control-plane authentication holes (#15 item 8), each reproduced as the attack that found it.

Over the control plane's real HTTPS/HTTP2 endpoint (tests/controlplane/test_service.py's
`control_plane`), with the credentials the local mode issues: a node proxy's token must not
reach another node's config subscription or the operator's debug view, and the operator's
serving key must not outlive its loading. The CA's refusal of a node proxy impersonating a pod
on another node (#15 item 7) is here too, with its logged reason.
"""

from __future__ import annotations

import contextlib
import os
import ssl

import httpx
import pytest
import structlog
import trio

from wisp.controlplane.client import ConfigSubscriber, ControlPlaneError, fetch_certificate
from wisp.identity import CertBundle, SpiffeId
from wisp.model import ModelSnapshot

from tests.controlplane.test_service import STATE, control_plane, wait_until, workload


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


async def test_serving_key_file_is_gone_once_the_control_plane_serves(ca, monkeypatch):
    """docs/architecture.md promises keys are written for the moment of loading, then removed;
    the operator's 15012 key used to stay in /dev/shm for the process's whole life."""
    written: list[str] = []
    real_pem_file = CertBundle.pem_file

    @contextlib.contextmanager
    def recording_pem_file(self):
        with real_pem_file(self) as path:
            written.append(path)
            yield path

    monkeypatch.setattr(CertBundle, "pem_file", recording_pem_file)
    async with control_plane(ca, STATE) as plane:
        async with plane.client(plane.credentials.issue_ztunnel("node-a")) as client:
            assert (await client.get("/healthz/ready")).status_code == 200
            assert written, "the serving key was never written for loading"
            # While serving, with a connection open: no trace of the key on the filesystem.
            assert [p for p in written if os.path.exists(p) or os.path.exists(os.path.dirname(p))] == []
            # and TLS still works on new connections after the file is gone.
            async with httpx.AsyncClient(http2=True, verify=ssl.create_default_context(
                    cadata=plane.roots.decode())) as fresh:
                assert (await fresh.get(f"https://{plane.address}/healthz/ready")).status_code == 200


async def test_ca_refuses_a_node_proxy_impersonating_a_pod_on_another_node_and_logs_why(ca):
    """#15 item 7: node-a's ztunnel asks for shop/db, whose only pod runs on node-b."""
    async with control_plane(ca, STATE) as plane:
        with structlog.testing.capture_logs() as logs:
            with pytest.raises(ControlPlaneError) as info:
                await fetch_certificate(plane.endpoint(plane.credentials.issue_ztunnel("node-a")),
                                        SpiffeId("cluster.local", "shop", "db"))
    assert info.value.status == 403
    reason = ("no running pod with service account 'db' in namespace 'shop' is on node 'node-a', "
              "so its ztunnel may not obtain spiffe://cluster.local/ns/shop/sa/db")
    assert reason in str(info.value)
    refused = [e for e in logs if e["event"] == "certificate refused"]
    assert refused == [{"event": "certificate refused", "log_level": "warning", "caller": "ztunnel on node node-a",
                        "status": 403, "reason": reason}]
