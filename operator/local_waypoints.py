"""Local mode's waypoint deployment controller: waypoint objects written where the runtime runs them.

On a cluster the operator applies a waypoint Gateway's ServiceAccount, Service and Deployment
through the API server (operator/kube/writer.py). Locally the API server is the manifest
directory, so after each reconciliation this writes, for every Gateway of class
``istio-waypoint``, those same objects (``wisp.waypoint_deployment``) into
``wisp-waypoints/<namespace>.<name>.yaml`` there (``LocalSource.apply_file``: checked like
any manifest, loaded before it returns). The local runtime then runs the Deployment's pod like
any other, probing its readiness on 15021; the control plane sees it ready and programs the
Gateway. When the Gateway goes, its objects go (``delete_objects``), as the garbage collector
removes owned objects on a cluster.

What the waypoint process needs to start, locally:
- the Service's cluster IP, allocated here as the CLI allocates one on apply
  (``runtime.manifests.allocate_cluster_ips``) and kept for as long as the Service lives;
- its bearer token, issued per Gateway and written to ``<state dir>/tokens/waypoint-<ns>-<name>``
  (the file the waypoint reads, waypoint/config.py ``WaypointSettings.token_path``), next to
  ``root-cert.pem``;
- its command: ``command`` (``--waypoint-command``, default ``wisp-waypoint``) with
  ``--namespace --name --control-plane --state-dir --trust-domain --token-file --root-cert``
  (waypoint/main.py). The Deployment is the one Kubernetes mode applies, Istio's environment
  included; the runtime has no downward API or projected volumes, so the variables naming the
  token and the roots (``AUTH_TOKEN``, ``CA_ROOT_CA``) are given the local files, and the flags
  say the same and win.

A write that fails (a refused manifest, a file system error) is logged once per cause and tried
again after the next reconciliation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from wisp.identity import SpiffeId
from runtime.manifests import allocate_cluster_ips
from wisp.waypoint_deployment import (
    DEFAULT_WAYPOINT_COMMAND,
    GATEWAY_NAME_LABEL,
    MANAGED_BY_MESH,
    MANAGED_GATEWAY_LABEL,
    is_waypoint_gateway,
    waypoint_objects,
)
from wisp_operator.cluster import ClusterState, Key

from .local_source import LocalSource, SourceError

log = structlog.get_logger("wisp.operator.local_waypoints")

WAYPOINT_MANIFEST_DIR = "wisp-waypoints"
_KINDS = ("ServiceAccount", "Service", "Deployment")


class LocalWaypoints:
    """Keeps the manifest directory's waypoint objects in line with the waypoint Gateways."""

    def __init__(
        self,
        source: LocalSource,
        *,
        state_dir: Path,
        control_plane: str,
        issue_token: Callable[[SpiffeId], str],
        trust_domain: str = "cluster.local",
        command: Sequence[str] = DEFAULT_WAYPOINT_COMMAND,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.source = source
        self.env = dict(env or {})  # mesh-wide waypoint settings (WISP_OTLP_ENDPOINT, docs/tracing.md)
        self.state_dir = state_dir
        self.control_plane = control_plane
        self.issue_token = issue_token
        self.trust_domain = trust_domain
        self.command = tuple(command)
        # (namespace, name) -> the manifest text last written for that Gateway.
        self._written: dict[tuple[str, str], str] = {}
        self._tokens: set[tuple[str, str]] = set()
        self._failures: dict[tuple[str, str], str] = {}

    def sync(self, state: ClusterState) -> None:
        """Write the objects of every waypoint Gateway in ``state``, remove those of Gateways gone."""
        wanted: dict[tuple[str, str], dict[str, Any]] = {}
        for gw in state.gateways():
            if is_waypoint_gateway(gw):
                meta = gw["metadata"]
                wanted[(meta.get("namespace") or "default", meta["name"])] = gw
        # From the objects themselves, not from what this process wrote: a Gateway deleted while
        # the operator was down loses its objects too.
        owned = {(obj["metadata"].get("namespace") or "default", labels[GATEWAY_NAME_LABEL])
                 for kind in _KINDS for obj in state.of_kind(kind)
                 for labels in [(obj.get("metadata") or {}).get("labels") or {}]
                 if labels.get(MANAGED_GATEWAY_LABEL) == MANAGED_BY_MESH and labels.get(GATEWAY_NAME_LABEL)}
        for key in sorted((owned | set(self._written)) - set(wanted)):
            self._remove(key)
        taken = {str(ip) for svc in state.services() for ip in [(svc.get("spec") or {}).get("clusterIP")]
                 if ip and ip != "None"}
        for key, gw in sorted(wanted.items()):
            try:
                self._ensure_token(key)
                self._write(key, gw, state, taken)
            except (OSError, SourceError) as exc:
                self._failed(key, str(exc))

    def objects_for(self, gateway: dict[str, Any], cluster_ip: str | None) -> list[dict[str, Any]]:
        """The waypoint objects of ``gateway`` as this mode runs them."""
        meta = gateway["metadata"]
        namespace, name = meta.get("namespace") or "default", meta["name"]
        token, roots = str(self.token_path(namespace, name)), str(self.state_dir / "root-cert.pem")
        # The runtime sets POD_NAMESPACE itself and ignores valueFrom; the files are local ones.
        local_env = {**self.env, "POD_NAMESPACE": namespace, "AUTH_TOKEN": token, "CA_ROOT_CA": roots}
        args = ["--namespace", namespace, "--name", name, "--control-plane", self.control_plane,
                "--state-dir", str(self.state_dir), "--trust-domain", self.trust_domain,
                "--token-file", token, "--root-cert", roots]
        return waypoint_objects(gateway, "local", control_plane=self.control_plane, trust_domain=self.trust_domain,
                                command=self.command, args=args, env=local_env, cluster_ip=cluster_ip)

    def token_path(self, namespace: str, name: str) -> Path:
        return self.state_dir / "tokens" / f"waypoint-{namespace}-{name}"

    # -- internals --------------------------------------------------------------------------------

    def _ensure_token(self, key: tuple[str, str]) -> None:
        if key in self._tokens:
            return
        namespace, name = key
        # The Deployment runs as the ServiceAccount named after the Gateway.
        token = self.issue_token(SpiffeId(self.trust_domain, namespace, name))
        path = self.token_path(namespace, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        self._tokens.add(key)

    def _write(self, key: tuple[str, str], gw: dict[str, Any], state: ClusterState, taken: set[str]) -> None:
        namespace, name = key
        current = state.get("Service", namespace, name)
        ip = (current.get("spec") or {}).get("clusterIP") if current is not None else None
        if not ip:
            probe = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
                     "spec": {}}
            ip = allocate_cluster_ips([probe], taken)[0]["spec"]["clusterIP"]
            taken.add(ip)
        objects = self.objects_for(gw, ip)
        text = json.dumps(objects, sort_keys=True)
        if self._written.get(key) == text:
            return
        result = self.source.apply_file(self._file(key), objects)
        if result.errors:
            self._failed(key, "; ".join(str(e) for e in result.errors))
            return
        self._written[key] = text
        self._failures.pop(key, None)
        log.info("waypoint objects written", namespace=namespace, name=name, cluster_ip=ip,
                 changed=[f"{k[0]}/{k[2]}" for k, action in result.applied if action != "unchanged"])

    def _remove(self, key: tuple[str, str]) -> None:
        namespace, name = key
        keys: list[Key] = [(kind, namespace, name) for kind in _KINDS]
        try:
            self.source.delete_objects(keys)
        except (OSError, SourceError) as exc:
            self._failed(key, str(exc))
            return
        self._written.pop(key, None)
        log.info("waypoint objects removed with their Gateway", namespace=namespace, name=name)

    def _failed(self, key: tuple[str, str], problem: str) -> None:
        if self._failures.get(key) != problem:
            log.warning("waypoint objects not written", namespace=key[0], name=key[1], problem=problem)
            self._failures[key] = problem

    @staticmethod
    def _file(key: tuple[str, str]) -> str:
        return f"{WAYPOINT_MANIFEST_DIR}/{key[0]}.{key[1]}.yaml"

    async def run(self, controller: Any) -> None:
        """After every reconciliation (``controller.wait_for_reconciliation``), sync."""
        seen = 0
        while True:
            seen = await controller.wait_for_reconciliation(seen)
            self.sync(controller.state)
