"""How the `wisp` cluster commands print: kubectl/istioctl tables (`-o short`, the default), or the
same rows as JSON or YAML (`-o json|yaml`) for scripts."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import yaml

FORMATS = ("short", "json", "yaml")


def add_output_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=FORMATS, default="short",
                        help="short (a table, the default), json or yaml")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, one space apart, as istioctl's tabwriter prints them."""
    lines = [list(header), *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(" ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip()
                     for line in lines) + "\n"


def structured(data: Any, form: str, out: TextIO = sys.stdout) -> None:
    if form == "json":
        out.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    else:
        out.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
