"""The generated part of docs/performance.md's HBONE section (see bench/publish.py)."""

from __future__ import annotations

from pathlib import Path

from bench.publish import update_section

HEADING = "## HBONE on loopback (bench/hbone)"
BEGIN = "<!-- bench.hbone results: begin (rewritten by `python -m bench.hbone --docs`) -->"
END = "<!-- bench.hbone results: end -->"


def update(path: Path, block: str) -> None:
    update_section(path, HEADING, BEGIN, END, block)
