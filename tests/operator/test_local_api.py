"""Local mode's API: node agents watch their pods and annotate them; the runtime reports state."""

from __future__ import annotations

import json

import pytest

from wisp_operator.store import ObjectStore

from tests.controlplane.test_service import control_plane, wait_until

NAMESPACE = {"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}}}


def pod(name: str, node: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "x"}]}}


@pytest.fixture
async def local(ca):
    store = ObjectStore()
    store.replace("manifests", [NAMESPACE, pod("web-1", "node-a"), pod("db-1", "node-b")])
    async with control_plane(ca, None, store=store, ping_interval=0.2) as plane:
        plane.store = store
        yield plane


async def _first_view(client) -> dict:
    async with client.stream("GET", "/v1/local/pods") as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            view = json.loads(line)
            if "pods" in view:
                return view


async def test_node_agent_sees_namespaces_and_only_the_pods_of_its_node(local):
    async with local.client(local.credentials.issue_node_agent("node-a")) as client:
        view = await _first_view(client)
    assert [p["metadata"]["name"] for p in view["pods"]] == ["web-1"]
    assert [n["metadata"]["name"] for n in view["namespaces"]] == ["shop"]
    assert view["pods"][0]["metadata"]["uid"]


async def test_node_agent_watch_shows_changes_and_pings_when_idle(local):
    async with local.client(local.credentials.issue_node_agent("node-a")) as client:
        async with client.stream("GET", "/v1/local/pods") as response:
            lines = response.aiter_lines()
            first = json.loads(await lines.__anext__())
            assert json.loads(await lines.__anext__()) == {"ping": True}
            local.call(local.store.set_pod_runtime, "shop", "web-1", node="node-a", pod_ip="10.244.1.5",
                       phase="Running", ready=True)
            while "pods" not in (view := json.loads(await lines.__anext__())):
                pass
    assert view["version"] > first["version"]
    assert view["pods"][0]["status"]["podIP"] == "10.244.1.5"


async def test_node_agent_annotates_pods_of_its_node_only(local):
    async with local.client(local.credentials.issue_node_agent("node-a")) as client:
        ok = await client.patch("/v1/local/pods/shop/web-1/annotations", json={"ambient.istio.io/redirection": "enabled"})
        other = await client.patch("/v1/local/pods/shop/db-1/annotations", json={"ambient.istio.io/redirection": "enabled"})
        missing = await client.patch("/v1/local/pods/shop/nope/annotations", json={})
        bad = await client.patch("/v1/local/pods/shop/web-1/annotations", content=b"[1]")
    assert ok.status_code == 204
    assert local.store.get("Pod", "shop", "web-1")["metadata"]["annotations"] == {"ambient.istio.io/redirection": "enabled"}
    assert other.status_code == 403 and "is on node 'node-b'" in other.json()["error"]
    assert missing.status_code == 404
    assert bad.status_code == 400 and "JSON object" in bad.json()["error"]


async def test_annotation_removal_and_reconciled_tunnel_protocol(local):
    async with local.client(local.credentials.issue_node_agent("node-a")) as client:
        local.call(local.store.set_pod_runtime, "shop", "web-1", node="node-a", pod_ip="10.244.1.5",
                   phase="Running", ready=True)
        await client.patch("/v1/local/pods/shop/web-1/annotations", json={"ambient.istio.io/redirection": "enabled"})
        uid = "Kubernetes//Pod/shop/web-1"
        await wait_until(lambda: local.distributor.snapshot.workloads.get(uid) is not None
                         and local.distributor.snapshot.workloads[uid].tunnel_protocol == "HBONE")
        await client.patch("/v1/local/pods/shop/web-1/annotations", json={"ambient.istio.io/redirection": None})
        await wait_until(lambda: local.distributor.snapshot.workloads[uid].tunnel_protocol == "NONE")


async def test_runtime_reports_pod_state_and_labels(local):
    async with local.client(local.credentials.issue_runtime()) as client:
        put = await client.put("/v1/local/pods/shop/db-1/runtime",
                               json={"node": "node-b", "pod_ip": "10.244.2.7", "phase": "Running", "ready": True})
        bad_ip = await client.put("/v1/local/pods/shop/db-1/runtime", json={"pod_ip": "nope", "phase": "Running"})
        label = await client.patch("/v1/local/labels/Namespace/-/shop", json={"istio.io/dataplane-mode": None})
        missing = await client.patch("/v1/local/labels/Namespace/-/nowhere", json={"a": "b"})
        objects = await client.get("/v1/local/objects")
    assert put.status_code == 204
    assert local.store.get("Pod", "shop", "db-1")["status"]["podIP"] == "10.244.2.7"
    assert bad_ip.status_code == 400 and "IP address" in bad_ip.json()["error"]
    assert label.status_code == 204
    assert "istio.io/dataplane-mode" not in local.store.get("Namespace", "", "shop")["metadata"].get("labels", {})
    assert missing.status_code == 404
    assert {o["metadata"]["name"] for o in objects.json()["objects"]} == {"shop", "web-1", "db-1"}


@pytest.mark.parametrize("role,method,path", [
    ("ztunnel", "GET", "/v1/local/pods"),
    ("ztunnel", "PUT", "/v1/local/pods/shop/web-1/runtime"),
    ("node-agent", "PUT", "/v1/local/pods/shop/web-1/runtime"),
    ("node-agent", "PATCH", "/v1/local/labels/Namespace/-/shop"),
    ("node-agent", "GET", "/v1/local/objects"),
    ("node-agent", "GET", "/v1/config"),
    ("runtime", "GET", "/v1/config"),
])
async def test_each_role_reaches_only_its_own_endpoints(local, role, method, path):
    token = {"ztunnel": local.credentials.issue_ztunnel, "node-agent": local.credentials.issue_node_agent}.get(
        role, lambda _node: local.credentials.issue_runtime())("node-a")
    async with local.client(token) as client:
        response = await client.request(method, path, json={})
    assert response.status_code == 403
