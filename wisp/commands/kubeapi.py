"""The API-server connection of the `wisp` commands that talk to Kubernetes, with kubectl's flags.

`add_flags(parser)` adds `--kubeconfig` and `--context`; `connect(args)` opens a `Kube` from
them, found as kubectl finds it: the flag, else `$KUBECONFIG`, else `~/.kube/config`, else the
pod's in-cluster service account. `Kube.request` answers `Response(status, body)` for every HTTP
status (callers decide what 404 or 409 mean) and raises `KubeCommandError` only when the server
cannot be reached. `Kube.resource(apiVersion, kind)` resolves a kind to its REST path through
the server's discovery, as kubectl does, so a CRD's kinds work once it is established.

(The operator has its own client, operator/kube/client.py: wisp's CLI imports no component.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wisp.kube import Response

if TYPE_CHECKING:
    from kubernetes_asyncio import client as k8s_client

APPLY_PATCH = "application/apply-patch+yaml"
JSON = "application/json"
FIELD_MANAGER = "wisp"


class KubeCommandError(Exception):
    """The cluster could not be reached or configured; printed as one line."""


@dataclass(frozen=True, slots=True)
class Resource:
    """Where objects of one kind live: `/apis/apps/v1` + `daemonsets`, and whether namespaced."""

    base: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None, name: str | None = None) -> str:
        where = "%s/namespaces/%s/%s" % (self.base, namespace, self.plural) if self.namespaced and namespace \
            else "%s/%s" % (self.base, self.plural)
        return "%s/%s" % (where, name) if name else where


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", type=Path,
                        help="kubeconfig file (default $KUBECONFIG, then ~/.kube/config, then in-cluster)")
    parser.add_argument("--context", help="the kubeconfig context to use (default its current context)")


def kubeconfig_path(args: argparse.Namespace) -> Path | None:
    """The kubeconfig kubectl would read, or None for the in-cluster account."""
    if args.kubeconfig is not None:
        if not args.kubeconfig.is_file():
            raise KubeCommandError("--kubeconfig %s: no such file" % args.kubeconfig)
        return args.kubeconfig
    listed = os.environ.get("KUBECONFIG", "")
    for entry in listed.split(os.pathsep) if listed else []:
        if entry and Path(entry).is_file():
            return Path(entry)
    default = Path.home() / ".kube" / "config"
    if default.is_file():
        return default
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    raise KubeCommandError("no Kubernetes configuration: pass --kubeconfig, set KUBECONFIG, or create "
                           "~/.kube/config")


class Kube:
    """One API server connection pool; use as `async with await connect(args) as kube`."""

    def __init__(self, api_client: k8s_client.ApiClient) -> None:
        self._client = api_client
        self._discovered: dict[str, dict[str, Resource]] = {}

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()

    @property
    def host(self) -> str:
        return str(self._client.configuration.host)

    async def request(self, method: str, path: str, *, query: Mapping[str, str] | None = None, body: Any = None,
                      content_type: str = JSON, timeout: float = 30.0) -> Response:
        import aiohttp

        try:
            response = await self._client.call_api(
                path, method, query_params=list((query or {}).items()),
                header_params={"Content-Type": content_type, "Accept": JSON},
                body=body, auth_settings=["BearerToken"], _preload_content=False, _request_timeout=timeout)
            async with response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise KubeCommandError("cannot reach the Kubernetes API server at %s: %s"
                                   % (self.host, exc or type(exc).__name__)) from None
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError:
            decoded = {"message": raw[:200].decode("utf-8", "replace")}
        return Response(status, decoded if isinstance(decoded, dict) else {})

    async def resource(self, api_version: str, kind: str) -> Resource | None:
        """The REST home of `kind` in `api_version` per discovery; None if the server lacks it."""
        if api_version not in self._discovered:
            base = "/api/v1" if api_version == "v1" else "/apis/" + api_version
            answer = await self.request("GET", base)
            found: dict[str, Resource] = {}
            if answer.ok:
                for entry in answer.body.get("resources") or []:
                    name = entry.get("name", "")
                    if "/" in name or not isinstance(entry.get("kind"), str):
                        continue  # subresources (pods/status) share the kind
                    found[entry["kind"]] = Resource(base, name, bool(entry.get("namespaced")))
            elif answer.status != 404:
                raise KubeCommandError("discovery of %s failed: %s" % (api_version, answer.message()))
            if not found:
                return None  # not cached: a CRD being established may add it
            self._discovered[api_version] = found
        return self._discovered[api_version].get(kind)


async def connect(args: argparse.Namespace) -> Kube:
    # Imported here so that `wisp --help` and the local commands do not load the Kubernetes client.
    from kubernetes_asyncio import client as k8s_client
    from kubernetes_asyncio import config as k8s_config

    path = kubeconfig_path(args)
    configuration = k8s_client.Configuration()
    try:
        if path is not None:
            await k8s_config.load_kube_config(config_file=str(path), context=args.context,
                                              client_configuration=configuration)
        else:
            k8s_config.load_incluster_config(client_configuration=configuration)
    except (k8s_config.ConfigException, OSError, KeyError, ValueError, TypeError) as exc:
        raise KubeCommandError("cannot load the Kubernetes configuration%s: %s"
                               % (" from %s" % path if path else "", exc)) from None
    return Kube(k8s_client.ApiClient(configuration))
