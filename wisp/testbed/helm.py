"""Build helm (`helm.sh/helm/v3`, `cmd/helm`) from the Go module proxy into the test-bed cache.

Contract:
- `build_helm()` compiles helm `HELM_VERSION` into `<cache>/<k8s version>/bin/helm`, next to kubectl,
  with the same wrapper-module recipe as `build.py` (a module that requires helm, `go get -tool`,
  `go build -trimpath`, `CGO_ENABLED=0`, under `nice -n 10`) and writes `stamp-helm.json` after the
  binary is in place. A stamp that matches the recipe with the binary present makes `build_helm()` a
  no-op that does not need Go.
- `installed()` returns the binary's path without building; `build.MissingBinaries` (whose message
  names the command that builds it) if it is not there.
- `python -m wisp.testbed build` calls `build_helm()` after the control-plane binaries, so `./run test`
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

import time
from pathlib import Path

from . import build

HELM_VERSION = "v3.21.4"
HELM_MODULE = "helm.sh/helm/v3"
HELM_COMMAND = "helm"
PART = "helm"


def _recipe(version: str) -> dict[str, object]:
    return {"recipe": build.RECIPE, "version": version}


def installed(helm_version: str = HELM_VERSION, k8s_version: str = build.K8S_VERSION) -> Path:
    """The cached helm binary; raises build.MissingBinaries if it is not built for this recipe."""
    directory = build.version_dir(k8s_version)
    if not build._stamp_matches(directory, PART, _recipe(helm_version), (HELM_COMMAND,)):
        raise build.MissingBinaries(
            "helm %s is not built in %s; build it with `./run testbed build` "
            "(python -m wisp.testbed build), which needs Go and the Go module proxy"
            % (helm_version, directory / "bin")
        )
    return directory / "bin" / HELM_COMMAND


def build_helm(
    helm_version: str = HELM_VERSION,
    k8s_version: str = build.K8S_VERSION,
    progress: build.Progress | None = None,
) -> tuple[Path, build.PartReport | None]:
    """Build helm unless the cache has it; returns its path and the report of a build done now."""
    say = progress or (lambda message: None)
    directory = build.version_dir(k8s_version)
    if build._stamp_matches(directory, PART, _recipe(helm_version), (HELM_COMMAND,)):
        say("helm %s: cached" % helm_version)
        return directory / "bin" / HELM_COMMAND, None
    try:
        (directory / "bin").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise build.BuildError(
            "cannot create the test-bed cache %s (%s); set %s to a writable directory"
            % (directory, error, build.CACHE_ENV)
        ) from error
    return directory / "bin" / HELM_COMMAND, _build(directory, helm_version, say)


def _build(directory: Path, version: str, say: build.Progress) -> build.PartReport:
    go_version = build._go_version()
    usage = build._Usage()
    started = time.monotonic()
    module_dir = directory / "modules" / "helm"
    build._fresh_module(module_dir, "wisp.testbed/helm")
    say("helm %s: downloading %s" % (version, HELM_MODULE))
    info = build._download(HELM_MODULE, version, module_dir, say, usage)
    go_mod_path = info.get("GoMod")
    if isinstance(go_mod_path, str):
        # Replaces in a dependency's go.mod are ignored by Go; carry them into the wrapper as the
        # kubernetes build does, so helm builds against what its authors built it against.
        extra = build.other_replaces(Path(go_mod_path).read_text())
        if extra:
            with (module_dir / "go.mod").open("a") as handle:
                handle.write("\nreplace (\n%s)\n" % "".join("\t%s\n" % line for line in extra))
    package = "%s/cmd/helm" % HELM_MODULE
    say("helm %s: resolving dependencies" % version)
    build._run_go(["get", "-tool", "%s@%s" % (package, version)], module_dir, "go get (helm)", say, usage)
    commit, _ = build._origin(info)
    ldflags = " ".join([
        "-s", "-w",
        "-X", "%s/internal/version.version=%s" % (HELM_MODULE, version),
        "-X", "%s/internal/version.gitCommit=%s" % (HELM_MODULE, commit),
        "-X", "%s/internal/version.gitTreeState=clean" % HELM_MODULE,
    ])
    built = module_dir / "out"
    built.mkdir()
    say("helm %s: compiling" % version)
    build._run_go(
        ["build", "-mod=mod", "-trimpath", "-ldflags", ldflags, "-o", str(built / HELM_COMMAND), package],
        module_dir,
        "go build (helm)",
        say,
        usage,
    )
    report = build._finish(directory, PART, version, _recipe(version), built, (HELM_COMMAND,), started, usage,
                           go_version)
    say("helm %s: built in %.1f min" % (version, report.seconds / 60))
    return report
