"""A pod's volumes (runtime/kube/volumes.py) from the real test bed API server: tokens from
TokenRequest bound to the pod, ConfigMaps, Secrets, the downward API, the kube-api-access volume
the API server's admission adds, and what a sandboxed container then reads through its binds."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from runtime.kube.api import KubeApi
from runtime.kube.nodeview import NodeView
from runtime.kube.volumes import PodVolumes, VolumeError, renewal_time
from runtime.sandbox import POD_UID_BASE, plan, program_paths
from runtime.testbed.cluster import Cluster
from tests.support.wait import wait_until, wait_until_async

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="files are given to the pod's uid")
UID = POD_UID_BASE + 7177
FS_GROUP = POD_UID_BASE + 7178
SECRET = "s3cr3t-value"


def claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def pod_manifest(node: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}},
        "spec": {
            "nodeName": node,
            "serviceAccountName": "app",
            "securityContext": {"fsGroup": FS_GROUP},
            "containers": [{
                "name": "web", "image": "wisp:0.1.0",
                "volumeMounts": [
                    {"name": "cache", "mountPath": "/cache"},
                    {"name": "cache", "mountPath": "/scratch", "subPath": "scratch"},
                    {"name": "settings", "mountPath": "/etc/settings"},
                    {"name": "settings", "mountPath": "/etc/mode", "subPath": "conf/mode"},
                    {"name": "creds", "mountPath": "/etc/creds"},
                    {"name": "istio-token", "mountPath": "/var/run/secrets/tokens"},
                    {"name": "podinfo", "mountPath": "/etc/podinfo"},
                    {"name": "ztunnel", "mountPath": "/var/run/ztunnel", "readOnly": True},
                ],
            }],
            "volumes": [
                {"name": "cache", "emptyDir": {}},
                {"name": "settings", "configMap": {"name": "settings", "items": [
                    {"key": "mode", "path": "conf/mode", "mode": 0o600}, {"key": "level", "path": "level"}]}},
                {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
                {"name": "istio-token", "projected": {"sources": [
                    {"serviceAccountToken": {"audience": "istio-ca", "expirationSeconds": 3600, "path": "istio-token"}},
                    {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}]}},
                {"name": "podinfo", "downwardAPI": {"items": [
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                    {"path": "tier", "fieldRef": {"fieldPath": "metadata.labels['tier']"}}]}},
                {"name": "ztunnel", "hostPath": {"path": "/var/run/ztunnel", "type": "DirectoryOrCreate"}},
            ],
        },
    }


class Fixture:
    def __init__(self, api: KubeApi, namespace: str, pod: dict, view: NodeView, pod_dir: Path) -> None:
        self.api, self.namespace, self.pod, self.view, self.pod_dir = api, namespace, pod, view, pod_dir

    def volumes(self, pod: dict | None = None) -> PodVolumes:
        return PodVolumes(self.api, pod or self.pod, self.view, self.pod_dir, UID, UID)


@pytest.fixture
async def bed(cluster: Cluster, namespace: str) -> AsyncIterator[Fixture]:
    api = KubeApi.for_cluster(cluster)
    node = f"wisp-vol-{secrets.token_hex(3)}"
    root = Path(tempfile.mkdtemp(prefix="wisp-vol-"))
    try:
        await api.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
        base = f"/api/v1/namespaces/{namespace}"
        await api.create(f"{base}/serviceaccounts", {"metadata": {"name": "app"}})
        await api.create(f"{base}/configmaps", {"metadata": {"name": "settings"},
                                                "data": {"mode": "fast", "level": "3", "unused": "x"}})
        await api.create(f"{base}/secrets", {"metadata": {"name": "creds"},
                                             "data": {"password": base64.b64encode(SECRET.encode()).decode()}})

        async def root_ca() -> bool:
            return await api.get(f"{base}/configmaps/kube-root-ca.crt", missing_ok=True) is not None
        await wait_until_async(root_ca, 30, what="the namespace's kube-root-ca.crt", interval=0.2)
        pod = await api.create(f"{base}/pods", pod_manifest(node))
        yield Fixture(api, namespace, pod, NodeView(root / "node"), root / "pods" / pod["metadata"]["uid"])
    finally:
        await api.delete(f"/api/v1/nodes/{node}")
        await api.aclose()
        shutil.rmtree(root, ignore_errors=True)


def read(volume: Path, name: str) -> str:
    return (volume / name).read_text()


@needs_root
async def test_prepare_writes_tokens_config_secrets_and_the_admission_added_api_access(bed):
    volumes = bed.volumes()
    await volumes.prepare()
    meta = bed.pod["metadata"]

    token = read(volumes.paths["istio-token"], "istio-token")
    assert token.count(".") == 2
    payload = claims(token)
    assert payload["aud"] == ["istio-ca"]
    assert payload["kubernetes.io"]["pod"] == {"name": "web", "uid": meta["uid"]}
    assert payload["kubernetes.io"]["serviceaccount"]["name"] == "app"
    assert 3500 <= payload["exp"] - payload["iat"] <= 3700
    assert read(volumes.paths["istio-token"], "labels") == 'app="web"\ntier="front"'

    assert read(volumes.paths["settings"], "conf/mode") == "fast"
    assert read(volumes.paths["settings"], "level") == "3"
    assert not (volumes.paths["settings"] / "unused").exists()  # only the items asked
    assert read(volumes.paths["creds"], "password") == SECRET
    assert read(volumes.paths["podinfo"], "name") == "web" and read(volumes.paths["podinfo"], "tier") == "front"

    mode_file = (volumes.paths["settings"] / "conf/mode").resolve()
    assert (mode_file.stat().st_uid, mode_file.stat().st_gid, mode_file.stat().st_mode & 0o777) == (UID, FS_GROUP, 0o600)
    secret_file = (volumes.paths["creds"] / "password").resolve()
    assert (secret_file.stat().st_uid, secret_file.stat().st_mode & 0o777) == (UID, 0o400)
    cache = volumes.paths["cache"].stat()
    assert (cache.st_uid, cache.st_gid) == (UID, FS_GROUP) and cache.st_mode & 0o2000
    assert volumes.paths["ztunnel"] == bed.view.host_path("/var/run/ztunnel") and volumes.paths["ztunnel"].is_dir()

    access = [v["name"] for v in bed.pod["spec"]["volumes"] if v["name"].startswith("kube-api-access-")]
    assert len(access) == 1, "the API server's admission adds the kube-api-access volume"
    api_access = volumes.paths[access[0]]
    ca = await bed.api.get(f"/api/v1/namespaces/{bed.namespace}/configmaps/kube-root-ca.crt")
    assert read(api_access, "ca.crt") == ca["data"]["ca.crt"]
    assert read(api_access, "namespace") == bed.namespace
    assert claims(read(api_access, "token"))["kubernetes.io"]["pod"]["name"] == "web"
    volumes.cleanup()
    assert not bed.pod_dir.exists()


@needs_root
async def test_mounts_follow_volume_mounts_with_sub_paths_and_read_only_kinds(bed):
    volumes = bed.volumes()
    await volumes.prepare()
    mounts = {target: (source, read_only) for source, target, read_only in volumes.mounts(bed.pod["spec"]["containers"][0])}
    paths = volumes.paths
    assert mounts["/cache"] == (str(paths["cache"]), False)
    assert mounts["/scratch"] == (str(paths["cache"] / "scratch"), False)
    assert (paths["cache"] / "scratch").stat().st_uid == UID
    assert mounts["/etc/settings"] == (str(paths["settings"]), True)
    assert mounts["/etc/mode"] == (str((paths["settings"] / "conf/mode").resolve()), True)
    assert mounts["/var/run/ztunnel"] == (str(bed.view.host_path("/var/run/ztunnel")), True)
    assert mounts["/var/run/secrets/kubernetes.io/serviceaccount"][1] is True
    escaping = {"name": "x", "volumeMounts": [{"name": "cache", "mountPath": "/x", "subPath": "../../etc"}]}
    with pytest.raises(VolumeError, match="may not contain"):
        volumes.mounts(escaping)
    with pytest.raises(VolumeError, match="names no prepared volume"):
        volumes.mounts({"name": "x", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]})
    volumes.cleanup()


async def test_a_sub_path_through_a_link_the_pod_made_creates_nothing_outside_the_volume(bed):
    volumes = bed.volumes()
    await volumes.prepare()
    outside = Path(tempfile.mkdtemp(prefix="wisp-outside-"))
    try:
        (volumes.paths["cache"] / "escape").symlink_to(outside)  # as the pod can, writing its emptyDir
        linked = {"name": "x", "volumeMounts": [{"name": "cache", "mountPath": "/x", "subPath": "escape/made"}]}
        with pytest.raises(VolumeError, match="escape"):
            volumes.mounts(linked)
        assert list(outside.iterdir()) == []
    finally:
        shutil.rmtree(outside)
        volumes.cleanup()


@needs_root
async def test_a_sandboxed_container_reads_its_files_through_the_binds(bed):
    volumes = bed.volumes()
    await volumes.prepare()
    try:
        container = bed.pod["spec"]["containers"][0]
        base = plan(UID, FS_GROUP, run_root="/run/wisp", needed=program_paths(Path(sys.executable).parent))
        sandbox = dataclasses.replace(base, binds=tuple(volumes.mounts(container)))
        script = ("import os\n"
                  "print(open('/var/run/secrets/kubernetes.io/serviceaccount/namespace').read())\n"
                  "print(open('/etc/mode').read())\n"
                  "print(open('/etc/creds/password').read())\n"
                  "open('/cache/written', 'w').write('by the pod')\n"
                  "try:\n    open('/etc/settings/new', 'w')\nexcept OSError as exc:\n    print(exc.errno)\n")
        done = subprocess.run(sandbox.wrap([sys.executable, "-c", script]), capture_output=True, text=True,
                              timeout=30, cwd="/")
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [bed.namespace, "fast", SECRET, "30"]  # EROFS for a configMap
        assert read(volumes.paths["cache"], "written") == "by the pod"
    finally:
        volumes.cleanup()


@needs_root
async def test_a_missing_configmap_is_named_unless_optional(bed):
    pod = json.loads(json.dumps(bed.pod))
    pod["spec"]["volumes"] = [{"name": "absent", "configMap": {"name": "absent"}}]
    with pytest.raises(VolumeError, match='volume absent: configmap "absent" not found in namespace'):
        await bed.volumes(pod).prepare()
    pod["spec"]["volumes"] = [{"name": "absent", "configMap": {"name": "absent", "optional": True}},
                              {"name": "creds", "secret": {"secretName": "creds", "optional": True,
                                                           "items": [{"key": "nope", "path": "nope"}]}}]
    volumes = bed.volumes(pod)
    await volumes.prepare()
    assert all(entry.startswith("..") for entry in os.listdir(volumes.paths["absent"]))  # no file, only the layout
    assert os.listdir(volumes.paths["creds"] / "..data") == []
    pod["spec"]["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": "c"}}]
    with pytest.raises(VolumeError, match="persistentVolumeClaim is not supported"):
        await bed.volumes(pod).prepare()
    volumes.cleanup()


@needs_root
async def test_tokens_are_renewed_at_80_percent_of_their_life_and_config_changes_followed(bed):
    volumes = bed.volumes()
    volumes.resync = 0.5
    await volumes.prepare()
    issued = time.time()
    first = read(volumes.paths["istio-token"], "istio-token")
    assert abs(volumes.refresh_at["istio-token"] - (issued + 0.8 * 3600)) < 30
    await bed.api.patch(f"/api/v1/namespaces/{bed.namespace}/configmaps/settings", {"data": {"mode": "slow"}})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(volumes.refresh_forever)
        await wait_until(lambda: read(volumes.paths["settings"], "conf/mode") == "slow", 10,
                         what="the ConfigMap change in the volume")
        assert read(volumes.paths["istio-token"], "istio-token") == first  # not yet due
        await trio.sleep(1.1)  # a new token is issued in another second, so it differs
        volumes.clock = lambda: time.time() + 0.8 * 3600 + 5  # 80% of its life has passed
        await wait_until(lambda: read(volumes.paths["istio-token"], "istio-token") != first, 10,
                         what="the token to be renewed")
        nursery.cancel_scope.cancel()
    renewed = claims(read(volumes.paths["istio-token"], "istio-token"))
    assert renewed["iat"] > claims(first)["iat"] and renewed["aud"] == ["istio-ca"]
    # Only one generation of files is kept.
    assert len([n for n in os.listdir(volumes.paths["istio-token"]) if n.startswith("..2")]) == 1
    volumes.cleanup()


def test_a_token_is_renewed_at_80_percent_of_its_life_or_when_a_day_old():
    assert renewal_time(1000.0, 1000.0 + 3600) == 1000.0 + 2880
    # The API server's extended kube-api-access token (a year) is renewed after a day, not 0.8 years.
    assert renewal_time(1000.0, 1000.0 + 365 * 86400) == 1000.0 + 86400
    assert renewal_time(1000.0, 900.0) == 1000.0  # already expired by our clock: at once
