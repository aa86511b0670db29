"""The `wisp` verbs on a Kubernetes-backed mesh (runtime/kube/cli.py) and the Kubernetes demo's
commands: what they print, and the errors that change nothing."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import cli
from runtime import demo
from runtime.demo import install_steps
from runtime.kube import cli as kube
from wisp.runpaths import RuntimePaths


def pod(name: str, *, ready: bool = True, waiting: str | None = None, deleting: bool = False,
        annotations: dict | None = None) -> dict:
    state = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
    meta = {"name": name, "namespace": "shop", "annotations": annotations or {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-05T07:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": "node1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running" if not waiting else "Pending", "podIP": "10.244.1.10",
                       "containerStatuses": [{"name": "c", "ready": ready, "restartCount": 2, "state": state}]}}


def test_pods_show_node_ip_readiness_restarts_and_redirection():
    rows = kube.pod_rows([pod("web", annotations={"ambient.istio.io/redirection": "enabled"}),
                          pod("api", ready=False, waiting="ErrImagePull")])
    assert rows[0] == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "NODE", "IP", "REDIRECTION"]
    assert rows[1] == ["shop", "api", "0/1", "ErrImagePull", "2", "node1", "10.244.1.10", "-"]
    assert rows[2] == ["shop", "web", "1/1", "Running", "2", "node1", "10.244.1.10", "enabled"]


def test_a_deleted_pod_is_terminating_whatever_its_phase():
    assert kube.pod_status_text(pod("web", deleting=True)) == "Terminating"


def test_a_kubeconfig_that_cannot_be_used_is_named(tmp_path: Path):
    broken = tmp_path / "config"
    broken.write_text("current-context: nowhere\ncontexts: []\n")
    with pytest.raises(cli.CliError, match=f"cannot use the kubeconfig {broken}"):
        kube.api_from_kubeconfig(broken)


def test_kubeconfig_of_a_local_mesh_says_how_to_start_a_kubernetes_one():
    with pytest.raises(cli.CliError, match="wisp up --kubernetes"):
        kube.kubeconfig_of({"phase": "ready", "pods": []}, "wisp")


def wisp(*args: str) -> subprocess.CompletedProcess[str]:
    # A process of its own: the CLI configures logging onto its stderr, which must not be pytest's capture.
    return subprocess.run([sys.executable, "-m", "wisp.cli", *args], capture_output=True, text=True, timeout=60)


def test_up_kubernetes_refuses_a_manifest_directory_and_starts_nothing():
    prefix = "wisp-kcli-none"
    done = wisp("up", "--kubernetes", "--prefix", prefix, "examples/shop")
    err = done.stderr
    assert done.returncode == 1
    assert "with --kubernetes the cluster starts empty: run it, then `kubectl apply -f examples/shop`" in err
    assert not RuntimePaths(prefix).root.exists()


def test_up_without_a_directory_or_kubernetes_says_what_to_give():
    done = wisp("up", "--prefix", "wisp-kcli-none")
    assert done.returncode == 1
    assert "give a directory of manifests (wisp up examples/shop), or --kubernetes" in done.stderr


def test_kubeconfig_without_a_mesh_says_how_to_start_one():
    done = wisp("kubeconfig", "--prefix", "wisp-kcli-none")
    assert done.returncode == 1
    assert "start one with `wisp up DIR` or `wisp up --kubernetes`" in done.stderr


def test_label_patches_the_kinds_people_label_and_leaves_the_rest_to_kubectl(monkeypatch):
    calls = []
    monkeypatch.setattr(kube, "kubectl", lambda status, *args: calls.append(args) or 0)
    args = argparse.Namespace(kind="gateway", name="waypoint", labels=["a=b"], namespace="shop")
    assert kube.label({"kubeconfig": "k", "kubectl": "kubectl"}, args) == 0
    assert calls == [("label", "--overwrite", "gateway", "waypoint", "a=b", "-n", "shop")]
    assert kube.LABELLED_KINDS["ns"] == ("/api/v1", "namespaces", False)


def test_the_kubernetes_demo_installs_the_mesh_before_the_shop_and_enrols_it_last():
    steps = [" ".join(step) for step in install_steps(Path("examples/shop"))]
    assert steps[0] == "kubectl apply -k deploy/"
    assert steps.index("kubectl apply -f examples/shop") > steps.index(
        "kubectl -n istio-system rollout status daemonset/ztunnel --timeout=240s")
    assert steps.index("kubectl label namespace shop istio.io/dataplane-mode=ambient --overwrite") \
        == steps.index("kubectl apply -f examples/shop") + 1


def test_pick_named_keeps_the_order_given_and_reports_each_missing_name(capsys):
    objects = [{"metadata": {"name": n}} for n in ("a", "b", "c")]
    picked, code = cli.pick_named(objects, ["c", "x", "a"], "pods")
    assert [o["metadata"]["name"] for o in picked] == ["c", "a"]
    assert code == 1
    assert capsys.readouterr().err == 'Error from server (NotFound): pods "x" not found\n'
    assert cli.pick_named(objects, [], "pods") == (objects, 0)


def test_down_returns_only_once_a_daemon_deaf_to_sigterm_is_gone(tmp_path: Path):
    # A wedged daemon: `down` kills it, and what it removes next must not race the dying process.
    deaf = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                             " print('deaf', flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        assert deaf.stdout.readline() == b"deaf\n"
        cli._stop(RuntimePaths("wisp-kcli-none"), deaf.pid, timeout=0.3)
        with pytest.raises(ProcessLookupError):
            os.kill(deaf.pid, 0)
    finally:
        deaf.kill()
        deaf.wait()


def test_the_kubernetes_demo_reports_a_kubectl_that_never_answers_and_stops(tmp_path: Path, monkeypatch, capsys):
    kubectl = tmp_path / "kubectl"
    kubectl.write_text("#!/bin/sh\nexec sleep 30\n")
    kubectl.chmod(0o755)
    monkeypatch.setattr(demo, "STEP_SECONDS", 0.5)
    assert demo._install(Path("examples/shop"), {"kubeconfig": str(tmp_path / "config"), "kubectl": str(kubectl)}) is False
    out = capsys.readouterr().out
    assert "$ kubectl apply -k deploy/" in out and "(no answer after 0.5 s)" in out
    assert "rollout" not in out, "nothing after the step that hung"


@pytest.mark.parametrize("option, value, message", [
    ("--restart-delay", "-1", "--restart-delay must be between 0 and 300 seconds"),
    ("--restart-delay", "nan", "--restart-delay must be between 0 and 300 seconds"),
    ("--timeout", "0", "--timeout must be more than 0 and at most 3600 seconds"),
])
def test_up_kubernetes_refuses_a_bad_delay_or_timeout_and_starts_nothing(option: str, value: str, message: str):
    done = wisp("up", "--kubernetes", "--prefix", "wisp-kcli-none", option, value)
    assert done.returncode == 1
    assert message in done.stderr
    assert not RuntimePaths("wisp-kcli-none").root.exists()


def test_the_wisp_cli_imports_the_runtime_only_for_the_runtime_verbs(tmp_path: Path):
    # A component imports `wisp`; `wisp` reaches the runtime only inside the commands that drive it.
    script = ("import sys; from wisp import cli; code = cli.main(['ca', 'init', sys.argv[1]]);"
              " print(code, sorted(m for m in sys.modules if m == 'runtime' or m.startswith('runtime.')))")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "ca")], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.splitlines()[-1] == "0 []", done.stdout + done.stderr
    assert wisp("down", "--prefix", "wisp-kcli-none").stdout == "no mesh 'wisp-kcli-none' was running\n"


def test_a_missing_kubectl_is_named_with_how_to_get_it_back(tmp_path: Path):
    args = argparse.Namespace(kind="gateway", name="waypoint", labels=["a=b"], namespace="shop")
    gone = tmp_path / "kubectl"
    with pytest.raises(cli.CliError, match=f"cannot run the test bed's kubectl {gone}: .*./run testbed build"):
        kube.label({"kubeconfig": "k", "kubectl": str(gone)}, args)
