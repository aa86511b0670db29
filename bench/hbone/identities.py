"""The benchmark's workload identities: one CA, a server and a client certificate, as PEM.

PEM crosses the process boundary; each process rebuilds its CertBundle from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from wisp.identity import CertBundle, CertificateAuthority, SpiffeId, load_bundle

TRUST_DOMAIN = "cluster.local"
SERVER_ID = SpiffeId(TRUST_DOMAIN, "bench", "server")
CLIENT_ID = SpiffeId(TRUST_DOMAIN, "bench", "client")


@dataclass(slots=True, frozen=True)
class Pem:
    key: bytes
    chain: bytes
    roots: bytes

    def bundle(self) -> CertBundle:
        return load_bundle(self.key, self.chain, self.roots)


def issue() -> tuple[Pem, Pem]:
    """(server, client) certificates from a fresh CA."""
    ca = CertificateAuthority.generate(TRUST_DOMAIN)
    server, client = ca.issue(SERVER_ID), ca.issue(CLIENT_ID)
    return (
        Pem(server.key_pem, server.chain_pem, server.roots_pem),
        Pem(client.key_pem, client.chain_pem, client.roots_pem),
    )
