"""Every operator replica signs with one CA: the Secret istio-ca-secret, made once, against the test bed."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from wisp.identity import CertificateAuthority
from runtime.testbed.cluster import Cluster
from wisp_operator.kube.ca_secret import KEYS, SECRET_NAME, shared_ca
from wisp_operator.kube.client import KubeApi, KubeError


async def _replica(cluster: Cluster, namespace: str, directory: Path) -> Path:
    api = await KubeApi.connect(cluster.kubeconfig)
    try:
        return await shared_ca(api, namespace, directory, "cluster.local")
    finally:
        await api.close()


def test_replicas_starting_together_share_one_root_and_a_restart_keeps_it(cluster: Cluster, namespace: str,
                                                                          tmp_path: Path) -> None:
    async def three() -> list[Path]:
        return list(await asyncio.gather(*(_replica(cluster, namespace, tmp_path / str(i)) for i in range(3))))

    directories = asyncio.run(three())
    roots = {(d / "root-cert.pem").read_bytes() for d in directories}
    keys = {(d / "ca-key.pem").read_bytes() for d in directories}
    assert len(roots) == 1 and len(keys) == 1, "each replica must sign with the same CA"
    ca = CertificateAuthority.load_cacerts(directories[0], "cluster.local")
    assert ca.roots_pem() == roots.pop()
    with cluster.client() as client:
        secret = client.get("/api/v1/namespaces/%s/secrets/%s" % (namespace, SECRET_NAME)).json()
    assert secret["type"] == "istio.io/ca-root" and sorted(secret["data"]) == sorted(KEYS)
    restarted = asyncio.run(_replica(cluster, namespace, tmp_path / "restarted"))
    assert (restarted / "ca-key.pem").read_bytes() == keys.pop()


def test_a_secret_missing_the_key_is_refused_naming_it(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    with cluster.client() as client:
        made = client.post("/api/v1/namespaces/%s/secrets" % namespace, json={
            "metadata": {"name": SECRET_NAME},
            "data": {key: base64.b64encode(b"x").decode() for key in KEYS if key != "ca-key.pem"}})
        assert made.status_code == 201, made.text
    with pytest.raises(KubeError, match="lacks ca-key.pem"):
        asyncio.run(_replica(cluster, namespace, tmp_path / "refused"))
