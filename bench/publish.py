"""What every benchmark does with a finished run: save its JSON, rewrite its docs section."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "performance.md"

INTRO = """# Performance

Measured figures for wisp, each with its date and the machine it ran on. Every benchmark runs
native anchors — the same transfer without wisp's layer (plain TCP, plain TLS; each section says
what its anchors are made of) — in the same run, alternating with wisp round by round, and prints
wisp's figures as ratios to them: absolute numbers move with the machine, ratios much less.
Reproduce a section with the command it shows, run as `.venv/bin/python -m …` from the repository
root on an otherwise idle machine; raw results go to `bench/results/` (not committed).
"""


def save_results(benchmark: str, when: dt.datetime, data: dict) -> Path:
    """Write a run to bench/results/<benchmark>-<UTC time>.json; returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{benchmark}-{when:%Y-%m-%dT%H%M%SZ}.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def update_section(path: Path, heading: str, begin: str, end: str, block: str) -> None:
    """Put `block` between a section's markers; only that text is rewritten, the commentary
    around it and every other section stay. A missing page or section is created."""
    generated = f"{begin}\n{block.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else INTRO
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        text = before + generated + rest.split(end, 1)[1]
    elif heading in text:
        head, tail = text.split(heading, 1)
        text = f"{head}{heading}\n\n{generated}\n{tail}"
    else:
        text = f"{text.rstrip()}\n\n{heading}\n\n{generated}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
