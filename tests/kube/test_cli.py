"""`python -m runtime.testbed`: bad arguments get a usage error (exit 2), missing binaries a clear one (1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.testbed import build
from runtime.testbed import __main__ as cli
from runtime.testbed.__main__ import main


@pytest.fixture(autouse=True)
def keep_the_suites_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    # main() configures structlog for its process; inside the test run that would be global.
    monkeypatch.setattr(cli.log, "configure", lambda *args, **kwargs: None)


@pytest.mark.parametrize("argv, words", [
    ([], "required: command"),
    (["launch"], "invalid choice: 'launch'"),
    (["up", "--nodes", "many"], "'many' is not a whole number"),
    (["up", "--nodes", "500"], "between 0 and 200"),
    (["up", "--timeout", "0"], "the timeout must be positive"),
])
def test_bad_arguments_are_a_usage_error(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert words in capsys.readouterr().err


def test_up_without_binaries_says_how_to_build_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    assert main(["up"]) == 1
    assert "./run testbed build" in capsys.readouterr().err


def test_env_prints_the_cache_and_says_when_nothing_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "export WISP_TESTBED_CACHE=%s" % tmp_path in out
