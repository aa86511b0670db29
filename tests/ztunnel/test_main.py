"""`wisp-ztunnel` as a process: starts, reports not-ready with what it waits for, exits 0 on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from urllib.error import HTTPError

import pytest

from ztunnel.main import parse_args


def test_arguments_build_the_config():
    config = parse_args(["--node", "n1", "--control-plane", "10.250.0.1:15012", "--state-dir", "/s",
                         "--metrics-address", "127.0.0.1:0", "--drain-seconds", "2", "--log-json"])
    assert config.node == "n1" and config.subscriber_id == "ztunnel-n1"
    assert str(config.token_path()) == "/s/tokens/ztunnel-n1"
    assert str(config.root_path()) == "/s/root-cert.pem"
    assert config.metrics_address == ("127.0.0.1", 0) and config.drain_seconds == 2.0


def test_workers_default_to_two_or_the_cores_given_and_can_be_set(monkeypatch):
    monkeypatch.delenv("WISP_ZTUNNEL_WORKERS", raising=False)
    assert parse_args(["--node", "n1"]).workers == min(2, len(os.sched_getaffinity(0)))
    assert parse_args(["--node", "n1", "--workers", "3"]).workers == 3
    monkeypatch.setenv("WISP_ZTUNNEL_WORKERS", "4")
    assert parse_args(["--node", "n1"]).workers == 4


@pytest.mark.parametrize("argv,env", [(["--workers", "0"], ""), (["--workers", "two"], ""), ([], "-1")])
def test_a_bad_worker_count_is_refused(monkeypatch, capsys, argv, env):
    monkeypatch.setenv("WISP_ZTUNNEL_WORKERS", env)
    with pytest.raises(SystemExit):
        parse_args(["--node", "n1", *argv])
    assert "number of workers from 1 to 64" in capsys.readouterr().err


@pytest.mark.parametrize("argv,env", [
    (["--control-plane", "10.250.0.1"], {}),
    (["--control-plane", "cp:port"], {}),
    ([], {"WISP_CONTROL_PLANE": "cp:99999"}),
])
def test_a_bad_control_plane_address_is_refused(monkeypatch, capsys, argv, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit):
        parse_args(["--node", "n1", *argv])
    assert "is not host:port" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_a_bad_drain_deadline_is_refused(capsys, value):
    with pytest.raises(SystemExit):
        parse_args(["--node", "n1", "--drain-seconds", value])
    assert "is not a number of seconds" in capsys.readouterr().err


def test_replace_and_the_drain_deadline_reach_the_config():
    assert parse_args(["--node", "n1"]).replace is False
    config = parse_args(["--node", "n1", "--replace", "--drain-seconds", "30"])
    assert config.replace is True and config.drain_seconds == 30.0


def test_node_is_required(monkeypatch):
    monkeypatch.delenv("NODE_NAME", raising=False)
    with pytest.raises(SystemExit):
        parse_args([])


def test_process_is_not_ready_without_snapshot_and_drains_on_sigterm(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "ztunnel.main", "--node", "n1", "--workers", "1", "--zds-socket", str(tmp_path / "zds.sock"),
         "--admin-address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0",
         "--readiness-address", "127.0.0.1:0", "--drain-seconds", "0.2", "--log-json"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        started = None
        deadline = time.monotonic() + 20
        while started is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            event = json.loads(line)
            if event.get("event") == "ztunnel started":
                started = event
        assert started is not None, "ztunnel did not start"
        with pytest.raises(HTTPError) as info:
            urllib.request.urlopen(f"http://{started['readiness']}/healthz/ready", timeout=5)
        assert info.value.code == 500
        assert info.value.read().decode() == "not ready, pending: config, pod snapshot\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
