"""Build helm (`helm.sh/helm/v3`, `cmd/helm`) from the Go module proxy into the test-bed cache.

Contract:
- `build_helm()` compiles helm `HELM_VERSION` into `<cache>/<k8s version>/bin/helm`, next to kubectl,
  with the same wrapper-module recipe as `build.py` (`build.GoTool`: a module that requires helm,
  `go get -tool`, `go build -trimpath`, `CGO_ENABLED=0`, under `nice -n 10`) and writes `stamp-helm.json` after the
  binary is in place. A stamp that matches the recipe with the binary present makes `build_helm()` a
  no-op that does not need Go.
- `installed()` returns the binary's path without building; `build.MissingBinaries` (whose message
  names the command that builds it) if it is not there.
- `python -m runtime.testbed build` calls `build_helm()` after the control-plane binaries, so `./run test`
  and CI get helm the same way they get kubectl.

Version: v3.21.4, the newest helm v3 release cleared for this project's machines (v3.22.0 is on
the proxy but was not cleared); it builds against its own k8s.io modules (v0.36) beside the test
bed's v1.37 binaries, which it only talks to over the API.

Why from source and not a release tarball: the test bed builds everything it runs from the Go module
proxy (docs/testbed.md), so a fresh CI machine needs Go and the proxy and nothing else. The version
ldflags are those of helm's Makefile (`internal/version.version`, `gitCommit`, `gitTreeState`), so
`helm version` reports the release rather than `v3.x-dev`-style defaults.
"""

from __future__ import annotations

from pathlib import Path

from . import build

HELM_VERSION = "v3.21.4"
HELM_MODULE = "helm.sh/helm/v3"
HELM_COMMAND = "helm"
PART = "helm"


def _ldflags(version: str, commit: str, date: str) -> list[str]:
    return ["-X", "%s/internal/version.version=%s" % (HELM_MODULE, version),
            "-X", "%s/internal/version.gitCommit=%s" % (HELM_MODULE, commit),
            "-X", "%s/internal/version.gitTreeState=clean" % HELM_MODULE]


TOOL = build.GoTool(part=PART, module=HELM_MODULE, package=HELM_MODULE + "/cmd/helm", command=HELM_COMMAND,
                    carry_replaces=True, ldflags=_ldflags, stamp_names_module=False)


def _recipe(version: str) -> dict[str, object]:
    return TOOL.recipe(version)


def installed(helm_version: str = HELM_VERSION, k8s_version: str = build.K8S_VERSION) -> Path:
    """The cached helm binary; raises build.MissingBinaries if it is not built for this recipe."""
    directory = build.version_dir(k8s_version)
    if not TOOL.cached(directory, helm_version):
        raise TOOL.missing(directory, helm_version, "`./run testbed build` (python -m runtime.testbed build), "
                           "which needs Go and the Go module proxy")
    return TOOL.path(directory)


def build_helm(
    helm_version: str = HELM_VERSION,
    k8s_version: str = build.K8S_VERSION,
    progress: build.Progress | None = None,
) -> tuple[Path, build.PartReport | None]:
    """Build helm unless the cache has it; returns its path and the report of a build done now."""
    return TOOL.build(build.version_dir(k8s_version), helm_version, progress)
