"""deploy/ on the real API server: `kubectl apply -k deploy/` and `helm install` of deploy/charts/wisp
are accepted (server-side dry run, then for real), every CRD becomes Established, the RBAC objects
grant what each component needs and nothing the tests below ask for beyond it, the real controllers
and scheduler give each DaemonSet one pod per registered node, the operator Deployment rolls out
behind its Service and PodDisruptionBudget, and the chart's default rendering equals the kustomize
output object by object. Each install is removed afterwards and the test checks nothing is left,
cluster-scoped objects included (CRDs that were there before the test stay: other tests use them).

No container runs here (the test bed has no kubelet: docs/testbed.md); pods are Running because the
kubelet stand-in says so, so probes, images and host mounts are never exercised.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from runtime.testbed import build, helm
from runtime.testbed.cluster import Cluster
from runtime.testbed.nodes import Nodes

from .conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "charts" / "wisp"
NAMESPACE = "istio-system"
PART_OF = "app.kubernetes.io/part-of=wisp"
DAEMONSETS = ("ztunnel", "wisp-node-agent")
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}

Key = tuple[str, str, str, str]


@pytest.fixture(scope="module")
def helm_binary(testbed_binaries: build.Binaries) -> Path:
    try:
        return helm.installed()
    except build.MissingBinaries as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture
def helm_env(tmp_path: Path) -> dict[str, str]:
    """Helm's config, cache and data in the test's own directory, never the user's home."""
    env = dict(os.environ)
    for name in ("HELM_CONFIG_HOME", "HELM_CACHE_HOME", "HELM_DATA_HOME"):
        env[name] = str(tmp_path / name.lower())
    return env


def _run_helm(helm_binary: Path, env: dict[str, str], *args: str, timeout: float = 180.0) -> str:
    done = subprocess.run([str(helm_binary), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)
    assert done.returncode == 0, "helm %s failed (exit %d): %s" % (" ".join(args), done.returncode, done.stderr)
    return done.stdout


def _run_helm_quietly(helm_binary: Path, env: dict[str, str], *args: str) -> None:
    subprocess.run([str(helm_binary), *args], capture_output=True, env=env, timeout=120, check=False)


def _documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _key(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    namespace = "" if obj["kind"] in CLUSTER_SCOPED else meta.get("namespace", "")
    return obj["apiVersion"], obj["kind"], namespace, meta["name"]


def _index(objects: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    indexed: dict[Key, dict[str, Any]] = {}
    for obj in objects:
        assert _key(obj) not in indexed, "%s rendered twice" % (_key(obj),)
        indexed[_key(obj)] = obj
    return indexed


def _kustomized(cluster: Cluster) -> list[dict[str, Any]]:
    return _documents(cluster.kubectl("kustomize", str(DEPLOY)).stdout)


def _helm_rendered(helm_binary: Path, env: dict[str, str], *values: str) -> list[dict[str, Any]]:
    sets = [arg for value in values for arg in ("--set", value)]
    return _documents(_run_helm(helm_binary, env, "template", "wisp", str(CHART), "--include-crds", *sets))


def _resource(obj: dict[str, Any]) -> str:
    """kubectl's name for one object: kind.group/name."""
    group = obj["apiVersion"].rpartition("/")[0]
    return "%s%s/%s" % (obj["kind"].lower(), "." + group if group else "", obj["metadata"]["name"])


def _exists(cluster: Cluster, obj: dict[str, Any]) -> bool:
    args = ["get", _resource(obj), "--ignore-not-found", "-o", "name"]
    if _key(obj)[2]:
        args += ["-n", _key(obj)[2]]
    return bool(cluster.kubectl(*args).stdout.strip())


def _get(cluster: Cluster, kind: str, name: str, namespace: str) -> dict[str, Any]:
    return json.loads(cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)


def _can(cluster: Cluster, service_account: str, namespace: str, *request: str) -> bool:
    done = cluster.kubectl("auth", "can-i", *request, "--as",
                           "system:serviceaccount:%s:%s" % (namespace, service_account), check=False)
    assert done.stdout.strip() in ("yes", "no"), done.stderr
    return done.stdout.strip() == "yes"


def _wait_established(cluster: Cluster, objects: list[dict[str, Any]]) -> None:
    names = ["crd/" + o["metadata"]["name"] for o in objects if o["kind"] == "CustomResourceDefinition"]
    assert len(names) == 9, names
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names, timeout=90)


def _wait_rolled_out(cluster: Cluster, nodes: Nodes, namespace: str, replicas: int) -> None:
    """Each DaemonSet has one Running pod on every node; the operator Deployment is available."""
    for name in DAEMONSETS:
        def placed(name: str = name) -> bool:
            status = _get(cluster, "daemonset", name, namespace).get("status", {})
            count = len(nodes.names)
            return status.get("desiredNumberScheduled") == count and status.get("numberReady") == count

        wait_for(placed, "DaemonSet %s/%s ready on every node" % (namespace, name), timeout=120)
        listed = cluster.kubectl("get", "pods", "-n", namespace, "-l", "app=" + name, "-o", "json")
        pods = json.loads(listed.stdout)["items"]
        assert sorted(pod["spec"]["nodeName"] for pod in pods) == sorted(nodes.names)
        assert all(pod["status"]["phase"] == "Running" for pod in pods)
        # The DaemonSet controller pins each pod to its node with node affinity; the scheduler binds it.
        for pod in pods:
            terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == [pod["spec"]["nodeName"]]

    def available() -> bool:
        status = _get(cluster, "deployment", "wisp-operator", namespace).get("status", {})
        return status.get("availableReplicas") == replicas

    wait_for(available, "Deployment %s/wisp-operator available" % namespace, timeout=120)

    def ready_endpoints() -> bool:
        slices = json.loads(cluster.kubectl(
            "get", "endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=wisp-operator",
            "-o", "json").stdout)["items"]
        ready = [e for s in slices for e in s.get("endpoints") or [] if e["conditions"].get("ready")]
        ports = {p["port"] for s in slices for p in s.get("ports") or []}
        return len(ready) == replicas and ports == {15012}

    wait_for(ready_endpoints, "the operator's Service on 15012 listing its ready pods")

    def budget() -> bool:
        status = _get(cluster, "poddisruptionbudget", "wisp-operator", namespace).get("status", {})
        return status.get("currentHealthy") == replicas and status.get("disruptionsAllowed") == replicas - 1

    wait_for(budget, "the PodDisruptionBudget counting the operator's pods")


def _resource_versions(cluster: Cluster) -> dict[str, str]:
    """Per object its generation (bumped by spec changes only: controllers keep writing status)
    or, for kinds without one, its resourceVersion."""
    listed = json.loads(cluster.kubectl("get", "-k", str(DEPLOY), "-o", "json").stdout)["items"]
    assert len(listed) == len(_kustomized(cluster))
    return {_resource(obj) + "@" + obj["metadata"].get("namespace", ""):
            str(obj["metadata"].get("generation", "rv" + obj["metadata"]["resourceVersion"])) for obj in listed}


def _leftovers(cluster: Cluster, created: list[dict[str, Any]]) -> list[str]:
    """Objects of `created` still there, plus anything labelled part-of=wisp cluster-wide."""
    left = [_resource(obj) for obj in created if _exists(cluster, obj)]
    for kind in ("namespaces", "clusterroles", "clusterrolebindings"):
        left += cluster.kubectl("get", kind, "-l", PART_OF, "-o", "name").stdout.split()
    return sorted(set(left))


def _remove(cluster: Cluster, created: list[dict[str, Any]], what: str) -> None:
    """Delete `created` and wait until nothing of it (or labelled part-of=wisp) is left. CRDs go
    last: while a CRD is terminating, discovery fails and the namespace controller backs off, which
    can hold a namespace's deletion for minutes on a loaded machine."""
    crds = [obj for obj in created if obj["kind"] == "CustomResourceDefinition"]
    rest = [obj for obj in created if obj["kind"] != "CustomResourceDefinition"]
    for batch in (rest, crds):
        for obj in reversed(batch):
            args = ["delete", _resource(obj), "--ignore-not-found", "--wait=false"]
            if _key(obj)[2]:
                args += ["-n", _key(obj)[2]]
            cluster.kubectl(*args, check=False)
        wait_for(lambda batch=batch: not _leftovers(cluster, batch), what, timeout=180)


def _namespace_labels(cluster: Cluster, name: str) -> dict[str, str] | None:
    found = cluster.kubectl("get", "namespace", name, "--ignore-not-found", "-o", "json").stdout
    return json.loads(found)["metadata"].get("labels", {}) if found.strip() else None


def _restore_namespace_labels(cluster: Cluster, name: str, original: dict[str, str] | None) -> None:
    """A namespace that was there before the install keeps it; give back its labels as they were."""
    if original is None:
        return
    current = _namespace_labels(cluster, name) or {}
    changes = ["%s-" % key for key in current if key not in original]
    changes += ["%s=%s" % (key, value) for key, value in original.items() if current.get(key) != value]
    if changes:
        cluster.kubectl("label", "namespace", name, "--overwrite", *changes)


@pytest.fixture
def nothing_installed(cluster: Cluster) -> Iterator[None]:
    """The test starts with no wisp object in the cluster (another test's leftover would hide ours)."""
    leftover = _leftovers(cluster, [])
    assert not leftover, "wisp objects from an earlier run: %s" % leftover
    yield


# --- helm in the test bed's cache --------------------------------------------------------------------


def test_a_missing_helm_is_reported_with_the_command_that_builds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    with pytest.raises(build.MissingBinaries, match=r"helm v3\.\d+\.\d+ is not built .*\./run testbed build"):
        helm.installed()


def test_a_built_helm_is_reused_without_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    directory = build.version_dir()
    (directory / "bin").mkdir(parents=True)
    (directory / "bin" / "helm").write_text("")
    (directory / "stamp-helm.json").write_text(json.dumps({"recipe": helm._recipe(helm.HELM_VERSION)}))

    def no_go() -> str:
        raise AssertionError("a warm build ran Go")

    monkeypatch.setattr(build, "_go_version", no_go)
    assert helm.build_helm() == (directory / "bin" / "helm", None)
    assert helm.installed() == directory / "bin" / "helm"


# --- the layouts agree ----------------------------------------------------------------------------


def test_helm_template_for_default_values_equals_the_kustomize_output(
    cluster: Cluster, helm_binary: Path, helm_env: dict[str, str]
) -> None:
    kustomized = _index(_kustomized(cluster))
    rendered = _index(_helm_rendered(helm_binary, helm_env))
    assert sorted(rendered) == sorted(kustomized)
    for key, obj in kustomized.items():
        assert rendered[key] == obj, "%s differs between helm template and kubectl kustomize" % (key,)
    kinds = sorted(key[1] for key in kustomized)
    assert kinds.count("CustomResourceDefinition") == 9
    assert kinds.count("DaemonSet") == 2
    assert {"Namespace", "Deployment", "Service", "PodDisruptionBudget", "ServiceAccount", "ClusterRole",
            "ClusterRoleBinding", "Role", "RoleBinding"} <= set(kinds)


def test_the_kustomize_crds_are_deploy_crds_unchanged(cluster: Cluster) -> None:
    """kustomize expands the YAML anchors of deploy/crds/ and changes nothing else."""
    kustomized = _index(_kustomized(cluster))
    for path in sorted((DEPLOY / "crds").glob("*.yaml")):
        for crd in _documents(path.read_text()):
            assert kustomized[_key(crd)] == crd, path.name


def test_the_chart_passes_helm_lint(helm_binary: Path, helm_env: dict[str, str]) -> None:
    out = _run_helm(helm_binary, helm_env, "lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in out


def test_chart_values_reach_the_objects_and_the_api_server_accepts_them(
    cluster: Cluster, helm_binary: Path, helm_env: dict[str, str]
) -> None:
    """Non-default values: a cacerts Secret, another trust domain, image, workers, namespace."""
    namespace = "wisp-v-" + uuid.uuid4().hex[:6]
    objects = _helm_rendered(
        helm_binary, helm_env, "namespace=" + namespace, "ca.cacertsSecret=cacerts", "trustDomain=example.org",
        "ztunnel.workers=4", "image.repository=registry.example/wisp", "image.tag=9.9.9", "operator.replicas=3",
    )
    indexed = _index(objects)
    operator = indexed[("apps/v1", "Deployment", namespace, "wisp-operator")]["spec"]
    container = operator["template"]["spec"]["containers"][0]
    assert operator["replicas"] == 3
    assert container["image"] == "registry.example/wisp:9.9.9"
    assert "--cacerts=/etc/cacerts" in container["args"]
    assert "--waypoint-image=registry.example/wisp:9.9.9" in container["args"]
    assert {"name": "cacerts", "secret": {"secretName": "cacerts"}} in operator["template"]["spec"]["volumes"]
    ztunnel = indexed[("apps/v1", "DaemonSet", namespace, "ztunnel")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in ztunnel["env"]}
    assert env["WISP_ZTUNNEL_WORKERS"] == "4"
    assert env["TRUST_DOMAIN"] == "example.org"
    assert env["CA_ADDRESS"] == env["XDS_ADDRESS"] == "wisp-operator.%s.svc:15012" % namespace
    assert ("rbac.authorization.k8s.io/v1", "ClusterRole", "", "wisp-operator-" + namespace) in indexed
    # The API server (admission, schemas, RBAC object validation) accepts the whole rendering. A
    # server-side dry run of a namespaced object needs its namespace, so that one is made for real.
    cluster.kubectl("create", "namespace", namespace)
    try:
        done = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(objects),
                               timeout=120)
        assert done.stdout.count("(server dry run)") == len(objects), done.stdout
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")


@pytest.mark.parametrize(("value", "where"), [
    ("ztunnel.workers=0", "/ztunnel/workers"),
    ("ztunnel.wokers=2", "/ztunnel"),
    ("operator.logLevel=loud", "/operator/logLevel"),
    ("namespace=Istio_System", "/namespace"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
])
def test_bad_chart_values_are_refused_naming_the_field(
    helm_binary: Path, helm_env: dict[str, str], value: str, where: str
) -> None:
    done = subprocess.run([str(helm_binary), "template", "wisp", str(CHART), "--set", value],
                          capture_output=True, text=True, env=helm_env, timeout=60, check=False)
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
    assert "at '%s'" % where in done.stderr, done.stderr


# --- kubectl apply -k deploy/ ------------------------------------------------------------------------


def test_kubectl_apply_k_deploy_installs_everything_and_the_controllers_roll_it_out(
    cluster: Cluster, nodes: Nodes, nothing_installed: None
) -> None:
    objects = _kustomized(cluster)
    before = {_key(obj) for obj in objects if _exists(cluster, obj)}
    created = [obj for obj in objects if _key(obj) not in before]
    labels = _namespace_labels(cluster, NAMESPACE)
    try:
        # A server-side dry run of a namespaced object needs its namespace to exist (the dry run
        # does not create it), so the Namespace is applied for real first.
        namespace = [obj for obj in objects if obj["kind"] == "Namespace"]
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(namespace))
        dry = cluster.kubectl("apply", "-k", str(DEPLOY), "--dry-run=server", timeout=120)
        for obj in objects:
            assert _resource(obj) + " " in dry.stdout, _resource(obj)
        assert dry.stdout.count("(server dry run)") == len(objects), dry.stdout
        assert not any(_exists(cluster, obj) for obj in created if obj["kind"] != "Namespace"), \
            "the dry run created objects"

        applied = cluster.kubectl("apply", "-k", str(DEPLOY), timeout=120)
        assert applied.stdout.count("\n") == len(objects), applied.stdout
        assert all(_exists(cluster, obj) for obj in objects)
        _wait_established(cluster, objects)
        _wait_rolled_out(cluster, nodes, NAMESPACE, replicas=2)

        ztunnel = _get(cluster, "daemonset", "ztunnel", NAMESPACE)["spec"]["template"]["spec"]
        token = [v for v in ztunnel["volumes"] if v["name"] == "istio-token"][0]
        assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "istio-ca"
        agent = _get(cluster, "daemonset", "wisp-node-agent", NAMESPACE)["spec"]["template"]["spec"]
        assert agent["hostNetwork"] is True and agent["hostPID"] is True
        assert agent["containers"][0]["securityContext"]["privileged"] is True
        assert {v["hostPath"]["path"] for v in agent["volumes"] if "hostPath" in v} >= {
            "/etc/cni/net.d", "/opt/cni/bin", "/var/run/netns", "/var/run/ztunnel"}

        # A second apply changes nothing. (kubectl reports the PodDisruptionBudget "configured"
        # every time: its selector's patch strategy is "replace", so the patch always carries it;
        # the server finds nothing to change, which is what the generations show.)
        versions = _resource_versions(cluster)
        cluster.kubectl("apply", "-k", str(DEPLOY), timeout=120)
        assert _resource_versions(cluster) == versions
    finally:
        _restore_namespace_labels(cluster, NAMESPACE, labels)
        _remove(cluster, created, "every object of deploy/ deleted")


def test_the_rbac_of_deploy_grants_each_component_what_it_needs_and_no_more(
    cluster: Cluster, nothing_installed: None
) -> None:
    # The CRDs too: kubectl resolves `gateways.gateway.networking.k8s.io` through discovery.
    objects = [o for o in _kustomized(cluster) if o["kind"] in {
        "Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
        "RoleBinding"}]
    created = [obj for obj in objects if not _exists(cluster, obj)]
    labels = _namespace_labels(cluster, NAMESPACE)
    try:
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects), timeout=120)
        _wait_established(cluster, objects)

        def operator(*request: str) -> bool:
            return _can(cluster, "wisp-operator", NAMESPACE, *request)

        def agent(*request: str) -> bool:
            return _can(cluster, "wisp-node-agent", NAMESPACE, *request)

        def ztunnel(*request: str) -> bool:
            return _can(cluster, "ztunnel", NAMESPACE, *request)

        wait_for(lambda: operator("create", "tokenreviews.authentication.k8s.io"), "the operator's RBAC in force")
        for request in (
            ("watch", "pods", "-A"), ("watch", "endpointslices.discovery.k8s.io", "-A"),
            ("watch", "gateways.gateway.networking.k8s.io", "-A"),
            ("watch", "authorizationpolicies.security.istio.io", "-A"),
            ("watch", "telemetries.telemetry.istio.io", "-A"),
            ("patch", "gateways.gateway.networking.k8s.io", "--subresource=status", "-n", "shop"),
            ("patch", "httproutes.gateway.networking.k8s.io", "--subresource=status", "-n", "shop"),
            ("patch", "deployments.apps", "-n", "shop"), ("create", "serviceaccounts", "-n", "shop"),
            ("patch", "services", "--subresource=status", "-n", "shop"),
            ("update", "leases.coordination.k8s.io", "-n", NAMESPACE),
            ("create", "secrets", "-n", NAMESPACE),
            # The istio-ca-root-cert ConfigMap, in every namespace.
            ("watch", "configmaps", "-A"), ("patch", "configmaps", "-n", "shop"),
        ):
            assert operator(*request), request
        for request in (
            ("get", "secrets", "-n", "shop"), ("patch", "pods", "-n", "shop"),
            ("update", "leases.coordination.k8s.io", "-n", "kube-system"),
            ("patch", "authorizationpolicies.security.istio.io", "-n", "shop"),
            ("patch", "telemetries.telemetry.istio.io", "-n", "shop"),
            ("create", "pods", "-n", "shop"), ("delete", "namespaces"),
        ):
            assert not operator(*request), request

        assert agent("watch", "pods", "-A") and agent("patch", "pods", "-n", "shop")
        assert agent("list", "namespaces")
        for request in (("delete", "pods", "-n", "shop"), ("get", "secrets", "-n", NAMESPACE),
                        ("create", "tokenreviews.authentication.k8s.io"), ("patch", "namespaces")):
            assert not agent(*request), request

        # ztunnel needs no API access at all: its token is only for the control plane's CA.
        for request in (("get", "pods", "-A"), ("list", "services", "-A"), ("get", "configmaps", "-n", NAMESPACE)):
            assert not ztunnel(*request), request
        account = _get(cluster, "serviceaccount", "ztunnel", NAMESPACE)
        assert account["automountServiceAccountToken"] is False
    finally:
        _restore_namespace_labels(cluster, NAMESPACE, labels)
        _remove(cluster, created, "the RBAC objects deleted")


# --- helm install ------------------------------------------------------------------------------------


def test_helm_install_of_the_chart_rolls_out_and_uninstall_leaves_nothing(
    cluster: Cluster, nodes: Nodes, helm_binary: Path, helm_env: dict[str, str], nothing_installed: None
) -> None:
    suffix = uuid.uuid4().hex[:6]
    release, namespace = "wisp-%s" % suffix, "wisp-h-%s" % suffix
    kube = ["--kubeconfig", str(cluster.kubeconfig)]
    objects = _helm_rendered(helm_binary, helm_env, "namespace=" + namespace)
    before = {_key(obj) for obj in objects if _exists(cluster, obj)}
    created = [obj for obj in objects if _key(obj) not in before]
    try:
        # The chart creates the namespace its objects go into; Helm keeps the release record in
        # `default` (a release cannot live in a namespace its own install creates).
        _run_helm(helm_binary, helm_env, "install", release, str(CHART), *kube, "--namespace", "default",
                  "--set", "namespace=" + namespace, "--dry-run=server")
        assert not _exists(cluster, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        _run_helm(helm_binary, helm_env, "install", release, str(CHART), *kube, "--namespace", "default",
                  "--set", "namespace=" + namespace, "--wait", "--timeout", "2m")
        status = json.loads(_run_helm(helm_binary, helm_env, "status", release, *kube, "-n", "default",
                                      "-o", "json"))
        assert status["info"]["status"] == "deployed"
        assert all(_exists(cluster, obj) for obj in objects)
        _wait_established(cluster, objects)
        _wait_rolled_out(cluster, nodes, namespace, replicas=2)

        _run_helm(helm_binary, helm_env, "uninstall", release, *kube, "-n", "default", "--wait", "--timeout", "2m")
        listed = json.loads(_run_helm(helm_binary, helm_env, "list", *kube, "-A", "-a", "-o", "json"))
        assert not [r for r in listed if r["name"] == release]
        # Helm never deletes CRDs (crds/ of a chart); everything else of the release is gone.
        rest = [obj for obj in created if obj["kind"] != "CustomResourceDefinition"]
        wait_for(lambda: not _leftovers(cluster, rest), "helm uninstall removing the release's objects",
                 timeout=180)
    finally:
        _run_helm_quietly(helm_binary, helm_env, "uninstall", release, *kube, "-n", "default")
        _remove(cluster, created, "every object of the release deleted")
        assert not cluster.kubectl("get", "secrets", "-n", "default", "-l", "name=" + release,
                                   "-o", "name").stdout.strip(), "helm's release record left behind"
