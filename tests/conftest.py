"""Fixtures shared across the suite: a CA and workload certificates (made once; keys are slow).

The suite is grouped by component (tests/ztunnel, tests/cni, tests/operator, tests/hbone, …) with
shared helpers in tests/support. Markers (registered in pyproject.toml) select parts of it:
- `e2e`: a whole mesh brought up with `wisp up` (everything in tests/e2e);
- `kube`: the test bed's real API server (everything in tests/kube and tests/kube_e2e, the whole
  mesh on it: `wisp up --kubernetes` and kubectl);
- `root`: network namespaces, iptables, other uids (tests/e2e, and modules that say so). Run as
  anyone else, such a test fails with the reason rather than being skipped: deselect it with
  `-m "not root"`;
- `slow`: more than ~10 s (tests/e2e, tests/kube, and modules that say so).
`pytest -m "not slow and not root"` is the quick unprivileged run.
"""

from __future__ import annotations

import os
from pathlib import Path

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


TESTS = Path(__file__).parent
FOLDER_MARKS = {"e2e": ("e2e", "root", "slow"), "kube": ("kube", "slow"),
                "kube_e2e": ("e2e", "kube", "root", "slow")}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        folder = Path(item.fspath).relative_to(TESTS).parts[0]
        for name in FOLDER_MARKS.get(folder, ()):
            item.add_marker(name)


def pytest_runtest_setup(item) -> None:
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        pytest.fail("needs root (network namespaces, iptables, other uids): run as root, or deselect "
                    "with -m 'not root'", pytrace=False)
