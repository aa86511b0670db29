"""`wisp install`, `wisp uninstall` and `wisp precheck` against the real test bed.

`wisp install` must do what `kubectl apply -k deploy/` does (tests/kube/test_deploy.py): every
object accepted (server-side dry run, then for real, as field manager `wisp`), the CRDs
Established, and the DaemonSets given one pod per registered node by the real controllers and
scheduler. `wisp uninstall` removes it again. `wisp precheck` is judged on a clean cluster, on
one with a conflicting install, and for a user whose RBAC lacks what the install needs (a
service account's token, so the SelfSubjectAccessReviews are the API server's real answers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from runtime.testbed.cluster import Cluster
from runtime.testbed.nodes import Nodes

from .conftest import wait_for
from .test_deploy import (
    NAMESPACE,
    _exists,
    _key,
    _kustomized,
    _leftovers,
    _namespace_labels,
    _remove,
    _resource,
    _restore_namespace_labels,
    _wait_established,
    _wait_rolled_out,
)

WISP = Path(sys.executable).parent / "wisp"


def wisp(cluster: Cluster, *args: str, kubeconfig: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("KUBECONFIG", None)
    return subprocess.run([str(WISP), *args, "--kubeconfig", str(kubeconfig or cluster.kubeconfig)],
                          capture_output=True, text=True, timeout=timeout, env=env, check=False)


def _generations(cluster: Cluster, objects: list[dict[str, Any]]) -> dict[str, str]:
    found = {}
    for obj in objects:
        args = ["get", _resource(obj), "-o", "json"]
        if _key(obj)[2]:
            args += ["-n", _key(obj)[2]]
        meta = json.loads(cluster.kubectl(*args).stdout)["metadata"]
        found[_resource(obj)] = str(meta.get("generation", "rv" + meta["resourceVersion"]))
    return found


@pytest.fixture
def installed_by_test(cluster: Cluster) -> Any:
    """Whatever the test installs is removed afterwards, leaving what was there before."""
    objects = _kustomized(cluster)
    before = {_key(obj) for obj in objects if _exists(cluster, obj)}
    labels = _namespace_labels(cluster, NAMESPACE)
    assert not _leftovers(cluster, []), "wisp objects from an earlier run"
    yield objects, before
    _restore_namespace_labels(cluster, NAMESPACE, labels)
    _remove(cluster, [obj for obj in objects if _key(obj) not in before], "every object wisp installed deleted")


def test_install_applies_deploy_server_side_and_the_controllers_roll_it_out(
    cluster: Cluster, nodes: Nodes, installed_by_test: Any
) -> None:
    objects, before = installed_by_test
    if ("v1", "Namespace", "", NAMESPACE) not in before:
        # Without its namespace a server dry run cannot judge the namespaced objects; it says so.
        refused = wisp(cluster, "install", "--dry-run=server")
        assert refused.returncode == 1
        assert "namespace %s does not exist" % NAMESPACE in refused.stderr
        cluster.kubectl("create", "namespace", NAMESPACE)
    dry = wisp(cluster, "install", "--dry-run=server")
    assert dry.returncode == 0, dry.stderr
    for obj in objects:
        assert "%s serverside-applied (server dry run)" % _resource(obj) in dry.stdout
    assert "the API server accepts all %d objects" % len(objects) in dry.stdout
    assert not any(_exists(cluster, obj) for obj in objects if obj["kind"] != "Namespace"
                   and _key(obj) not in before), "the dry run stored objects"

    done = wisp(cluster, "install", "--wait", "--timeout", "180")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "✔ wisp installed: %d objects applied (field manager wisp)" % len(objects) in done.stdout
    assert all(_exists(cluster, obj) for obj in objects)
    _wait_established(cluster, objects)
    _wait_rolled_out(cluster, nodes, NAMESPACE, replicas=2)
    ztunnel = json.loads(cluster.kubectl("get", "daemonset", "ztunnel", "-n", NAMESPACE, "-o", "json",
                                         "--show-managed-fields").stdout)
    managers = {(m["manager"], m["operation"]) for m in ztunnel["metadata"]["managedFields"]}
    assert ("wisp", "Apply") in managers
    env = {e["name"]: e.get("value") for e in ztunnel["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["XDS_ADDRESS"] == env["CA_ADDRESS"] == "wisp-operator.istio-system.svc:15012"

    # Installing again changes nothing.
    generations = _generations(cluster, objects)
    again = wisp(cluster, "install")
    assert again.returncode == 0, again.stderr
    assert _generations(cluster, objects) == generations

    # precheck on the installed cluster: no error, and it sees wisp there.
    check = wisp(cluster, "precheck")
    assert check.returncode == 0, check.stdout
    assert "wisp is already installed in istio-system" in check.stdout

    # uninstall keeps the namespace and the CRDs; --purge takes them too (only when this test made
    # them: other tests use CRDs that were there before).
    removed = wisp(cluster, "uninstall")
    assert removed.returncode == 0, removed.stderr
    kept = {"Namespace", "CustomResourceDefinition"}
    wait_for(lambda: not any(_exists(cluster, obj) for obj in objects if obj["kind"] not in kept),
             "everything but the namespace and CRDs deleted", timeout=120)
    assert all(_exists(cluster, obj) for obj in objects if obj["kind"] in kept)
    if not any(key[1] == "CustomResourceDefinition" for key in before) and ("v1", "Namespace", "", NAMESPACE) \
            not in before:
        purged = wisp(cluster, "uninstall", "--purge")
        assert purged.returncode == 0, purged.stderr
        assert "namespace/istio-system deleted" in purged.stdout
        assert "not found" in purged.stdout  # the objects the first uninstall removed
        wait_for(lambda: not _leftovers(cluster, objects), "wisp uninstall --purge leaving nothing", timeout=180)


def test_install_with_chart_values_renders_the_chart(cluster: Cluster) -> None:
    printed = wisp(cluster, "install", "--dry-run", "--set", "trustDomain=example.org", "--set", "ztunnel.workers=3")
    assert printed.returncode == 0, printed.stderr
    objects = [doc for doc in yaml.safe_load_all(printed.stdout) if doc]
    assert objects[0]["kind"] == "Namespace"
    assert [o["kind"] for o in objects[1:10]] == ["CustomResourceDefinition"] * 9
    ztunnel = next(o for o in objects if o["kind"] == "DaemonSet" and o["metadata"]["name"] == "ztunnel")
    env = {e["name"]: e.get("value") for e in ztunnel["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TRUST_DOMAIN"] == "example.org" and env["WISP_ZTUNNEL_WORKERS"] == "3"


def test_install_without_values_prints_exactly_the_kustomize_output(cluster: Cluster) -> None:
    printed = wisp(cluster, "install", "--dry-run")
    assert printed.returncode == 0, printed.stderr
    shown = sorted((_key(o), json.dumps(o, sort_keys=True)) for o in yaml.safe_load_all(printed.stdout) if o)
    expected = sorted((_key(o), json.dumps(o, sort_keys=True)) for o in _kustomized(cluster))
    assert shown == expected


@pytest.mark.parametrize(("args", "words"), [
    (["--set", "ztunnel.workers=0"], "helm template refused the values"),
    (["--set", "novalue"], "--set 'novalue' is not KEY=VALUE"),
    (["--manifests", "/nonexistent"], "cannot read /nonexistent/kustomization.yaml"),
])
def test_bad_install_arguments_are_refused_before_the_cluster_is_touched(
    cluster: Cluster, args: list[str], words: str
) -> None:
    done = wisp(cluster, "install", *args)
    assert done.returncode == 1
    assert words in done.stderr


def test_an_unreachable_cluster_is_one_clear_line(tmp_path: Path, cluster: Cluster) -> None:
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    done = wisp(cluster, "install", kubeconfig=tmp_path / "kubeconfig")
    assert done.returncode == 1
    assert "cannot reach the Kubernetes API server at https://127.0.0.1:1" in done.stderr
    check = wisp(cluster, "precheck", kubeconfig=tmp_path / "kubeconfig")
    assert check.returncode == 1
    assert "Error [WISP0001] (cluster) cannot reach the Kubernetes API server" in check.stdout


# --- precheck -----------------------------------------------------------------------------------------


def test_precheck_on_the_test_bed_finds_it_ready(cluster: Cluster, nodes: Nodes) -> None:
    done = wisp(cluster, "precheck")
    assert done.returncode == 0, done.stdout
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    assert "✔ Kubernetes version %s" % version in done.stdout
    assert "SelfSubjectAccessReview" in done.stdout
    assert done.stdout.rstrip().endswith("✔ No issues found when checking the cluster. wisp is safe to install or upgrade!")
    data = json.loads(wisp(cluster, "precheck", "-o", "json").stdout)
    assert data["target"] == "cluster" and data["errors"] == 0
    assert all(m["level"] == "Info" for m in data["messages"])


def test_precheck_finds_istio_cni_and_a_foreign_ztunnel(cluster: Cluster, namespace: str) -> None:
    def daemonset(name: str, labels: dict[str, str]) -> dict[str, Any]:
        return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name, "namespace": namespace},
                "spec": {"selector": {"matchLabels": labels}, "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "c", "image": "example.invalid/none"}]}}}}

    objects = [daemonset("istio-cni-node", {"k8s-app": "istio-cni-node"}), daemonset("ztunnel", {"app": "ztunnel"})]
    manifest = yaml.safe_dump_all(objects)
    cluster.kubectl("apply", "-f", "-", input=manifest)
    try:
        done = wisp(cluster, "precheck")
        assert done.returncode == 1
        assert "Error [WISP0008] (DaemonSet %s/istio-cni-node) Istio's CNI node agent is installed" % namespace \
            in done.stdout
        assert "Error [WISP0009] (DaemonSet %s/ztunnel) a ztunnel wisp does not own" % namespace in done.stdout
        assert "Error: 2 issue(s) found when checking the cluster." in done.stdout
    finally:
        # Gone before the next test's precheck: the namespace fixture's delete finishes later.
        cluster.kubectl("delete", "-f", "-", "--wait=true", input=manifest)


def test_precheck_reports_each_permission_a_limited_user_lacks(cluster: Cluster, namespace: str,
                                                               tmp_path: Path) -> None:
    account = "limited-" + uuid.uuid4().hex[:6]
    cluster.kubectl("create", "serviceaccount", account, "-n", namespace)
    # It may read what precheck reads, and create DaemonSets — nothing else wisp installs.
    cluster.kubectl("create", "clusterrole", account, "--verb=get,list",
                    "--resource=customresourcedefinitions.apiextensions.k8s.io,daemonsets.apps,deployments.apps")
    cluster.kubectl("create", "clusterrolebinding", account, "--clusterrole=" + account,
                    "--serviceaccount=%s:%s" % (namespace, account))
    try:
        token = cluster.kubectl("create", "token", account, "-n", namespace).stdout.strip()
        config = yaml.safe_load(cluster.kubeconfig.read_text())
        config["users"][0]["user"] = {"token": token}
        (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
        done = wisp(cluster, "precheck", kubeconfig=tmp_path / "kubeconfig")
        assert done.returncode == 1, done.stdout
        assert "Error [WISP0006] (customresourcedefinitions cluster-wide) you may not create " \
               "customresourcedefinitions.apiextensions.k8s.io cluster-wide" in done.stdout
        assert "Error [WISP0006] (daemonsets in namespace istio-system) you may not patch daemonsets.apps" \
            in done.stdout
        assert "(SelfSubjectAccessReview)" not in done.stdout
    finally:
        cluster.kubectl("delete", "clusterrolebinding", account)
        cluster.kubectl("delete", "clusterrole", account)


def test_a_named_context_is_used_and_an_unknown_one_refused(cluster: Cluster, tmp_path: Path) -> None:
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    context = dict(config["contexts"][0], name="second")
    config["contexts"].append(context)
    config["current-context"] = "nowhere-current"  # only an explicit --context can work
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    done = wisp(cluster, "precheck", "--context", "second", kubeconfig=tmp_path / "kubeconfig")
    assert done.returncode == 0, done.stdout
    refused = wisp(cluster, "precheck", "--context", "missing", kubeconfig=tmp_path / "kubeconfig")
    assert refused.returncode == 1
    assert "cannot load the Kubernetes configuration from %s" % (tmp_path / "kubeconfig") in refused.stdout
