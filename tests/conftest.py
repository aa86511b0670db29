"""Fixtures shared across the suite: a CA and workload certificates (made once; keys are slow)."""

from __future__ import annotations

import pytest

from wisp import log
from wisp.identity import CertificateAuthority, SpiffeId

TRUST_DOMAIN = "cluster.local"

log.configure("info", json=False)


@pytest.fixture(scope="session")
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate(TRUST_DOMAIN)


@pytest.fixture(scope="session")
def other_ca() -> CertificateAuthority:
    """A CA nobody in the mesh trusts."""
    return CertificateAuthority.generate(TRUST_DOMAIN, organization="elsewhere")


def spiffe(ns: str, sa: str) -> SpiffeId:
    return SpiffeId(TRUST_DOMAIN, ns, sa)
