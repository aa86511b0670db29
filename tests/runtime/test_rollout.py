"""`wisp rollout restart`: the request the CLI leaves, the plan the daemon makes of it, following it.

The restart itself (two ztunnels, a drain) is tests/e2e/test_ztunnel_rollout.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import trio

from wisp.runpaths import RuntimePaths
from runtime.rollout import Rollouts, RolloutError, request, wait


@dataclass
class Node:
    name: str
    netns: str


@pytest.fixture
def paths(tmp_path, monkeypatch):
    monkeypatch.setattr("wisp.runpaths.RUN_ROOT", tmp_path)
    paths = RuntimePaths("wisp-trollout")
    paths.root.mkdir()
    return paths


def rollouts(paths: RuntimePaths) -> Rollouts:
    return Rollouts(paths, {}, lambda: [Node("node1", "n1"), Node("node2", "n2")], drain_seconds=30)


def test_a_request_is_one_file_the_daemon_reads(paths):
    rollout_id = request(paths, "ztunnel", ["node2"])
    assert json.loads((paths.root / "rollouts" / f"{rollout_id}.json").read_text()) == {
        "component": "ztunnel", "nodes": ["node2"]}


def test_only_ztunnel_can_be_restarted(paths):
    with pytest.raises(RolloutError, match="components: ztunnel"):
        request(paths, "operator", [])


def test_the_plan_takes_every_node_in_order_or_the_ones_named(paths):
    plan = rollouts(paths)._plan("r1", {"component": "ztunnel", "nodes": []})
    assert [step.node for step in plan.nodes] == ["node1", "node2"]
    plan = rollouts(paths)._plan("r2", {"component": "ztunnel", "nodes": ["node2"]})
    assert [step.node for step in plan.nodes] == ["node2"]


@pytest.mark.parametrize("wanted,message", [
    ({"component": "ztunnel", "nodes": ["node9"]}, "no node node9; nodes: node1, node2"),
    ({"component": "ztunnel", "nodes": "node1"}, "list of node names"),
    ({"component": "waypoint"}, "one of: ztunnel"),
    (["ztunnel"], "one of: ztunnel"),
])
def test_a_bad_request_is_refused_with_the_reason(paths, wanted, message):
    with pytest.raises(RolloutError, match=message):
        rollouts(paths)._plan("r", wanted)


def status_of(state: str, node_states: list[str]) -> dict:
    return {"phase": "ready", "rollouts": {"r": {"state": state, "error": "", "nodes": [
        {"node": f"node{i + 1}", "state": s} for i, s in enumerate(node_states)]}}}


def test_waiting_ends_when_every_node_serves_or_with_drained_when_the_old_ones_exited():
    states = iter([status_of("running", ["draining", "starting"]), status_of("done", ["draining", "draining"]),
                   status_of("done", ["done", "draining"]), status_of("done", ["done", "done"])])
    assert wait(lambda: next(states), "r", 5)["nodes"][0]["state"] == "draining"
    assert [n["state"] for n in wait(lambda: next(states), "r", 5, drained=True)["nodes"]] == ["done", "done"]


def test_waiting_on_a_mesh_that_stopped_says_so():
    with pytest.raises(RolloutError, match="not running"):
        wait(lambda: {"phase": "stopping"}, "r", 5)


@pytest.mark.parametrize("argv", [["rollout", "--prefix", "wisp-tnone", "restart", "ztunnel"],
                                  ["rollout", "restart", "ztunnel", "--prefix", "wisp-tnone"]])
def test_the_command_names_the_mesh_it_did_not_find(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("wisp.runpaths.RUN_ROOT", tmp_path)
    monkeypatch.setattr("os.geteuid", lambda: 0)
    # The CLI would point the process's logging at capsys's stream, closed after this test.
    monkeypatch.setattr("wisp.log.configure", lambda *args, **kwargs: None)
    from wisp.cli import main

    assert main(argv) == 1
    assert "no mesh with prefix 'wisp-tnone' is up" in capsys.readouterr().err


async def test_the_daemon_answers_a_bad_request_in_its_status(paths):
    daemon = rollouts(paths)
    rollout_id = request(paths, "ztunnel", ["node7"])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.serve)
        with trio.fail_after(5):
            while rollout_id not in daemon.status():
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert daemon.status()[rollout_id]["state"] == "failed"
    assert "no node node7" in daemon.status()[rollout_id]["error"]
    assert not list((paths.root / "rollouts").glob("*.json"))  # taken, not run again
