"""Build `cnitool`, the CNI project's reference runtime, from the Go module proxy, cached by version.

Contract:
- `build_cnitool()` compiles the `cnitool` package of `github.com/containernetworking/cni` at
  `CNI_VERSION` into `<cache>/cnitool/<version>/bin/cnitool` (`<cache>` as in `build.py`:
  `$WISP_TESTBED_CACHE`, else `/var/cache/wisp-testbed`) and returns its path with what the build
  cost (None when it was cached). A stamp written after the binary is in place makes a second
  call a no-op that needs no Go.
- `installed()` returns the path without building; `build.MissingBinaries` says how to build it.

cnitool is a package of the `cni` module itself (not a module of its own: the proxy has no
`.../cni/cnitool` module), so the wrapper module requires `github.com/containernetworking/cni` and
builds `github.com/containernetworking/cni/cnitool`. It uses `build.py`'s Go helpers (nice, own
session, memory sampling, atomic install, stamps) unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import build

CNI_MODULE = "github.com/containernetworking/cni"
CNI_VERSION = "v1.3.0"
PACKAGE = CNI_MODULE + "/cnitool"
COMMAND = "cnitool"


def directory(version: str = CNI_VERSION) -> Path:
    return build.cache_root() / "cnitool" / version


def _recipe(version: str) -> dict[str, object]:
    return {"recipe": build.RECIPE, "module": CNI_MODULE, "version": version}


def installed(version: str = CNI_VERSION) -> Path:
    """The cached cnitool; raises build.MissingBinaries if it is not built."""
    where = directory(version)
    if not build._stamp_matches(where, COMMAND, _recipe(version), (COMMAND,)):
        raise build.MissingBinaries(
            "cnitool %s is not built in %s; build it with "
            "`python -c 'from wisp.testbed import cnitool; cnitool.build_cnitool()'` "
            "(needs Go and the Go module proxy; 9 s cold, measured here)" % (version, where)
        )
    return where / "bin" / COMMAND


def build_cnitool(
    version: str = CNI_VERSION, progress: build.Progress | None = None
) -> tuple[Path, build.PartReport | None]:
    """Build cnitool unless its stamp matches; returns its path and the report of a build done now."""
    say = progress or (lambda message: None)
    where = directory(version)
    if build._stamp_matches(where, COMMAND, _recipe(version), (COMMAND,)):
        return where / "bin" / COMMAND, None
    try:
        (where / "bin").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise build.BuildError(
            "cannot create the cnitool cache %s (%s); set %s to a writable directory"
            % (where, error, build.CACHE_ENV)
        ) from error
    go_version = build._go_version()
    usage = build._Usage()
    started = time.monotonic()
    module_dir = where / "modules" / COMMAND
    build._fresh_module(module_dir, "wisp.testbed/cnitool")
    say("cnitool %s: downloading %s" % (version, CNI_MODULE))
    build._download(CNI_MODULE, version, module_dir, say, usage)
    build._run_go(["get", "-tool", "%s@%s" % (PACKAGE, version)], module_dir, "go get (cnitool)", say, usage)
    built = module_dir / "out"
    built.mkdir()
    say("cnitool %s: compiling" % version)
    build._run_go(
        ["build", "-mod=mod", "-trimpath", "-ldflags", "-s -w", "-o", str(built / COMMAND), PACKAGE],
        module_dir,
        "go build (cnitool)",
        say,
        usage,
    )
    report = build._finish(where, COMMAND, version, _recipe(version), built, (COMMAND,), started, usage, go_version)
    say("cnitool %s: built in %.1f s" % (version, report.seconds))
    return where / "bin" / COMMAND, report

