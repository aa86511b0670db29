"""`python -m bench.reliability SCENARIO [--minutes M] [--json PATH]`: one reliability scenario.

Scenarios (bench/reliability/scenarios.py): `controlplane_down` (the control plane and CA down
for M minutes under 1,000 req/s), `ztunnel_kill` (M SIGKILLs of a ztunnel, one a minute, with the
link between the nodes captured), `rotation` (2-minute certificates for M minutes under
1,000 req/s). Each brings up a two-node mesh of its own (`wisp up`, prefix wisp-r<random>),
always takes it down, prints its figure and exits 0 if every goal held, 1 if not. Run the full
ones (M = 10) alone on the machine: `flock /tmp/wisp-bench.lock .venv/bin/python -m
bench.reliability rotation`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .harness import log
from .scenarios import SCENARIOS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="length of the outage, the number of kills, or the rotation run (default 10)")
    parser.add_argument("--json", type=Path, help="also write the whole result there")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("the scenarios build network namespaces: run as root")
    if not 0 < args.minutes <= 60:
        parser.error("--minutes must be above 0 and at most 60")
    result = SCENARIOS[args.scenario](args.minutes)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    log("passed" if result["passed"] else "FAILED")
    print(result["figure"])
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
