"""Coverage-guided fuzzing of every parser that takes bytes from outside (atheris, libFuzzer).

`python -m fuzz list` names the targets (fuzz/targets.py), `python -m fuzz TARGET --runs N` runs
one, `python -m fuzz record` rewrites the seed corpora in fuzz/corpus/ from real peers
(fuzz/record.py). tests/fuzz/test_fuzz_smoke.py runs every target briefly in the test suite.
Not an installed package: run it from the repository root. Results are in docs/reliability.md.
"""
