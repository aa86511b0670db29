"""The runtime's client of the Kubernetes API: plain JSON over HTTPS with httpx, under trio.

Contract:
- `KubeApi(server, ssl_context)` is one httpx.AsyncClient speaking HTTP/1.1 (each open watch holds
  one of its pooled connections); `aclose()` ends it.
  `KubeApi.for_cluster(cluster)` authenticates as the test bed's admin (the runtime plays the
  node's kubelet and kube-proxy, which a real cluster would give node credentials).
- `get`, `create`, `patch` (merge patch unless told otherwise), `delete` return the decoded body
  and raise `ApiError` (with the status code and the API's message) for any answer >= 400.
  `get(..., missing_ok=True)` returns None for 404.
- `list(path, **params)` returns `(items, resourceVersion)`.
- `watch(path, resource_version, **params)` yields `(type, object)` events until the server ends
  the stream (the caller lists and watches again); a 410 Gone, as an answer or as an ERROR
  event, raises `Gone`, on which the caller must list afresh. BOOKMARK events are passed on.
- `create_token(namespace, account, audience, seconds, pod)` asks TokenRequest for a token bound
  to the pod, returns `(token, expires_at_unix)`.

Why not kubernetes-asyncio: it is asyncio, the runtime is trio; and the runtime plays the
cluster's kubelet, which the operator's kubernetes-asyncio code is tested against, so it shares
no client bug with it (the test bed's nodes.py made the same choice).
"""

from __future__ import annotations

import calendar
import json
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class ApiError(RuntimeError):
    """The API server answered with an error; `status` is the HTTP status code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Gone(ApiError):
    """410: the resource version is too old; list again."""


class KubeApi:
    def __init__(self, server: str, context: ssl.SSLContext, *, timeout: float = 10.0) -> None:
        self.server = server
        self._client = httpx.AsyncClient(base_url=server, verify=context, timeout=timeout)

    @classmethod
    def for_cluster(cls, cluster: Any) -> KubeApi:
        """The test bed's API server (runtime/testbed/cluster.py Cluster) as its admin."""
        return cls(cluster.server, cluster.ssl_context())

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None,
                      content_type: str = "application/json") -> httpx.Response:
        content = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type} if content is not None else {}
        try:
            return await self._client.request(method, path, content=content, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    async def get(self, path: str, *, missing_ok: bool = False, **params: Any) -> dict[str, Any] | None:
        response = await self.request("GET", path, params=params or None)
        if missing_ok and response.status_code == 404:
            return None
        return _body(response, "GET", path)

    async def list(self, path: str, **params: Any) -> tuple[list[dict[str, Any]], str]:
        body = _body(await self.request("GET", path, params=params or None), "GET", path)
        return list(body.get("items") or []), str((body.get("metadata") or {}).get("resourceVersion") or "")

    async def create(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        return _body(await self.request("POST", path, body=obj), "POST", path)

    async def patch(self, path: str, patch: Any, *, content_type: str = MERGE_PATCH) -> dict[str, Any]:
        return _body(await self.request("PATCH", path, body=patch, content_type=content_type), "PATCH", path)

    async def delete(self, path: str, *, body: dict[str, Any] | None = None, missing_ok: bool = True) -> dict[str, Any] | None:
        response = await self.request("DELETE", path, body=body)
        if missing_ok and response.status_code == 404:
            return None
        return _body(response, "DELETE", path)

    async def watch(self, path: str, resource_version: str, **params: Any) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        query = {"watch": "true", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(params.pop("timeout_seconds", 300)), **params}
        try:
            async with self._client.stream("GET", path, params=query, timeout=httpx.Timeout(10.0, read=None)) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _body(response, "WATCH", path)
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type", ""), event.get("object") or {}
                    if kind == "ERROR":
                        code = int(obj.get("code") or 0)
                        if code == 410:
                            raise Gone(410, str(obj.get("message", "resource version too old")))
                        raise ApiError(code, f"WATCH {path}: {obj.get('message', obj)}")
                    yield kind, obj
        except httpx.HTTPError as exc:
            raise ApiError(0, f"WATCH {path}: {type(exc).__name__}: {exc}") from exc

    async def create_token(self, namespace: str, account: str, *, audiences: list[str] | None, seconds: int,
                           pod: dict[str, Any] | None = None) -> tuple[str, float]:
        spec: dict[str, Any] = {"expirationSeconds": int(seconds)}
        if audiences:
            spec["audiences"] = audiences
        if pod is not None:
            meta = pod["metadata"]
            spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", "name": meta["name"], "uid": meta["uid"]}
        body = await self.create(f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
                                 {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
        status = body.get("status") or {}
        expires = status.get("expirationTimestamp")
        at = calendar.timegm(time.strptime(expires, "%Y-%m-%dT%H:%M:%SZ")) if expires else time.time() + seconds
        return str(status.get("token", "")), float(at)


def _body(response: httpx.Response, method: str, path: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = {"message": response.text[:300]}
    if response.status_code >= 400:
        message = body.get("message") if isinstance(body, dict) else str(body)
        cls = Gone if response.status_code == 410 else ApiError
        raise cls(response.status_code, f"{method} {path}: {response.status_code} {message}")
    return body if isinstance(body, dict) else {"items": body}
