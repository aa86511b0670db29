"""Where the node agent learns about pods and namespaces, and where it writes the annotation.

`PodSource` is the small interface; `LocalPodSource` follows the local runtime's operator
(`GET /v1/local/pods`, newline-delimited full views, pings every 10 s; `PATCH
.../annotations`). A Kubernetes source would watch Pods on this node and Namespaces and patch the
pod. (Tests feed the agent from memory with tests/support/pod_source.py.)
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import structlog
import trio

from wisp.controlplane.protocol import error_text

from .errors import PodSourceError

PODS_PATH = "/v1/local/pods"
REDIRECTION_ANNOTATION = "ambient.istio.io/redirection"

log = structlog.get_logger("cni.podsource")

PodKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class PodView:
    """Everything the agent needs at one moment: namespaces by name, this node's pods by key."""

    version: int
    namespaces: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    pods: Mapping[PodKey, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def build(cls, version: int, namespaces: list[dict], pods: list[dict]) -> PodView:
        """From lists of Kubernetes-shaped objects; objects without a name/uid are left out."""
        ns_by_name: dict[str, dict] = {}
        for ns in namespaces:
            name = _meta(ns).get("name")
            if isinstance(name, str) and name:
                ns_by_name[name] = ns
            else:
                log.warning("namespace without a name left out of the view", version=version)
        pod_by_key: dict[PodKey, dict] = {}
        for pod in pods:
            meta = _meta(pod)
            key = (meta.get("namespace"), meta.get("name"))
            if not all(isinstance(k, str) and k for k in key) or not isinstance(meta.get("uid"), str):
                log.warning("pod without namespace, name or uid left out of the view", version=version,
                            pod=f"{key[0]}/{key[1]}")
                continue
            pod_by_key[key] = pod  # type: ignore[index]
        return cls(version, ns_by_name, pod_by_key)


def parse_line(line: str) -> PodView | None:
    """One line of the pods stream: a view, or None for a ping. PodSourceError if unusable."""
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise PodSourceError(f"pods stream line is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise PodSourceError("pods stream line is not a JSON object")
    if message.get("ping") is True:
        return None
    version, namespaces, pods = message.get("version"), message.get("namespaces"), message.get("pods")
    if not isinstance(version, int) or not isinstance(namespaces, list) or not isinstance(pods, list):
        raise PodSourceError("pods stream view needs an integer version and namespaces and pods lists")
    if not all(isinstance(o, dict) for o in namespaces + pods):
        raise PodSourceError("pods stream view holds something that is not an object")
    return PodView.build(version, namespaces, pods)


def _meta(obj: dict) -> dict:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    return meta if isinstance(meta, dict) else {}


class PodSource(Protocol):
    async def run(self, publish: Callable[[PodView], None]) -> None:
        """Follow the source forever, calling `publish(view)` with every new full view."""

    async def set_redirection(self, namespace: str, name: str, value: str | None) -> None:
        """Set (or with None remove) the pod's `ambient.istio.io/redirection` annotation.

        A pod that no longer exists is not an error (there is nothing left to annotate).
        """


class LocalPodSource:
    """The local runtime's operator, over HTTPS/HTTP2 (`wisp.controlplane.http.make_client`)."""

    def __init__(self, client: httpx.AsyncClient, *, backoff_min: float = 0.1, backoff_max: float = 15.0,
                 read_timeout: float = 30.0) -> None:
        self.client = client
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.read_timeout = read_timeout

    async def run(self, publish: Callable[[PodView], None]) -> None:
        backoff = self.backoff_min
        while True:
            try:
                received = await self._follow(publish)
                log.info("pods stream ended; reconnecting")
            except (httpx.HTTPError, PodSourceError) as exc:
                log.warning("pods stream unavailable", error=str(exc) or type(exc).__name__,
                            retry_in=round(backoff, 2))
                received = False
            backoff = self.backoff_min if received else min(backoff * 2, self.backoff_max)
            await trio.sleep(backoff * random.uniform(0.8, 1.2))

    async def _follow(self, publish: Callable[[PodView], None]) -> bool:
        received = False
        timeout = httpx.Timeout(10.0, read=self.read_timeout)
        async with self.client.stream("GET", PODS_PATH, timeout=timeout) as response:
            if response.status_code != 200:
                await response.aread()
                raise PodSourceError(f"GET {PODS_PATH} answered {response.status_code}: {error_text(response.content, response.reason_phrase)}")
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                try:
                    view = parse_line(line)
                except PodSourceError as exc:
                    # One bad line is the sender's bug; the last good view stays.
                    log.warning("ignoring unusable pods stream line", error=str(exc))
                    continue
                received = True
                if view is not None:
                    publish(view)
        return received

    async def set_redirection(self, namespace: str, name: str, value: str | None) -> None:
        path = f"{PODS_PATH}/{namespace}/{name}/annotations"
        try:
            response = await self.client.patch(path, json={REDIRECTION_ANNOTATION: value})
        except httpx.HTTPError as exc:
            raise PodSourceError(f"cannot annotate pod {namespace}/{name}: {exc or type(exc).__name__}") from None
        if response.status_code == 404:
            log.info("pod to annotate is gone", pod=f"{namespace}/{name}")
            return
        if response.status_code >= 300:
            raise PodSourceError(f"annotating pod {namespace}/{name} answered {response.status_code}: "
                                 f"{error_text(response.content, response.reason_phrase)}")
