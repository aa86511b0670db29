"""The operator's Kubernetes parts run against the test bed, on an asyncio loop in a thread.

Tests stay synchronous (polling with ``wait_for``, writing with httpx/kubectl as a user would)
while the operator's source, controller and writer run on their own loop, as in the process.
``call`` runs a coroutine on that loop; ``stop`` cancels everything and closes the client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from runtime.testbed.cluster import Cluster
from wisp_operator.controller import Controller
from wisp_operator.distributor import Distributor
from wisp_operator.kube.client import KubeApi
from wisp_operator.kube.leader import LeaderElector
from wisp_operator.kube.source import KINDS, Kind, KubeSource
from wisp_operator.kube.writer import KubeWriter
from wisp_operator.store import ObjectStore


class RunningOperator:
    def __init__(self, cluster: Cluster, kinds: Sequence[Kind] = KINDS, *, writer: bool = True,
                 extra: Callable[[RunningOperator], list[Coroutine[Any, Any, Any]]] | None = None,
                 elect: dict[str, Any] | None = None, release_on_stop: bool = True,
                 writer_options: dict[str, Any] | None = None, **source_options: Any) -> None:
        self.cluster = cluster
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._kinds = kinds
        self._with_writer = writer
        self._extra = extra
        self._elect = elect
        self.release_on_stop = release_on_stop
        self._writer_options = {"retry": 1.0, **(writer_options or {})}
        self.elector: LeaderElector | None = None
        self._source_options = {"backoff": (0.1, 1.0), "absent_retry": 1.0, **source_options}
        self.api: KubeApi
        self.store: ObjectStore
        self.source: KubeSource
        self.controller: Controller
        self.writer: KubeWriter
        self._thread = threading.Thread(target=self._main, name="operator", daemon=True)

    def start(self) -> RunningOperator:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("operator loop did not start")
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._run())
        except BaseException as exc:  # noqa: BLE001 - reported through start()/stop()
            self._error = exc
            self._ready.set()
        finally:
            self.loop.close()

    async def _run(self) -> None:
        self._stopping = asyncio.Event()
        self.api = await KubeApi.connect(self.cluster.kubeconfig)
        self.store = ObjectStore()
        self.source = KubeSource(self.api, self.store, self._kinds, **self._source_options)
        self.controller = Controller(self.store, Distributor())
        if self._elect is not None:
            self.elector = LeaderElector(self.api, **self._elect)
            self.writer = KubeWriter(self.api, is_leader=self.elector.is_leader, **self._writer_options)
        else:
            self.writer = KubeWriter(self.api, **self._writer_options)
        try:
            async with asyncio.TaskGroup() as tasks:
                running = [tasks.create_task(self.source.run()), tasks.create_task(self.controller.run())]
                if self._with_writer:
                    running.append(tasks.create_task(self.writer.run(self.controller)))
                if self.elector is not None:
                    running.append(tasks.create_task(self.elector.run()))
                for coroutine in self._extra(self) if self._extra else ():
                    running.append(tasks.create_task(coroutine))
                self._ready.set()
                await self._stopping.wait()
                for task in running:
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)
                if self.elector is not None and self.release_on_stop:
                    await self.elector.release()
        finally:
            await self.api.close()

    def call(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def on_loop(self, function: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run a plain function on the operator's loop (the store is not thread-safe)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(function())
            except BaseException as exc:  # noqa: BLE001
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result(timeout)

    def stop(self) -> None:
        if self._stopping is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(30)
        if self._error is not None and not isinstance(self._error, asyncio.CancelledError):
            raise self._error

    def __enter__(self) -> RunningOperator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
