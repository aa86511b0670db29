"""`python -m fuzz`: run one fuzz target under atheris (libFuzzer), or replay its corpus without it.

    python -m fuzz list                          the targets
    python -m fuzz TARGET [--runs N] [--max-time S] [--rss-limit-mb M] [--timeout S] [--work DIR]
    python -m fuzz TARGET --replay               every corpus file once, without atheris
    python -m fuzz record [TARGET ...]           rewrite the seed corpora (fuzz/record.py)
    python -m fuzz record-live [TARGET ...]      add seeds captured live (fuzz/record_live.py): the
                                                 test bed's API server (admission, jwt), libcni (cni)

A run starts from the target's seed corpus in fuzz/corpus/TARGET (left as it is: what the fuzzer
adds goes to a temporary directory) and stops after N inputs; an input that raises, takes longer
than the timeout (1 s) or pushes the process over the RSS limit (1024 MiB) is a failure, written
to fuzz/crashes/ and reported with a non-zero exit. libFuzzer's last line says how many inputs
ran ("Done N runs in S second(s)").

`--work DIR` keeps what the fuzzer adds in DIR instead of a temporary directory, so a long
campaign can run in parts (each its own process, e.g. between other jobs on a shared machine)
and each part starts from the coverage the previous ones reached.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .targets import TARGETS

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
CRASHES = HERE / "crashes"


def replay(name: str) -> int:
    """Every corpus file through the target once; the number of inputs run."""
    run = TARGETS[name].setup()
    count = 0
    for path in sorted((CORPUS / name).iterdir()):
        run(path.read_bytes())
        count += 1
    return count


def fuzz(name: str, runs: int, rss_limit_mb: int, timeout: int, max_time: int = 0, seed: int = 0,
         work: str | None = None) -> None:
    import atheris

    target = TARGETS[name]
    # Coverage from the packages the target names (fuzz/targets.py Target.instrumented).
    with atheris.instrument_imports(include=list(target.instrumented)):
        run = target.setup()
    CRASHES.mkdir(exist_ok=True)
    if work is None:
        work = tempfile.mkdtemp(prefix=f"wisp-fuzz-{name}-")
    else:
        Path(work).mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], work, str(CORPUS / name), f"-runs={runs}", f"-rss_limit_mb={rss_limit_mb}",
            f"-timeout={timeout}", f"-max_len={target.max_len}", f"-artifact_prefix={CRASHES}/{name}-",
            "-print_final_stats=1"] + ([f"-max_total_time={max_time}"] if max_time else []) \
        + ([f"-seed={seed}"] if seed else [])
    atheris.Setup(argv, run)
    atheris.Fuzz()   # exits the process: 0 when every run passed


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("target", help="a target name, 'list', 'record' or 'record-live'")
    parser.add_argument("names", nargs="*", help="after 'record' or 'record-live': the targets (default: all)")
    parser.add_argument("--runs", type=int, default=10_000, help="inputs to run (default 10000)")
    parser.add_argument("--rss-limit-mb", type=int, default=1024)
    parser.add_argument("--timeout", type=int, default=1, help="seconds one input may take")
    parser.add_argument("--max-time", type=int, default=0, help="stop after this many seconds (0: no limit)")
    parser.add_argument("--seed", type=int, default=0,
                        help="libFuzzer's random seed (0: a new one each run; the test suite's smoke fixes it)")
    parser.add_argument("--replay", action="store_true", help="run the corpus once without atheris")
    parser.add_argument("--work", help="directory for the inputs the fuzzer adds, kept across runs (default: a new temporary one)")
    args = parser.parse_args()
    if args.target == "list":
        for target in TARGETS.values():
            print(f"{target.name:16} {target.description}")
        return
    if args.target == "record":
        from .record import record_all
        record_all(CORPUS, args.names)
        return
    if args.target == "record-live":
        from .record_live import record_live
        record_live(CORPUS, args.names)
        return
    if args.names:
        parser.error("only 'record' and 'record-live' take target names")
    if args.target not in TARGETS:
        parser.error(f"unknown target {args.target!r}; `python -m fuzz list` names them")
    if args.replay:
        print(f"{args.target}: {replay(args.target)} corpus inputs passed")
        return
    fuzz(args.target, args.runs, args.rss_limit_mb, args.timeout, args.max_time, args.seed, args.work)


if __name__ == "__main__":
    main()
