"""ztunnel with worker processes, in real network namespaces.

The lab and mesh of test_ztunnel_netns (pods a and b enrolled, c outside; a fake node agent; the
real control plane), with the ztunnel in this process as worker 0 and a second worker process
that it starts, feeds over ZDS and supervises. The last tests run `wisp-ztunnel --workers 2` as a
process to see that a signal ends every worker and that none outlives the main process.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from urllib.error import HTTPError

import pytest
import structlog
import trio

from wisp.zds import protocol
from wisp.zds.protocol import Add, Del, WorkloadInfo

from .test_netns import (  # noqa: F401  (lab is a fixture)
    APP_PORT,
    B_IP,
    CLIENT,
    WEB,
    A_IP,
    connect_from,
    lab,
    read_line,
    running_mesh,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

OPENED = "istio_tcp_connections_opened_total"


@pytest.fixture
async def mesh(lab, ca, tmp_path):  # noqa: F811
    async with running_mesh(lab, ca, tmp_path, workers=2) as running:
        yield running


async def worker_status(mesh) -> dict:
    (entry,) = await mesh.ztunnel.workers.statuses()
    assert entry["status"] is not None, f"worker {entry} does not answer"
    return entry["status"]


async def connect_many(mesh, count: int) -> None:
    for _ in range(count):
        stream = await connect_from(mesh.lab, "a", (B_IP, APP_PORT))
        assert await read_line(stream) == A_IP
        await stream.aclose()


async def outbound_counts(mesh) -> tuple[float, float]:
    """Connections from pod a's app that this process and the worker each accepted."""
    with trio.fail_after(10):  # the last close may still be on its way
        while mesh.ztunnel.metrics.live:
            await trio.sleep(0.05)
    ours = mesh.metric(OPENED, reporter="source")
    theirs = (await worker_status(mesh))["connections_opened"]
    return ours, theirs


async def test_every_worker_gets_each_pod_with_its_netns(mesh):
    ours = {p["uid"]: p["netns"] for p in (await mesh.http("admin", "/config_dump")).json()["pods"]}
    theirs = {p["uid"]: p["netns"] for p in (await worker_status(mesh))["pods"]}
    assert ours == theirs and set(ours) == {CLIENT.uid, WEB.uid}
    response = await mesh.http("readiness", "/healthz/ready")
    assert (response.status_code, response.text) == (200, "ready\n")


async def test_connections_are_spread_over_both_processes(mesh):
    await connect_many(mesh, 40)
    ours, theirs = await outbound_counts(mesh)
    assert ours + theirs >= 40  # the worker also counts inbound streams it accepted
    assert ours > 0 and theirs > 0


async def test_metrics_endpoint_sums_every_worker(mesh):
    await connect_many(mesh, 20)
    ours, theirs = await outbound_counts(mesh)
    text = (await mesh.http("metrics", "/metrics")).text
    opened = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith(OPENED + "{") and 'reporter="source"' in line)
    assert opened == 20
    assert 0 < ours < 20  # so the 20 really were added up from two processes
    assert "_created" not in text


async def test_del_removes_the_pod_from_every_worker(mesh):
    assert (await mesh.agent.request(Del(CLIENT.uid))).ok
    assert CLIENT.uid not in {p["uid"] for p in (await worker_status(mesh))["pods"]}
    # No process listens on 15001 in the pod any more: every captured connection is refused.
    for _ in range(10):
        with pytest.raises(OSError) as info:
            await connect_from(mesh.lab, "a", (B_IP, APP_PORT))
        assert info.value.errno == errno.ECONNREFUSED or "ECONNREFUSED" in str(info.value)


async def test_the_agents_ack_reports_a_worker_that_failed(mesh):
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        ack = await mesh.agent.request(Add("Kubernetes//Pod/x/y", WorkloadInfo("y", "x", "default")), fd)
    finally:
        os.close(fd)
    assert "cannot open listeners" in ack.error and "worker 1: " in ack.error
    # The agent offers the pod again later; until then both processes keep it pending.
    dump = (await mesh.http("admin", "/config_dump")).json()
    assert dump["pending_pods"] == ["Kubernetes//Pod/x/y"]
    assert dump["workers"][0]["status"]["pending_pods"] == ["Kubernetes//Pod/x/y"]
    assert (await mesh.agent.request(Del("Kubernetes//Pod/x/y"))).ok


async def test_garbage_from_the_agent_is_nacked_and_reaches_no_worker(mesh):
    # Each answered with a NACK naming the problem (the test once decoded the answer without
    # looking at it, and passed with garbage acked as fine).
    errors = []
    for junk in (b"\xff\xff\xff", b"\x0a\x05\x0a\x02u", b"\xff" * 64):
        mesh.agent.conn.send(junk)
        ack = protocol.decode_response(await mesh.agent._recv())
        assert not ack.ok and ack.error, f"{junk!r} was acked"
        errors.append(ack.error)
    assert errors == ["truncated varint", "field 1 runs past the end of the message", "varint longer than 64 bits"]
    assert {p["uid"] for p in (await worker_status(mesh))["pods"]} == {CLIENT.uid, WEB.uid}
    await connect_many(mesh, 5)


async def test_a_killed_worker_is_restarted_with_the_pods_and_serves_again(mesh):
    proxies = dict(mesh.ztunnel.pods.proxies)
    (before,) = await mesh.ztunnel.workers.statuses()
    os.kill(before["pid"], signal.SIGKILL)
    with trio.fail_after(30):
        while True:
            (after,) = await mesh.ztunnel.workers.statuses()
            if after["pid"] not in (None, before["pid"]) and after["status"] and after["status"]["ready"]:
                break
            await trio.sleep(0.1)
    assert after["restarts"] == before["restarts"] + 1
    assert {p["uid"] for p in after["status"]["pods"]} == {CLIENT.uid, WEB.uid}
    assert mesh.ztunnel.pods.proxies == proxies  # this process's pods were not touched
    await connect_many(mesh, 30)
    _, theirs = await outbound_counts(mesh)
    assert theirs > 0


async def node_total(mesh, name: str = OPENED) -> float:
    """What the node's /metrics says: this process's counters plus every worker's, exited ones too."""
    text = (await mesh.http("metrics", "/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and 'reporter="source"' in line)


async def wait_for_new_worker(mesh, old_pid: int) -> dict:
    with trio.fail_after(30):
        while True:
            (after,) = await mesh.ztunnel.workers.statuses()
            if after["pid"] not in (None, old_pid) and after["status"] and after["status"]["ready"]:
                return after
            await trio.sleep(0.05)


async def test_a_hung_worker_is_killed_after_four_seconds_restarted_with_backoff_and_totals_never_drop(mesh):
    """docs/ztunnel-workers.md: a worker that does not ack within 4 s is killed and restarted,
    1 s after it exited and twice as long after each exit within 10 s of its start; the node's
    counters include what exited workers counted."""
    await connect_many(mesh, 30)
    _, theirs = await outbound_counts(mesh)
    assert theirs > 0
    totals = [await node_total(mesh)]
    (before,) = await mesh.ztunnel.workers.statuses()
    with structlog.testing.capture_logs() as logs:
        os.kill(before["pid"], signal.SIGSTOP)  # hung: alive, answering nothing
        started = trio.current_time()
        ack = await mesh.agent.request(Del("Kubernetes//Pod/x/gone"))
        took = trio.current_time() - started
        assert 3.8 <= took <= 4.8, f"the hung worker held the agent's ack {took:.2f} s"
        assert "worker 1: did not ack Del" in ack.error and "restarting it" in ack.error
        first = await wait_for_new_worker(mesh, before["pid"])
        assert first["restarts"] == before["restarts"] + 1
        totals.append(await node_total(mesh))
        # Killed again within 10 s of its start: the next restart waits twice as long.
        os.kill(first["pid"], signal.SIGKILL)
        second = await wait_for_new_worker(mesh, first["pid"])
        assert second["restarts"] == before["restarts"] + 2
        totals.append(await node_total(mesh))
    kills = [e for e in logs if e["event"] == "killing ztunnel worker"]
    assert len(kills) == 1 and "did not ack Del" in kills[0]["reason"]
    restarts = [e["restart_in"] for e in logs if e["event"] == "ztunnel worker exited; restarting it with the current pods"]
    assert restarts == [1.0, 2.0]
    await connect_many(mesh, 10)
    totals.append(await node_total(mesh))
    # Never down (the exited workers' counts stay in the sum), and up by the last 10.
    assert totals == sorted(totals) and totals[-1] == totals[0] + 10, totals


async def test_readiness_waits_for_every_worker(lab, ca, tmp_path):  # noqa: F811
    async with running_mesh(lab, ca, tmp_path, workers=2) as mesh:
        (entry,) = await mesh.ztunnel.workers.statuses()
        os.kill(entry["pid"], signal.SIGKILL)
        with trio.fail_after(10):
            while True:
                response = await mesh.http("readiness", "/healthz/ready")
                if response.status_code == 500:
                    break
                await trio.sleep(0.02)
        assert "worker 1" in response.text


# -- as a process ------------------------------------------------------------------------------------
def start_ztunnel(tmp_path, *extra: str) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ztunnel.main", "--node", "n1", "--workers", "2",
         "--zds-socket", str(tmp_path / "protocol.sock"), "--admin-address", "127.0.0.1:0",
         "--metrics-address", "127.0.0.1:0", "--readiness-address", "127.0.0.1:0",
         "--drain-seconds", "0.5", "--log-json", *extra],
        stderr=subprocess.PIPE, text=True,
    )
    events: dict = {}
    deadline = time.monotonic() + 30
    while "ztunnel worker given the pods" not in events and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        event = json.loads(line)
        events.setdefault(event["event"], event)
    return proc, events


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def process_cleanup():
    procs: list[subprocess.Popen] = []
    pids: list[int] = []
    yield procs, pids
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()  # not kill: it removes its metrics directory
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stderr.close()
    for pid in pids:  # workers end with their main process; this is only for a failed test
        if not gone(pid, timeout=5):
            os.kill(pid, signal.SIGKILL)


def test_sigterm_drains_and_ends_every_worker(tmp_path, process_cleanup):
    procs, pids = process_cleanup
    proc, events = start_ztunnel(tmp_path)
    procs.append(proc)
    assert "ztunnel worker given the pods" in events, events
    worker = events["ztunnel worker started"]["pid"]
    pids.append(worker)
    ready = events["ztunnel started"]["readiness"]
    with pytest.raises(HTTPError) as info:
        urllib.request.urlopen(f"http://{ready}/healthz/ready", timeout=5)
    assert info.value.read().decode().startswith("not ready, pending: config, pod snapshot, worker 1: config")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert gone(worker)
    assert not os.path.exists(events["starting worker processes"]["metrics_dir"])


def test_a_worker_does_not_outlive_a_killed_main_process(tmp_path, process_cleanup):
    procs, pids = process_cleanup
    proc, events = start_ztunnel(tmp_path)
    procs.append(proc)
    worker = events["ztunnel worker started"]["pid"]
    pids.append(worker)
    proc.kill()
    proc.wait()
    assert gone(worker)
    # The killed process could not remove its metrics directory; the next ztunnel does.
    stale = events["starting worker processes"]["metrics_dir"]
    assert os.path.isdir(stale)
    again, events = start_ztunnel(tmp_path)
    procs.append(again)
    pids.append(events["ztunnel worker started"]["pid"])
    assert not os.path.exists(stale)
