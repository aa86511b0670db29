"""The node agent's Kubernetes pod source: this node's pods and every namespace, from the API server.

Contract (`KubePodSource`, a `cni.podsource.PodSource`):
- Two list+watch loops, as a client-go informer runs them: Pods with the field selector
  `spec.nodeName=<node>` (the agent never holds another node's pods) and Namespaces (their
  `istio.io/dataplane-mode` label decides enrolment). A list is paginated (`limit`/`continue`);
  a watch resumes from the last resourceVersion seen (an event's object or a BOOKMARK) and asks
  for bookmarks, so a reconnect after the server's `timeoutSeconds` resends nothing.
- A watch refused with 410 Gone (as an HTTP status or as an ERROR event: the resourceVersion fell
  out of the watch cache or was compacted away in etcd) relists at once; the relist replaces that
  resource's cache wholesale, so objects deleted meanwhile disappear. Any other failure (network,
  5xx, an undecodable line) backs off exponentially (`backoff_min` … `backoff_max`, ±20% jitter)
  and resumes from the last resourceVersion; the last published view stays meanwhile.
- `publish(view)` is called with a complete `PodView` after both first lists, then after every
  change of either cache. Views are full, so a missed one loses nothing.
- `set_redirection(ns, name, value)` writes the `ambient.istio.io/redirection` annotation with a
  JSON merge patch (`application/merge-patch+json`; `null` removes it), as Istio's CNI node agent
  does. A pod that is gone (404) is not an error; any other refusal is a `PodSourceError`.

Why httpx and not kubernetes-asyncio: the node agent is trio and the data plane never imports
kubernetes-asyncio (docs: DESIGN "Components"); kubernetes-asyncio is asyncio-only and would need
trio-asyncio for two GETs and one PATCH. httpx runs on trio, is already the agent's HTTP client
(`LocalPodSource`, `wisp-cni`) and streams a watch line by line.

Credentials: `load_kubeconfig()` (a kubeconfig file: current or named context; server,
certificate-authority(-data), client-certificate/-key(-data), token or tokenFile) or
`in_cluster()` (the pod's service account: `KUBERNETES_SERVICE_HOST`/`_PORT`, `ca.crt`, and the
projected `token`, re-read when it changes because the kubelet rotates it). Bad or missing
configuration is a `KubeConfigError` naming the file and the field.
"""

from __future__ import annotations

import base64
import json
import os
import random
import ssl
import tempfile
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog
import trio
import yaml

from .errors import CniAgentError, PodSourceError
from .podsource import REDIRECTION_ANNOTATION, PodView

log = structlog.get_logger("cni.kube")

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
PAGE_SIZE = 500
MERGE_PATCH = "application/merge-patch+json"


class KubeConfigError(CniAgentError):
    """No usable API server address or credentials; the message names the file and the field."""


class _Gone(Exception):
    """The API server answered 410: our resourceVersion is too old; relist."""


# -- credentials ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class KubeConfig:
    """Where the API server is and how to prove who we are."""

    server: str
    ca_pem: str | None = None  # None: the system's trust store
    insecure: bool = False
    client_cert_pem: str | None = None
    client_key_pem: str | None = None
    token: str | None = None
    token_file: str | None = None  # re-read when it changes (projected tokens rotate)

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.ca_pem) if self.ca_pem else ssl.create_default_context()
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.client_cert_pem and self.client_key_pem:
            # ssl loads a key pair from files only; they live for the call, in a private directory.
            with tempfile.TemporaryDirectory(prefix="wisp-kube-") as directory:
                cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
                for path, pem in ((cert, self.client_cert_pem), (key, self.client_key_pem)):
                    with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
                        handle.write(pem)
                try:
                    context.load_cert_chain(cert, key)
                except (ssl.SSLError, ValueError) as exc:
                    raise KubeConfigError(f"client certificate or key is unusable: {exc}") from None
        return context


class _BearerToken(httpx.Auth):
    """`Authorization: Bearer` from a fixed token or a file re-read when its mtime changes."""

    def __init__(self, token: str | None, token_file: str | None) -> None:
        self._token = token
        self._file = token_file
        self._mtime: float | None = None

    def _current(self) -> str | None:
        if self._file is None:
            return self._token
        try:
            mtime = os.stat(self._file).st_mtime
            if mtime != self._mtime:
                with open(self._file, encoding="ascii") as handle:
                    self._token = handle.read().strip()
                self._mtime = mtime
        except (OSError, UnicodeDecodeError) as exc:
            # Keep the token we had: the kubelet replaces the file atomically, so a failed read
            # is transient; the API server's 401 will say so if it is not.
            log.warning("cannot re-read the service account token", path=self._file, error=str(exc))
        return self._token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._current()
        if token:
            request.headers["Authorization"] = "Bearer " + token
        yield request


def make_client(config: KubeConfig, timeout: float = 10.0) -> httpx.AsyncClient:
    """An httpx client for the API server (HTTP/1.1: one watch per connection, as client-go)."""
    auth = _BearerToken(config.token, config.token_file) if (config.token or config.token_file) else None
    return httpx.AsyncClient(base_url=config.server, verify=config.ssl_context(), auth=auth,
                             timeout=timeout, headers={"User-Agent": "wisp-node-agent"})


def in_cluster(environ: Mapping[str, str] = os.environ, directory: str = SERVICE_ACCOUNT_DIR) -> KubeConfig:
    """The pod's own service account, as client-go's rest.InClusterConfig reads it."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST", ""), environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise KubeConfigError("not running in a pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT "
                              "are not set (use --kubeconfig outside a cluster)")
    token_file = os.path.join(directory, "token")
    try:
        with open(os.path.join(directory, "ca.crt"), encoding="ascii") as handle:
            ca = handle.read()
        with open(token_file, encoding="ascii"):
            pass
    except OSError as exc:
        raise KubeConfigError(f"service account credentials unreadable in {directory}: {exc}") from None
    server_host = f"[{host}]" if ":" in host else host
    return KubeConfig(server=f"https://{server_host}:{port}", ca_pem=ca, token_file=token_file)


def load_kubeconfig(path: str, context: str | None = None) -> KubeConfig:
    """The cluster and user of `context` (default: current-context) in the kubeconfig at `path`."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except OSError as exc:
        raise KubeConfigError(f"cannot read kubeconfig {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise KubeConfigError(f"kubeconfig {path} is not YAML: {exc}") from None
    if not isinstance(document, dict):
        raise KubeConfigError(f"kubeconfig {path} is not a mapping")
    base = os.path.dirname(os.path.abspath(path))
    name = context or document.get("current-context")
    if not isinstance(name, str) or not name:
        raise KubeConfigError(f"kubeconfig {path} has no current-context (name one with --context)")
    ctx = _named(document, "contexts", "context", name, path)
    cluster = _named(document, "clusters", "cluster", ctx.get("cluster"), path)
    user = _named(document, "users", "user", ctx.get("user"), path) if ctx.get("user") else {}
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise KubeConfigError(f"kubeconfig {path}: cluster {ctx.get('cluster')!r} has no https:// server")
    token_file = user.get("tokenFile")
    return KubeConfig(
        server=server.rstrip("/"),
        ca_pem=_pem(cluster, "certificate-authority", base, path),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        client_cert_pem=_pem(user, "client-certificate", base, path),
        client_key_pem=_pem(user, "client-key", base, path),
        token=user.get("token") if isinstance(user.get("token"), str) else None,
        token_file=os.path.join(base, token_file) if isinstance(token_file, str) and token_file else None,
    )


def _named(document: dict, section: str, kind: str, name: Any, path: str) -> dict:
    entries = document.get(section)
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("name") == name and isinstance(entry.get(kind), dict):
            return entry[kind]
    raise KubeConfigError(f"kubeconfig {path}: no {kind} named {name!r} in {section}")


def _pem(section: dict, key: str, base: str, path: str) -> str | None:
    data = section.get(key + "-data")
    if isinstance(data, str) and data:
        try:
            return base64.b64decode(data, validate=True).decode("ascii")
        except (ValueError, UnicodeDecodeError):
            raise KubeConfigError(f"kubeconfig {path}: {key}-data is not base64 PEM") from None
    file = section.get(key)
    if isinstance(file, str) and file:
        full = os.path.join(base, file)
        try:
            with open(full, encoding="ascii") as handle:
                return handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise KubeConfigError(f"kubeconfig {path}: cannot read {key} {full}: {exc}") from None
    return None


# -- list + watch --------------------------------------------------------------------------------
@dataclass(slots=True)
class Follower:
    """The cache of one resource kept by list+watch; `relists` counts lists after the first."""

    kind: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    items: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    resource_version: str | None = None  # None: (re)list first
    listed: bool = False
    relists: int = 0

    def key(self, obj: dict[str, Any]) -> tuple[str, str] | None:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            return None
        return (meta.get("namespace") or "", meta["name"])


class KubePodSource:
    """This node's pods and all namespaces from the API server; see the module docstring."""

    def __init__(self, client: httpx.AsyncClient, node: str, *, backoff_min: float = 0.2,
                 backoff_max: float = 30.0, watch_timeout: int = 300) -> None:
        if not node:
            raise KubeConfigError("the node name is empty (set --node or NODE_NAME)")
        self.client = client
        self.node = node
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.watch_timeout = watch_timeout
        self.pods = Follower("pods", "/api/v1/pods", {"fieldSelector": f"spec.nodeName={node}"})
        self.namespaces = Follower("namespaces", "/api/v1/namespaces")
        self.version = 0
        self._publish: Callable[[PodView], None] | None = None

    async def run(self, publish: Callable[[PodView], None]) -> None:
        self._publish = publish
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow, self.namespaces)
            nursery.start_soon(self._follow, self.pods)

    def _changed(self) -> None:
        if self._publish is None or not (self.pods.listed and self.namespaces.listed):
            return
        self.version += 1
        self._publish(PodView.build(self.version, list(self.namespaces.items.values()),
                                    list(self.pods.items.values())))

    async def _follow(self, follower: Follower) -> None:
        backoff = self.backoff_min
        while True:
            try:
                if follower.resource_version is None:
                    await self._list(follower)
                await self._watch(follower)
                backoff = self.backoff_min
            except _Gone:
                log.info("watch expired; relisting", kind=follower.kind, node=self.node,
                         resource_version=follower.resource_version)
                follower.resource_version = None
                backoff = self.backoff_min
            except (httpx.HTTPError, PodSourceError) as exc:
                log.warning("api server unavailable", kind=follower.kind, node=self.node,
                            error=str(exc) or type(exc).__name__, retry_in=round(backoff, 2))
                await trio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self.backoff_max)

    async def _list(self, follower: Follower) -> None:
        items: dict[tuple[str, str], dict[str, Any]] = {}
        params = dict(follower.params, limit=str(PAGE_SIZE))
        while True:
            response = await self.client.get(follower.path, params=params)
            if response.status_code == 410:
                # The continue token expired between pages: start the list again.
                raise _Gone()
            _check(response, f"listing {follower.kind}")
            body = _json(response, f"listing {follower.kind}")
            for obj in body.get("items") or []:
                key = follower.key(obj)
                if key is not None:
                    items[key] = obj
            meta = body.get("metadata") or {}
            if not meta.get("continue"):
                break
            params["continue"] = meta["continue"]
        if follower.listed:
            follower.relists += 1
        follower.items = items
        follower.resource_version = str(meta.get("resourceVersion") or "")
        follower.listed = True
        log.info("listed", kind=follower.kind, node=self.node, count=len(items),
                 resource_version=follower.resource_version)
        self._changed()

    async def _watch(self, follower: Follower) -> None:
        """Apply events until the server ends the watch (its timeout); raises _Gone on 410."""
        params = dict(follower.params, watch="1", allowWatchBookmarks="true",
                      resourceVersion=follower.resource_version or "",
                      timeoutSeconds=str(self.watch_timeout))
        # The server closes the watch after timeoutSeconds and sends bookmarks meanwhile; a read
        # silent for longer than that means a dead connection.
        timeout = httpx.Timeout(10.0, read=self.watch_timeout + 30.0)
        async with self.client.stream("GET", follower.path, params=params, timeout=timeout) as response:
            if response.status_code == 410:
                raise _Gone()
            if response.status_code >= 300:
                await response.aread()
                _check(response, f"watching {follower.kind}")
            async for line in response.aiter_lines():
                if line.strip():
                    self._apply(follower, line)

    def _apply(self, follower: Follower, line: str) -> None:
        try:
            event = json.loads(line)
            kind, obj = event["type"], event["object"]
        except (ValueError, KeyError, TypeError):
            raise PodSourceError(f"watch of {follower.kind} sent an undecodable event") from None
        if kind == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            if code == 410:
                raise _Gone()
            message = obj.get("message") if isinstance(obj, dict) else None
            raise PodSourceError(f"watch of {follower.kind} failed: {code} {message}")
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        version = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if isinstance(version, str) and version:
            follower.resource_version = version
        if kind == "BOOKMARK":
            return
        key = follower.key(obj)
        if key is None:
            log.warning("watch event without a name ignored", kind=follower.kind, event=kind)
            return
        if kind == "DELETED":
            if follower.items.pop(key, None) is None:
                return
        elif kind in ("ADDED", "MODIFIED"):
            follower.items[key] = obj
        else:
            log.warning("unknown watch event type ignored", kind=follower.kind, event=kind)
            return
        self._changed()

    async def set_redirection(self, namespace: str, name: str, value: str | None) -> None:
        body = json.dumps({"metadata": {"annotations": {REDIRECTION_ANNOTATION: value}}})
        path = f"/api/v1/namespaces/{namespace}/pods/{name}"
        try:
            response = await self.client.patch(path, content=body, headers={"Content-Type": MERGE_PATCH})
        except httpx.HTTPError as exc:
            raise PodSourceError(f"cannot annotate pod {namespace}/{name}: {exc or type(exc).__name__}") from None
        if response.status_code == 404:
            log.info("pod to annotate is gone", pod=f"{namespace}/{name}")
            return
        _check(response, f"annotating pod {namespace}/{name}")


def _json(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise PodSourceError(f"{what}: the API server answered something that is not JSON") from None
    if not isinstance(body, dict):
        raise PodSourceError(f"{what}: the API server answered something that is not an object")
    return body


def _check(response: httpx.Response, what: str) -> None:
    if response.status_code < 300:
        return
    try:
        message = response.json().get("message") or response.reason_phrase
    except (ValueError, AttributeError):
        message = response.text[:300] or response.reason_phrase
    raise PodSourceError(f"{what}: the API server answered {response.status_code}: {message}")
