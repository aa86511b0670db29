"""Fail-closed, checked throughout and told apart (issue 15 item 11, part of item 3).

- While a node's ztunnel is dead and restarting, its pods' traffic fails: a prober in the client
  pod opens a new connection every 20 ms from before the kill until traffic is back, and every
  attempt between the kill and the new process fails; the pod's redirection rules, read every
  0.2 s, never change; the link between the nodes, captured all along, carries no plaintext.
- Where the docs promise a reset (docs/architecture.md, "a connection refused before it is
  spliced is reset (RST)"; docs/authorization.md, "A denied connection is reset"; "ended with a
  TCP reset to the app" for a connection a policy change denies), the client sees a reset
  (ECONNRESET or ECONNREFUSED), never a FIN.

The outcome names are bench/reliability/probe.py's: `refused` and `reset` are resets, `eof` is a
FIN before any answer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.reliability.capture import Capture, audit
from bench.reliability.probe import MARKER

from .test_l4_mesh import policy, without_comments

ROOT = Path(__file__).resolve().parents[2]
RESETS = {"refused", "reset"}


def _boot_time() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _started(pid: int) -> float | None:
    """When `pid` started, on CLOCK_BOOTTIME (the prober's clock)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


class Prober:
    """probe.py in a pod: one new connection every `interval` s, its outcomes in `attempts`."""

    def __init__(self, mesh, namespace: str, pod: str, target: str, interval: float = 0.02) -> None:
        self.attempts: list[dict] = []
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", mesh.pod(namespace, pod)["netns"], sys.executable, "-m",
             "bench.reliability.probe", target, "--interval", str(interval), "--timeout", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.attempts.append(json.loads(line))

    def first_ok_after(self, t: float) -> dict | None:
        return next((a for a in list(self.attempts) if a["t"] >= t and a["outcome"] == "ok"), None)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reader.join(5)


def _rules(mesh, namespace: str, pod: str) -> list[str]:
    return without_comments(mesh.iptables(namespace, pod)) + mesh.in_pod(namespace, pod, "ip", "rule").stdout.split("\n")


def test_a_killed_ztunnel_fails_closed_until_its_restart_serves_with_resets_and_rules_in_place(mesh):
    far = mesh.pod("ambient", "server-far")["ip"]
    rules_before = _rules(mesh, "ambient", "client")
    component = mesh.component("ztunnel-node1")
    capture = Capture(f"{mesh.prefix}-net", "br0")
    samples: list[bool] = []
    try:
        with capture:
            prober = Prober(mesh, "ambient", "client", f"{far}:8080")
            try:
                assert mesh.wait_for(lambda: prober.first_ok_after(0), timeout=10, what="the prober served")
                t_kill = _boot_time()
                # As a container dies: the main process and its workers at once (its process group).
                os.killpg(component["pid"], signal.SIGKILL)
                done = threading.Event()

                def sample() -> None:
                    while not done.is_set():
                        samples.append(_rules(mesh, "ambient", "client") == rules_before)
                        done.wait(0.2)

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                mesh.wait_for(lambda: mesh.component("ztunnel-node1")["pid"] not in (None, component["pid"]),
                              timeout=20, what="ztunnel restarted")
                t_start = _started(mesh.component("ztunnel-node1")["pid"])
                first = mesh.wait_for(lambda: prober.first_ok_after(t_kill), timeout=30, what="traffic recovered")
                time.sleep(0.5)
                done.set()
                sampler.join(10)
            finally:
                prober.stop()
        checked = audit(capture.files, (MARKER.encode(),))
    finally:
        capture.remove()
    down = [a for a in prober.attempts if t_kill <= a["t"] < first["t"]]
    before_restart = [a for a in down if a["t"] < t_start]
    # Throughout the window: attempts made, none served, each one reset.
    assert len(before_restart) >= 20, f"only {len(before_restart)} attempts while ztunnel was down"
    assert [a for a in down if a["outcome"] == "ok"] == []
    assert {a["outcome"] for a in down} <= RESETS, sorted({a["outcome"] for a in down})
    assert samples and all(samples), f"redirection changed in {samples.count(False)} of {len(samples)} reads"
    assert checked.plaintext_bytes == 0 and checked.marker_hits == 0 and checked.not_tls_bytes == 0, checked.summary()
    assert checked.tls_records > 0


def test_a_connection_a_policy_denies_at_connect_is_reset_not_closed(mesh):
    text = policy("deny-9000-reset", "DENY", "{to: [{operation: {ports: ['9000']}}]}")
    far = mesh.pod("ambient", "server-far")["ip"]
    script = ("import socket\ns=socket.create_connection(('%s',9000),timeout=5)\ns.sendall(b'ping')\n"
              "try:\n d=s.recv(10)\n print('data' if d else 'eof')\nexcept ConnectionResetError:\n print('reset')\n"
              "except ConnectionRefusedError:\n print('refused')\n" % far)
    mesh.apply(text, "deny-9000-reset")
    try:
        outcome = mesh.wait_for(lambda: (lambda o: o if o != "data" else None)(
            mesh.in_pod("ambient", "client", sys.executable, "-c", script).stdout.strip()), what="port 9000 denied")
        assert outcome in RESETS, outcome
    finally:
        mesh.delete(text, "deny-9000-reset")


def test_a_live_connection_a_policy_change_denies_is_reset_not_closed(mesh):
    script = ("import socket\ns=socket.create_connection(('far.ambient',9000),timeout=5)\n"
              "s.sendall(b'hi');assert s.recv(10)==b'hi';print('open',flush=True);s.settimeout(30)\n"
              "try:\n d=s.recv(10)\n print('eof' if not d else 'data',flush=True)\n"
              "except ConnectionResetError:\n print('reset',flush=True)\n")
    process = subprocess.Popen(["ip", "netns", "exec", mesh.pod("ambient", "client")["netns"], sys.executable, "-c",
                                script], stdout=subprocess.PIPE, text=True)
    text = policy("deny-live-reset", "DENY", "{to: [{operation: {ports: ['9000']}}]}")
    try:
        assert process.stdout.readline().strip() == "open"
        mesh.apply(text, "deny-live-reset")
        assert process.stdout.readline().strip() == "reset"
    finally:
        process.kill()
        process.wait()
        mesh.delete(text, "deny-live-reset")
