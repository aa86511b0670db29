"""The CA endpoint: sign a workload CSR if the caller may hold that identity.

As Istio's CA authorizes ztunnel's "impersonation": a node proxy may obtain only identities of
pods running on its own node; a waypoint only its own identity. Every refusal says why.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from dataclasses import dataclass

from wisp.identity import CertificateAuthority, IdentityError, InvalidCsr, InvalidSpiffeId, SpiffeId
from wisp.model import DEFAULT_SERVICE_ACCOUNT

from .auth import Caller
from .cluster import ClusterState
from .distributor import ROLE_WAYPOINT, ROLE_ZTUNNEL
from .pods import TERMINAL_PHASES

MAX_LIFETIME = dt.timedelta(hours=24)
# Leaves are back-dated a minute (wisp/identity/ca.py) and rotated at half their validity, so a
# lifetime of L is renewed (L - 1 min) / 2 after issue: 2 minutes is the shortest that still
# leaves 30 s between renewals (bench/reliability's rotation scenario runs at it); anything
# shorter would have proxies ask again at once.
MIN_LIFETIME = dt.timedelta(minutes=2)


@dataclass(slots=True, frozen=True)
class CaResponse:
    status: int
    body: dict

    def encode(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode()


def _error(status: int, message: str) -> CaResponse:
    return CaResponse(status, {"error": message})


# (caller, requested identity, cluster state, trust domain) -> None, or why the caller may not.
Authorizer = Callable[[Caller, SpiffeId, ClusterState, str], "str | None"]


class CaService:
    def __init__(self, ca: CertificateAuthority, authorizer: Authorizer | None = None) -> None:
        self.ca = ca
        # On Kubernetes, KubeAuthenticator.authorize (operator/kube_auth.py); else the rule below.
        self.authorizer = authorizer or authorize

    def sign(self, caller: Caller, body: bytes, state: ClusterState) -> CaResponse:
        """Answer one signing request: 200 with the chain, or 400/403 naming the problem."""
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, f"request body is not JSON: {exc}")
        if not isinstance(request, dict):
            return _error(400, "request body must be a JSON object with 'csr' and 'identity'")
        csr, identity_text = request.get("csr"), request.get("identity")
        if not isinstance(csr, str) or not csr.strip():
            return _error(400, "'csr' must be a PEM certificate signing request")
        if not isinstance(identity_text, str):
            return _error(400, "'identity' must be a SPIFFE ID string")
        try:
            identity = SpiffeId.parse(identity_text)
        except InvalidSpiffeId as exc:
            return _error(400, str(exc))
        lifetime = request.get("ttl_seconds", MAX_LIFETIME.total_seconds())
        if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)):
            return _error(400, "'ttl_seconds' must be a number")
        # Python's JSON parser accepts NaN and Infinity, and timedelta overflows past ~1e14 s:
        # bounds are checked on the number itself (NaN fails every comparison) before any
        # timedelta is built, so no value reaches the CA as a 500.
        if (isinstance(lifetime, float) and not math.isfinite(lifetime)) or not (
                MIN_LIFETIME.total_seconds() <= lifetime <= MAX_LIFETIME.total_seconds()):
            return _error(400, f"'ttl_seconds' must be a finite number between {MIN_LIFETIME.total_seconds():.0f} "
                               f"and {MAX_LIFETIME.total_seconds():.0f}, got {lifetime!r}"[:200])
        lifetime = dt.timedelta(seconds=lifetime)
        refusal = self.authorizer(caller, identity, state, self.ca.trust_domain)
        if refusal is not None:
            return _error(403, refusal)
        try:
            issued = self.ca.sign_csr(csr.encode(), identity, lifetime)
        except InvalidCsr as exc:
            return _error(400, str(exc))
        except IdentityError as exc:
            return _error(503, f"the CA cannot sign: {exc}")
        return CaResponse(200, {"cert_chain": [pem.decode() for pem in issued.chain_pem()]})


def authorize(caller: Caller, identity: SpiffeId, state: ClusterState, trust_domain: str) -> str | None:
    """None if `caller` may obtain `identity`, else the reason it may not."""
    if identity.trust_domain != trust_domain:
        return f"{identity} is not in this mesh's trust domain {trust_domain!r}"
    if caller.role == ROLE_WAYPOINT:
        if caller.identity != identity:
            return f"waypoint {caller.identity} may only obtain its own identity, not {identity}"
        return None
    if caller.role != ROLE_ZTUNNEL or not caller.node:
        return f"{caller.describe()} may not obtain certificates"
    for pod in state.pods(identity.namespace):
        spec = pod.get("spec")
        if not isinstance(spec, dict) or spec.get("nodeName") != caller.node:
            continue
        if (spec.get("serviceAccountName") or DEFAULT_SERVICE_ACCOUNT) != identity.service_account:
            continue
        status = pod.get("status")
        if isinstance(status, dict) and status.get("phase") in TERMINAL_PHASES:
            continue
        return None
    return (f"no running pod with service account {identity.service_account!r} in namespace "
            f"{identity.namespace!r} is on node {caller.node!r}, so its ztunnel may not obtain {identity}")
