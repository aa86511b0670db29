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
builds `github.com/containernetworking/cni/cnitool`, with `build.GoTool`'s recipe.
"""

from __future__ import annotations

from pathlib import Path

from . import build

CNI_MODULE = "github.com/containernetworking/cni"
CNI_VERSION = "v1.3.0"
TOOL = build.GoTool(part="cnitool", module=CNI_MODULE, package=CNI_MODULE + "/cnitool", command="cnitool")


def directory(version: str = CNI_VERSION) -> Path:
    return build.cache_root() / "cnitool" / version


def installed(version: str = CNI_VERSION) -> Path:
    """The cached cnitool; raises build.MissingBinaries if it is not built."""
    if not TOOL.cached(directory(version), version):
        raise TOOL.missing(directory(version), version,
                           "`python -c 'from runtime.testbed import cnitool; cnitool.build_cnitool()'` "
                           "(needs Go and the Go module proxy; 9 s cold, measured here)")
    return TOOL.path(directory(version))


def build_cnitool(
    version: str = CNI_VERSION, progress: build.Progress | None = None
) -> tuple[Path, build.PartReport | None]:
    """Build cnitool unless its stamp matches; returns its path and the report of a build done now."""
    return TOOL.build(directory(version), version, progress)
