"""Who is calling the control plane: node proxies and waypoints, by bearer credential.

Local mode: the operator issues a random token per node proxy (and per waypoint) when it
starts, and the local runtime hands each process its own. On Kubernetes, operator/kube_auth.py
answers the same question with TokenReview on projected service-account tokens (asynchronously:
its `authenticate` is a coroutine).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from wisp.identity import SpiffeId

from .distributor import ROLE_WAYPOINT, ROLE_ZTUNNEL, View

ROLE_NODE_AGENT = "node-agent"
ROLE_RUNTIME = "runtime"
# Kubernetes only: a service account that is neither a node proxy nor a waypoint; it may obtain
# its own identity from the CA and nothing else.
ROLE_WORKLOAD = "workload"


@dataclass(slots=True, frozen=True)
class Caller:
    role: str
    node: str | None = None
    # A waypoint may only obtain its own identity.
    identity: SpiffeId | None = None

    @property
    def view(self) -> View:
        return View(self.role, self.node if self.role == ROLE_ZTUNNEL else None)

    def describe(self) -> str:
        if self.node:
            return f"{self.role} on node {self.node}"
        return f"{self.role} {self.identity}" if self.identity else self.role


# What secrets.token_urlsafe(32) makes: 43 characters of the URL-safe alphabet (256 bits).
_KEEPABLE = re.compile(r"[A-Za-z0-9_-]{43}")


class LocalCredentials:
    """Random bearer tokens issued at start; only their SHA-256 is kept."""

    def __init__(self) -> None:
        self._callers: dict[bytes, Caller] = {}

    def issue_ztunnel(self, node: str, keep: str | None = None) -> str:
        return self._issue(Caller(ROLE_ZTUNNEL, node=node), keep)

    def issue_node_agent(self, node: str, keep: str | None = None) -> str:
        return self._issue(Caller(ROLE_NODE_AGENT, node=node), keep)

    def issue_runtime(self, keep: str | None = None) -> str:
        """Local mode only: the runtime that plays kubelet and `kubectl` for the CLI."""
        return self._issue(Caller(ROLE_RUNTIME), keep)

    def issue_waypoint(self, identity: SpiffeId) -> str:
        return self._issue(Caller(ROLE_WAYPOINT, identity=identity))

    def _issue(self, caller: Caller, keep: str | None = None) -> str:
        """A new random token, or `keep` (a token this caller already holds: a restarted control
        plane honours the ones its running proxies read at their start, as a service-account
        token outlives istiod) if it has a fresh token's strength."""
        token = keep if keep is not None and _KEEPABLE.fullmatch(keep) else secrets.token_urlsafe(32)
        self._callers[hashlib.sha256(token.encode()).digest()] = caller
        return token

    def authenticate(self, authorization: str | None) -> Caller | None:
        """The caller behind an `Authorization: Bearer <token>` header, or None."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        # Looking up a hash keeps the comparison independent of the secret's bytes.
        return self._callers.get(hashlib.sha256(token.strip().encode()).digest())
