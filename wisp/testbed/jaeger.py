"""Build Jaeger v2 (`github.com/jaegertracing/jaeger/cmd/jaeger`) from the Go module proxy, cached by version.

Contract:
- `build_jaeger()` compiles the `cmd/jaeger` package of `github.com/jaegertracing/jaeger` at
  `JAEGER_VERSION` into `<cache>/jaeger/<version>/bin/jaeger` (`<cache>` as in `build.py`:
  `$WISP_TESTBED_CACHE`, else `/var/cache/wisp-testbed`) and returns its path with what the build
  cost (None when it was cached). A stamp written after the binary is in place makes a second call
  a no-op that needs no Go.
- `installed()` returns the path without building; `build.MissingBinaries` says how to build it.
- `python -m wisp.testbed build` (so `./run test` and CI) builds it after the control-plane binaries.

Jaeger v2 is an OpenTelemetry Collector distribution: one binary with an OTLP receiver (gRPC 4317,
HTTP 4318), an in-memory store and the query service (HTTP API on 16686). The waypoint's tracing
e2e test (`tests/e2e/test_waypoint_tracing.py`) runs it with its own config file on addresses it
chooses. v1.75.0 is the release cleared for this project's machines (newer ones are on the proxy
but not cleared). The recipe is the test bed's wrapper module (`go get -tool`, `go build -trimpath`,
`CGO_ENABLED=0`, `nice -n 10`) through `build.py`'s Go helpers, unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import build

JAEGER_MODULE = "github.com/jaegertracing/jaeger"
JAEGER_VERSION = "v1.75.0"
PACKAGE = JAEGER_MODULE + "/cmd/jaeger"
COMMAND = "jaeger"


def directory(version: str = JAEGER_VERSION) -> Path:
    return build.cache_root() / "jaeger" / version


def _recipe(version: str) -> dict[str, object]:
    return {"recipe": build.RECIPE, "module": JAEGER_MODULE, "version": version}


def installed(version: str = JAEGER_VERSION) -> Path:
    """The cached jaeger binary; raises build.MissingBinaries if it is not built."""
    where = directory(version)
    if not build._stamp_matches(where, COMMAND, _recipe(version), (COMMAND,)):
        raise build.MissingBinaries(
            "jaeger %s is not built in %s; build it with `./run testbed build` "
            "(python -m wisp.testbed build), which needs Go and the Go module proxy" % (version, where)
        )
    return where / "bin" / COMMAND


def build_jaeger(
    version: str = JAEGER_VERSION, progress: build.Progress | None = None
) -> tuple[Path, build.PartReport | None]:
    """Build jaeger unless its stamp matches; returns its path and the report of a build done now."""
    say = progress or (lambda message: None)
    where = directory(version)
    if build._stamp_matches(where, COMMAND, _recipe(version), (COMMAND,)):
        say("jaeger %s: cached" % version)
        return where / "bin" / COMMAND, None
    try:
        (where / "bin").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise build.BuildError(
            "cannot create the jaeger cache %s (%s); set %s to a writable directory"
            % (where, error, build.CACHE_ENV)
        ) from error
    go_version = build._go_version()
    usage = build._Usage()
    started = time.monotonic()
    module_dir = where / "modules" / COMMAND
    build._fresh_module(module_dir, "wisp.testbed/jaeger")
    say("jaeger %s: downloading %s" % (version, JAEGER_MODULE))
    info = build._download(JAEGER_MODULE, version, module_dir, say, usage)
    go_mod_path = info.get("GoMod")
    if isinstance(go_mod_path, str):
        # Replaces in a dependency's go.mod are ignored by Go; carry them into the wrapper so jaeger
        # builds against what its authors built it against.
        extra = build.other_replaces(Path(go_mod_path).read_text())
        if extra:
            with (module_dir / "go.mod").open("a") as handle:
                handle.write("\nreplace (\n%s)\n" % "".join("\t%s\n" % line for line in extra))
    say("jaeger %s: resolving dependencies" % version)
    build._run_go(["get", "-tool", "%s@%s" % (PACKAGE, version)], module_dir, "go get (jaeger)", say, usage)
    commit, when = build._origin(info)
    # Jaeger's Makefile (scripts/makefiles/BuildInfo.mk) stamps these; without them the binary
    # reports version 0.0.0.
    version_pkg = JAEGER_MODULE + "/internal/version"
    ldflags = " ".join([
        "-s", "-w",
        "-X", "%s.commitSHA=%s" % (version_pkg, commit),
        "-X", "%s.latestVersion=%s" % (version_pkg, version),
        "-X", "%s.date=%s" % (version_pkg, when),
    ])
    built = module_dir / "out"
    built.mkdir()
    say("jaeger %s: compiling" % version)
    build._run_go(
        ["build", "-mod=mod", "-trimpath", "-ldflags", ldflags, "-o", str(built / COMMAND), PACKAGE],
        module_dir,
        "go build (jaeger)",
        say,
        usage,
    )
    report = build._finish(where, COMMAND, version, _recipe(version), built, (COMMAND,), started, usage, go_version)
    say("jaeger %s: built in %.1f min" % (version, report.seconds / 60))
    return where / "bin" / COMMAND, report
