"""The CA every operator replica signs with, kept in a Secret as istiod keeps its self-signed root.

Every replica serves the CA, so every replica must sign with the same key: a replica with a root
of its own would issue certificates the others' proxies do not trust. At start, a replica reads
the Secret `istio-ca-secret` in its namespace (Istio's name and keys: `ca-cert.pem`,
`ca-key.pem`, `cert-chain.pem`, `root-cert.pem`); if there is none, it generates a root and
creates the Secret, and if another replica created it first (409), it reads theirs. The files go
to a directory `CertificateAuthority.load_cacerts` reads. A plug-in CA (`--cacerts`, Istio's
`cacerts` Secret mounted as files) bypasses this.
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

import structlog

from wisp.identity import CertificateAuthority

from .client import KubeApi, KubeError

log = structlog.get_logger("wisp_operator.kube.ca_secret")

SECRET_NAME = "istio-ca-secret"
# What load_cacerts reads, which is also what istiod's self-signed Secret holds.
KEYS = ("ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem")


async def shared_ca(api: KubeApi, namespace: str, directory: Path, trust_domain: str) -> Path:
    """Write the replicas' shared CA into `directory` (created if needed) and return it."""
    path = "/api/v1/namespaces/%s/secrets/%s" % (namespace, SECRET_NAME)
    found = await api.request("GET", path)
    if found.status == 404:
        created = await api.request("POST", "/api/v1/namespaces/%s/secrets" % namespace,
                                    body=_secret(namespace, _generate(trust_domain)))
        if created.ok:
            log.info("created the shared CA", secret=SECRET_NAME, namespace=namespace)
            found = created
        elif created.status == 409:
            found = await api.request("GET", path)  # another replica was first: sign with theirs
        else:
            raise KubeError("cannot create Secret %s/%s: %s" % (namespace, SECRET_NAME, created.message()))
    if not found.ok:
        raise KubeError("cannot read Secret %s/%s: %s" % (namespace, SECRET_NAME, found.message()))
    data = found.body.get("data") or {}
    missing = [key for key in KEYS if not isinstance(data.get(key), str)]
    if missing:
        raise KubeError("Secret %s/%s lacks %s" % (namespace, SECRET_NAME, ", ".join(missing)))
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for key in KEYS:
        try:
            content = base64.b64decode(data[key], validate=True)
        except ValueError:
            raise KubeError("Secret %s/%s: %s is not base64" % (namespace, SECRET_NAME, key)) from None
        target = directory / key
        target.write_bytes(content)
        target.chmod(0o600)
    return directory


def _generate(trust_domain: str) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory(prefix="wisp-ca-") as scratch:
        CertificateAuthority.generate(trust_domain).write_cacerts(scratch)
        return {key: (Path(scratch) / key).read_bytes() for key in KEYS}


def _secret(namespace: str, files: dict[str, bytes]) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "type": "istio.io/ca-root",
            "metadata": {"name": SECRET_NAME, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "wisp"}},
            "data": {key: base64.b64encode(content).decode("ascii") for key, content in files.items()}}
