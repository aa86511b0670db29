"""The local pod source: the operator's pods stream and annotation writes (over a mock transport)."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from cni.errors import PodSourceError
from cni.podsource import LocalPodSource, PodView, parse_line

NS = {"metadata": {"name": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}}}
POD = {"metadata": {"name": "web", "namespace": "shop", "uid": "u1"}, "spec": {"nodeName": "node1"},
       "status": {"phase": "Running", "podIP": "10.244.1.5"}}


def view_line(version: int, pods: list[dict]) -> str:
    return json.dumps({"version": version, "namespaces": [NS], "pods": pods})


def test_a_view_line_indexes_namespaces_and_pods():
    view = parse_line(view_line(3, [POD]))
    assert view.version == 3
    assert view.namespaces["shop"] == NS
    assert view.pods[("shop", "web")] == POD


def test_a_ping_line_is_not_a_view():
    assert parse_line('{"ping": true}') is None


@pytest.mark.parametrize("line", ["not json", "[1]", '{"version": "1", "namespaces": [], "pods": []}',
                                  '{"version": 1, "namespaces": [], "pods": [3]}'])
def test_unusable_lines_are_pod_source_errors(line):
    with pytest.raises(PodSourceError):
        parse_line(line)


def test_pods_without_uid_are_left_out():
    view = PodView.build(1, [], [{"metadata": {"name": "x", "namespace": "shop"}}, POD])
    assert list(view.pods) == [("shop", "web")]


async def test_stream_publishes_views_skips_bad_lines_and_reconnects():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            body = "\n".join([view_line(1, []), '{"ping": true}', "garbage", view_line(2, [POD])]) + "\n"
            return httpx.Response(200, content=body.encode())
        if len(calls) == 2:
            return httpx.Response(503, json={"error": "starting"})
        return httpx.Response(200, content=(view_line(3, [POD]) + "\n").encode())

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="https://cp")
    source = LocalPodSource(client, backoff_min=0.01, backoff_max=0.02)
    seen: list[int] = []
    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            def publish(view: PodView) -> None:
                seen.append(view.version)
                if view.version == 3:
                    nursery.cancel_scope.cancel()
            nursery.start_soon(source.run, publish)
    assert seen == [1, 2, 3]
    assert calls[:3] == ["/v1/local/pods"] * 3


async def test_annotation_is_written_with_a_patch():
    requests = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append((request.method, request.url.path, json.loads(request.content)))
        return httpx.Response(204)

    source = LocalPodSource(httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="https://cp"))
    await source.set_redirection("shop", "web", "enabled")
    await source.set_redirection("shop", "web", None)
    assert requests == [
        ("PATCH", "/v1/local/pods/shop/web/annotations", {"ambient.istio.io/redirection": "enabled"}),
        ("PATCH", "/v1/local/pods/shop/web/annotations", {"ambient.istio.io/redirection": None}),
    ]


async def test_annotating_a_pod_that_is_gone_is_not_an_error():
    source = LocalPodSource(httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(404)),
                                              base_url="https://cp"))
    await source.set_redirection("shop", "web", None)


async def test_annotation_refused_is_a_pod_source_error():
    def handler(request):
        return httpx.Response(403, json={"error": "pod shop/web is not on node node1"})

    source = LocalPodSource(httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="https://cp"))
    with pytest.raises(PodSourceError, match="not on node node1"):
        await source.set_redirection("shop", "web", "enabled")
