"""KubeApi: plain-dict requests to a Kubernetes API server through kubernetes-asyncio.

Configuration comes from a kubeconfig (``--kubeconfig``/``--context``) or the pod's in-cluster
service account. Requests name resource paths (``/api/v1/namespaces/x/pods``); answers are
``Response(status, body)`` with the decoded JSON body, never an exception for an HTTP status, so
callers decide what 404, 409 and 410 mean. Transport failures raise ``KubeUnavailable``.
``watch`` yields a watch's events as dicts until the server closes the stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from wisp.kube import Response
from wisp_operator.errors import OperatorError

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
JSON = "application/json"


class KubeError(OperatorError):
    """The API server refused a request we expected to succeed."""


class KubeUnavailable(KubeError):
    """The API server could not be reached, or the connection broke."""


class KubeApi:
    """One API server connection pool; ``close()`` when done."""

    def __init__(self, api_client: k8s_client.ApiClient) -> None:
        self._client = api_client

    @classmethod
    async def connect(cls, kubeconfig: Path | None = None, context: str | None = None) -> KubeApi:
        """From ``kubeconfig`` (and ``context``), else the in-cluster service account."""
        configuration = k8s_client.Configuration()
        try:
            if kubeconfig is not None:
                await k8s_config.load_kube_config(config_file=str(kubeconfig), context=context,
                                                  client_configuration=configuration)
            else:
                k8s_config.load_incluster_config(client_configuration=configuration)
        except (k8s_config.ConfigException, OSError, KeyError, ValueError) as exc:
            raise KubeError("cannot load the Kubernetes configuration: %s" % exc) from None
        return cls(k8s_client.ApiClient(configuration))

    @property
    def api_client(self) -> k8s_client.ApiClient:
        """The kubernetes-asyncio client, for TokenReview (operator/kube_auth.py) on the same pool."""
        return self._client

    @property
    def host(self) -> str:
        return str(self._client.configuration.host)

    async def close(self) -> None:
        await self._client.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = JSON,
        timeout: float = 30.0,
    ) -> Response:
        try:
            response = await self._client.call_api(
                path, method, query_params=list((query or {}).items()),
                header_params={"Content-Type": content_type, "Accept": JSON},
                body=body, auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=timeout,
            )
            async with response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise KubeUnavailable("%s %s: %s" % (method, path, exc or type(exc).__name__)) from None
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError:
            decoded = {"message": raw[:200].decode("utf-8", "replace")}
        return Response(status, decoded if isinstance(decoded, dict) else {})

    async def watch(self, path: str, query: Mapping[str, str], *, read_timeout: float) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch request, each ``{"type": ..., "object": ...}``.

        An HTTP error status on opening is yielded as an ERROR event carrying the Status, as the
        API server does for errors after the stream started, so callers handle one form.
        """
        try:
            response = await self._client.call_api(
                path, "GET", query_params=[*query.items(), ("watch", "true")],
                header_params={"Accept": JSON}, auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(sock_connect=10, sock_read=read_timeout),
            )
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise KubeUnavailable("watch %s: %s" % (path, exc or type(exc).__name__)) from None
        async with response:
            if response.status != 200:
                raw = await response.read()
                try:
                    status = json.loads(raw)
                except ValueError:
                    status = {}
                if not isinstance(status, dict):
                    status = {}
                status.setdefault("code", response.status)
                yield {"type": "ERROR", "object": status}
                return
            try:
                while True:
                    line = await response.content.readline()
                    if not line:
                        return
                    if line.strip():
                        try:
                            event = json.loads(line)
                        except ValueError:
                            raise KubeUnavailable("watch %s: undecodable event" % path) from None
                        if isinstance(event, dict):
                            yield event
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                raise KubeUnavailable("watch %s: %s" % (path, exc or type(exc).__name__)) from None
