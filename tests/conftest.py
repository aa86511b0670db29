"""Fixtures shared across the suite: a CA and workload certificates (made once; keys are slow)."""

from __future__ import annotations

import os

import pytest

from wisp import log
from wisp.identity import CertificateAuthority, SpiffeId

TRUST_DOMAIN = "cluster.local"

# Every configure() in this process (the CLI and proxy mains tests call) leaves loggers uncached,
# so `structlog.testing.capture_logs` sees them whichever test used them first.
os.environ["WISP_LOG_CACHE"] = "0"
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
