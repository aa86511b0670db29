"""Who is at the other end of an HBONE connection: the pool's key, and each side's identity checks.

Both checks run after the TLS 1.3 handshake, on the peer's verified certificate chain:
- the client (`check_peer`) requires ALPN h2 and a server presenting one of the SPIFFE identities
  the routing decision expected (the destination workload's, or its waypoint's);
- the server (`check_client`) requires a SPIFFE identity in its own trust domain; a refusal is
  sent to the client in a GOAWAY (INADEQUATE_SECURITY) by the server that calls it.
Each returns the reason as text a person can act on, never raises for a bad peer.
"""

from __future__ import annotations

import ssl
from collections.abc import Collection
from dataclasses import dataclass

from wisp.identity.errors import InvalidSpiffeId
from wisp.identity.spiffe import SpiffeId


@dataclass(slots=True, frozen=True)
class PoolKey:
    """What makes two CONNECTs share a connection (ztunnel's WorkloadKey): who asks, whom it
    expects to reach, where, and from which source IP."""

    src_identity: SpiffeId
    dst_identities: frozenset[SpiffeId]
    dst: tuple[str, int]
    src_ip: str | None = None


def spiffe_ids_of_tls(tls: ssl.SSLObject | ssl.SSLSocket) -> list[SpiffeId]:
    """The SPIFFE IDs of the peer's verified leaf certificate, in SAN order ([] if it sent none).

    The ssl module's decoding of the certificate OpenSSL verified (both sides require one),
    so no X.509 library is loaded into the proxy for it; URIs that are not SPIFFE IDs are
    skipped, as `certs.spiffe_ids_of` skips them.
    """
    ids = []
    for kind, value in (tls.getpeercert() or {}).get("subjectAltName", ()):
        if kind == "URI":
            try:
                ids.append(SpiffeId.parse(value))
            except InvalidSpiffeId:
                continue
    return ids


def check_peer(tls: ssl.SSLObject | ssl.SSLSocket, where: str, expected: Collection[SpiffeId]) -> str | None:
    """Why the server we reached at `where` is not the one we meant (None: it is)."""
    if tls.selected_alpn_protocol() != "h2":
        return f"HBONE peer {where} did not negotiate ALPN h2"
    presented = spiffe_ids_of_tls(tls)
    if not any(identity in expected for identity in presented):
        shown = ", ".join(map(str, presented)) or "no SPIFFE identity"
        wanted = ", ".join(sorted(map(str, expected))) or "nothing"
        return f"HBONE peer {where} presented {shown}; expected one of {wanted}"
    return None


def check_client(tls: ssl.SSLObject | ssl.SSLSocket, trust_domain: str) -> tuple[SpiffeId | None, str | None]:
    """(the client's identity, None) when a server in `trust_domain` may serve it, else
    (None, why not)."""
    try:
        presented = spiffe_ids_of_tls(tls)
    except ValueError as exc:
        return None, f"client certificate: {exc}"
    if not presented:
        return None, "client certificate: it has no SPIFFE URI SAN"
    identity = presented[0]
    if identity.trust_domain != trust_domain:
        return None, f"client identity {identity} is not in trust domain {trust_domain!r}"
    return identity, None
