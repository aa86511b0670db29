"""What the proxies logged during a phase: their warnings and errors, counted by event and reason.

ztunnel logs structlog JSON lines (wisp/log.py) to its runtime log file (workers' lines go to the
same file). A phase notes each file's size before it starts (`Marks`) and afterwards counts the
new lines at warning level or above by (event, error), so a failed connection in the storm comes
with ztunnel's own reason for it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

LEVELS = frozenset({"warning", "error", "critical", "exception"})
REASON_CHARS = 120


def count(lines: list[str]) -> Counter[tuple[str, str, str]]:
    """(level, event, error or reason) of every warning-or-worse JSON line; other lines are skipped."""
    out: Counter[tuple[str, str, str]] = Counter()
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict) or event.get("level") not in LEVELS:
            continue
        reason = str(event.get("error") or event.get("reason") or "")[:REASON_CHARS]
        out[(event["level"], str(event.get("event", "?")), reason)] += 1
    return out


class Marks:
    """Sizes of log files at one moment; `since` reads what each gained after it."""

    def __init__(self, paths: list[Path]) -> None:
        self.sizes = {p: (p.stat().st_size if p.exists() else 0) for p in paths}

    def since(self) -> list[dict]:
        counted: Counter[tuple[str, str, str]] = Counter()
        for path, size in self.sizes.items():
            if not path.exists():
                continue
            with open(path, "rb") as f:
                f.seek(size)
                counted += count(f.read().decode(errors="replace").splitlines())
        return [{"level": level, "event": event, "reason": reason, "count": n}
                for (level, event, reason), n in counted.most_common()]
