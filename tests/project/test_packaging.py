"""The package list in pyproject.toml matches the tree (setuptools cannot find renamed folders)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = {"wisp": "wisp", "ztunnel": "ztunnel", "waypoint": "waypoint", "cni": "cni",
              "operator": "wisp_operator",
              "runtime": "runtime", "echo": "echo"}


def _packages_in_tree() -> set[str]:
    found = set()
    for folder, name in COMPONENTS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    return found


def test_every_package_in_the_tree_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert set(config["tool"]["setuptools"]["packages"]) == _packages_in_tree()


def test_operator_folder_is_imported_as_wisp_operator():
    import wisp_operator

    assert Path(wisp_operator.__file__).parent == ROOT / "operator"
