"""Seeds captured from a real Kubernetes API server: `python -m fuzz record-live` (needs the test
bed's binaries, docs/testbed.md; run it under the benchmark lock, it starts a control plane).

What the offline recorder (fuzz/record.py) can only lay out by hand, the test bed's kube-apiserver
produces here:
- `admission`: the AdmissionReviews kube-apiserver POSTs to a ValidatingWebhookConfiguration while
  the example manifests are applied with kubectl — objects as stored (defaults filled in,
  managedFields, uid, timestamps), with the request's userInfo, options and resource fields;
- `jwt`: service-account tokens the API server issued through TokenRequest, one unbound and one
  bound to a pod, with the audience ztunnel's token carries;
- `cni`: what libcni passes wisp-cni (stdin, CNI_ARGS) for ADD, CHECK and DEL when cnitool runs
  the chain `cni.install` writes after the real `bridge` + `host-local` plugins (as
  tests/cni/test_chain.py does; needs root, the test bed's cnitool and Debian's
  containernetworking-plugins). In wisp-cni's place the launcher runs a recorder that writes what
  it was given and passes the previous result on, so no node agent is needed. Everything runs in
  network namespaces made here (`wisp-fzcni*`), removed afterwards.

The webhook is a loopback HTTPS server of this process (the API server's serving certificate,
trusted through the test bed's CA) that records each body and allows the object. Files are named
`live-<content hash>`; the offline recorder keeps them when it rewrites a corpus.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIVE_PREFIX = "live-"
# The groups of the objects in examples/ and of the mesh's configuration kinds.
WEBHOOK_GROUPS = ["", "apps", "gateway.networking.k8s.io", "networking.istio.io", "security.istio.io",
                  "telemetry.istio.io"]
MAX_SEED = 8192


class _Recorder(BaseHTTPRequestHandler):
    reviews: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).reviews.append(body)
        uid = json.loads(body)["request"]["uid"]
        answer = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                             "response": {"uid": uid, "allowed": True}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _webhook_server(cluster) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cluster.pki.serving_cert), str(cluster.pki.serving_key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _webhook_configuration(port: int, ca_pem: bytes) -> dict:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "wisp-fuzz-recorder"},
        "webhooks": [{
            "name": "record.fuzz.wisp.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Fail", "timeoutSeconds": 10,
            "clientConfig": {"url": f"https://127.0.0.1:{port}/validate",
                             "caBundle": base64.b64encode(ca_pem).decode()},
            "rules": [{"apiGroups": WEBHOOK_GROUPS, "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
                       "resources": ["*"], "scope": "*"}],
            # Only what this recorder applies, not the control plane's own objects.
            "objectSelector": {"matchLabels": {"fuzz.wisp.dev/record": "yes"}},
        }],
    }


def _labelled(document: dict) -> dict:
    document.setdefault("metadata", {}).setdefault("labels", {})["fuzz.wisp.dev/record"] = "yes"
    # The local runtime runs commands, not images; the API server requires an image.
    spec = document.get("spec") or {}
    pod_spec = (spec.get("template") or {}).get("spec") if document.get("kind") != "Pod" else spec
    for container in (pod_spec or {}).get("containers") or []:
        container.setdefault("image", "registry.example/echo:dev")
    return document


def _apply(cluster, document: dict) -> None:
    """kubectl apply; an object the API server refuses before admission is skipped, said why."""
    from runtime.testbed.cluster import TestbedError

    try:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(document))
    except TestbedError as exc:
        print(f"skipped {document.get('kind')}/{(document.get('metadata') or {}).get('name')}: {exc}")


def _reviews(cluster) -> list[bytes]:
    import yaml

    server = _webhook_server(cluster)
    try:
        cluster.kubectl("apply", "-f", str(REPO / "deploy" / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        configuration = _webhook_configuration(server.server_address[1], cluster.pki.ca_cert.read_bytes())
        cluster.kubectl("apply", "-f", "-", input=json.dumps(configuration))
        # The API server's webhook informer takes the configuration up a moment later: a probe
        # object, applied until its review arrives.
        probe = _labelled({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe", "namespace": "default"}})
        deadline = time.monotonic() + 30
        while not _Recorder.reviews:
            if time.monotonic() > deadline:
                raise SystemExit("the API server never called the recorder's webhook")
            probe["data"] = {"at": str(time.monotonic())}
            cluster.kubectl("apply", "-f", "-", input=json.dumps(probe))
            time.sleep(0.2)
        _Recorder.reviews.clear()
        paths = sorted((REPO / "examples").rglob("*.yaml"))
        # Namespaces first, as `kubectl apply -f` of a folder would need them.
        documents = [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if isinstance(doc, dict)]
        documents.sort(key=lambda doc: doc.get("kind") != "Namespace")
        for document in documents:
            _apply(cluster, _labelled(document))
        # The same objects again, changed: UPDATE reviews carry oldObject too.
        for document in documents:
            document["metadata"]["labels"]["fuzz.wisp.dev/round"] = "2"
            _apply(cluster, document)
    finally:
        server.shutdown()
    if not _Recorder.reviews:
        raise SystemExit("the API server sent no AdmissionReview to the recorder")
    return [review for review in _Recorder.reviews if len(review) < MAX_SEED]


def _tokens(cluster) -> list[bytes]:
    namespace = "shop"
    tokens = []
    with cluster.client() as client:
        response = client.post(f"/api/v1/namespaces/{namespace}/serviceaccounts",
                               json={"metadata": {"name": "ztunnel"}})
        if response.status_code not in (201, 409):
            raise SystemExit(f"cannot create the ServiceAccount: {response.text}")
        pod = client.get(f"/api/v1/namespaces/{namespace}/pods/client").json()
        # A token bound to a pod must be its service account's (as the kubelet projects it).
        bound = {"kind": "Pod", "apiVersion": "v1", "name": "client", "uid": pod["metadata"]["uid"]}
        for account, ref in (("ztunnel", None), (pod["spec"].get("serviceAccountName") or "default", bound)):
            spec = {"audiences": ["wisp-operator"], "expirationSeconds": 3600}
            if ref:
                spec["boundObjectRef"] = ref
            response = client.post(f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
                                   json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                         "spec": spec})
            if response.status_code != 201:
                raise SystemExit(f"TokenRequest refused: {response.text}")
            tokens.append(response.json()["status"]["token"].encode())
    return tokens


_CNI_RECORDER = """import json, os, sys
data = sys.stdin.buffer.read()
command = os.environ.get("CNI_COMMAND", "")
count = len(os.listdir(sys.argv[1]))
with open(os.path.join(sys.argv[1], "%03d.json" % count), "w") as out:
    json.dump({"command": command, "args": os.environ.get("CNI_ARGS", ""), "stdin": data.decode()}, out)
if command == "ADD":
    sys.stdout.write(json.dumps(json.loads(data)["prevResult"]))
"""
CNI_COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")   # the cni target's first byte (fuzz/targets.py)
CNI_PLUGIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
LIBCNI_CACHE = "/var/lib/cni/results"


def _cni_invocations() -> list[bytes]:
    import contextlib
    import glob
    import random
    import secrets
    import shutil
    import subprocess
    import sys
    import tempfile

    from cni.install import HostPaths, install
    from runtime.testbed import cnitool

    tool = cnitool.installed()
    made = [d for d in (os.path.dirname(LIBCNI_CACHE), LIBCNI_CACHE) if not os.path.exists(d)]
    prefix = "wisp-fzcni" + secrets.token_hex(3)
    root = Path(tempfile.mkdtemp(prefix=prefix))
    network = prefix + "-net"
    namespaces = [prefix + "-node1", prefix + "-pod"]
    try:
        for name in namespaces:
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
        paths = HostPaths(str(root / "net.d"), str(root / "bin"))
        for directory in (paths.conf_dir, paths.bin_dir, root / "ipam", root / "seen"):
            Path(directory).mkdir(parents=True)
        subnet = "10.%d.%d.0/24" % (random.randint(200, 254), random.randint(0, 255))
        (Path(paths.conf_dir) / "10-bridge.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": network,
            "plugins": [{"type": "bridge", "bridge": "wf" + secrets.token_hex(4), "isGateway": True, "ipMasq": False,
                         "ipam": {"type": "host-local", "subnet": subnet, "dataDir": str(root / "ipam")}}]}))
        (root / "recorder.py").write_text(_CNI_RECORDER)
        install(paths, str(root / "cni.sock"), [sys.executable, "-I", str(root / "recorder.py"), str(root / "seen")])
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NETCONFPATH": paths.conf_dir,
               "CNI_PATH": f"{paths.bin_dir}:{CNI_PLUGIN_DIR}", "CNI_IFNAME": "eth0",
               "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-7d4b9c8f6d-x2x9z;"
                           "K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=3f1c2a4e-0000-4000-8000-00000000c0de"}
        for command in ("add", "check", "del"):
            done = subprocess.run(["nsenter", f"--net=/var/run/netns/{namespaces[0]}", str(tool), command, network,
                                   f"/var/run/netns/{namespaces[1]}"], env=env, capture_output=True, text=True,
                                  cwd="/", timeout=60)
            if done.returncode:
                raise SystemExit(f"cnitool {command} failed: {done.stderr or done.stdout}")
        seeds = []
        for path in sorted((root / "seen").iterdir()):
            seen = json.loads(path.read_text())
            seeds.append(bytes([CNI_COMMANDS.index(seen["command"])]) + seen["args"].encode() + b"\0"
                         + seen["stdin"].encode())
        if len(seeds) != 3:
            raise SystemExit(f"wisp-cni's place was called {len(seeds)} times, not 3 (ADD, CHECK, DEL)")
        return seeds
    finally:
        for cached in glob.glob(os.path.join(LIBCNI_CACHE, network + "-*")):
            os.unlink(cached)
        for directory in reversed(made):  # libcni's cache directories, if this run made them
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        for name in namespaces:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _add(directory: Path, seeds: list[bytes]) -> int:
    for old in directory.glob(LIVE_PREFIX + "*"):
        old.unlink()
    names = set()
    for seed in seeds:
        name = LIVE_PREFIX + hashlib.sha1(seed).hexdigest()[:16]
        (directory / name).write_bytes(seed)
        names.add(name)
    return len(names)


def record_live(corpus: Path, names: Iterable[str] = ()) -> None:
    """Capture the seeds of `names` (admission, jwt, cni; all when empty)."""
    wanted = set(names) or {"admission", "jwt", "cni"}
    unknown = sorted(wanted - {"admission", "jwt", "cni"})
    if unknown:
        raise SystemExit(f"nothing to capture live for {', '.join(unknown)}; admission, jwt and cni are")
    if wanted & {"admission", "jwt"}:
        from runtime.testbed import build
        from runtime.testbed.cluster import start

        with start(build.installed(), timeout=120) as cluster:
            if "admission" in wanted:
                print(f"admission: {_add(corpus / 'admission', _reviews(cluster))} captured reviews")
            if "jwt" in wanted:
                print(f"jwt: {_add(corpus / 'jwt', _tokens(cluster))} issued tokens")
    if "cni" in wanted:
        print(f"cni: {_add(corpus / 'cni', _cni_invocations())} invocations libcni made")
