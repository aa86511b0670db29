"""Build Jaeger v2 (`github.com/jaegertracing/jaeger/cmd/jaeger`) from the Go module proxy, cached by version.

Contract:
- `build_jaeger()` compiles the `cmd/jaeger` package of `github.com/jaegertracing/jaeger` at
  `JAEGER_VERSION` into `<cache>/jaeger/<version>/bin/jaeger` (`<cache>` as in `build.py`:
  `$WISP_TESTBED_CACHE`, else `/var/cache/wisp-testbed`) and returns its path with what the build
  cost (None when it was cached). A stamp written after the binary is in place makes a second call
  a no-op that needs no Go.
- `installed()` returns the path without building; `build.MissingBinaries` says how to build it.
- `python -m runtime.testbed build` (so `./run test` and CI) builds it after the control-plane binaries.

Jaeger v2 is an OpenTelemetry Collector distribution: one binary with an OTLP receiver (gRPC 4317,
HTTP 4318), an in-memory store and the query service (HTTP API on 16686). The waypoint's tracing
e2e test (`tests/e2e/test_waypoint_tracing.py`) runs it with its own config file on addresses it
chooses. v1.75.0 is the release cleared for this project's machines (newer ones are on the proxy
but not cleared). The recipe is the test bed's wrapper module (`build.GoTool`: `go get -tool`, `go build -trimpath`,
`CGO_ENABLED=0`, `nice -n 10`), with jaeger's own replace directives carried into the wrapper.
"""

from __future__ import annotations

from pathlib import Path

from . import build

JAEGER_MODULE = "github.com/jaegertracing/jaeger"
JAEGER_VERSION = "v1.75.0"
PACKAGE = JAEGER_MODULE + "/cmd/jaeger"
COMMAND = "jaeger"


def _ldflags(version: str, commit: str, date: str) -> list[str]:
    # Jaeger's Makefile (scripts/makefiles/BuildInfo.mk) stamps these; without them the binary
    # reports version 0.0.0.
    version_pkg = JAEGER_MODULE + "/internal/version"
    return ["-X", "%s.commitSHA=%s" % (version_pkg, commit),
            "-X", "%s.latestVersion=%s" % (version_pkg, version),
            "-X", "%s.date=%s" % (version_pkg, date)]


TOOL = build.GoTool(part=COMMAND, module=JAEGER_MODULE, package=PACKAGE, command=COMMAND,
                    carry_replaces=True, ldflags=_ldflags)


def directory(version: str = JAEGER_VERSION) -> Path:
    return build.cache_root() / "jaeger" / version


def installed(version: str = JAEGER_VERSION) -> Path:
    """The cached jaeger binary; raises build.MissingBinaries if it is not built."""
    if not TOOL.cached(directory(version), version):
        raise TOOL.missing(directory(version), version, "`./run testbed build` (python -m runtime.testbed build), "
                           "which needs Go and the Go module proxy")
    return TOOL.path(directory(version))


def build_jaeger(
    version: str = JAEGER_VERSION, progress: build.Progress | None = None
) -> tuple[Path, build.PartReport | None]:
    """Build jaeger unless its stamp matches; returns its path and the report of a build done now."""
    return TOOL.build(directory(version), version, progress)
