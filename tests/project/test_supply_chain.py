"""The image installs exactly the locked dependencies: every runtime requirement of pyproject.toml
is pinned in deploy/requirements.lock with hashes, and deploy/Dockerfile installs the lock with
--require-hashes before wisp itself with --no-deps (docs/reliability.md, supply chain)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _locked() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) from the pip-compile output."""
    text = (REPO / "deploy" / "requirements.lock").read_text()
    pins: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9_.-]+)==([^ \\\n]+)", block)
        if match:
            pins[_norm(match.group(1))] = (match.group(2), block.count("--hash=sha256:"))
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_runtime_dependency_is_pinned_with_hashes():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    locked = _locked()
    for requirement in project["dependencies"]:
        name = _norm(re.match(r"[A-Za-z0-9_.-]+", requirement).group(0))
        assert name in locked, f"{name} is not in deploy/requirements.lock; regenerate it (docs/reliability.md)"
    assert all(hashes > 0 for _, hashes in locked.values()), "a pin without --hash"


def test_the_image_installs_the_lock_with_required_hashes_and_wisp_without_dependencies():
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert "--require-hashes" in dockerfile and "requirements.lock" in dockerfile
    install_wisp = [line for line in dockerfile.splitlines() if "pip install" in line and line.rstrip().endswith(" .")]
    assert install_wisp and all("--no-deps" in line for line in install_wisp)
