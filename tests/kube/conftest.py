"""The Kubernetes test bed, started once per test session from the cached upstream binaries.

`testbed_binaries` FAILS every test that needs it (never skips) when the binaries are not built,
with the command that builds them (`./run test` builds them first; see docs/testbed.md).
`cluster` is the running control plane, `nodes` three simulated nodes with a fast lease renewal
(2 s, so the renewal test needs not wait the default 10 s). The start time is printed in the
terminal summary.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from runtime.testbed import build
from runtime.testbed.cluster import Cluster, start
from runtime.testbed.nodes import Nodes

NODE_COUNT = 3
_timings: dict[str, float] = {}


@pytest.fixture(scope="session")
def testbed_binaries() -> build.Binaries:
    try:
        return build.installed()
    except build.MissingBinaries as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def cluster(testbed_binaries: build.Binaries) -> Iterator[Cluster]:
    running = start(testbed_binaries, timeout=120)
    _timings["start"] = running.start_seconds
    try:
        yield running
    finally:
        pids = running.pids()
        running.stop()
        alive = [pid for pid in pids if _alive(pid)]
        assert not alive, "test bed processes still running after stop: %s" % alive
        assert not running.workdir.exists(), "test bed directory %s left behind" % running.workdir


@pytest.fixture(scope="session")
def nodes(cluster: Cluster) -> Iterator[Nodes]:
    started = time.monotonic()
    fleet = Nodes(cluster, NODE_COUNT, lease_interval=2.0).start()
    try:
        fleet.wait_schedulable(timeout=60)
        _timings["nodes"] = round(time.monotonic() - started, 2)
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace whose default ServiceAccount exists (pods can be created in it)."""
    name = "t-" + uuid.uuid4().hex[:8]
    with cluster.client() as client:
        response = client.post("/api/v1/namespaces", json={"metadata": {"name": name}})
        assert response.status_code == 201, response.text
        wait_for(lambda: client.get("/api/v1/namespaces/%s/serviceaccounts/default" % name).status_code == 200,
                 "the default ServiceAccount of %s" % name)
    try:
        yield name
    finally:
        with cluster.client() as client:
            client.delete("/api/v1/namespaces/%s" % name)


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0, interval: float = 0.2) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def _alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _timings:
        terminalreporter.write_line(
            "wisp test bed: control plane ready in %.1f s, %d nodes schedulable in %.1f s more"
            % (_timings.get("start", 0.0), NODE_COUNT, _timings.get("nodes", 0.0))
        )
