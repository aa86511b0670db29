"""A pod source held in memory, for node-agent tests: the test publishes the views.

It implements cni.podsource.PodSource as the local runtime's and Kubernetes' sources do, without
a control plane: `show(...)` publishes a view, and the agent's annotation writes are applied to
the held pods and published again, as the control plane would echo them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

import trio

from cni.podsource import REDIRECTION_ANNOTATION, PodView


class MemoryPodSource:
    """A pod source held in memory: `show(...)` publishes a view; annotation writes are applied
    to the held pods and published again, as the control plane would echo them."""

    def __init__(self) -> None:
        self.view: PodView | None = None
        self.writes: list[tuple[str, str, str | None]] = []
        self._publish: Callable[[PodView], None] | None = None

    def show(self, namespaces: list[dict] | None = None, pods: list[dict] | None = None) -> PodView:
        """Publish a new view; a list left out stays as it is (with any annotations written)."""
        version = (self.view.version + 1) if self.view else 1
        if namespaces is None:
            namespaces = list(self.view.namespaces.values()) if self.view else []
        if pods is None:
            pods = list(self.view.pods.values()) if self.view else []
        self._set(PodView.build(version, namespaces, pods))
        assert self.view is not None
        return self.view

    def _set(self, view: PodView) -> None:
        self.view = view
        if self._publish is not None:
            self._publish(view)

    async def run(self, publish: Callable[[PodView], None]) -> None:
        self._publish = publish
        if self.view is not None:
            publish(self.view)
        await trio.sleep_forever()

    async def set_redirection(self, namespace: str, name: str, value: str | None) -> None:
        self.writes.append((namespace, name, value))
        if self.view is None or (namespace, name) not in self.view.pods:
            return
        pod = json.loads(json.dumps(self.view.pods[(namespace, name)]))
        annotations = pod.setdefault("metadata", {}).setdefault("annotations", {})
        if value is None:
            annotations.pop(REDIRECTION_ANNOTATION, None)
        else:
            annotations[REDIRECTION_ANNOTATION] = value
        pods = dict(self.view.pods)
        pods[(namespace, name)] = pod
        self._set(replace(self.view, version=self.view.version + 1, pods=pods))

    def annotation(self, namespace: str, name: str) -> str | None:
        pod = self.view.pods.get((namespace, name)) if self.view else None
        meta = pod.get("metadata") if pod else None
        annotations = meta.get("annotations") if isinstance(meta, dict) else None
        return (annotations or {}).get(REDIRECTION_ANNOTATION)
