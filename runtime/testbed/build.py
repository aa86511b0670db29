"""Build the upstream control-plane binaries from the Go module proxy, cached by version.

Contract:
- `build()` compiles kube-apiserver, kube-controller-manager, kube-scheduler and kubectl
  (`k8s.io/kubernetes` at `K8S_VERSION`) and etcd (`go.etcd.io/etcd/server/v3` at `ETCD_VERSION`,
  falling back to `ETCD_FALLBACK_VERSION` if that does not build) into
  `<cache>/<k8s version>/bin/`. `<cache>` is `$WISP_TESTBED_CACHE`, else `/var/cache/wisp-testbed`.
  Everything Go writes (wrapper modules, binaries) lives there or in Go's own caches, never in the
  work tree.
- Each part (kubernetes, etcd) has a stamp file written after its binaries are in place; a part
  whose stamp matches the recipe and whose binaries exist is not rebuilt, so a warm rebuild is a
  no-op that does not even need Go.
- `installed()` returns the binaries without building and raises `MissingBinaries`, whose message
  says which command builds them.

Why wrapper modules: `k8s.io/kubernetes` requires its staging modules (`k8s.io/api`, ...) at
`v0.0.0` and maps them to `./staging/...` with `replace` directives that Go ignores in a dependency.
The wrapper module replaces each of them with its published `v0.<minor>.<patch>` release; the list
is read from the downloaded `go.mod` of the exact version so it follows upstream. Version ldflags
follow upstream's `hack/lib/version.sh`, without which `/version` reports `v0.0.0-master`.

Go runs in a subprocess under `nice -n 10` (other work on the machine keeps going), with
`CGO_ENABLED=0`, `-trimpath` and upstream's release tags; progress goes to the `progress`
callback, Go's own output to stderr.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

K8S_VERSION = "v1.37.2"
ETCD_VERSION = "v3.7.3"
ETCD_FALLBACK_VERSION = "v3.6.16"
BUILD_TAGS = "selinux,notest,grpcnotrace"
DEFAULT_CACHE = Path("/var/cache/wisp-testbed")
CACHE_ENV = "WISP_TESTBED_CACHE"
# Bumped whenever the way binaries are built changes, so old stamps stop matching.
RECIPE = 1

KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
ETCD_COMMAND = "etcd"

Progress = Callable[[str], None]


class BuildError(Exception):
    """A Go step failed; the message names the step and where its output went."""


class MissingBinaries(Exception):
    """The binaries for a version are not in the cache (or their stamp does not match)."""


@dataclass(slots=True, frozen=True)
class Binaries:
    """Paths of the five binaries of one test-bed version."""

    directory: Path
    kubernetes_version: str
    etcd_version: str

    def path(self, name: str) -> Path:
        return self.directory / name

    @property
    def kube_apiserver(self) -> Path:
        return self.directory / "kube-apiserver"

    @property
    def kube_controller_manager(self) -> Path:
        return self.directory / "kube-controller-manager"

    @property
    def kube_scheduler(self) -> Path:
        return self.directory / "kube-scheduler"

    @property
    def kubectl(self) -> Path:
        return self.directory / "kubectl"

    @property
    def etcd(self) -> Path:
        return self.directory / "etcd"


@dataclass(slots=True, frozen=True)
class PartReport:
    """What building one part cost; stored in its stamp so later runs can report it."""

    part: str
    version: str
    seconds: float
    peak_tree_rss_mb: float
    peak_process_rss_mb: float
    go_version: str
    note: str = ""


def cache_root() -> Path:
    value = os.environ.get(CACHE_ENV, "")
    return Path(value) if value else DEFAULT_CACHE


def version_dir(k8s_version: str = K8S_VERSION) -> Path:
    return cache_root() / k8s_version


def _staging_version(k8s_version: str) -> str:
    match = re.fullmatch(r"v1\.(\d+)\.(\d+)", k8s_version)
    if match is None:
        raise BuildError(
            "kubernetes version %r is not a release of the form v1.MINOR.PATCH" % k8s_version
        )
    return "v0.%s.%s" % match.groups()


def _stamp_path(directory: Path, part: str) -> Path:
    return directory / ("stamp-%s.json" % part)


def _read_stamp(directory: Path, part: str) -> dict[str, object] | None:
    try:
        data = json.loads(_stamp_path(directory, part).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _stamp_matches(directory: Path, part: str, wanted: dict[str, object], names: Sequence[str]) -> bool:
    stamp = _read_stamp(directory, part)
    if stamp is None or stamp.get("recipe") != wanted:
        return False
    return all((directory / "bin" / name).is_file() for name in names)


def _kube_recipe(k8s_version: str) -> dict[str, object]:
    return {"recipe": RECIPE, "version": k8s_version, "tags": BUILD_TAGS}


def _etcd_recipe(etcd_version: str) -> dict[str, object]:
    return {"recipe": RECIPE, "version": etcd_version, "tags": BUILD_TAGS}


def installed(k8s_version: str = K8S_VERSION) -> Binaries:
    """The cached binaries for `k8s_version`; raises MissingBinaries if any part is not built."""
    directory = version_dir(k8s_version)
    kube = _read_stamp(directory, "kubernetes")
    etcd = _read_stamp(directory, "etcd")
    missing = [name for name in (*KUBE_COMMANDS, ETCD_COMMAND) if not (directory / "bin" / name).is_file()]
    if kube is None or etcd is None or missing:
        raise MissingBinaries(
            "test-bed binaries for Kubernetes %s are not built in %s (missing: %s); "
            "build them with `./run testbed build` (python -m runtime.testbed build), "
            "which needs Go and the Go module proxy and takes about half an hour cold"
            % (k8s_version, directory, ", ".join(missing) or "build stamps")
        )
    recipe = etcd.get("recipe")
    etcd_version = recipe.get("version", "?") if isinstance(recipe, dict) else "?"
    return Binaries(directory / "bin", k8s_version, str(etcd_version))


def build(
    k8s_version: str = K8S_VERSION,
    etcd_version: str = ETCD_VERSION,
    progress: Progress | None = None,
) -> tuple[Binaries, list[PartReport]]:
    """Build whatever part is missing; returns the binaries and a report per part built now."""
    say = progress or (lambda message: None)
    directory = version_dir(k8s_version)
    try:
        (directory / "bin").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BuildError(
            "cannot create the test-bed cache %s (%s); set %s to a writable directory"
            % (directory, error, CACHE_ENV)
        ) from error
    reports: list[PartReport] = []

    if _etcd_current(directory) is not None:
        say("etcd: cached (%s)" % _etcd_current(directory))
    else:
        reports.append(_build_etcd(directory, etcd_version, say))

    if _stamp_matches(directory, "kubernetes", _kube_recipe(k8s_version), KUBE_COMMANDS):
        say("kubernetes %s: cached" % k8s_version)
    else:
        reports.append(_build_kubernetes(directory, k8s_version, say))
    return installed(k8s_version), reports


def _etcd_current(directory: Path) -> str | None:
    """The etcd version whose stamp is valid (primary or fallback), or None."""
    for version in (ETCD_VERSION, ETCD_FALLBACK_VERSION):
        if _stamp_matches(directory, "etcd", _etcd_recipe(version), (ETCD_COMMAND,)):
            return version
    return None


# --- Go subprocesses -----------------------------------------------------------------------------


def _go_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"CGO_ENABLED": "0", "GO111MODULE": "on", "GOWORK": "off"})
    if extra:
        env.update(extra)
    return env


def _go_version() -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            "Go is not installed (no `go` on PATH); the test bed builds its binaries with Go "
            "(https://go.dev/dl/, 1.26 or newer)"
        )
    done = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BuildError("`go env GOVERSION` failed: %s" % done.stderr.strip())
    return done.stdout.strip()


@dataclass(slots=True)
class _Usage:
    peak_tree_kb: int = 0


def _session_rss_kb(session: int) -> int:
    """Total resident memory of every process in `session` (Go's compile and link children)."""
    total = 0
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry.name, "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces) start after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[3]) == session:
            total += int(fields[21]) * page_kb
    return total


def _run_go(
    args: Sequence[str],
    cwd: Path,
    step: str,
    say: Progress,
    usage: _Usage,
    env: dict[str, str] | None = None,
    capture: bool = False,
) -> str:
    """Run `nice -n 10 go ARGS` in its own session; samples its memory; kills it all on error."""
    command = ["nice", "-n", "10", "go", *args]
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=_go_env(env),
        stdout=subprocess.PIPE if capture else sys.stderr,
        stderr=sys.stderr,
        text=True,
        start_new_session=True,
    )
    started = time.monotonic()
    stop = threading.Event()

    def sample() -> None:
        next_note = started + 60
        while not stop.wait(1.0):
            usage.peak_tree_kb = max(usage.peak_tree_kb, _session_rss_kb(process.pid))
            if time.monotonic() >= next_note:
                next_note += 60
                say("%s: still running, %d min elapsed" % (step, (time.monotonic() - started) // 60))

    sampler = threading.Thread(target=sample, name="wisp-testbed-rss", daemon=True)
    sampler.start()
    try:
        output, _ = process.communicate()
    except BaseException:
        _kill_session(process)
        raise
    finally:
        stop.set()
        sampler.join()
    if process.returncode != 0:
        raise BuildError(
            "%s failed (exit %d): `%s` in %s; Go's messages are above"
            % (step, process.returncode, " ".join(command), cwd)
        )
    return output or ""


def _kill_session(process: subprocess.Popen[str]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _peak_process_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _download(module: str, version: str, cwd: Path, say: Progress, usage: _Usage) -> dict[str, object]:
    output = _run_go(
        ["mod", "download", "-json", "%s@%s" % (module, version)],
        cwd,
        "downloading %s@%s" % (module, version),
        say,
        usage,
        capture=True,
    )
    try:
        info = json.loads(output)
    except ValueError as error:
        raise BuildError("`go mod download -json %s@%s` printed no JSON" % (module, version)) from error
    if info.get("Error"):
        raise BuildError("downloading %s@%s: %s" % (module, version, info["Error"]))
    return info


def _origin(info: dict[str, object]) -> tuple[str, str]:
    """(commit hash, commit time) from the proxy's .info, as upstream's ldflags want them."""
    commit, when = "", ""
    info_path = info.get("Info")
    if isinstance(info_path, str):
        try:
            data = json.loads(Path(info_path).read_text())
        except (OSError, ValueError):
            data = {}
        origin = data.get("Origin") or {}
        commit = str(origin.get("Hash", "")) if isinstance(origin, dict) else ""
        when = str(data.get("Time", ""))
    return commit, when


def _fresh_module(path: Path, name: str) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / "go.mod").write_text("module %s\n\ngo 1.26\n" % name)


def _install(built: Path, directory: Path, names: Sequence[str]) -> None:
    """Move freshly linked binaries into bin/ one rename each, so a reader never sees half a file."""
    for name in names:
        source = built / name
        if not source.is_file():
            raise BuildError("go build did not produce %s in %s" % (name, built))
        os.replace(source, directory / "bin" / name)


def _write_stamp(directory: Path, part: str, recipe: dict[str, object], report: PartReport) -> None:
    stamp = _stamp_path(directory, part)
    temporary = stamp.with_suffix(".tmp")
    temporary.write_text(json.dumps({"recipe": recipe, "report": asdict(report)}, indent=2) + "\n")
    os.replace(temporary, stamp)


def _finish(directory: Path, part: str, version: str, recipe: dict[str, object], built: Path,
            commands: Sequence[str], started: float, usage: _Usage, go_version: str, note: str = "") -> PartReport:
    """Install a part's freshly built binaries, then record what building it cost in its stamp
    (written last: a stamp means the binaries are in place)."""
    _install(built, directory, commands)
    report = PartReport(
        part=part,
        version=version,
        seconds=round(time.monotonic() - started, 1),
        peak_tree_rss_mb=round(usage.peak_tree_kb / 1024, 1),
        peak_process_rss_mb=round(_peak_process_rss_mb(), 1),
        go_version=go_version,
        note=note,
    )
    _write_stamp(directory, part, recipe, report)
    return report


def staging_replaces(go_mod_text: str, staging_version: str) -> list[tuple[str, str]]:
    """`(module, published version)` for every `=> ./staging/...` replace of kubernetes' go.mod."""
    replaces: list[tuple[str, str]] = []
    for line in go_mod_text.splitlines():
        match = re.match(r"^\s*(?:replace\s+)?(\S+)(?:\s+v\S+)?\s+=>\s+\./staging/", line)
        if match:
            replaces.append((match.group(1), staging_version))
    return replaces


def other_replaces(go_mod_text: str) -> list[str]:
    """Replace directives of kubernetes' go.mod that do not point at staging (kept as written)."""
    lines: list[str] = []
    for line in go_mod_text.splitlines():
        stripped = line.strip()
        if "=>" in stripped and "./staging/" not in stripped and not stripped.startswith("//"):
            lines.append(stripped.removeprefix("replace").strip())
    return lines


@dataclass(frozen=True, slots=True)
class GoTool:
    """A command built from one package of a Go module, with the wrapper-module recipe above.

    `part` names its stamp; `carry_replaces` copies the module's own replace directives into the
    wrapper (Go ignores a dependency's); `ldflags(version, commit, date)` gives the `-X` stamps its
    Makefile would set, so the binary reports its release."""

    part: str
    module: str
    package: str
    command: str
    carry_replaces: bool = False
    ldflags: Callable[[str, str, str], list[str]] | None = None
    stamp_names_module: bool = True  # helm's stamps, older than this class, name only the version

    def recipe(self, version: str) -> dict[str, object]:
        if not self.stamp_names_module:
            return {"recipe": RECIPE, "version": version}
        return {"recipe": RECIPE, "module": self.module, "version": version}

    def cached(self, directory: Path, version: str) -> bool:
        return _stamp_matches(directory, self.part, self.recipe(version), (self.command,))

    def path(self, directory: Path) -> Path:
        return directory / "bin" / self.command

    def missing(self, directory: Path, version: str, hint: str) -> MissingBinaries:
        return MissingBinaries("%s %s is not built in %s; build it with %s"
                               % (self.command, version, directory / "bin", hint))

    def build(self, directory: Path, version: str, progress: Progress | None = None) -> tuple[Path, PartReport | None]:
        """Build unless the stamp matches; returns the binary's path and the report of a build done now."""
        say = progress or (lambda message: None)
        if self.cached(directory, version):
            say("%s %s: cached" % (self.command, version))
            return self.path(directory), None
        try:
            (directory / "bin").mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BuildError("cannot create the test-bed cache %s (%s); set %s to a writable directory"
                             % (directory, error, CACHE_ENV)) from error
        go_version = _go_version()
        usage = _Usage()
        started = time.monotonic()
        module_dir = directory / "modules" / self.part
        _fresh_module(module_dir, "runtime.testbed/" + self.part)
        say("%s %s: downloading %s" % (self.command, version, self.module))
        info = _download(self.module, version, module_dir, say, usage)
        go_mod_path = info.get("GoMod")
        if self.carry_replaces and isinstance(go_mod_path, str):
            extra = other_replaces(Path(go_mod_path).read_text())
            if extra:
                with (module_dir / "go.mod").open("a") as handle:
                    handle.write("\nreplace (\n%s)\n" % "".join("\t%s\n" % line for line in extra))
        say("%s %s: resolving dependencies" % (self.command, version))
        _run_go(["get", "-tool", "%s@%s" % (self.package, version)], module_dir,
                "go get (%s)" % self.command, say, usage)
        flags = ["-s", "-w"]
        if self.ldflags is not None:
            flags += self.ldflags(version, *_origin(info))
        built = module_dir / "out"
        built.mkdir()
        say("%s %s: compiling" % (self.command, version))
        _run_go(["build", "-mod=mod", "-trimpath", "-ldflags", " ".join(flags), "-o", str(built / self.command),
                 self.package], module_dir, "go build (%s)" % self.command, say, usage)
        report = _finish(directory, self.part, version, self.recipe(version), built, (self.command,), started,
                         usage, go_version)
        took = "%.1f s" % report.seconds if report.seconds < 120 else "%.1f min" % (report.seconds / 60)
        say("%s %s: built in %s" % (self.command, version, took))
        return self.path(directory), report


def _build_kubernetes(directory: Path, version: str, say: Progress) -> PartReport:
    staging = _staging_version(version)
    go_version = _go_version()
    usage = _Usage()
    started = time.monotonic()
    module_dir = directory / "modules" / "kubernetes"
    _fresh_module(module_dir, "runtime.testbed/kubernetes")
    say("kubernetes %s: downloading k8s.io/kubernetes (%s)" % (version, go_version))
    info = _download("k8s.io/kubernetes", version, module_dir, say, usage)
    go_mod_path = info.get("GoMod")
    if not isinstance(go_mod_path, str):
        raise BuildError("`go mod download` gave no go.mod path for k8s.io/kubernetes@%s" % version)
    go_mod = Path(go_mod_path).read_text()
    replaces = staging_replaces(go_mod, staging)
    if not replaces:
        raise BuildError(
            "k8s.io/kubernetes@%s go.mod (%s) has no ./staging replaces; "
            "the wrapper recipe does not fit this version" % (version, go_mod_path)
        )
    extra = other_replaces(go_mod)
    lines = ["module runtime.testbed/kubernetes", "", "go 1.26", "", "require k8s.io/kubernetes %s" % version, "", "replace ("]
    lines += ["\t%s => %s %s" % (module, module, published) for module, published in replaces]
    lines += ["\t%s" % line for line in extra]
    lines += [")", ""]
    (module_dir / "go.mod").write_text("\n".join(lines))
    say("kubernetes %s: %d staging modules replaced by %s releases%s" % (
        version, len(replaces), staging, "; kept %d other replaces" % len(extra) if extra else ""))

    packages = ["k8s.io/kubernetes/cmd/%s" % name for name in KUBE_COMMANDS]
    say("kubernetes %s: resolving dependencies" % version)
    _run_go(["get", "-tool", *packages], module_dir, "go get (kubernetes)", say, usage)

    commit, when = _origin(info)
    major, minor = re.fullmatch(r"v(\d+)\.(\d+)\.\d+", version).groups()  # type: ignore[union-attr]
    ldflags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        # A module zip is a clean tree by construction. The proxy's .info carries the commit only
        # for some modules; empty beats the source's "$Format:%H$" placeholder.
        ldflags += [
            "-X", "%s.gitVersion=%s" % (package, version),
            "-X", "%s.gitMajor=%s" % (package, major),
            "-X", "%s.gitMinor=%s" % (package, minor),
            "-X", "%s.gitCommit=%s" % (package, commit),
            "-X", "%s.gitTreeState=clean" % package,
            "-X", "%s.buildDate=%s" % (package, when),
        ]
    built = module_dir / "out"
    built.mkdir()
    say("kubernetes %s: compiling %s (the long part)" % (version, ", ".join(KUBE_COMMANDS)))
    _run_go(
        ["build", "-mod=mod", "-trimpath", "-tags", BUILD_TAGS, "-ldflags", " ".join(ldflags),
         "-o", str(built) + "/", *packages],
        module_dir,
        "go build (kubernetes)",
        say,
        usage,
    )
    report = _finish(directory, "kubernetes", version, _kube_recipe(version), built, KUBE_COMMANDS, started, usage,
                     go_version)
    say("kubernetes %s: built in %.1f min" % (version, report.seconds / 60))
    return report


def _build_etcd(directory: Path, version: str, say: Progress) -> PartReport:
    try:
        return _build_etcd_version(directory, version, say, note="")
    except BuildError as error:
        if version == ETCD_FALLBACK_VERSION:
            raise
        say("etcd %s did not build (%s); trying %s" % (version, error, ETCD_FALLBACK_VERSION))
        return _build_etcd_version(
            directory, ETCD_FALLBACK_VERSION, say, note="%s did not build: %s" % (version, error)
        )


def _build_etcd_version(directory: Path, version: str, say: Progress, note: str) -> PartReport:
    go_version = _go_version()
    usage = _Usage()
    started = time.monotonic()
    module_dir = directory / "modules" / "etcd"
    _fresh_module(module_dir, "runtime.testbed/etcd")
    say("etcd %s: downloading go.etcd.io/etcd/server/v3" % version)
    info = _download("go.etcd.io/etcd/server/v3", version, module_dir, say, usage)
    package = "go.etcd.io/etcd/server/v3"
    _run_go(["get", "-tool", "%s@%s" % (package, version)], module_dir, "go get (etcd)", say, usage)
    commit, _ = _origin(info)
    ldflags = "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=%s" % (commit[:10] or "module")
    built = module_dir / "out"
    built.mkdir()
    say("etcd %s: compiling" % version)
    _run_go(
        ["build", "-mod=mod", "-trimpath", "-tags", BUILD_TAGS, "-ldflags", ldflags,
         "-o", str(built / ETCD_COMMAND), package],
        module_dir,
        "go build (etcd)",
        say,
        usage,
    )
    report = _finish(directory, "etcd", version, _etcd_recipe(version), built, (ETCD_COMMAND,), started, usage,
                     go_version, note)
    say("etcd %s: built in %.1f min" % (version, report.seconds / 60))
    return report


def reports(k8s_version: str = K8S_VERSION) -> list[dict[str, object]]:
    """The build reports stored in the stamps (what the cold build cost when it ran)."""
    found: list[dict[str, object]] = []
    for part in ("etcd", "kubernetes"):
        stamp = _read_stamp(version_dir(k8s_version), part)
        if stamp is not None and isinstance(stamp.get("report"), dict):
            found.append(stamp["report"])  # type: ignore[arg-type]
    return found
