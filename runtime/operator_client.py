"""The runtime's (and CLI's) calls to the control plane, over its local unix socket."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import trio

from wisp.controlplane.protocol import error_text

from wisp.runpaths import RuntimePaths

T = TypeVar("T")


class OperatorError(RuntimeError):
    def __init__(self, status: int | None, message: str) -> None:
        self.status = status
        super().__init__(message)


class OperatorClient:
    """Async (trio or asyncio) client with the runtime's credential."""

    def __init__(self, paths: RuntimePaths, timeout: float = 10.0) -> None:
        self.paths = paths
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            token = self.paths.token("runtime").read_text().strip()
            self._client = httpx.AsyncClient(
                transport=httpx.AsyncHTTPTransport(uds=str(self.paths.operator_socket)),
                base_url="http://operator", timeout=self.timeout,
                headers={"authorization": f"Bearer {token}"},
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = await self._http().request(method, path, json=body)
        except (httpx.HTTPError, OSError) as exc:
            raise OperatorError(None, f"control plane unreachable at {self.paths.operator_socket}: {exc}") from None
        if response.status_code >= 300:
            raise OperatorError(response.status_code, error_text(response.content, response.reason_phrase))
        return response.json() if response.content else None

    async def ready(self) -> bool:
        try:
            response = await self._http().get("/healthz/ready")
        except (httpx.HTTPError, OSError, FileNotFoundError):
            return False
        return response.status_code == 200

    async def set_pod_runtime(self, namespace: str, name: str, *, node: str, pod_ip: str | None,
                              phase: str, ready: bool) -> None:
        await self._call("PUT", f"/v1/local/pods/{namespace}/{name}/runtime",
                         {"node": node, "pod_ip": pod_ip, "phase": phase, "ready": ready})

    async def clear_pod_runtime(self, namespace: str, name: str) -> None:
        await self._call("DELETE", f"/v1/local/pods/{namespace}/{name}/runtime")

    async def set_labels(self, kind: str, namespace: str, name: str, labels: dict[str, str | None]) -> None:
        await self._call("PATCH", f"/v1/local/labels/{kind}/{namespace or '-'}/{name}", labels)

    async def objects(self) -> dict[str, Any]:
        return await self._call("GET", "/v1/local/objects")

    async def resources(self) -> list[dict[str, Any]]:
        """Discovery: every served kind with its plural, singular and short names."""
        return (await self._call("GET", "/v1/local/resources"))["resources"]

    async def apply(self, path: str, source: str, documents: list[Any], *, dry_run: bool = False) -> dict[str, Any]:
        """Validate and apply one file's objects (all or nothing); 422 carries kubectl-worded errors."""
        return await self._call("POST", "/v1/local/apply",
                                {"path": path, "source": source, "documents": documents, "dryRun": dry_run})

    async def delete(self, objects: list[dict[str, str]]) -> dict[str, Any]:
        return await self._call("POST", "/v1/local/delete", {"objects": objects})

    async def subscribers(self) -> dict[str, Any]:
        """The config version and what each subscriber (ztunnel, waypoint) acknowledged."""
        return await self._call("GET", "/debug/subscribers")


def call(paths: RuntimePaths, fn: Callable[[OperatorClient], Awaitable[T]]) -> T:
    """`fn(client)` with a client of its own, in a trio run of its own: the synchronous CLI's way
    to ask the local control plane. OperatorError and FileNotFoundError (no credentials) pass."""
    async def run() -> T:
        client = OperatorClient(paths)
        try:
            return await fn(client)
        finally:
            await client.aclose()

    return trio.run(run)
