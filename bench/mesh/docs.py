"""The generated part of docs/performance.md's mesh section (see bench/publish.py)."""

from __future__ import annotations

from pathlib import Path

from bench.publish import update_section

HEADING = "## The mesh on the local runtime (bench/mesh)"
BEGIN = "<!-- bench.mesh results: begin (rewritten by `bench/run --docs`) -->"
END = "<!-- bench.mesh results: end -->"


def update(path: Path, block: str) -> None:
    update_section(path, HEADING, BEGIN, END, block)
