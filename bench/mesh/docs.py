"""Keep the generated part of docs/performance.md's mesh section current.

Only the text between the markers is rewritten; the commentary around it, and every other
section, stays as it is. A missing section is appended at the end of the page.
"""

from __future__ import annotations

from pathlib import Path

HEADING = "## The mesh on the local runtime (bench/mesh)"
BEGIN = "<!-- bench.mesh results: begin (rewritten by `bench/run --docs`) -->"
END = "<!-- bench.mesh results: end -->"


def update(path: Path, block: str) -> None:
    generated = f"{BEGIN}\n{block.rstrip()}\n{END}"
    text = path.read_text()
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        text = before + generated + rest.split(END, 1)[1]
    else:
        text = f"{text.rstrip()}\n\n{HEADING}\n\n{generated}\n"
    path.write_text(text)
