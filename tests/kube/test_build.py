"""The build recipe: the wrapper module's replaces come from kubernetes' own go.mod, a warm cache is a
no-op that needs no Go, and missing binaries are reported with the command that builds them.
These tests need neither Go nor the built binaries.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.testbed import build

GO_MOD = """module k8s.io/kubernetes

go 1.26.0

require (
\tk8s.io/api v0.0.0
\tgithub.com/spf13/cobra v1.10.2
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/apimachinery => ./staging/src/k8s.io/apimachinery
\tk8s.io/client-go v0.0.0 => ./staging/src/k8s.io/client-go
)

replace github.com/example/fork => github.com/example/fork v1.2.3
"""


def test_every_staging_replace_becomes_the_published_release() -> None:
    assert build.staging_replaces(GO_MOD, "v0.37.2") == [
        ("k8s.io/api", "v0.37.2"), ("k8s.io/apimachinery", "v0.37.2"), ("k8s.io/client-go", "v0.37.2"),
    ]


def test_other_replaces_are_kept_as_written() -> None:
    assert build.other_replaces(GO_MOD) == ["github.com/example/fork => github.com/example/fork v1.2.3"]


def test_a_version_that_is_not_a_release_is_refused_before_go_runs() -> None:
    with pytest.raises(build.BuildError, match="v1.MINOR.PATCH"):
        build._staging_version("master")


def _fake_cache(root: Path, etcd_version: str = build.ETCD_VERSION) -> Path:
    directory = root / build.K8S_VERSION
    (directory / "bin").mkdir(parents=True)
    for name in (*build.KUBE_COMMANDS, build.ETCD_COMMAND):
        (directory / "bin" / name).write_text("")
    for part, recipe in (("kubernetes", build._kube_recipe(build.K8S_VERSION)),
                         ("etcd", build._etcd_recipe(etcd_version))):
        (directory / ("stamp-%s.json" % part)).write_text(json.dumps({"recipe": recipe, "report": {"part": part}}))
    return directory


def test_a_warm_cache_is_reused_without_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = _fake_cache(tmp_path)
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "no-go-here"))
    said: list[str] = []
    binaries, built = build.build(progress=said.append)
    assert built == []
    assert binaries.directory == directory / "bin"
    assert binaries.etcd_version == build.ETCD_VERSION
    assert said == ["etcd: cached (%s)" % build.ETCD_VERSION, "kubernetes %s: cached" % build.K8S_VERSION]


def test_the_etcd_fallback_version_counts_as_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cache(tmp_path, etcd_version=build.ETCD_FALLBACK_VERSION)
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "no-go-here"))
    binaries, built = build.build()
    assert built == [] and binaries.etcd_version == build.ETCD_FALLBACK_VERSION


def test_a_stamp_of_another_recipe_means_rebuild_and_go_is_asked_for(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    directory = _fake_cache(tmp_path)
    stamp = directory / "stamp-kubernetes.json"
    stamp.write_text(json.dumps({"recipe": {"recipe": 0}}))
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "no-go-here"))
    with pytest.raises(build.BuildError, match="Go is not installed"):
        build.build()


def test_missing_binaries_say_how_to_build_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    with pytest.raises(build.MissingBinaries, match=r"\./run testbed build") as raised:
        build.installed()
    assert "kube-apiserver" in str(raised.value) and str(tmp_path) in str(raised.value)


def test_an_unwritable_cache_is_reported_with_the_variable_to_set(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(build.CACHE_ENV, str(blocker))
    with pytest.raises(build.BuildError, match=build.CACHE_ENV):
        build.build()
