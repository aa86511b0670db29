"""Keep the generated part of docs/performance.md's HBONE section current.

Only the text between the markers is rewritten; the commentary written around it by hand stays.
"""

from __future__ import annotations

from pathlib import Path

HEADING = "## HBONE on loopback (bench/hbone)"
BEGIN = "<!-- bench.hbone results: begin (rewritten by `python -m bench.hbone --docs`) -->"
END = "<!-- bench.hbone results: end -->"

INTRO = """# Performance

Measured figures for wisp, each with its date and the machine it ran on. Every benchmark runs
native anchors — the same transfer without wisp's layer (plain TCP, plain TLS; each section says
what its anchors are made of) — in the same run, alternating with wisp round by round, and prints
wisp's figures as ratios to them: absolute numbers move with the machine, ratios much less.
Reproduce a section with the command it shows, run as `.venv/bin/python -m …` from the repository
root on an otherwise idle machine; raw results go to `bench/results/` (not committed).
"""


def update(path: Path, block: str) -> None:
    """Put `block` between the markers of the HBONE section, creating what is missing."""
    generated = f"{BEGIN}\n{block.rstrip()}\n{END}"
    text = path.read_text() if path.exists() else INTRO
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
        text = before + generated + after
    elif HEADING in text:
        head, tail = text.split(HEADING, 1)
        text = f"{head}{HEADING}\n\n{generated}\n{tail}"
    else:
        text = f"{text.rstrip()}\n\n{HEADING}\n\n{generated}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
