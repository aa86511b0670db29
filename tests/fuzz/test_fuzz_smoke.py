"""The fuzz smoke: every target of fuzz/targets.py run briefly, as part of the test suite.

With atheris installed (the `fuzz` extra, which ./run installs) each target runs for its
`smoke_runs` (2,000; fewer for the YAML targets) coverage-guided inputs in a process of its own (`python -m fuzz TARGET --runs N`, libFuzzer's
1 s per-input timeout and RSS limit on): a crash, hang or memory blow-up fails the test with
libFuzzer's report. Without atheris, each target replays its seed corpus and `smoke_runs` inputs
mutated from it with a fixed seed, in this process. The long runs (1,000,000 inputs per target)
are in docs/reliability.md.
"""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.targets import TARGETS

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "fuzz" / "corpus"
HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None


def mutate(rng: random.Random, data: bytes, max_len: int) -> bytes:
    """A few byte-level edits of the kinds libFuzzer makes (flip, insert, erase, duplicate)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2:
            del buf[pos:pos + rng.randint(1, 16)]
        else:
            buf[pos:pos] = buf[pos:pos + rng.randint(1, 64)]
    return bytes(buf[:max_len])


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target_survives_a_short_run(name):
    target = TARGETS[name]
    runs = target.smoke_runs
    seeds = sorted((CORPUS / name).iterdir())
    assert seeds, f"no seed corpus for {name}; run `python -m fuzz record`"
    if HAVE_ATHERIS:
        # A fixed seed: the suite's verdict must not depend on the draw (long runs explore freely,
        # and what they find becomes a regression test).
        result = subprocess.run([sys.executable, "-m", "fuzz", name, "--runs", str(runs), "--seed", "1"], cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-4000:]
        assert f"Done {runs} runs" in result.stderr
        return
    run = target.setup()
    rng = random.Random(name)
    inputs = [path.read_bytes() for path in seeds]
    for data in inputs:
        run(data)
    for _ in range(runs):
        run(mutate(rng, rng.choice(inputs), target.max_len))
