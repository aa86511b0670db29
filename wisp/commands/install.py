"""`wisp install` and `wisp uninstall`: deploy/ onto a Kubernetes cluster, and off again.

What is installed is exactly what `kubectl apply -k deploy/` installs: the resources that
deploy/kustomization.yaml lists, read as they are (they are the Helm chart's rendering for its
default values). With `--set key=value` the Helm chart deploy/charts/wisp is rendered with those
values instead (`helm template --include-crds`, so helm must be installed; the test bed's cache
has one). Objects are written with server-side apply, field manager `wisp`, forcing ownership of
the fields we set (as istioctl does), in dependency order: the Namespace, the CRDs (then waiting
until each is Established), everything else. `--dry-run` prints the manifests (client);
`--dry-run=server` sends every apply with dryRun=All, so admission and schemas judge them and
nothing is stored. `--wait` waits for the DaemonSets to be ready on every node they are scheduled
to and for the Deployments to be available.

`wisp uninstall` deletes the same objects, in reverse order. The Namespace and the CRDs stay
unless `--purge` is given: other software may keep objects in istio-system, and deleting a CRD
deletes every custom resource of it (every AuthorizationPolicy, Gateway, HTTPRoute, ...).

Exit status: 0 when every object was applied (or deleted, or already gone), 1 when one was
refused or the cluster could not be reached (each refusal is printed with the server's reason),
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from . import kubeapi
from .kubeapi import APPLY_PATCH, FIELD_MANAGER, Kube, KubeCommandError

DEFAULT_MANIFESTS = Path(__file__).resolve().parents[2] / "deploy"
RELEASE = "wisp"
_ORDER = {"Namespace": 0, "CustomResourceDefinition": 1, "ServiceAccount": 2, "ClusterRole": 3,
          "ClusterRoleBinding": 3, "Role": 3, "RoleBinding": 3, "ConfigMap": 4, "Secret": 4}
_KEPT_WITHOUT_PURGE = ("Namespace", "CustomResourceDefinition")


class InstallError(Exception):
    """The manifests cannot be rendered (bad --set, no helm, a broken file); printed as one line."""


def add_commands(sub: Any) -> None:
    install = sub.add_parser("install", help="install wisp on a Kubernetes cluster (server-side apply of deploy/)")
    _common(install)
    install.add_argument("--dry-run", nargs="?", const="client", choices=["client", "server"],
                         help="client (default): print the manifests; server: let the API server judge "
                              "every object without storing it")
    install.add_argument("--wait", action="store_true",
                         help="wait until the DaemonSets are ready on their nodes and the operator is available")
    install.add_argument("--timeout", type=float, default=300.0, help="seconds --wait and CRD establishment may take")
    install.set_defaults(handler=run_install)

    uninstall = sub.add_parser("uninstall", help="remove what `wisp install` installed")
    _common(uninstall)
    uninstall.add_argument("--purge", action="store_true",
                           help="also delete the namespace and the CRDs (and with them every AuthorizationPolicy, "
                                "Gateway, HTTPRoute, ... in the cluster)")
    uninstall.add_argument("--dry-run", nargs="?", const="client", choices=["client", "server"],
                           help="client: list what would be deleted; server: ask the API server without deleting")
    uninstall.set_defaults(handler=run_uninstall)


def _common(parser: argparse.ArgumentParser) -> None:
    kubeapi.add_flags(parser)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="values",
                        help="a Helm chart value (deploy/charts/wisp/values.yaml), e.g. trustDomain=example.org; "
                             "renders the chart with helm")
    parser.add_argument("--manifests", type=Path, default=DEFAULT_MANIFESTS,
                        help="the deploy/ directory (kustomization.yaml and charts/wisp)")


# -- rendering -------------------------------------------------------------------------------------


def render(manifests: Path, values: list[str]) -> list[dict[str, Any]]:
    """The objects to install, in apply order."""
    for value in values:
        key, sep, _ = value.partition("=")
        if not sep or not key:
            raise InstallError("--set %r is not KEY=VALUE" % value)
    objects = _helm_template(manifests / "charts" / "wisp", values) if values else _kustomization(manifests)
    for index, obj in enumerate(objects):
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if not (isinstance(meta, dict) and isinstance(meta.get("name"), str)
                and isinstance(obj.get("kind"), str) and isinstance(obj.get("apiVersion"), str)):
            raise InstallError("object %d of the manifests has no apiVersion, kind and metadata.name" % (index + 1))
    return sorted(objects, key=lambda obj: _ORDER.get(obj["kind"], 5))


def _kustomization(manifests: Path) -> list[dict[str, Any]]:
    path = manifests / "kustomization.yaml"
    try:
        kustomization = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InstallError("cannot read %s: %s (pass --manifests DIR, the deploy/ directory)" % (path, exc)) from None
    if not isinstance(kustomization, dict) or not isinstance(kustomization.get("resources"), list):
        raise InstallError("%s lists no resources" % path)
    # Patches, images or generators would need kustomize itself; deploy/ has none, and an overlay
    # is applied with `kubectl apply -k` (docs/install.md).
    extra = sorted(set(kustomization) - {"apiVersion", "kind", "resources"})
    if extra:
        raise InstallError("%s uses %s, which wisp install does not interpret: apply an overlay with "
                           "`kubectl apply --server-side -k`" % (path, ", ".join(extra)))
    objects: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        file = manifests / str(resource)
        try:
            objects += [doc for doc in yaml.safe_load_all(file.read_text()) if doc]
        except (OSError, yaml.YAMLError) as exc:
            raise InstallError("cannot read %s: %s" % (file, exc)) from None
    return objects


def helm_binary() -> Path:
    found = shutil.which("helm")
    if found:
        return Path(found)
    from runtime.testbed import build, helm

    try:
        return helm.installed()
    except build.MissingBinaries:
        raise InstallError("--set renders the Helm chart and needs helm: install it, or build the test bed's "
                           "(./run testbed build)") from None


def _helm_template(chart: Path, values: list[str]) -> list[dict[str, Any]]:
    if not (chart / "Chart.yaml").is_file():
        raise InstallError("no Helm chart at %s (pass --manifests DIR, the deploy/ directory)" % chart)
    binary = helm_binary()
    sets = [arg for value in values for arg in ("--set", value)]
    with tempfile.TemporaryDirectory(prefix="wisp-helm-") as home:
        # helm keeps config and cache under the user's home; a rendering needs neither.
        env = dict(os.environ, HELM_CONFIG_HOME=home + "/config", HELM_CACHE_HOME=home + "/cache",
                   HELM_DATA_HOME=home + "/data")
        done = subprocess.run([str(binary), "template", RELEASE, str(chart), "--include-crds", *sets],
                              capture_output=True, text=True, env=env, timeout=120, check=False)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip() and "symbolic link" not in line]
        raise InstallError("helm template refused the values: %s" % " ".join(lines[-3:]))
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def describe(obj: dict[str, Any]) -> str:
    """kubectl's name for an object: kind.group/name."""
    group = obj["apiVersion"].rpartition("/")[0]
    return "%s%s/%s" % (obj["kind"].lower(), "." + group if group else "", obj["metadata"]["name"])


# -- install ---------------------------------------------------------------------------------------


def run_install(args: argparse.Namespace) -> int:
    try:
        objects = render(args.manifests, args.values)
    except InstallError as exc:
        print("wisp install: %s" % exc, file=sys.stderr)
        return 1
    if args.dry_run == "client":
        sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))
        return 0
    try:
        return asyncio.run(_install(args, objects))
    except KubeCommandError as exc:
        print("wisp install: %s" % exc, file=sys.stderr)
        return 1


async def _install(args: argparse.Namespace, objects: list[dict[str, Any]]) -> int:
    server_dry = args.dry_run == "server"
    refused = 0
    async with await kubeapi.connect(args) as kube:
        if server_dry:
            missing = await _missing_namespaces(kube, objects)
            if missing:
                print("wisp install: namespace %s does not exist, and a server dry run cannot judge the objects "
                      "in it without creating it: create it first (kubectl create namespace %s) or install for real"
                      % (missing[0], missing[0]), file=sys.stderr)
                return 1
        crds = [obj for obj in objects if obj["kind"] == "CustomResourceDefinition"]
        for obj in objects:
            # A kind the CRDs define is only served once they are Established (deploy/ has no
            # such object, an overlay might).
            if obj["kind"] not in _KEPT_WITHOUT_PURGE and crds and not server_dry:
                await _wait_established(kube, crds, args.timeout)
                crds = []
            ok, message = await apply(kube, obj, dry_run=server_dry)
            print(message if ok else "Error: %s" % message, file=sys.stdout if ok else sys.stderr)
            refused += not ok
        if refused:
            print("wisp install: %d of %d objects were refused" % (refused, len(objects)), file=sys.stderr)
            return 1
        if server_dry:
            print("✔ the API server accepts all %d objects (server dry run; nothing was stored)" % len(objects))
            return 0
        if args.wait:
            await _wait_ready(kube, objects, args.timeout)
        print("✔ wisp installed: %d objects applied (field manager %s)" % (len(objects), FIELD_MANAGER))
    return 0


async def _missing_namespaces(kube: Kube, objects: list[dict[str, Any]]) -> list[str]:
    names = sorted({obj["metadata"]["namespace"] for obj in objects if obj["metadata"].get("namespace")})
    return [name for name in names if (await kube.request("GET", "/api/v1/namespaces/" + name)).status == 404]


async def apply(kube: Kube, obj: dict[str, Any], *, dry_run: bool = False) -> tuple[bool, str]:
    """Server-side apply one object; (accepted, kubectl's line or the server's refusal)."""
    resource = await kube.resource(obj["apiVersion"], obj["kind"])
    if resource is None:
        return False, "%s: the API server has no %s in %s" % (describe(obj), obj["kind"], obj["apiVersion"])
    namespace = obj["metadata"].get("namespace") or "default"
    query = {"fieldManager": FIELD_MANAGER, "force": "true"}
    if dry_run:
        query["dryRun"] = "All"
    answer = await kube.request("PATCH", resource.path(namespace, obj["metadata"]["name"]), body=obj,
                                content_type=APPLY_PATCH, query=query)
    if not answer.ok:
        return False, "%s: %s" % (describe(obj), answer.message())
    return True, "%s serverside-applied%s" % (describe(obj), " (server dry run)" if dry_run else "")


async def _wait_established(kube: Kube, crds: list[dict[str, Any]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for crd in crds:
        path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/%s" % crd["metadata"]["name"]
        while True:
            answer = await kube.request("GET", path)
            conditions = answer.body.get("status", {}).get("conditions") or [] if answer.ok else []
            if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
                break
            if time.monotonic() > deadline:
                raise KubeCommandError("CRD %s not Established after %.0f s" % (crd["metadata"]["name"], timeout))
            await asyncio.sleep(0.5)


async def _wait_ready(kube: Kube, objects: list[dict[str, Any]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for obj in objects:
        if obj["kind"] not in ("DaemonSet", "Deployment"):
            continue
        resource = await kube.resource(obj["apiVersion"], obj["kind"])
        assert resource is not None  # it was just applied
        path = resource.path(obj["metadata"].get("namespace") or "default", obj["metadata"]["name"])
        while True:
            status = (await kube.request("GET", path)).body.get("status") or {}
            if obj["kind"] == "DaemonSet":
                wanted = status.get("desiredNumberScheduled")
                done = wanted is not None and status.get("numberReady") == wanted \
                    and status.get("updatedNumberScheduled", wanted) == wanted
                shown = "%s/%s pods ready" % (status.get("numberReady", 0), wanted if wanted is not None else "?")
            else:
                wanted = obj["spec"].get("replicas", 1)
                done = status.get("availableReplicas") == wanted and status.get("updatedReplicas") == wanted
                shown = "%s/%s replicas available" % (status.get("availableReplicas", 0), wanted)
            if done:
                print("✔ %s ready (%s)" % (describe(obj), shown))
                break
            if time.monotonic() > deadline:
                raise KubeCommandError("%s not ready after %.0f s: %s" % (describe(obj), timeout, shown))
            await asyncio.sleep(1.0)


# -- uninstall -------------------------------------------------------------------------------------


def run_uninstall(args: argparse.Namespace) -> int:
    try:
        objects = render(args.manifests, args.values)
    except InstallError as exc:
        print("wisp uninstall: %s" % exc, file=sys.stderr)
        return 1
    doomed = [obj for obj in reversed(objects) if args.purge or obj["kind"] not in _KEPT_WITHOUT_PURGE]
    # The namespace after its contents, the CRDs last: while a CRD terminates, discovery fails
    # and the namespace controller backs off (for minutes on a loaded machine).
    doomed.sort(key=lambda obj: {"Namespace": 1, "CustomResourceDefinition": 2}.get(obj["kind"], 0))
    if args.dry_run == "client":
        for obj in doomed:
            print("%s deleted (dry run)" % describe(obj))
        return 0
    try:
        return asyncio.run(_uninstall(args, doomed, objects))
    except KubeCommandError as exc:
        print("wisp uninstall: %s" % exc, file=sys.stderr)
        return 1


async def _uninstall(args: argparse.Namespace, doomed: list[dict[str, Any]], objects: list[dict[str, Any]]) -> int:
    failed = 0
    query = {"propagationPolicy": "Background"}
    if args.dry_run == "server":
        query["dryRun"] = "All"
    async with await kubeapi.connect(args) as kube:
        for obj in doomed:
            resource = await kube.resource(obj["apiVersion"], obj["kind"])
            if resource is None:
                print("%s not found" % describe(obj))
                continue
            answer = await kube.request("DELETE", resource.path(obj["metadata"].get("namespace") or "default",
                                                                obj["metadata"]["name"]), query=query)
            if answer.status == 404:
                print("%s not found" % describe(obj))
            elif answer.ok:
                print("%s deleted%s" % (describe(obj), " (server dry run)" if args.dry_run else ""))
            else:
                print("Error: %s: %s" % (describe(obj), answer.message()), file=sys.stderr)
                failed += 1
    if not args.purge:
        namespaces = [describe(obj) for obj in objects if obj["kind"] == "Namespace"]
        crds = sum(1 for obj in objects if obj["kind"] == "CustomResourceDefinition")
        print("kept (--purge deletes them too): %s and %d CRDs" % (", ".join(namespaces) or "no namespace", crds))
    if failed:
        print("wisp uninstall: %d objects could not be deleted" % failed, file=sys.stderr)
        return 1
    print("✔ wisp uninstalled")
    return 0

